use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "on_failure", backoff = "1s..2s", backoff = "1s..4s")]
struct Consumer;

fn main() {}
