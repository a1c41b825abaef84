use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main]
async fn main<T: Default>() -> RegistryBuilder {
    let _ = T::default();
    RegistryBuilder::new()
}
