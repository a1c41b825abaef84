//! Zero-downtime upgrades with real processes, signals, sockets and load: `upgrade_fixture`
//! re-executes itself on SIGUSR2/SIGHUP and hands its listener over while clients that count
//! every failure keep sending. Also: failed upgrades (broken binary, crash, never ready), two
//! triggers at once, what a grandchild inherits, systemd socket activation, and the exact
//! sd_notify sequence a fake `NOTIFY_SOCKET` receives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle_tests::load::{Clients, Mode, connect};
use lifecycle_tests::{Service, kill, wait_exited};

const FIXTURE: &str = env!("CARGO_BIN_EXE_upgrade_fixture");
const CLIENTS: usize = 12;

/// Reads the fixture's `listening <address>` and `ready <pid>` lines.
fn ready(service: &Service) -> (SocketAddr, u32) {
    let mut address = None;
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let Some(line) = service.next_line(Duration::from_millis(100)) else { continue };
        if let Some(rest) = line.strip_prefix("listening ") {
            address = Some(rest.parse().unwrap());
        } else if let Some(pid) = line.strip_prefix("ready ") {
            return (address.expect("listening before ready"), pid.parse().unwrap());
        }
    }
    panic!("fixture not ready within 20 s; stderr:\n{}", service.stderr());
}

/// Sends SIGUSR2 to `pid`, waits for its successor's `ready` line and for `pid` to exit.
async fn upgrade(service: &Service, pid: u32) -> u32 {
    kill("USR2", pid);
    let (_, successor) = ready(service);
    assert_ne!(successor, pid, "a new process took over");
    wait_exited(pid, Duration::from_secs(10)).await;
    successor
}

async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut sender = connect(address, Mode::ConnectionClose).await.unwrap();
    let request = hyper::Request::get(path)
        .header("host", "fixture")
        .header("connection", "close")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.send(request).await.unwrap()
}

async fn served_by(address: SocketAddr) -> u32 {
    get(address, "/pid").await.1.parse().unwrap()
}

