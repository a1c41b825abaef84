use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main]
fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
