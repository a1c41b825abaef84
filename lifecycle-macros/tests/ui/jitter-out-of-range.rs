use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "on_failure", jitter = 1.5)]
struct Consumer;

#[derive(Component)]
#[component(restart = "on_failure", jitter = "0.2")]
struct Producer;

fn main() {}
