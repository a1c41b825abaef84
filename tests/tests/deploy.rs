//! The files in `deploy/` agree with the service they deploy: every variable they set is a
//! setting `orders` knows (from its `--help`), every grace period outlasts the drain delay plus
//! the shutdown deadline (so the runtime never sends SIGKILL before the report), and systemd
//! accepts the unit. (Building the image needs a Docker daemon and base images from a registry,
//! which the test machines do not have.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use lifecycle_tests::workspace_binary;

fn deploy(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Whether `name` looks like a setting's variable (upper case, digits, underscores).
fn is_variable(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The variables each file sets, with the value given (where it is a plain one).
fn variables() -> Vec<(&'static str, String, String)> {
    let mut found = Vec::new();
    // Dockerfile: `ENV A=1 \` continued lines.
    let dockerfile = deploy("Dockerfile");
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        let rest = match line.strip_prefix("ENV ") {
            Some(rest) => rest,
            None if in_env => line,
            None => continue,
        };
        in_env = rest.ends_with('\\');
        let (name, value) = rest.trim_end_matches('\\').trim().split_once('=').unwrap();
        found.push(("Dockerfile", name.to_owned(), value.to_owned()));
    }
    // compose.yaml: the `environment:` map of the orders service.
    let compose = deploy("compose.yaml");
    let (mut service, mut in_environment) = ("", false);
    for line in compose.lines() {
        if let Some(name) =
            line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')).filter(|n| !n.starts_with(' '))
        {
            service = name;
        }
        if service == "orders" && line == "    environment:" {
            in_environment = true;
            continue;
        }
        if in_environment {
            match line.trim().split_once(": ") {
                Some((name, value)) if line.starts_with("      ") && is_variable(name) => {
                    found.push(("compose.yaml", name.to_owned(), value.trim_matches('"').to_owned()));
                }
                _ => in_environment = false,
            }
        }
    }
    // kubernetes.yaml: `- name: A` followed by `value: "1"` (or a `valueFrom`).
    let kubernetes = deploy("kubernetes.yaml");
    let lines: Vec<&str> = kubernetes.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        if let Some(name) = line.trim().strip_prefix("- name: ").filter(|name| is_variable(name)) {
            let value =
                lines.get(index + 1).and_then(|next| next.trim().strip_prefix("value: ")).unwrap_or("");
            found.push(("kubernetes.yaml", name.to_owned(), value.trim_matches('"').to_owned()));
        }
    }
    // orders.service: `Environment=A=1`.
    for line in deploy("orders.service").lines() {
        if let Some((name, value)) = line.strip_prefix("Environment=").and_then(|rest| rest.split_once('=')) {
            found.push(("orders.service", name.to_owned(), value.to_owned()));
        }
    }
    found
}

#[test]
fn every_variable_the_deploy_files_set_is_a_setting_of_orders() {
    let help = Command::new(workspace_binary("orders")).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let found = variables();
    for file in ["Dockerfile", "compose.yaml", "kubernetes.yaml", "orders.service"] {
        assert!(found.iter().filter(|(f, _, _)| *f == file).count() >= 3, "{file}: {found:?}");
    }
    for (file, name, _) in &found {
        assert!(help.contains(&format!("[env: {name}")), "{file} sets {name}, which orders does not read");
    }
}

/// Seconds in `text` after `key` (`40`, `35s`).
fn seconds_after(text: &str, key: &str) -> u64 {
    let rest = &text[text.find(key).unwrap_or_else(|| panic!("no {key}")) + key.len()..];
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{key} has no number"))
}

#[test]
fn every_grace_period_outlasts_the_drain_delay_and_the_shutdown_deadline() {
    let found = variables();
    let setting = |file: &str, name: &str| -> u64 {
        found
            .iter()
            .find(|(f, n, _)| *f == file && n == name)
            .map(|(_, _, value)| value.parse().unwrap())
            .unwrap_or_else(|| panic!("{file} does not set {name}"))
    };
    for (file, grace) in [
        ("kubernetes.yaml", seconds_after(&deploy("kubernetes.yaml"), "terminationGracePeriodSeconds:")),
        ("compose.yaml", seconds_after(&deploy("compose.yaml"), "stop_grace_period:")),
        ("orders.service", seconds_after(&deploy("orders.service"), "TimeoutStopSec=")),
    ] {
        let needed = setting(file, "DRAIN_DELAY") + setting(file, "SHUTDOWN_DEADLINE");
        assert!(
            grace > needed,
            "{file}: a grace period of {grace} s, but drain and stop take up to {needed} s"
        );
    }
    let kubernetes = deploy("kubernetes.yaml");
    assert!(kubernetes.contains("path: /readyz") && kubernetes.contains("path: /livez"), "{kubernetes}");
    assert!(kubernetes.contains("maxUnavailable: 0"), "a rolling update never removes a pod first");
}

#[test]
fn systemd_accepts_the_unit() {
    let dir = std::env::temp_dir().join(format!("deploy_unit_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = workspace_binary("orders");
    let unit = deploy("orders.service").replace("/usr/local/bin/orders", binary.to_str().unwrap());
    let path = dir.join("orders.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|error| panic!("systemd-analyze (package systemd) is needed: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("orders.service"), "systemd warns about the unit: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
