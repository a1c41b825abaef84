use lifecycle_core::Component;

#[derive(Component)]
#[component(restart = "on_failure", max_restarts = "0 per 1m")]
struct Consumer;

fn main() {}
