//! `lifecycle-ctl` against the `orders` example's control socket (CONTROL_SOCKET): each command
//! exits 0 only once it took effect, and non-zero with the reason when it did not (an upgrade or
//! a reload asked for while the service drains). The socket is handed to the successor with
//! the other listeners, so commands reach whichever process serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use lifecycle_tests::load::{Clients, Mode};
use lifecycle_tests::{Orders, exited, kill, package_binary, pid_in, wait_exited};

const WITHIN: Duration = Duration::from_secs(30);

/// Runs `lifecycle-ctl SOCKET command`: its exit code, standard output and standard error.
fn ctl(socket: &std::path::Path, command: &str) -> (Option<i32>, String, String) {
    let output = Command::new(package_binary("lifecycle-handoff", "lifecycle-ctl"))
        .args(["--timeout", "30"])
        .arg(socket)
        .arg(command)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_commands_answer_once_they_took_effect_and_refuse_with_the_reason_while_draining() {
    let dir = std::env::temp_dir().join(format!("orders_control_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (socket, pid_file) = (dir.join("control.sock"), dir.join("orders.pid"));
    let orders = Orders::start(
        &dir,
        &[
            ("CONTROL_SOCKET", socket.to_str().unwrap()),
            ("PID_FILE", pid_file.to_str().unwrap()),
            ("DRAIN_DELAY", "3"),
        ],
    )
    .await;
    let first = pid_in(&pid_file);

    let (code, out, err) = ctl(&socket, "status");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("ready (process {first})"));
    let (code, out, err) = ctl(&socket, "reload");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("reload on request done"), "{out}");

    // An upgrade under load: the answer comes once the new process serves, and names it.
    let load = Clients::start(orders.address(), Mode::KeepAlive, 8);
    lifecycle::testing::eventually("load", WITHIN, || load.ok() > 50).await;
    let (code, out, err) = ctl(&socket, "upgrade");
    assert_eq!(code, Some(0), "{err}");
    let second = pid_in(&pid_file);
    assert_ne!(second, first);
    assert_eq!(out, format!("upgraded: process {second} serves"));
    wait_exited(first, WITHIN).await;
    // The socket went with the listeners: the new process answers.
    let (code, out, err) = ctl(&socket, "status");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("ready (process {second})"));
    let before = load.ok();
    lifecycle::testing::eventually("load on the new process", WITHIN, || load.ok() > before + 50).await;
    let tally = load.stop().await;

    // Draining (3 s of drain delay after SIGTERM): both refused, with the reason, exit 1.
    kill("TERM", second);
    lifecycle::testing::eventually(
        "orders unready (draining)",
        WITHIN,
        || !matches!(ctl(&socket, "status"), (Some(0), out, _) if out.starts_with("ready")),
    )
    .await;
    let (code, out, err) = ctl(&socket, "upgrade");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("upgrade refused: this process is not ready to be upgraded (phase: draining)"),
        "{err}"
    );
    let (code, out, err) = ctl(&socket, "reload");
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("reload refused: the service is shutting down"), "{err}");
    assert!(!exited(second), "still draining when the commands were refused");
    wait_exited(second, WITHIN).await;

    // Nobody there: exit 2, saying so.
    let (code, _, err) = ctl(&socket, "status");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot reach the control socket"), "{err}");
    let (code, _, err) = ctl(&socket, "restart");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown command `restart`"), "{err}");

    let (_, stderr) = orders.stop();
    tally.assert_no_failures("keep-alive across an upgrade by lifecycle-ctl", &stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
