//! The load generator of the HTTP tests and benchmarks: HTTP/1.1 keep-alive, HTTP/1.1 with
//! `Connection: close`, or HTTP/2 connections that never retry silently, and failures counted by
//! kind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How a client talks to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1, one connection reused until the server closes it.
    KeepAlive,
    /// HTTP/1.1, a new connection per request, `Connection: close`.
    ConnectionClose,
    /// HTTP/2 with prior knowledge, one connection.
    Http2,
}

/// Failures by kind, and what succeeded.
#[derive(Default, Debug)]
pub struct Tally {
    /// Requests answered with a success.
    pub ok: u64,
    /// Failed requests by kind: refused, reset, early close, 5xx.
    pub failures: BTreeMap<&'static str, u64>,
    /// What the successful requests returned (order ids).
    pub acknowledged: Vec<i64>,
    /// Requests hyper cancelled before sending them because the connection had closed, and
    /// HTTP/2 streams the server refused: never processed by a server, so not failures; sent
    /// again.
    pub unsent: u64,
    /// What the first few failed requests said, for the failure message.
    pub errors: Vec<String>,
}

impl Tally {
    /// Panics unless real load ran (over 100 successes) and not one request failed. `what` names
    /// the run; `log` (the service's standard error, or empty) is printed with a failure.
    pub fn assert_no_failures(&self, what: &str, log: &str) {
        assert!(
            self.failures.is_empty(),
            "{what}: failed requests by kind: {:?} ({} ok, {} unsent and sent again); first errors: {:?}\n{log}",
            self.failures,
            self.ok,
            self.unsent,
            self.errors
        );
        assert!(self.ok > 100, "{what}: only {} requests succeeded\n{log}", self.ok);
    }
}

/// The kind of a failed request, from its error.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let text = format!("{error:?}").to_lowercase();
    if text.contains("refused") {
        "refused"
    } else if text.contains("reset") {
        "reset"
    } else {
        "early close"
    }
}

/// A `POST /api/orders` with `body`, as `mode` sends it.
pub fn post(body: String, mode: Mode) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    let mut request =
        hyper::Request::post("http://orders/api/orders").header("content-type", "application/json");
    if mode != Mode::Http2 {
        request = request.header("host", "orders");
    }
    if mode == Mode::ConnectionClose {
        request = request.header("connection", "close");
    }
    request.body(Full::new(Bytes::from(body)))
}

/// Any error of a request.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response's status and body, to come.
pub type Reply<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u16, String), BoxError>> + Send + 'a>>;

/// One connection's request sender, whatever its protocol.
pub trait Sender: Send {
    /// Whether the connection is closed.
    fn is_closed(&self) -> bool;
    /// Sends `request` and reads the whole response.
    fn send(&mut self, request: hyper::Request<Full<Bytes>>) -> Reply<'_>;
}

/// The same `Sender` for both protocols' `SendRequest`, which share their methods but no trait.
macro_rules! sender {
    ($protocol:ident) => {
        impl Sender for hyper::client::conn::$protocol::SendRequest<Full<Bytes>> {
            fn is_closed(&self) -> bool {
                hyper::client::conn::$protocol::SendRequest::is_closed(self)
            }

            fn send(&mut self, request: hyper::Request<Full<Bytes>>) -> Reply<'_> {
                Box::pin(async move {
                    self.ready().await?;
                    let response = self.send_request(request).await?;
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok((status, String::from_utf8_lossy(&body).into_owned()))
                })
            }
        }
    };
}

sender!(http1);
sender!(http2);

/// Where clients connect: an address, over HTTPS when `roots` says which authorities to trust.
#[derive(Clone, Debug)]
pub struct Target {
    /// The server's address; over HTTPS, its IP address is the name its certificate must hold.
    pub address: SocketAddr,
    /// The authorities an HTTPS server's certificate must chain to; `None` for plain HTTP.
    pub roots: Option<Arc<rustls::RootCertStore>>,
}

impl Target {
    /// Plain HTTP to `address`.
    pub fn plain(address: SocketAddr) -> Self {
        Self { address, roots: None }
    }

    /// HTTPS to `address`, trusting `roots`.
    pub fn https(address: SocketAddr, roots: rustls::RootCertStore) -> Self {
        Self { address, roots: Some(Arc::new(roots)) }
    }
}

/// Opens a connection speaking `mode`.
pub async fn connect(address: SocketAddr, mode: Mode) -> Result<Box<dyn Sender>, BoxError> {
    connect_to(&Target::plain(address), mode).await
}

/// Opens a connection to `target` speaking `mode`: over TLS (ALPN `h2` or `http/1.1`) when it
/// has roots. Sessions are not resumed, so each connection sees the certificate served now.
pub async fn connect_to(target: &Target, mode: Mode) -> Result<Box<dyn Sender>, BoxError> {
    let stream = tokio::net::TcpStream::connect(target.address).await?;
    let Some(roots) = &target.roots else { return handshake(stream, mode).await };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    config.alpn_protocols = vec![if mode == Mode::Http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    config.resumption = rustls::client::Resumption::disabled();
    let name = rustls::pki_types::ServerName::IpAddress(target.address.ip().into());
    // Boxed: a TLS connection's state is large, and every caller's future would carry it.
    let stream = Box::pin(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream)).await?;
    Box::pin(handshake(stream, mode)).await
}

