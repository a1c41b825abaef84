use lifecycle_core::RegistryBuilder;

#[lifecycle_core::main(flavor = "current_thread", worker_threads = 4)]
async fn main() -> RegistryBuilder {
    RegistryBuilder::new()
}
