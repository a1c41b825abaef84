//! A small service for the real-process tests: `fixture [options]`.
//!
//! Prints `ready` when every component started, `draining` when shutdown begins, `stopping worker`
//! when the worker's stop hook begins (it may come before `draining`: they are printed by different
//! tasks), then ends with the report on standard error and its exit code. Options:
//! `--current-thread` (a single runtime thread), `--deadline MS`, `--drain-delay MS`,
//! `--slow-stop MS` (a component whose stop takes that long), `--block-stop` (a component whose
//! stop hook blocks its thread forever), `--blocking-task` (a `spawn_blocking` that never returns),
//! `--sd-notify` (tell systemd, or a test posing as it, about readiness and stopping), `--etcd URL`
//! (register as `/services/fixture/<pid>` with a 2 s TTL), `--worker-alone` (the worker does not
//! depend on the database), `--watchdog-grace MS`, `--return-from-main` (print the report and
//! return from `main`, dropping the runtime, instead of exiting at once).

use std::time::Duration;

use lifecycle::{BoxError, Component, ComponentId, ComponentOptions, Context, Dependency, Phase, Registry};

/// Derived, with `lifecycle-core` renamed to `lifecycle` in this crate's `Cargo.toml`.
#[derive(Component)]
#[component(start = connect)]
struct Database;

impl Database {
    async fn connect(&self) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }
}

/// A worker whose stop can be slow, blocking, or leave a blocking task behind.
struct Worker {
    slow_stop: Option<Duration>,
    block_stop: bool,
    blocking_task: bool,
    alone: bool,
}

impl Component for Worker {
    fn name(&self) -> ComponentId {
        "worker".into()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        if self.alone { Vec::new() } else { vec![Dependency::on_type::<Database>()] }
    }

    fn options(&self) -> ComponentOptions {
        ComponentOptions::new().stop_timeout(Duration::from_secs(30))
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let token = ctx.token().clone();
        ctx.tasks().spawn("poll_loop", async move { token.cancelled().await });
        if self.blocking_task {
            ctx.tasks().spawn_blocking("stuck_file_read", || {
                loop {
                    std::thread::park();
                }
            });
        }
        Ok(())
    }

    async fn stop(&self, _ctx: &Context) -> Result<(), BoxError> {
        // Lets a test act while this stop is in flight instead of guessing when it began.
        println!("stopping worker");
        if self.block_stop {
            // Blocks the runtime thread: no timeout inside the runtime can interrupt this.
            loop {
                std::thread::park();
            }
        }
        if let Some(slow) = self.slow_stop {
            tokio::time::sleep(slow).await;
        }
        Ok(())
    }
}

struct Options {
    current_thread: bool,
    deadline: Option<Duration>,
    drain_delay: Option<Duration>,
    sd_notify: bool,
    etcd: Option<String>,
    watchdog_grace: Option<Duration>,
    return_from_main: bool,
    worker: Worker,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        current_thread: false,
        deadline: None,
        drain_delay: None,
        sd_notify: false,
        etcd: None,
        watchdog_grace: None,
        return_from_main: false,
        worker: Worker { slow_stop: None, block_stop: false, blocking_task: false, alone: false },
    };
    let mut args = std::env::args().skip(1);
    let millis = |value: Option<String>, flag: &str| -> Result<Duration, String> {
        value
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{flag} takes milliseconds"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--current-thread" => options.current_thread = true,
            "--deadline" => options.deadline = Some(millis(args.next(), "--deadline")?),
            "--drain-delay" => options.drain_delay = Some(millis(args.next(), "--drain-delay")?),
            "--slow-stop" => options.worker.slow_stop = Some(millis(args.next(), "--slow-stop")?),
            "--block-stop" => options.worker.block_stop = true,
            "--blocking-task" => options.worker.blocking_task = true,
            "--sd-notify" => options.sd_notify = true,
            "--etcd" => options.etcd = Some(args.next().ok_or("--etcd takes a URL")?),
            "--worker-alone" => options.worker.alone = true,
            "--watchdog-grace" => options.watchdog_grace = Some(millis(args.next(), "--watchdog-grace")?),
            "--return-from-main" => options.return_from_main = true,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(options)
}

fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("fixture: {message}");
            std::process::exit(2);
        }
    };
    let runtime = if options.current_thread {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fixture: cannot build the runtime: {error}");
            std::process::exit(2);
        }
    };
    let return_from_main = options.return_from_main;
    let report = runtime.block_on(async {
        let mut builder = Registry::builder();
        if let Some(grace) = options.watchdog_grace {
            builder.watchdog_grace(grace);
        }
        if let Some(deadline) = options.deadline {
            builder.shutdown_deadline(deadline);
        }
        if let Some(delay) = options.drain_delay {
            builder.drain_delay(delay);
        }
        builder.add(Database);
        builder.add(options.worker);
        if options.sd_notify {
            builder.add(lifecycle_systemd::SystemdNotify::new());
        }
        if let Some(url) = options.etcd {
            let instance = std::process::id().to_string();
            builder.add(
                lifecycle_etcd::EtcdRegistration::new(
                    [url],
                    "/services/fixture",
                    "fixture",
                    &instance,
                    "127.0.0.1:1",
                )
                .ttl(Duration::from_secs(2)),
            );
        }
        let registry = match builder.build() {
            Ok(registry) => registry,
            Err(error) => {
                eprintln!("fixture: {error}");
                std::process::exit(2);
            }
        };
        let handle = registry.handle();
        let announce = async {
            handle.reached(Phase::Ready).await;
            println!("ready");
            handle.reached(Phase::Draining).await;
            println!("draining");
        };
        let (report, ()) = tokio::join!(registry.run(), announce);
        report
    });
    if !return_from_main {
        report.exit()
    }
    // As a `main` that returns would: dropping the runtime waits for its threads.
    report.print();
    drop(runtime);
    std::process::exit(report.exit_code)
}
