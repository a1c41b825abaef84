use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(worker_threads = 0)]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
