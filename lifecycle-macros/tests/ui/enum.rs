use lifecycle_core::{Component, Registry};

#[derive(Component)]
enum Backend {
    Memory,
    Disk,
}

fn main() {
    let mut builder = Registry::builder();
    builder.add(Backend::Memory);
}
