use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(flavor = "single_thread")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
