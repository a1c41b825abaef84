use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(backoff = "1s..2s")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
