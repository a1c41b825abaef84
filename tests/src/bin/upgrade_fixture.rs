//! A small HTTP service that upgrades itself, for the real-process upgrade tests:
//! `upgrade_fixture [options]`.
//!
//! Prints `listening <address>` and `ready <pid>` on standard output; the report goes to standard
//! error. Routes: `POST /api/orders` (201 `{"id":n}` after 2 ms), `GET /readyz`, `GET /pid`,
//! `GET /slow` (prints `slow request received by <pid>` on standard error, answers after 1.5 s),
//! `GET /grandchild` (runs `sh` and returns its environment and open descriptors). Options:
//! `--listen ADDR` (default `127.0.0.1:0`), `--unix PATH` (also a Unix listener), `--pid-file
//! PATH`, `--ready-timeout MS`, `--sd-notify`, `--knobs DIR`: when `DIR/crash` exists at start
//! the process exits with code 3 while starting; when `DIR/hang` exists its start never ends;
//! when `DIR/slow` exists the process waits 1 s before it sets anything up (as one that loads a
//! large configuration first, before any handler is installed); when `DIR/slow_after_inherit`
//! exists it prints `inherited; setting up slowly` on standard output right after inheriting and
//! waits 1 s there. All are read at start, so a test can change them between generations. Without `--listen`
//! and `--pid-file`, the variables `LISTEN_ADDR` and `PID_FILE` give them: the contract of
//! `lifecycle-drill`, which can so measure an upgrade with nothing but the hand-over in it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use lifecycle::{BoxError, Component, ComponentId, Context, Dependency, Phase, Registry};
use lifecycle_handoff::{Listeners, Upgrade};
use lifecycle_http::{HealthPaths, HttpServer};
use tokio::signal::unix::SignalKind;

/// A dependency of the HTTP server whose start can crash or hang, as a failing release would.
struct Knobs {
    dir: Option<PathBuf>,
}

impl Component for Knobs {
    fn name(&self) -> ComponentId {
        "knobs".into()
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        if dir.join("crash").exists() {
            eprintln!("knobs: crashing during start");
            std::process::exit(3);
        }
        if dir.join("hang").exists() {
            eprintln!("knobs: hanging during start");
            ctx.cancelled().await;
            return Err("start cancelled while hanging".into());
        }
        Ok(())
    }
}

struct Options {
    listen: SocketAddr,
    unix: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    ready_timeout: Option<Duration>,
    sd_notify: bool,
    knobs: Option<PathBuf>,
    /// Start another thread before inheriting (which must then refuse).
    inherit_late: bool,
}

