use lifecycle_core::Component;

struct Settings;

#[derive(Component)]
#[component(depends_on(Settings))]
struct Server;

fn main() {}
