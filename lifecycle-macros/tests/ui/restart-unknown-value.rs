use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "on-failure")]
struct Consumer;

fn main() {}
