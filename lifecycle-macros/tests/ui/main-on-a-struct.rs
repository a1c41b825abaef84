#[lifecycle_core::main]
struct Service;

fn main() {}
