use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "on_failure", backoff = "100ms-30s")]
struct Consumer;

#[derive(Component)]
#[component(restart = "on_failure", backoff = "100ms..30sec")]
struct Producer;

fn main() {}
