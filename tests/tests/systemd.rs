//! systemd's readiness protocol, with the test posing as systemd: a Unix datagram socket passed
//! as `NOTIFY_SOCKET` receives exactly `READY=1` once every component started, then `STOPPING=1`
//! when SIGTERM arrives, then only `EXTEND_TIMEOUT_USEC=` while components stop. (The sequence
//! over an upgrade is in `upgrade.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use lifecycle_tests::Service;

#[test]
fn notify_socket_hears_ready_then_stopping() {
    let path = std::env::temp_dir().join(format!("lifecycle-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    let service = Service::spawn_with_env(
        env!("CARGO_BIN_EXE_fixture"),
        &["--sd-notify"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    )
    .unwrap();
    let mut buffer = [0u8; 512];
    let n = systemd.recv(&mut buffer).unwrap();
    assert_eq!(std::str::from_utf8(&buffer[..n]).unwrap(), "READY=1\nSTATUS=ready\n");
    service.wait_for_line("ready", Duration::from_secs(5)).unwrap();

    service.signal("TERM").unwrap();
    let n = systemd.recv(&mut buffer).unwrap();
    assert_eq!(std::str::from_utf8(&buffer[..n]).unwrap(), "STOPPING=1\nSTATUS=stopping\n");
    let (status, stderr, _) = service.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");

    systemd.set_nonblocking(true).unwrap();
    let mut extended = 0;
    while let Ok(n) = systemd.recv(&mut buffer) {
        let message = std::str::from_utf8(&buffer[..n]).unwrap();
        let micros: u64 = message
            .strip_prefix("EXTEND_TIMEOUT_USEC=")
            .and_then(|m| m.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("only EXTEND_TIMEOUT_USEC= after STOPPING=1, got {message:?}"));
        assert!(micros > 0 && micros <= 3_000_000, "{message}");
        extended += 1;
    }
    assert!(extended >= 1, "the stop extended systemd's timeout");
    std::fs::remove_file(&path).unwrap();
}
