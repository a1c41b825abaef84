fn setup() -> Result<u16, String> {
    Ok(8080)
}

#[lifecycle_core::main(setup = setup)]
async fn main(port: u16, host: String) -> lifecycle_core::RegistryBuilder {
    let _ = (port, host);
    lifecycle_core::RegistryBuilder::new()
}
