use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(drain_dely = "5s")]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
