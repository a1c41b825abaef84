use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(restart = "always")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
