use lifecycle_core::Component;

#[derive(Component)]
#[component(stop_timeout = "1s", stop_timeout = "2s")]
struct Cache;

fn main() {}
