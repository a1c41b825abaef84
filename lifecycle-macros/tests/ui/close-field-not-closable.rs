use lifecycle_core::Component;

#[derive(Component)]
struct Server {
    #[component(close)]
    port: u16,
}

fn main() {}
