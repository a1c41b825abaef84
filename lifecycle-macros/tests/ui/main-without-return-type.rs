#[lifecycle_core::main]
async fn main() {}
