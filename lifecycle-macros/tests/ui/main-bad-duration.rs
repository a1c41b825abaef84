use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(shutdown_deadline = "25 seconds")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
