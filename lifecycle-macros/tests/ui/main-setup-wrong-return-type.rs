fn setup() -> u16 {
    8080
}

#[lifecycle_core::main(setup = setup)]
async fn main(port: u16) -> lifecycle_core::RegistryBuilder {
    let _ = port;
    lifecycle_core::RegistryBuilder::new()
}
