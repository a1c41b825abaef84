use lifecycle_core::Component;

#[derive(Component)]
struct Server {
    #[component(closed)]
    port: u16,
}

fn main() {}
