use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(signals = "TERM, USR3")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
