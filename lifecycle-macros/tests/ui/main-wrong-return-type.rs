#[lifecycle_core::main]
async fn main() -> u32 {
    7
}
