#[lifecycle_core::main]
async fn main(port: u16) -> lifecycle_core::RegistryBuilder {
    let _ = port;
    lifecycle_core::RegistryBuilder::new()
}
