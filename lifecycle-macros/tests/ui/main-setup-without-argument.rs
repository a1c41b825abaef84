fn setup() -> Result<u16, String> {
    Ok(8080)
}

#[lifecycle_core::main(setup = setup)]
async fn main() -> lifecycle_core::RegistryBuilder {
    lifecycle_core::RegistryBuilder::new()
}
