use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "always")]
struct Consumer;

fn main() {}