/// The HTTP handshake of `mode` on `stream`.
async fn handshake<S>(stream: S, mode: Mode) -> Result<Box<dyn Sender>, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    if mode == Mode::Http2 {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        Ok(Box::new(sender))
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Box::new(sender))
    }
}

/// One client: a connection (or one per request), sending `POST /api/orders` until `sending`
/// turns false. Every failure is counted by kind in `tally`; nothing is retried.
pub async fn client(
    address: SocketAddr,
    mode: Mode,
    sending: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    n: usize,
) {
    client_to(Target::plain(address), mode, sending, tally, n).await;
}

/// [`client`] against any [`Target`].
pub async fn client_to(
    target: Target,
    mode: Mode,
    sending: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    n: usize,
) {
    let count = |kind: &'static str| {
        *tally.lock().unwrap_or_else(PoisonError::into_inner).failures.entry(kind).or_default() += 1;
    };
    // Kept whole (with its causes), the first few: a kind alone does not say what happened.
    let failed = |error: &(dyn std::error::Error + 'static)| {
        let kind = classify(error);
        let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
        *tally.failures.entry(kind).or_default() += 1;
        if tally.errors.len() < 5 {
            tally.errors.push(format!("{kind}: {error:?}"));
        }
    };
    let mut sender: Option<Box<dyn Sender>> = None;
    let mut i = 0;
    while sending.load(Ordering::Acquire) {
        i += 1;
        if sender.as_ref().is_none_or(|s| s.is_closed()) || mode == Mode::ConnectionClose {
            match connect_to(&target, mode).await {
                Ok(new) => sender = Some(new),
                Err(error) => {
                    failed(error.as_ref());
                    // A refusing port refuses at once: without a pause, a client would try
                    // hundreds of thousands of times a second and starve the machine.
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let body = format!("{{\"item\":\"client {n} order {i}\",\"quantity\":1}}");
        let Ok(request) = post(body, mode) else { return count("bad request") };
        match s.send(request).await {
            Ok((201, text)) => match text.trim_start_matches("{\"id\":").trim_end_matches('}').parse::<i64>()
            {
                Ok(id) => {
                    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    t.ok += 1;
                    t.acknowledged.push(id);
                }
                Err(_) => count("bad body"),
            },
            Ok((status, _)) if status >= 500 => count("5xx"),
            Ok(_) => count("unexpected status"),
            // hyper guarantees a cancelled request, or one its closed connection handed back
            // (`ChannelClosed`), was never sent, and HTTP/2 guarantees a stream the server
            // refused was not processed (RFC 9113, 8.7): no server acted on it, so it is sent
            // again on a new connection, as hyper-util's pooled client and browsers do, and
            // counted apart.
            Err(error) if never_processed(error.as_ref()) => {
                tally.lock().unwrap_or_else(PoisonError::into_inner).unsent += 1;
                sender = None;
            }
            Err(error) => {
                failed(error.as_ref());
                sender = None;
            }
        }
    }
}

/// Whether a failed request is one the server never processed: cancelled or refused by a closed
/// connection before it was sent, or an HTTP/2 stream the server refused.
fn never_processed(error: &(dyn std::error::Error + 'static)) -> bool {
    // Cancelled, or handed back because the connection was already closed (`ChannelClosed`):
    // hyper never wrote it to the socket.
    if error.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_canceled() || e.is_closed()) {
        return true;
    }
    let mut source = Some(error);
    while let Some(current) = source {
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            // A refused stream; or the error of a graceful GOAWAY (NO_ERROR), which the client
            // gives a request it could no longer send once the GOAWAY arrived, and a stream
            // above the GOAWAY's last stream id, which the server did not process (RFC 9113,
            // 6.8). A stream at or below it also ends with that error if the server closes the
            // connection before answering it, which would be processed and lost: the servers
            // tested here finish those before closing (hyper's two-step graceful shutdown), and
            // report any they cut at their hard deadline.
            return h2.is_remote()
                && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)));
        }
        source = current.source();
    }
    false
}

/// `clients` clients of [`client`] running until [`Clients::stop`].
#[derive(Debug)]
pub struct Clients {
    sending: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// Starts `clients` clients against `address`.
    pub fn start(address: SocketAddr, mode: Mode, clients: usize) -> Self {
        Self::start_to(&Target::plain(address), mode, clients)
    }

    /// Starts `clients` clients against `target`.
    pub fn start_to(target: &Target, mode: Mode, clients: usize) -> Self {
        let sending = Arc::new(AtomicBool::new(true));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tasks = (0..clients)
            .map(|n| {
                let client = client_to(target.clone(), mode, Arc::clone(&sending), Arc::clone(&tally), n);
                tokio::spawn(client)
            })
            .collect();
        Self { sending, tally, tasks }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).ok
    }

    /// Stops sending, waits for the requests in flight, and returns the tally.
    pub async fn stop(self) -> Tally {
        self.sending.store(false, Ordering::Release);
        for task in self.tasks {
            let _ = task.await;
        }
        std::mem::take(&mut *self.tally.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// `GET path` on a fresh HTTP/1.1 connection: the status and body, or `None` when the connection
/// or the request failed.
pub async fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut sender = connect(address, Mode::ConnectionClose).await.ok()?;
    let request = hyper::Request::get(path)
        .header("host", "orders")
        .header("connection", "close")
        .body(Full::new(Bytes::new()))
        .ok()?;
    sender.send(request).await.ok()
}
