use lifecycle_core::Component;

#[derive(Component)]
#[component(start_timeout = "5sec")]
struct Cache;

#[derive(Component)]
#[component(stop_timeout = "30")]
struct Queue;

fn main() {}
