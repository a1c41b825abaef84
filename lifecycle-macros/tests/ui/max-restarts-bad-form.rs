use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "on_failure", max_restarts = "5 in 1m")]
struct Consumer;

#[derive(Component)]
#[component(restart = "on_failure", max_restarts = "5 per minute")]
struct Producer;

fn main() {}