fn options() -> Result<Options, String> {
    let listen = match std::env::var("LISTEN_ADDR") {
        Ok(address) => address.parse().map_err(|e| format!("LISTEN_ADDR: {e}"))?,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut options = Options {
        listen,
        unix: None,
        pid_file: std::env::var_os("PID_FILE").map(PathBuf::from),
        ready_timeout: None,
        sd_notify: false,
        knobs: None,
        inherit_late: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => options.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--unix" => options.unix = Some(value()?.into()),
            "--pid-file" => options.pid_file = Some(value()?.into()),
            "--ready-timeout" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--ready-timeout: {e}"))?;
                options.ready_timeout = Some(Duration::from_millis(ms));
            }
            "--sd-notify" => options.sd_notify = true,
            "--knobs" => options.knobs = Some(value()?.into()),
            "--inherit-late" => options.inherit_late = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

fn grandchild() -> String {
    let output = std::process::Command::new("sh")
        .args(["-c", "env; for fd in /proc/$$/fd/*; do echo \"fd $fd -> $(readlink $fd)\"; done"])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(error) => format!("cannot run sh: {error}"),
    }
}

fn main() -> Result<(), String> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_env_filter("info").init();
    let options = options()?;
    if options.knobs.as_ref().is_some_and(|dir| dir.join("slow").exists()) {
        std::thread::sleep(Duration::from_secs(1));
    }
    if options.inherit_late {
        // What a program that inherits too late looks like: another thread already runs.
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(5)));
    }
    // Before the runtime starts its threads: inheriting clears environment variables.
    let listeners = Listeners::inherit().map_err(|e| e.to_string())?;
    if options.knobs.as_ref().is_some_and(|dir| dir.join("slow_after_inherit").exists()) {
        println!("inherited; setting up slowly");
        std::thread::sleep(Duration::from_secs(1));
    }
    let tcp = listeners.tcp("http", options.listen).map_err(|e| e.to_string())?;
    let unix = match &options.unix {
        Some(path) => Some(listeners.unix("admin", path).map_err(|e| e.to_string())?),
        None => None,
    };
    let address = tcp.local_addr().map_err(|e| e.to_string())?;

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let code = runtime.block_on(async move {
        // SIGUSR1 as a second trigger, for a test that needs two distinct deliveries at once
        // (two SIGUSR2 pending together are one for the kernel).
        let mut upgrade =
            Upgrade::new(&listeners).signals([SignalKind::user_defined2(), SignalKind::user_defined1()]);
        if let Some(path) = &options.pid_file {
            upgrade = upgrade.pid_file(path);
        }
        if let Some(timeout) = options.ready_timeout {
            upgrade = upgrade.ready_timeout(timeout);
        }
        let orders = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/api/orders",
                post(move || {
                    let orders = Arc::clone(&orders);
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let id = orders.fetch_add(1, Ordering::AcqRel) + 1;
                        (axum::http::StatusCode::CREATED, format!("{{\"id\":{id}}}"))
                    }
                }),
            )
            .route("/pid", get(|| async { std::process::id().to_string() }))
            .route(
                "/slow",
                get(|| async {
                    // Tests wait for this line rather than guess how long the request takes to arrive.
                    eprintln!("slow request received by {}", std::process::id());
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "slow"
                }),
            )
            .route("/grandchild", get(|| async { grandchild() }));

        let mut builder = Registry::builder();
        builder.shutdown_deadline(Duration::from_secs(10));
        if options.sd_notify {
            builder.add(upgrade.systemd_notify());
        }
        builder.add(Knobs { dir: options.knobs.clone() });
        builder
            .add(HttpServer::new("http", tcp, app.clone()).with_health(HealthPaths::default()))
            .depends_on(Dependency::on("knobs"));
        if let Some(unix) = unix {
            builder.add(UnixEcho { listener: std::sync::Mutex::new(Some(unix)) });
        }
        builder.add(upgrade);
        let registry = match builder.build() {
            Ok(registry) => registry,
            Err(error) => return Err(error.to_string()),
        };
        let handle = registry.handle();
        let runner = tokio::spawn(registry.run());
        handle.reached(Phase::Ready).await;
        if handle.phase() == Phase::Ready {
            println!("listening {address}");
            println!("ready {}", std::process::id());
        }
        let report = runner.await.map_err(|e| e.to_string())?;
        report.print();
        Ok(report.exit_code)
    })?;
    std::process::exit(code)
}

/// Answers `pid <n>` to every connection on the Unix listener, to tell which process took it.
struct UnixEcho {
    listener: std::sync::Mutex<Option<std::os::unix::net::UnixListener>>,
}

impl Component for UnixEcho {
    fn name(&self) -> ComponentId {
        "admin".into()
    }

    async fn start(&self, ctx: &Context) -> Result<(), BoxError> {
        use tokio::io::AsyncWriteExt;
        let listener = self.listener.lock().map_err(|_| "poisoned")?.take().ok_or("started twice")?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let token = ctx.token().clone();
        ctx.tasks().spawn("admin_accept", async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => if let Ok((mut stream, _)) = accepted {
                        let _ = stream.write_all(format!("pid {}\n", std::process::id()).as_bytes()).await;
                    },
                }
            }
        });
        Ok(())
    }
}
