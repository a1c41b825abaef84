use lifecycle_core::Component;

#[derive(Component)]
#[component(backoff = "100ms..30s")]
struct Consumer;

#[derive(Component)]
#[component(restart = "never", max_restarts = "3 per 1m", jitter = 0.5)]
struct Producer;

fn main() {}
