use lifecycle_core::Component;

#[derive(Component)]
#[component(stop = close)]
struct Pool;

impl Pool {
    async fn shutdown(&self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
