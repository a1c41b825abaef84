//! `restart = "on_failure"` on the main attribute: the registry's default restart policy. The
//! worker's first task fails; without the default it would stop the service with exit code 1.
//! Restarted, it asks for a clean stop.

use std::sync::atomic::{AtomicU32, Ordering};

use lifecycle_core::{BoxError, Component, Context, RegistryBuilder};

struct Worker {
    starts: AtomicU32,
}

impl Component for Worker {
    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        if self.starts.fetch_add(1, Ordering::SeqCst) == 0 {
            ctx.tasks().spawn("work", async { Err::<(), _>(std::io::Error::other("connection lost")) });
        } else {
            ctx.shutdown().request("restarted, done", 0);
        }
        Ok(())
    }
}

#[lifecycle_core::main(restart = "on_failure", backoff = "10ms..20ms", max_restarts = "3 per 1m")]
async fn main() -> RegistryBuilder {
    let mut builder = RegistryBuilder::new();
    builder.add(Worker { starts: AtomicU32::new(0) });
    builder
}
