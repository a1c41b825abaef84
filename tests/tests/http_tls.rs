//! HTTPS over real sockets with a real TLS client: HTTP/1.1 and HTTP/2 negotiated over ALPN, a
//! plain-HTTP client turned away and counted, certificates swapped under load (by `reload()` and
//! by watching the files) without a failed request, bad files refused with an error naming them,
//! and a prompt, clean stop with TLS connections open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lifecycle::testing::{TestRun, assert_clean, builder, eventually, within};
use lifecycle_http::axum::{self, Router};
use lifecycle_http::{HttpServer, TlsConfig, TlsError};
use lifecycle_tests::tls::{Authority, Leaf};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// A scratch directory of its own for each test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("lifecycle-http-tls-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The files a server reads, and writing a certificate to them.
struct Files {
    certificate: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(scratch: &Scratch) -> Self {
        Self { certificate: scratch.path("cert.pem"), key: scratch.path("key.pem") }
    }

    fn write(&self, leaf: &Leaf) {
        std::fs::write(&self.certificate, &leaf.certificate).unwrap();
        std::fs::write(&self.key, &leaf.key).unwrap();
    }

    fn config(&self) -> TlsConfig {
        TlsConfig::from_pem_files(&self.certificate, &self.key).unwrap()
    }
}

/// Serves `/` ("hello") and `/metrics` over HTTPS with `tls`.
async fn serve(tls: TlsConfig, configure: impl FnOnce(HttpServer) -> HttpServer) -> (TestRun, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let mut builder = builder();
    builder.add(configure(HttpServer::new("https", listener, app).with_metrics("/metrics").with_tls(tls)));
    let mut run = TestRun::start(builder);
    run.ready().await;
    (run, address)
}

/// One TLS connection: the protocol negotiated and the server's certificate.
struct Tls {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl Tls {
    async fn connect(address: SocketAddr, client: &TlsConnector) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        let stream = client
            .connect(ServerName::from(address.ip()), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(Self { stream })
    }

    fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }

    fn certificate(&self) -> CertificateDer<'static> {
        self.stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    }
}

/// A request on a TLS connection, over whichever protocol ALPN chose.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// A TLS connection ready for requests, and its driver (which ends when the connection closes).
struct Client {
    sender: Sender,
    certificate: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    closed: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(address: SocketAddr, client: &TlsConnector) -> Result<Self, String> {
        let tls = Tls::connect(address, client).await?;
        let (alpn, certificate) = (tls.alpn(), tls.certificate());
        let io = TokioIo::new(tls.stream);
        let (sender, closed) = if alpn.as_deref() == Some(b"h2") {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            (Sender::Http2(sender), tokio::spawn(async move { drop(connection.await) }))
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1 handshake: {e}"))?;
            (Sender::Http1(sender), tokio::spawn(async move { drop(connection.await) }))
        };
        Ok(Self { sender, certificate, alpn, closed })
    }

    /// Status, HTTP version and body of `GET path`.
    async fn get(&mut self, path: &str) -> Result<(u16, hyper::Version, String), String> {
        let request = hyper::Request::get(format!("https://localhost{path}")).body(Empty::new()).unwrap();
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.map_err(|e| format!("not ready: {e}"))?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await.map_err(|e| format!("not ready: {e}"))?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let (status, version) = (response.status().as_u16(), response.version());
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, version, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One request on a new connection: the certificate it was served with.
async fn get_once(address: SocketAddr, client: &TlsConnector) -> Result<CertificateDer<'static>, String> {
    let mut connection = Client::connect(address, client).await?;
    let (status, _, body) = connection.get("/").await?;
    if (status, body.as_str()) != (200, "hello") {
        return Err(format!("answered {status}: {body}"));
    }
    Ok(connection.certificate)
}

/// The value of a counter in `/metrics`, read over HTTPS.
async fn counter(address: SocketAddr, client: &TlsConnector, name: &str) -> f64 {
    let mut connection = Client::connect(address, client).await.unwrap();
    let (status, _, text) = connection.get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample =
        scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no {name} in {text}"));
    match sample.value {
        // The parser reads an OpenMetrics counter's `_total` sample as untyped.
        prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Untyped(value) => value,
        ref other => panic!("{name} is not a counter: {other:?}"),
    }
}

/// An error and its causes, as the report and the logs print it.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_answers_over_http1_and_http2_and_plain_http_is_turned_away_and_counted() {
    let scratch = Scratch::new("protocols");
    let (authority, files) = (Authority::new(), Files::new(&scratch));
    let leaf = authority.leaf("one");
    files.write(&leaf);
    let (run, address) = serve(files.config(), |server| server).await;

