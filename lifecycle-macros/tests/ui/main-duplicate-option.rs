use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(shutdown_deadline = "20s", shutdown_deadline = "25s")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
