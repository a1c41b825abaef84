//! The `orders` example over HTTPS (TLS_CERT_FILE, TLS_KEY_FILE): zero-downtime upgrades under
//! HTTPS load over HTTP/1.1 and HTTP/2 fail no request (the successor takes the same listening
//! socket and reads the same certificate files), and a certificate written over the files in
//! the middle is served to new connections without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use lifecycle::testing::{eventually, within};
use lifecycle_tests::load::{Clients, Mode, Target, connect_to};
use lifecycle_tests::tls::Authority;
use lifecycle_tests::{kill, orders_command, pid_in, upgrade, wait_exited};
use rustls::pki_types::CertificateDer;

const UPGRADES: usize = 5;
const CLIENTS: usize = 8;
const WITHIN: Duration = Duration::from_secs(30);

/// The certificate a new TLS connection to `target` is shown.
async fn served_certificate(target: &Target) -> CertificateDer<'static> {
    let roots = Arc::clone(target.roots.as_ref().unwrap());
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let stream = tokio::net::TcpStream::connect(target.address).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(target.address.ip().into());
    let tls =
        Box::pin(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream)).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// `GET /readyz` over HTTPS: its status, or `None` when it could not be asked.
async fn readyz(target: &Target) -> Option<u16> {
    let mut sender = connect_to(target, Mode::ConnectionClose).await.ok()?;
    let request =
        hyper::Request::get("/readyz").header("host", "orders").body(Full::new(Bytes::new())).unwrap();
    sender.send(request).await.ok().map(|(status, _)| status)
}

/// `orders` over HTTPS in a directory of its own, with a first certificate written there.
struct HttpsOrders {
    dir: std::path::PathBuf,
    authority: Authority,
    first: lifecycle_tests::tls::Leaf,
    child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
    target: Target,
}

impl HttpsOrders {
    /// Starts it with `env` besides the TLS files, and waits until it is ready.
    async fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let authority = Authority::new();
        let first = authority.leaf("one");
        first.write_to(&dir);
        let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let mut all =
            vec![("TLS_CERT_FILE", cert.to_str().unwrap()), ("TLS_KEY_FILE", key.to_str().unwrap())];
        all.extend_from_slice(env);
        let mut child = orders_command(&dir, address, &all).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let target = Target::https(address, authority.roots());
        within("orders ready over HTTPS", WITHIN, async {
            while readyz(&target).await != Some(200) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Self { dir, authority, first, child, stderr, target }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_under_https_load_fail_no_request_and_a_new_certificate_is_served_without_restart() {
    let pid_file = std::env::temp_dir().join(format!("orders_https_{}.pid", std::process::id()));
    let HttpsOrders { dir, authority, first, mut child, stderr, target } =
        HttpsOrders::start("orders_https", &[("PID_FILE", pid_file.to_str().unwrap())]).await;
    assert_eq!(served_certificate(&target).await, first.der);

    let keep_alive = Clients::start_to(&target, Mode::KeepAlive, CLIENTS);
    let http2 = Clients::start_to(&target, Mode::Http2, CLIENTS);
    let served = || keep_alive.ok() + http2.ok();
    eventually("load over HTTPS", WITHIN, || keep_alive.ok() > 50 && http2.ok() > 50).await;
    let mut pid = pid_in(&pid_file);
    for round in 1..=UPGRADES {
        if round == 3 {
            // A renewed certificate written over the files: served without a restart.
            let second = authority.leaf("two");
            second.write_to(&dir);
            within("the new certificate served", WITHIN, async {
                while served_certificate(&target).await != second.der {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
        }
        pid = upgrade(&pid_file, pid, WITHIN).await;
        let before = served();
        eventually(&format!("requests served by process {pid}"), WITHIN, || served() > before + 50).await;
    }
    let tallies = [keep_alive.stop().await, http2.stop().await];
    kill("TERM", pid);
    wait_exited(pid, WITHIN).await;
    let _ = child.wait();
    let stderr = stderr.join().unwrap();
    for (tally, mode) in tallies.iter().zip(["HTTPS HTTP/1.1 keep-alive", "HTTPS HTTP/2"]) {
        tally.assert_no_failures(mode, &stderr);
    }
    assert_eq!(stderr.matches("lifecycle report: handed over to process").count(), UPGRADES, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&pid_file);
    eprintln!(
        "{UPGRADES} upgrades and a certificate swap over HTTPS: {} requests, 0 failed",
        tallies.iter().map(|t| t.ok).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_in_the_same_process_and_a_bad_one_is_refused() {
    // No file watch: only a reload can change the certificate.
    let HttpsOrders { dir, authority, first, mut child, stderr, target } =
        HttpsOrders::start("orders_https_reload", &[("TLS_WATCH", "0")]).await;
    let pid = child.id();
    let cert = dir.join("cert.pem");
    let load = Clients::start_to(&target, Mode::KeepAlive, CLIENTS);
    eventually("load over HTTPS", WITHIN, || load.ok() > 50).await;

    // New files, and no change until the SIGHUP.
    let second = authority.leaf("two");
    second.write_to(&dir);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_certificate(&target).await, first.der, "nothing watches the files");
    kill("HUP", pid);
    within("the new certificate served after SIGHUP", WITHIN, async {
        while served_certificate(&target).await != second.der {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A broken certificate file: the reload fails, the server keeps the one it has.
    std::fs::write(&cert, "not a certificate").unwrap();
    kill("HUP", pid);
    let metrics_failed = || async {
        let mut sender = connect_to(&target, Mode::ConnectionClose).await.ok()?;
        let request =
            hyper::Request::get("/metrics").header("host", "orders").body(Full::new(Bytes::new())).unwrap();
        let (_, body) = sender.send(request).await.ok()?;
        body.contains("lifecycle_reloads_failed_total 1").then_some(body)
    };
    let metrics = within("the failed reload counted", WITHIN, async {
        loop {
            if let Some(body) = metrics_failed().await {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(metrics.contains("lifecycle_reloads_total 2"), "{metrics}");
    assert_eq!(served_certificate(&target).await, second.der, "the previous certificate is kept");
    let before = load.ok();
    eventually("requests served after the failed reload", WITHIN, || load.ok() > before + 50).await;
    let tally = load.stop().await;

    assert_eq!(child.try_wait().unwrap(), None, "the same process serves throughout");
    kill("TERM", pid);
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    tally.assert_no_failures("HTTPS keep-alive across two reloads", &stderr);
    assert_eq!(status.code(), Some(0), "a failed reload does not fail the run: {stderr}");
    assert!(stderr.contains("reload failed; running on as it was"), "{stderr}");
    assert!(
        stderr.contains("reload on SIGHUP failed: certificate file"),
        "the report keeps the failed reload: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