    for (alpn, version) in [(&b"http/1.1"[..], hyper::Version::HTTP_11), (b"h2", hyper::Version::HTTP_2)] {
        let mut connection = Client::connect(address, &authority.client(alpn)).await.unwrap();
        assert_eq!(connection.alpn.as_deref(), Some(alpn), "ALPN agreed on what the client offered");
        assert_eq!(connection.certificate, leaf.der);
        for _ in 0..2 {
            assert_eq!(connection.get("/").await.unwrap(), (200, version, "hello".to_owned()));
        }
    }

    // Plain HTTP to the TLS port: no HTTP answer, the connection closed.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within(
        "the server to close the plain connection",
        Duration::from_secs(5),
        plain.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    assert!(!answer.starts_with(b"HTTP/"), "answered in plain HTTP: {:?}", String::from_utf8_lossy(&answer));

    let client = authority.client(b"http/1.1");
    within("the failed handshake to be counted", Duration::from_secs(5), async {
        while counter(address, &client, "lifecycle_http_tls_handshakes_failed_total").await != 1.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(get_once(address, &client).await.unwrap(), leaf.der, "still serving");
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_slower_than_the_header_read_timeout_is_cut_and_counted_and_holds_up_no_one() {
    let scratch = Scratch::new("slow-handshake");
    let (authority, files) = (Authority::new(), Files::new(&scratch));
    let leaf = authority.leaf("one");
    files.write(&leaf);
    let timeout = Duration::from_millis(300);
    let (run, address) = serve(files.config(), |server| server.header_read_timeout(timeout)).await;

    // Connects and never says hello.
    let began = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(address).await.unwrap();
    let client = authority.client(b"h2");
    assert_eq!(get_once(address, &client).await.unwrap(), leaf.der, "served while the other stalls");
    let mut rest = Vec::new();
    let read =
        within("the stalled connection to be closed", Duration::from_secs(5), stalled.read_to_end(&mut rest));
    assert_eq!(read.await.unwrap(), 0, "nothing sent to a client that never said hello");
    assert!(began.elapsed() >= timeout, "closed after {:?}, before the timeout", began.elapsed());
    within("the timed-out handshake to be counted", Duration::from_secs(5), async {
        while counter(address, &client, "lifecycle_http_tls_handshakes_failed_total").await != 1.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_clean(&run.stop().await);
}

/// What one request on a new connection saw: when its connection began and finished its
/// handshake, and which certificate it was served (or why it failed).
struct Seen {
    began: Instant,
    result: Result<(Instant, CertificateDer<'static>), String>,
}

/// How many requests the load made, and how many of them were served the new certificate.
#[derive(Default)]
struct Progress {
    done: AtomicUsize,
    new: AtomicUsize,
}

/// Clients each making requests on a new connection, one after the other, half over HTTP/1.1
/// and half over HTTP/2, until `stop` is set.
fn load(
    address: SocketAddr,
    authority: &Authority,
    new: &Leaf,
    progress: &Arc<Progress>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    (0..4)
        .map(|i| {
            let client = authority.client(if i % 2 == 0 { b"http/1.1" } else { b"h2" });
            let (progress, stop, new) = (Arc::clone(progress), Arc::clone(stop), new.der.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let began = Instant::now();
                    let request = async {
                        let certificate = get_once(address, &client).await?;
                        Ok((Instant::now(), certificate))
                    };
                    let result = tokio::time::timeout(Duration::from_secs(5), request)
                        .await
                        .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()));
                    if result.as_ref().is_ok_and(|(_, certificate)| *certificate == new) {
                        progress.new.fetch_add(1, Ordering::AcqRel);
                    }
                    progress.done.fetch_add(1, Ordering::AcqRel);
                    seen.push(Seen { began, result });
                }
                seen
            })
        })
        .collect()
}

/// Runs the load while `swap` changes the certificate from `old` to `new`; checks that no request
/// failed, and that every connection begun after the first one served `new`, or after the moment
/// `swap` returns (when it knows), was served `new`.
async fn swap_under_load(
    address: SocketAddr,
    authority: &Authority,
    old: &Leaf,
    new: &Leaf,
    swap: impl AsyncFnOnce() -> Option<Instant>,
) {
    let (progress, stop) = (Arc::new(Progress::default()), Arc::new(AtomicBool::new(false)));
    // A keep-alive connection opened before the swap, used again after it.
    let mut before = Client::connect(address, &authority.client(b"http/1.1")).await.unwrap();
    assert_eq!(before.get("/").await.unwrap().0, 200);
    let clients = load(address, authority, new, &progress, &stop);
    eventually("40 requests before the swap", Duration::from_secs(20), || {
        progress.done.load(Ordering::Acquire) >= 40
    })
    .await;
    let swapped = swap().await;
    eventually("40 requests served the new certificate", Duration::from_secs(20), || {
        progress.new.load(Ordering::Acquire) >= 40
    })
    .await;
    stop.store(true, Ordering::Release);
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(within("a client to finish", Duration::from_secs(10), client).await.unwrap());
    }

    let failures: Vec<&String> = seen.iter().filter_map(|s| s.result.as_ref().err()).collect();
    let served: Vec<(Instant, Instant, bool)> = seen
        .iter()
        .filter_map(|s| s.result.as_ref().ok().map(|(done, der)| (s.began, *done, *der == new.der)))
        .collect();
    let (old_count, new_count) =
        (served.iter().filter(|s| !s.2).count(), served.iter().filter(|s| s.2).count());
    eprintln!(
        "{} requests during the swap: {old_count} served the old certificate, {new_count} the new one, {} failed",
        seen.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{} of {} requests failed: {failures:?}", failures.len(), seen.len());
    assert!(
        old_count >= 40 && new_count >= 40,
        "load on both sides of the swap: {old_count} old, {new_count} new"
    );
    let first_new = served.iter().filter(|s| s.2).map(|s| s.1).min().unwrap();
    let cutoff = swapped.map_or(first_new, |swapped| swapped.min(first_new));
    let late_old = served.iter().filter(|s| !s.2 && s.0 > cutoff).count();
    assert_eq!(late_old, 0, "connections begun after the swap still got the old certificate");

    // The connection from before the swap keeps its session.
    assert_eq!(before.get("/").await.unwrap().0, 200);
    assert_eq!(before.certificate, old.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_fails_no_request() {
    let scratch = Scratch::new("reload");
    let (authority, files) = (Authority::new(), Files::new(&scratch));
    let (one, two) = (authority.leaf("one"), authority.leaf("two"));
    files.write(&one);
    let tls = files.config();
    let (run, address) = serve(tls.clone(), |server| server).await;

    swap_under_load(address, &authority, &one, &two, async || {
        files.write(&two);
        tls.reload().unwrap();
        // In effect once it returns.
        Some(Instant::now())
    })
    .await;
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_certificate_is_reloaded_when_its_files_change_and_fails_no_request() {
    let scratch = Scratch::new("watch");
    let (authority, files) = (Authority::new(), Files::new(&scratch));
    let (one, two) = (authority.leaf("one"), authority.leaf("two"));
    files.write(&one);
    let (run, address) = serve(files.config().watch(Duration::from_millis(100)), |server| server).await;

    // The files written one after the other, as a certificate renewal does: the watch may see
    // the new certificate with the old key for a moment, and must keep serving the old pair.
    swap_under_load(address, &authority, &one, &two, async || {
        files.write(&two);
        None
    })
    .await;
    assert_clean(&run.stop().await);
}

#[test]
fn bad_files_are_refused_with_an_error_naming_the_file() {
    let scratch = Scratch::new("bad-files");
    let authority = Authority::new();
    let (one, two) = (authority.leaf("one"), authority.leaf("two"));
    let (certificate, key) = (scratch.path("cert.pem"), scratch.path("key.pem"));
    std::fs::write(&certificate, &one.certificate).unwrap();
    std::fs::write(&key, &one.key).unwrap();
    let load =
        |certificate: &Path, key: &Path| chain(&TlsConfig::from_pem_files(certificate, key).unwrap_err());

    let missing = scratch.path("missing.pem");
    assert_eq!(
        load(&missing, &key),
        format!("cannot read certificate file {}: No such file or directory (os error 2)", missing.display())
    );
    assert_eq!(
        load(&certificate, &missing),
        format!("cannot read private key file {}: No such file or directory (os error 2)", missing.display())
    );

    let empty = scratch.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let garbage = scratch.path("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    for file in [&empty, &garbage] {
        assert_eq!(
            load(file, &key),
            format!(
                "certificate file {} holds no certificate (no PEM `CERTIFICATE` section)",
                file.display()
            )
        );
        assert_eq!(
            load(&certificate, file),
            format!(
                "private key file {} holds no private key (no PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE \
                 KEY` section)",
                file.display()
            )
        );
    }

    let broken = scratch.path("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
    let error = load(&broken, &key);
    assert!(
        error.starts_with(&format!("certificate file {} is not valid PEM: ", broken.display())),
        "{error}"
    );

    // The key of another certificate: refused now, not at the first handshake.
    let other_key = scratch.path("other-key.pem");
    std::fs::write(&other_key, &two.key).unwrap();
    assert_eq!(
        load(&certificate, &other_key),
        format!(
            "private key file {} does not hold the key of the certificate in certificate file {}",
            other_key.display(),
            certificate.display()
        )
    );
    assert!(matches!(TlsConfig::from_pem_files(&certificate, &other_key), Err(TlsError::KeyMismatch { .. })));
    assert!(TlsConfig::from_pem_files(&certificate, &key).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_serving_the_previous_certificate_and_says_why() {
    let scratch = Scratch::new("failed-reload");
    let (authority, files) = (Authority::new(), Files::new(&scratch));
    let (one, two) = (authority.leaf("one"), authority.leaf("two"));
    files.write(&one);
    let tls = files.config();
    let (run, address) = serve(tls.clone(), |server| server).await;
    let client = authority.client(b"h2");

    std::fs::write(&files.certificate, "garbage\n").unwrap();
    let error = tls.reload().unwrap_err();
    assert_eq!(
        chain(&error),
        format!(
            "certificate file {} holds no certificate (no PEM `CERTIFICATE` section)",
            files.certificate.display()
        )
    );
    assert_eq!(get_once(address, &client).await.unwrap(), one.der, "the old certificate is still served");

    // Half a renewal: the new certificate, the old key.
    std::fs::write(&files.certificate, &two.certificate).unwrap();
    assert!(matches!(tls.reload(), Err(TlsError::KeyMismatch { .. })));
    assert_eq!(get_once(address, &client).await.unwrap(), one.der, "the old certificate is still served");

    std::fs::write(&files.key, &two.key).unwrap();
    tls.reload().unwrap();
    assert_eq!(get_once(address, &client).await.unwrap(), two.der);
    assert_clean(&run.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_idle_tls_connections_and_a_stalled_handshake_is_prompt_and_clean() {
    let scratch = Scratch::new("stop");
    let (authority, files) = (Authority::new(), Files::new(&scratch));
    files.write(&authority.leaf("one"));
    let (run, address) = serve(files.config(), |server| server).await;

    // Idle keep-alive connections, one of each protocol, each after a request.
    let mut idle = Vec::new();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut connection = Client::connect(address, &authority.client(alpn)).await.unwrap();
        assert_eq!(connection.get("/").await.unwrap().0, 200);
        idle.push(connection);
    }
    // And a client that connects and never says hello: its handshake must not hold the stop.
    let mut stalled = tokio::net::TcpStream::connect(address).await.unwrap();

    let began = Instant::now();
    let report = within("the stop", Duration::from_secs(5), run.stop()).await;
    let took = began.elapsed();
    eprintln!("the stop took {took:?}");
    assert_clean(&report);
    // The HTTP/1 connection is closed once idle for 500 ms (`idle_close_after`), the handshake
    // given as long; the rest at once.
    assert!(took < Duration::from_secs(2), "the stop took {took:?}\n{report}");
    for connection in idle {
        within("the server to close an idle connection", Duration::from_secs(2), connection.closed)
            .await
            .unwrap();
    }
    // Closed (or reset, had the stop come before it was accepted), and sent nothing.
    let mut rest = Vec::new();
    let _ =
        within("the stalled connection to be closed", Duration::from_secs(2), stalled.read_to_end(&mut rest))
            .await;
    assert!(rest.is_empty(), "sent to a client that never said hello: {rest:?}");
}
