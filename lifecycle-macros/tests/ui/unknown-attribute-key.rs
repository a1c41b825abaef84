use lifecycle_core::{Component, Registry};

#[derive(Component)]
#[component(stop_timout = "1s")]
struct Cache;

fn main() {
    // The struct is still a component: one mistake, one error.
    let mut builder = Registry::builder();
    builder.add(Cache);
}
