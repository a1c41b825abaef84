//! `#[lifecycle::main]` as a user writes it: `main_attr fail` has a component whose start fails;
//! `main_attr ok` and `main_attr exit3` stop themselves as they start, with exit code 0 or 3;
//! `main_attr threads` prints how many threads the process had during its setup and stops;
//! `main_attr early` sends itself SIGTERM during its setup, before any runtime exists, and then
//! waits in a start that only a shutdown ends; `main_attr slow` prints `building` and takes
//! 30 s to return its builder; `main_attr reload` sends itself SIGHUP during its setup, then runs
//! a component that prints `started` and `reloaded N` at each reload; any other argument makes
//! `main` return an error instead of a builder, and none at all makes the setup fail.

use std::sync::atomic::{AtomicU32, Ordering};

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

/// Starts only when a shutdown cancels it.
#[derive(Component)]
#[component(start = wait)]
struct Waiter;

impl Waiter {
    async fn wait(&self, ctx: &Context) -> Result<(), BoxError> {
        ctx.cancelled().await;
        Ok(())
    }
}

/// Counts its reloads on standard output.
#[derive(Component)]
#[component(start = announce, reload = reread)]
struct Reloader {
    reloads: AtomicU32,
}

impl Reloader {
    async fn announce(&self) -> Result<(), BoxError> {
        println!("started");
        Ok(())
    }

    async fn reread(&self) -> Result<(), BoxError> {
        println!("reloaded {}", self.reloads.fetch_add(1, Ordering::AcqRel) + 1);
        Ok(())
    }
}

/// The mode from the command line, and the process's thread count while the setup runs.
fn setup() -> Result<(String, usize), String> {
    let modes = "use `fail`, `ok`, `exit3`, `threads`, `early`, `slow` or `reload`";
    let mode = std::env::args().nth(1).ok_or(format!("no mode given; {modes}"))?;
    let threads = std::fs::read_dir("/proc/self/task").map_err(|error| error.to_string())?.count();
    let early = match mode.as_str() {
        "early" => Some("TERM"),
        "reload" => Some("HUP"),
        _ => None,
    };
    if let Some(signal) = early {
        // `kill` has exited when this returns, so the signal is already pending or delivered.
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &std::process::id().to_string()])
            .status()
            .map_err(|error| error.to_string())?;
        println!("SIG{signal} sent during setup");
        if !status.success() {
            return Err(format!("kill failed: {status}"));
        }
    }
    Ok((mode, threads))
}

#[lifecycle::main(shutdown_deadline = "5s", setup = setup)]
async fn main((mode, threads_at_setup): (String, usize)) -> Result<RegistryBuilder, String> {
    let mut builder = RegistryBuilder::new();
    match mode.as_str() {
        "fail" => {
            builder.add(Broken);
        }
        "ok" => {
            builder.add(Finisher { exit_code: 0 });
        }
        "exit3" => {
            builder.add(Finisher { exit_code: 3 });
        }
        "threads" => {
            println!("threads during setup: {threads_at_setup}");
            builder.add(Finisher { exit_code: 0 });
        }
        "early" => {
            builder.add(Waiter);
        }
        "reload" => {
            builder.add(Reloader { reloads: AtomicU32::new(0) });
        }
        "slow" => {
            println!("building");
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            builder.add(Waiter);
        }
        other => {
            return Err(format!(
                "unknown mode {other:?}; use `fail`, `ok`, `exit3`, `threads`, `early`, `slow` or `reload`"
            ));
        }
    }
    Ok(builder)
}
