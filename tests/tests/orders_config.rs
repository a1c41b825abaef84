//! The `orders` example's settings, as an operator meets them: `--help` lists every one with
//! its variable and exits 0; a bad value is refused at once, exit 1, naming the setting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use lifecycle_tests::workspace_binary;

/// Runs `orders` with `args` and `env` (nothing else of the test's environment that it reads):
/// exit code, standard output, standard error.
fn orders(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("orders_config_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(workspace_binary("orders"))
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("LISTEN_ADDR")
        .env("RUST_LOG", "off")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn help_lists_every_setting_with_its_variable_and_exits_zero() {
    let (code, stdout, stderr) = orders(&["--help"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for variable in [
        "LISTEN_ADDR",
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "REDIS_URL",
        "ETCD_ENDPOINTS",
        "ADVERTISE_ADDR",
        "DRAIN_DELAY",
        "SHUTDOWN_DEADLINE",
        "PID_FILE",
        "CONTROL_SOCKET",
        "DATABASE_WARM_CONNECTIONS",
        "LISTEN_REUSEPORT",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "TLS_WATCH",
        "ADMIN_LISTEN_ADDR",
        "MAX_CONNECTIONS",
        "CACHE_NAMESPACE",
    ] {
        assert!(stdout.contains(&format!("[env: {variable}")), "{variable} missing from:\n{stdout}");
    }
    assert!(stdout.contains("SIGHUP reloads"), "{stdout}");
}

/// Arguments, variables, and what the error must name.
type Case = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

#[test]
fn bad_values_are_refused_at_once_naming_the_setting() {
    let cases: [Case; 8] = [
        (&[], &[("LISTEN_REUSEPORT", "maybe")], "--listen-reuseport"),
        (&[], &[("DRAIN_DELAY", "1e20")], "--drain-delay <SECONDS>"),
        (&["--shutdown-deadline", "soon"], &[], "--shutdown-deadline <SECONDS>"),
        (&[], &[("MAX_CONNECTIONS", "0")], "--max-connections <N>"),
        (&[], &[("DATABASE_WARM_CONNECTIONS", "50")], "--database-warm-connections <N>"),
        (
            &[],
            &[("DATABASE_URL", "orders")],
            "database URL (DATABASE_URL or --database-url) has no known scheme",
        ),
        (&[], &[("TLS_CERT_FILE", "cert.pem")], "--tls-key-file"),
        (&["--listen", "localhost"], &[], "--listen <ADDR>"),
    ];
    workspace_binary("orders"); // built before the clock starts
    for (args, env, named) in cases {
        let began = std::time::Instant::now();
        let (code, _, stderr) = orders(args, env);
        assert_eq!(code, Some(1), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} {env:?} should name {named}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(began.elapsed() < std::time::Duration::from_secs(5), "refused at once, not after retries");
    }
    // An empty variable is unset, as an upgrade passes DATABASE_URL_FILE to its successor; and
    // LISTEN_REUSEPORT=1 (what the drill sets) is a yes.
    let (code, _, stderr) = orders(
        &["--listen", "127.0.0.1:0", "--shutdown-deadline", "soon"],
        &[("DATABASE_URL_FILE", ""), ("LISTEN_REUSEPORT", "1")],
    );
    assert_eq!(code, Some(1));
    assert!(!stderr.contains("--database-url-file") && !stderr.contains("--listen-reuseport"), "{stderr}");
}
