//! `#[lifecycle::main]` as a user writes it: `main_attr fail` has a component whose start fails;
//! `main_attr ok` and `main_attr exit3` stop themselves as they start, with exit code 0 or 3; any
//! other argument makes `main` return an error instead of a builder.

use lifecycle::{BoxError, Component, Context, RegistryBuilder};

#[derive(Component)]
#[component(start = connect)]
struct Broken;

impl Broken {
    async fn connect(&self) -> Result<(), BoxError> {
        Err("connection refused (127.0.0.1:1)".into())
    }
}

/// Asks for a shutdown with its exit code as soon as it starts.
#[derive(Component)]
#[component(start = finish)]
struct Finisher {
    exit_code: i32,
}

impl Finisher {
    async fn finish(&self, ctx: &Context) -> Result<(), BoxError> {
        ctx.shutdown().request("work done", self.exit_code);
        Ok(())
    }
}

#[lifecycle::main(signals = false, shutdown_deadline = "5s")]
async fn main() -> Result<RegistryBuilder, String> {
    let mut builder = RegistryBuilder::new();
    match std::env::args().nth(1).as_deref() {
        Some("fail") => {
            builder.add(Broken);
        }
        Some("ok") => {
            builder.add(Finisher { exit_code: 0 });
        }
        Some("exit3") => {
            builder.add(Finisher { exit_code: 3 });
        }
        other => return Err(format!("unknown mode {other:?}; use `fail`, `ok` or `exit3`")),
    }
    Ok(builder)
}
