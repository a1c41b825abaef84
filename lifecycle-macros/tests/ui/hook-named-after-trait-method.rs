use lifecycle_core::Component;

#[derive(Component)]
#[component(start = start)]
struct Server;

fn main() {}
