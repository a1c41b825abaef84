//! `flavor = "current_thread"`: the program runs on one runtime thread, and `on_ready` is called.

use lifecycle_core::{BoxError, Component, RegistryBuilder};

struct Done;

impl Component for Done {
    async fn start(&self, _ctx: &lifecycle_core::Context) -> Result<(), BoxError> {
        assert_eq!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        Ok(())
    }
}

#[lifecycle_core::main(flavor = "current_thread")]
async fn main() -> RegistryBuilder {
    let mut builder = RegistryBuilder::new();
    builder.add(Done);
    builder.on_ready(|handle| {
        handle.shutdown().request("ready, done", 0);
    });
    builder
}
