//! Time from a failure to the service being whole again: a restart by policy inside the process
//! (the failed component and what depends on it stop and start again), against restarting the
//! whole process (what a supervisor without a dependency graph does: systemd's `Restart=`, a
//! Kubernetes container restart), for the same service.
//!
//! The service: a database pool stand-in, a cache on it, an API on the cache, and 20 independent
//! components, each start a no-op. In process, the cache's task fails and the bench waits until
//! the API has started again. As a process, this binary runs itself with `--serve`, waits for
//! "ready" on its standard output, sends SIGTERM, waits for the exit, and starts it again until
//! "ready": the restart of the process alone, not counting the time a supervisor takes to notice
//! and react.
//!
//! `cargo run --release -p lifecycle-benches --bin restart [-- --quick]`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifecycle_benches::{human, median, runtime};
use lifecycle_core::{
    BoxError, Component, ComponentId, ComponentOptions, Context, Dependency, Phase, Registry, RestartPolicy,
    Signals,
};
use tokio::sync::Notify;

/// A component that starts at once; `fail` makes its one task fail, `started` hears each start.
struct Part {
    name: String,
    dependencies: Vec<Dependency>,
    restart: RestartPolicy,
    fail: Arc<Notify>,
    started: Arc<Notify>,
}

impl Part {
    fn new(name: &str, on: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            dependencies: on.iter().map(|d| Dependency::on((*d).to_owned())).collect(),
            restart: RestartPolicy::never(),
            fail: Arc::new(Notify::new()),
            started: Arc::new(Notify::new()),
        }
    }
}

impl Component for Part {
    fn name(&self) -> ComponentId {
        ComponentId::from(self.name.clone())
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.dependencies.clone()
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().restart(self.restart)
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let (token, fail) = (ctx.token().clone(), Arc::clone(&self.fail));
        ctx.tasks().spawn("work", async move {
            tokio::select! {
                () = token.cancelled() => Ok(()),
                () = fail.notified() => Err(std::io::Error::other("connection lost")),
            }
        });
        self.started.notify_one();
        Ok(())
    }
}

/// The service, with the cache restarted at once by its policy. Returns the registry, the
/// cache's failure trigger and the API's start signal.
fn service() -> (Registry, Arc<Notify>, Arc<Notify>) {
    let mut builder = Registry::builder();
    builder.signals(Signals::default());
    builder.add(Part::new("db", &[]));
    let mut cache = Part::new("cache", &["db"]);
    cache.restart = RestartPolicy::on_failure()
        .backoff(Duration::ZERO, Duration::ZERO)
        .max_restarts(u32::MAX, Duration::from_secs(1));
    let fail = Arc::clone(&cache.fail);
    builder.add(cache);
    let api = Part::new("api", &["cache"]);
    let api_started = Arc::clone(&api.started);
    builder.add(api);
    for i in 0..20 {
        builder.add(Part::new(&format!("independent{i}"), &[]));
    }
    match builder.build() {
        Ok(registry) => (registry, fail, api_started),
        Err(error) => panic!("{error}"),
    }
}

/// `--serve`: the service as a process, saying "ready" when it is.
fn serve() {
    runtime().block_on(async {
        let (registry, _, _) = service();
        let handle = registry.handle();
        let run = tokio::spawn(registry.run());
        handle.reached(Phase::Ready).await;
        println!("ready");
        let _ = run.await;
    });
}

/// One restart inside the process: failure to the API started again.
fn in_process(rounds: usize) -> Vec<f64> {
    runtime().block_on(async {
        let (registry, fail, api_started) = service();
        let handle = registry.handle();
        let run = tokio::spawn(registry.run());
        handle.reached(Phase::Ready).await;
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let began = Instant::now();
            fail.notify_one();
            api_started.notified().await;
            samples.push(began.elapsed().as_secs_f64());
        }
        handle.shutdown().request("bench over", 0);
        let _ = run.await;
        samples
    })
}

/// Starts this binary with `--serve` and waits for its "ready".
fn spawn_service() -> std::process::Child {
    let exe = std::env::current_exe().unwrap_or_else(|error| panic!("no current executable: {error}"));
    let mut child = Command::new(exe)
        .arg("--serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start the service: {error}"));
    let Some(stdout) = child.stdout.take() else { panic!("no stdout") };
    let mut line = String::new();
    if BufReader::new(stdout).read_line(&mut line).is_err() || line.trim() != "ready" {
        panic!("the service did not say ready: {line:?}");
    }
    child
}

/// One restart of the process: SIGTERM, exit, start, ready.
fn process_restarts(rounds: usize) -> Vec<f64> {
    let mut child = spawn_service();
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let began = Instant::now();
        lifecycle_tests::kill("TERM", child.id());
        let _ = child.wait();
        child = spawn_service();
        samples.push(began.elapsed().as_secs_f64());
    }
    lifecycle_tests::kill("TERM", child.id());
    let _ = child.wait();
    samples
}

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        return serve();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (inside, outside) = if quick { (50, 5) } else { (500, 31) };
    let restart = median(in_process(inside));
    let process = median(process_restarts(outside));
    println!("| failure to whole again (median) | time | ratio |");
    println!("|---|---:|---:|");
    println!("| restart of the process (SIGTERM, exit, start, ready) | {} | 1.0x |", human(process));
    println!(
        "| restart by policy in process (cache and api stop and start again) | {} | {:.3}x |",
        human(restart),
        restart / process
    );
}
