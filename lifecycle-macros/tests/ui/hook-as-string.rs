use lifecycle_core::Component;

#[derive(Component)]
#[component(start = "connect")]
struct Server;

impl Server {
    async fn connect(&self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
