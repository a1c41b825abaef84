use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "on_failure", backoff = "5s..1s")]
struct Consumer;

fn main() {}