/// Waits until standard error contains `wanted`.
async fn stderr_contains(service: &Service, wanted: &str, limit: Duration) {
    let until = Instant::now() + limit;
    while !service.stderr().contains(wanted) {
        assert!(Instant::now() < until, "no `{wanted}` on stderr within {limit:?}:\n{}", service.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lifecycle-upgrade-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Ends the last generation (not our child after the first upgrade) and checks it stopped cleanly.
async fn stop(service: Service, pid: u32) -> String {
    kill("TERM", pid);
    wait_exited(pid, Duration::from_secs(15)).await;
    let (_, stderr, _) = service.wait(Duration::from_secs(5)).unwrap();
    stderr
}

async fn under_load(mode: Mode) {
    let dir = temp_dir(&format!("load-{mode:?}"));
    let pid_file = dir.join("pid");
    let service = Service::spawn(FIXTURE, &["--pid-file", pid_file.to_str().unwrap()]).unwrap();
    let (address, mut pid) = ready(&service);
    let clients = Clients::start(address, mode, CLIENTS);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let before = clients.ok();
        pid = upgrade(&service, pid).await;
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            pid.to_string(),
            "PID file names the successor"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(clients.ok() > before, "requests kept succeeding");
    }
    let tally = clients.stop().await;
    assert_eq!(served_by(address).await, pid);
    let stderr = stop(service, pid).await;
    tally.assert_no_failures(&format!("{mode:?} clients over 5 upgrades"), "");
    assert_eq!(stderr.matches("lifecycle report: handed over to process").count(), 5, "{stderr}");
    // No generation cut a request or a connection: every request a client counts as never
    // processed (a refused stream, one above a graceful GOAWAY's last id) really was not.
    let notes: Vec<&str> = stderr.lines().filter(|l| l.trim_start().starts_with("`http`: drained")).collect();
    assert_eq!(notes.len(), 6, "{stderr}");
    assert!(notes.iter().all(|l| l.contains("cut 0 requests and 0 connections")), "{notes:?}");
    assert!(!pid_file.exists(), "the last process removed its PID file at a plain stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_under_keep_alive_load_fail_no_request() {
    under_load(Mode::KeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_under_connection_close_load_fail_no_request() {
    under_load(Mode::ConnectionClose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_under_http2_load_fail_no_request() {
    under_load(Mode::Http2).await;
}

/// Copies the fixture so the test can break "the binary on disk" without touching the build.
fn private_binary(dir: &Path) -> PathBuf {
    let binary = dir.join("upgrade_fixture");
    let _ = std::fs::remove_file(&binary);
    std::fs::copy(FIXTURE, &binary).unwrap();
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrades_leave_the_old_process_serving() {
    let dir = temp_dir("failures");
    let knobs = dir.join("knobs");
    std::fs::create_dir_all(&knobs).unwrap();
    let binary = private_binary(&dir);
    // A copy just written can be "busy" for a moment: another test's fork may still hold the
    // descriptor it was written through.
    let mut attempts = 0;
    let service = loop {
        match Service::spawn(
            binary.to_str().unwrap(),
            &["--knobs", knobs.to_str().unwrap(), "--ready-timeout", "1000"],
        ) {
            Err(error) if error.raw_os_error() == Some(26) && attempts < 50 => attempts += 1,
            spawned => break spawned.unwrap(),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (address, pid) = ready(&service);
    let clients = Clients::start(address, Mode::KeepAlive, CLIENTS);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. The binary is gone from disk: it cannot be started.
    std::fs::remove_file(&binary).unwrap();
    kill("USR2", pid);
    stderr_contains(&service, "error=cannot start", Duration::from_secs(10)).await;
    assert_eq!(served_by(address).await, pid);

    // 2. The binary on disk is garbage (the kernel refuses it; libc hands it to `sh`, which fails).
    std::fs::write(&binary, b"\x7fELF not really").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    kill("USR2", pid);
    stderr_contains(&service, "exited before it was ready: exit status: 127", Duration::from_secs(10)).await;
    assert_eq!(served_by(address).await, pid);

    // 3. The new binary crashes while starting.
    private_binary(&dir);
    std::fs::write(knobs.join("crash"), b"").unwrap();
    kill("USR2", pid);
    stderr_contains(&service, "exited before it was ready: exit status: 3", Duration::from_secs(10)).await;
    assert_eq!(served_by(address).await, pid);

    // 4. The new binary never becomes ready: stopped after the ready timeout.
    std::fs::remove_file(knobs.join("crash")).unwrap();
    std::fs::write(knobs.join("hang"), b"").unwrap();
    let triggered = Instant::now();
    kill("USR2", pid);
    stderr_contains(&service, "was not ready within 1s and was stopped", Duration::from_secs(10)).await;
    assert!(triggered.elapsed() >= Duration::from_secs(1));
    assert_eq!(served_by(address).await, pid);

    // 5. Fixed: the next upgrade succeeds.
    std::fs::remove_file(knobs.join("hang")).unwrap();
    let successor = upgrade(&service, pid).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tally = clients.stop().await;
    assert_eq!(served_by(address).await, successor);
    let stderr = stop(service, successor).await;
    tally.assert_no_failures("four failed upgrades and one good one", "");
    assert_eq!(stderr.matches("`upgrade`: upgrade failed, still serving").count(), 4, "{stderr}");
}

/// The process id of the successor the log says was started last.
async fn successor_started(service: &Service) -> u32 {
    stderr_contains(service, "upgrade: successor started", Duration::from_secs(10)).await;
    let stderr = service.stderr();
    let line = stderr.lines().rfind(|line| line.contains("upgrade: successor started")).unwrap();
    let pid = line.split_whitespace().find_map(|field| field.strip_prefix("pid=")).unwrap();
    pid.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_signal_before_the_successor_handles_it_does_not_kill_it() {
    let knobs = temp_dir("early-signal");
    let service = Service::spawn(FIXTURE, &["--knobs", knobs.to_str().unwrap()]).unwrap();
    let (address, pid) = ready(&service);
    // The successor waits 1 s before it sets anything up: a deploy script that signals it in
    // that time (its pid is known, the PID file does not name it yet) hits a process with no
    // handler of its own.
    std::fs::write(knobs.join("slow"), b"").unwrap();
    kill("USR2", pid);
    let successor = successor_started(&service).await;
    for _ in 0..5 {
        kill("USR2", successor);
        kill("USR1", successor);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    std::fs::remove_file(knobs.join("slow")).unwrap();
    let (_, ready_pid) = ready(&service);
    assert_eq!(ready_pid, successor, "the signalled successor took over:\n{}", service.stderr());
    wait_exited(pid, Duration::from_secs(10)).await;
    assert_eq!(served_by(address).await, successor);
    let stderr = stop(service, successor).await;
    assert!(!stderr.contains("upgrade failed"), "{stderr}");
    assert_eq!(
        stderr.matches("upgrade: successor started").count(),
        1,
        "signals in the window were dropped:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(knobs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_signal_before_the_first_generation_handles_it_does_not_kill_it() {
    let knobs = temp_dir("early-signal-first");
    std::fs::write(knobs.join("slow_after_inherit"), b"").unwrap();
    let service = Service::spawn(FIXTURE, &["--knobs", knobs.to_str().unwrap()]).unwrap();
    // It inherited (nothing) and waits 1 s before its runtime and its upgrade handler exist: a
    // deploy script that signals it then hits a process with no handler of its own.
    service.wait_for_line("inherited; setting up slowly", Duration::from_secs(10)).unwrap();
    let pid = service.pid();
    for _ in 0..5 {
        kill("USR2", pid);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    std::fs::remove_file(knobs.join("slow_after_inherit")).unwrap();
    let (address, ready_pid) = ready(&service);
    assert_eq!(ready_pid, pid, "the first generation lived on:\n{}", service.stderr());
    assert_eq!(served_by(address).await, pid);
    // Dropped, not queued: no upgrade came of them; the next trigger upgrades as always.
    assert!(!service.stderr().contains("upgrade: successor started"), "{}", service.stderr());
    let successor = upgrade(&service, pid).await;
    assert_eq!(served_by(address).await, successor);
    stop(service, successor).await;
    let _ = std::fs::remove_dir_all(knobs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_triggers_start_one_upgrade_and_a_successor_defers_one_until_its_predecessor_is_gone() {
    let service = Service::spawn(FIXTURE, &[]).unwrap();
    let (address, pid) = ready(&service);
    // SIGUSR2 and SIGUSR1 (the fixture's second trigger) at once (one shell, microseconds
    // apart, both before the 10 ms upgrade can end): one upgrade, the other refused. Two `kill`
    // processes could land the second signal after the process retired, when nobody is left to
    // refuse it.
    let both = std::process::Command::new("sh")
        .args(["-c", &format!("kill -USR2 {pid} && kill -USR1 {pid}")])
        .status()
        .unwrap();
    assert!(both.success());
    let (_, successor) = ready(&service);
    wait_exited(pid, Duration::from_secs(10)).await;
    stderr_contains(&service, "upgrade not done", Duration::from_secs(5)).await;
    let stderr = service.stderr();
    assert_eq!(stderr.matches("upgrade: successor started").count(), 1, "{stderr}");
    assert!(
        stderr.contains("an upgrade is already in progress")
            || stderr.contains("already handed over to process"),
        "{stderr}"
    );

    // A request the successor holds for 1.5 s keeps it draining after it hands over in turn:
    // its own successor defers an upgrade it is asked for until it is gone, then carries it out
    // (a deploy script signals the process the PID file names, and must not be ignored).
    let slow = tokio::spawn(get(address, "/slow"));
    stderr_contains(&service, &format!("slow request received by {successor}"), Duration::from_secs(5)).await;
    let third = upgrade_without_waiting(&service, successor).await;
    kill("USR2", third);
    stderr_contains(
        &service,
        &format!("the previous generation (process {successor}) has not exited yet"),
        Duration::from_secs(5),
    )
    .await;
    stderr_contains(&service, "upgrade deferred until then", Duration::from_secs(5)).await;
    assert_eq!(slow.await.unwrap(), (200, "slow".to_owned()), "the old process finished its request");
    wait_exited(successor, Duration::from_secs(10)).await;
    stderr_contains(&service, "previous generation exited; upgrades allowed", Duration::from_secs(5)).await;
    // No second signal: the deferred upgrade runs on its own.
    let (_, fourth) = ready(&service);
    assert_ne!(fourth, third, "a new process took over");
    wait_exited(third, Duration::from_secs(10)).await;
    stop(service, fourth).await;
}

async fn upgrade_without_waiting(service: &Service, pid: u32) -> u32 {
    kill("USR2", pid);
    ready(service).1
}

/// What `GET /grandchild` reports: a shell started by the service, its environment and descriptors.
async fn assert_grandchild_inherits_nothing(address: SocketAddr) {
    let (status, report) = get(address, "/grandchild").await;
    assert_eq!(status, 200);
    for variable in [
        "LIFECYCLE_UPGRADE_PARENT",
        "LIFECYCLE_UPGRADE_FDNAMES",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        assert!(!report.contains(variable), "{variable} leaked to a grandchild:\n{report}");
    }
    let descriptors: Vec<&str> = report.lines().filter(|l| l.starts_with("fd ")).collect();
    assert!(descriptors.len() >= 3, "{report}");
    assert!(!descriptors.iter().any(|l| l.contains("socket:")), "a socket leaked to a grandchild:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_inherit_neither_descriptors_nor_variables() {
    let dir = temp_dir("grandchild");
    let admin = dir.join("admin.sock");
    let service = Service::spawn(FIXTURE, &["--unix", admin.to_str().unwrap()]).unwrap();
    let (address, pid) = ready(&service);
    assert_grandchild_inherits_nothing(address).await;
    let successor = upgrade(&service, pid).await;
    assert_eq!(served_by(address).await, successor);
    assert_grandchild_inherits_nothing(address).await;
    // The Unix listener was handed over too: the successor answers on the same path.
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut std::os::unix::net::UnixStream::connect(&admin).unwrap(), &mut answer)
        .unwrap();
    assert_eq!(answer.trim(), format!("pid {successor}"));
    stop(service, successor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_feeds_the_named_listener_and_survives_an_upgrade() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = address.to_string();
    // systemd-socket-activate binds, waits for the first connection, then execs the service
    // with LISTEN_FDS=1, LISTEN_FDNAMES=http; the service asks for port 0 and gets the socket.
    let service = Service::spawn(
        "systemd-socket-activate",
        &["-l", &listen, "--fdname=http", "-E", "RUST_LOG", FIXTURE, "--listen", "127.0.0.1:0"],
    )
    .unwrap();
    stderr_contains(&service, "Listening on", Duration::from_secs(10)).await;
    let first = tokio::spawn(async move { get(address, "/pid").await });
    let (reported, pid) = ready(&service);
    assert_eq!(reported, address);
    assert_eq!(first.await.unwrap().1, pid.to_string(), "the connection that activated it was served");
    assert!(service.stderr().contains("origin=socket-activated"), "{}", service.stderr());
    assert_grandchild_inherits_nothing(address).await;

    let clients = Clients::start(address, Mode::KeepAlive, CLIENTS);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let successor = upgrade(&service, pid).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tally = clients.stop().await;
    assert_eq!(served_by(address).await, successor);
    assert_grandchild_inherits_nothing(address).await;
    stop(service, successor).await;
    tally.assert_no_failures("an upgrade of a socket-activated service", "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_hears_the_exact_sequence_over_start_upgrade_and_stop() {
    let dir = temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // Read all along, as systemd does: a full queue (10 datagrams by default) blocks senders.
    let listening = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let listening = std::sync::Arc::clone(&listening);
        std::thread::spawn(move || {
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            while listening.load(std::sync::atomic::Ordering::Acquire) {
                if let Ok(length) = socket.recv(&mut buffer) {
                    received.push(String::from_utf8_lossy(&buffer[..length]).trim_end().to_owned());
                }
            }
            received
        })
    };
    let service = Service::spawn_with_env(
        FIXTURE,
        &["--sd-notify"],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")],
    )
    .unwrap();
    let (_, pid) = ready(&service);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let successor = upgrade(&service, pid).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    kill("TERM", successor);
    wait_exited(successor, Duration::from_secs(10)).await;
    service.wait(Duration::from_secs(5)).unwrap();

    tokio::time::sleep(Duration::from_millis(200)).await;
    listening.store(false, std::sync::atomic::Ordering::Release);
    let received = reader.join().unwrap();
    let watchdog = received.iter().filter(|m| *m == "WATCHDOG=1").count();
    let extended = received.iter().filter(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")).count();
    let sequence: Vec<String> = received
        .iter()
        .filter(|m| *m != "WATCHDOG=1" && !m.starts_with("EXTEND_TIMEOUT_USEC="))
        .map(|m| {
            m.lines()
                .map(|l| if l.starts_with("MONOTONIC_USEC=") { "MONOTONIC_USEC=<now>" } else { l })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let expected = vec![
        "READY=1\nSTATUS=ready".to_owned(),
        "RELOADING=1\nMONOTONIC_USEC=<now>\nSTATUS=upgrading".to_owned(),
        format!("MAINPID={successor}\nSTATUS=handed over to process {successor}"),
        "READY=1\nSTATUS=ready".to_owned(),
        "STOPPING=1\nSTATUS=stopping".to_owned(),
    ];
    assert_eq!(sequence, expected, "all messages: {received:#?}");
    // 200 ms watchdog: a ping every 100 ms from each generation while it is the main process.
    assert!(watchdog >= 4, "{watchdog} watchdog pings: {received:#?}");
    assert!(extended >= 1, "EXTEND_TIMEOUT_USEC= while stopping: {received:#?}");
    let stopping = received.iter().position(|m| m.starts_with("STOPPING=1")).unwrap();
    assert!(received[stopping..].iter().any(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")), "{received:#?}");
}

/// SIGTERM while the successor is still starting: the upgrade is abandoned (the successor is
/// stopped, not left behind), the old process stops normally, and it never said ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_an_upgrade_stops_the_successor_too() {
    let dir = temp_dir("abandoned");
    let knobs = dir.join("knobs");
    std::fs::create_dir_all(&knobs).unwrap();
    let service = Service::spawn(FIXTURE, &["--knobs", knobs.to_str().unwrap()]).unwrap();
    let (_, pid) = ready(&service);
    std::fs::write(knobs.join("hang"), b"").unwrap();
    kill("USR2", pid);
    stderr_contains(&service, "knobs: hanging during start", Duration::from_secs(10)).await;
    let successor: u32 = service
        .stderr()
        .lines()
        .find_map(|l| {
            l.split("upgrade: successor started")
                .nth(1)?
                .split("pid=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    kill("TERM", pid);
    let (status, stderr, _) = service.wait(Duration::from_secs(15)).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("began to stop during the upgrade; the new process"), "{stderr}");
    wait_exited(successor, Duration::from_secs(5)).await;
}

/// As PID 1 of its own PID namespace (a container without an init), the process refuses an
/// upgrade: its exit would end the successor with it. The refusal is logged and in the report,
/// and the process serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_pid_1_an_upgrade_is_refused_with_the_reason_and_the_service_serves_on() {
    let service = Service::spawn("unshare", &["--pid", "--fork", "--mount-proc", FIXTURE]).unwrap();
    let (address, pid) = ready(&service);
    assert_eq!(pid, 1, "PID 1 in its namespace");
    // Its process id outside the namespace: the child of `unshare`.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", service.pid())).unwrap();
    let outside: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    kill("USR2", outside);
    stderr_contains(&service, "refused: this process is PID 1", Duration::from_secs(10)).await;
    assert_eq!(served_by(address).await, 1, "still served by the same process");
    assert!(!lifecycle_tests::exited(outside));
    kill("TERM", outside);
    let (status, stderr, _) = service.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("upgrade refused: this process is PID 1"), "in the report:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inheriting_while_other_threads_run_is_refused_with_the_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let service = Service::spawn(
        "systemd-socket-activate",
        &[
            "-l",
            &listen,
            "--fdname=http",
            "-E",
            "RUST_LOG",
            FIXTURE,
            "--listen",
            "127.0.0.1:0",
            "--inherit-late",
        ],
    )
    .unwrap();
    stderr_contains(&service, "Listening on", Duration::from_secs(10)).await;
    // The first connection makes systemd-socket-activate start the fixture.
    let _ = tokio::net::TcpStream::connect(&listen).await;
    let (status, stderr, _) = service.wait(Duration::from_secs(20)).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("2 threads run: inheriting sockets clears environment variables"), "{stderr}");
    assert!(stderr.contains("call Listeners::inherit before the runtime starts"), "{stderr}");
}

/// The fixture in a PID namespace of its own under a PID 1 named `tini` that, like tini, exits
/// as soon as the child it started does; `through_shell`: with an entrypoint shell in between
/// that does not `exec` (`tini -- sh -c 'fixture; true'`). An upgrade is refused, the service
/// serves on, the reason is in the report.
async fn refused_under_tini(through_shell: bool) {
    let dir = std::env::temp_dir().join(format!("upgrade_tini_{through_shell}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("tini");
    std::fs::write(&init, "#!/bin/sh\n\"$@\" &\nchild=$!\ntrap 'kill -TERM $child' TERM\nwait $child\n")
        .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&init).status().unwrap();
    let mut args = vec!["--pid", "--fork", "--mount-proc", init.to_str().unwrap()];
    let entrypoint = format!("{FIXTURE}; true");
    if through_shell {
        args.extend(["sh", "-c", &entrypoint]);
    } else {
        args.push(FIXTURE);
    }
    let service = Service::spawn("unshare", &args).unwrap();
    let (address, pid) = ready(&service);
    // Its process id outside the namespace: down the chain of first children from `unshare`.
    let children = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let mut outside = service.pid();
    for _ in 0..if through_shell { 3 } else { 2 } {
        outside = children(outside).split_whitespace().next().unwrap().parse().unwrap();
    }
    kill("USR2", outside);
    stderr_contains(
        &service,
        "refused: this process runs under the container init `tini`",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(served_by(address).await, pid, "still served by the same process");
    kill("TERM", outside);
    let (status, stderr, _) = service.wait(Duration::from_secs(20)).unwrap();
    assert!(
        stderr.contains("upgrade refused: this process runs under the container init"),
        "in the report:\n{stderr}"
    );
    if !through_shell {
        assert_eq!(status.code(), Some(0), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_container_init_that_exits_with_its_child_an_upgrade_is_refused() {
    refused_under_tini(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_such_an_init_through_an_entrypoint_shell_an_upgrade_is_refused_too() {
    refused_under_tini(true).await;
}
