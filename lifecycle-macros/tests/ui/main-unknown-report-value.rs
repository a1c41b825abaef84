use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(report = "sometimes")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
