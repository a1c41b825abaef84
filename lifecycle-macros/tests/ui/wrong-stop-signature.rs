use lifecycle_core::Component;

#[derive(Component)]
#[component(stop = close)]
struct Pool;

impl Pool {
    // Not async, and takes an argument a hook is never given.
    fn close(&self, _force: bool) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {}
