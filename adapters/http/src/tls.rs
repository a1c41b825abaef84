//! HTTPS (feature `tls`): a certificate chain and its key read from PEM files and checked at
//! once, offered over ALPN for HTTP/2 and HTTP/1.1, and reloaded without a restart, on request or
//! when the files change; connections already open keep the session they have.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use lifecycle_core::{CancellationToken, ErrorChain};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};

/// One of the two files a [`TlsConfig`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain, the server's own certificate first.
    Certificate,
    /// The private key of the server's certificate.
    PrivateKey,
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Certificate => "certificate file",
            Self::PrivateKey => "private key file",
        })
    }
}

/// Why a certificate and key could not be loaded. Each names the file; the cause, if any, is in
/// [`source()`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {file} {}", path.display())]
    Read {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{file} {} is not valid PEM", path.display())]
    Pem {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("certificate file {} holds no certificate (no PEM `CERTIFICATE` section)", path.display())]
    NoCertificate {
        /// Its path.
        path: PathBuf,
    },
    /// The key file holds no `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section.
    #[error(
        "private key file {} holds no private key (no PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` \
         section)",
        path.display()
    )]
    NoPrivateKey {
        /// Its path.
        path: PathBuf,
    },
    /// The key is of a kind or an encoding rustls cannot sign with.
    #[error("private key file {} holds a key that cannot be used", path.display())]
    UnusableKey {
        /// Its path.
        path: PathBuf,
        /// Why not.
        source: rustls::Error,
    },
    /// The server's own certificate (the first in the file) cannot be parsed.
    #[error("certificate file {} holds an invalid certificate", path.display())]
    InvalidCertificate {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        source: rustls::Error,
    },
    /// The key is not the one the certificate was issued for.
    #[error(
        "private key file {} does not hold the key of the certificate in certificate file {}",
        private_key.display(),
        certificate.display()
    )]
    KeyMismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The private key file.
        private_key: PathBuf,
    },
    /// rustls refused the protocol versions (only with a broken build of its crypto provider).
    #[error("cannot configure TLS")]
    Config {
        /// Why not.
        source: rustls::Error,
    },
}

/// When a file was last changed, as far as its metadata tells: its modification time and size
/// (the size too, because a rewrite within one tick of the file system's clock keeps the time).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The two files and how to read them.
struct Files {
    certificate: PathBuf,
    private_key: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl Files {
    fn stamps(&self) -> [Stamp; 2] {
        [stamp(&self.certificate), stamp(&self.private_key)]
    }

    /// Reads both files and checks that they go together.
    fn load(&self) -> Result<CertifiedKey, TlsError> {
        let (certificate, private_key) = (&self.certificate, &self.private_key);
        let text = read(TlsFile::Certificate, certificate)?;
        let chain =
            CertificateDer::pem_slice_iter(&text).collect::<Result<Vec<_>, _>>().map_err(|source| {
                TlsError::Pem { file: TlsFile::Certificate, path: certificate.clone(), source }
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: certificate.clone() });
        }

        let text = read(TlsFile::PrivateKey, private_key)?;
        let key = PrivateKeyDer::from_pem_slice(&text).map_err(|source| match source {
            pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: private_key.clone() },
            source => TlsError::Pem { file: TlsFile::PrivateKey, path: private_key.clone(), source },
        })?;
        let key = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::UnusableKey { path: private_key.clone(), source })?;

        let certified = CertifiedKey::new(chain, key);
        match certified.keys_match() {
            // `Unknown` means a provider that cannot derive a public key; ring always can.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                Err(TlsError::KeyMismatch {
                    certificate: certificate.clone(),
                    private_key: private_key.clone(),
                })
            }
            Err(source) => Err(TlsError::InvalidCertificate { path: certificate.clone(), source }),
        }
    }
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { file, path: path.to_owned(), source })
}

/// What every clone of a [`TlsConfig`] and the handshakes share.
struct Store {
    files: Files,
    /// A lock, not a swap cell: handshakes only read it, briefly, and a reload is rare.
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when they were last read, whether that load succeeded or not, so that
    /// [`TlsConfig::watch`] tries (and warns about) each change once.
    read: Mutex<[Stamp; 2]>,
}

impl Store {
    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The paths only: nothing of the key, not even its `Debug`.
        f.debug_struct("Store")
            .field("certificate", &self.files.certificate)
            .field("private_key", &self.files.private_key)
            .finish_non_exhaustive()
    }
}

/// Gives each new handshake the certificate loaded last.
#[derive(Debug)]
struct Resolver(Arc<Store>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// The TLS settings of an [`HttpServer`](crate::HttpServer) (feature `tls`): a certificate chain
/// and its private key, read from PEM files, that can be reloaded while the server runs.
///
/// The server offers HTTP/2 (`h2`) and HTTP/1.1 over ALPN. A reload changes the certificate of
/// the handshakes that follow; connections already open keep theirs (and so does a session a
/// client resumes from before the reload). The server reloads it in its own reload hook (on
/// `SIGHUP`, or `LifecycleHandle::reload`); clones share the certificate, so a program can also
/// keep one and call [`reload`](TlsConfig::reload) itself.
///
/// ```no_run
/// use std::time::Duration;
/// use lifecycle_http::{HttpServer, TlsConfig, axum::Router};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = TlsConfig::from_pem_files("/etc/tls/fullchain.pem", "/etc/tls/key.pem")?
///     .watch(Duration::from_secs(10));
/// let listener = std::net::TcpListener::bind("0.0.0.0:443")?;
/// let server = HttpServer::new("https", listener, Router::new()).with_tls(tls.clone());
/// // Later, from the program's own trigger (SIGHUP reloads the server already):
/// if let Err(error) = tls.reload() {
///     eprintln!("still serving the previous certificate: {error}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    store: Arc<Store>,
    server: Arc<ServerConfig>,
    watch: Option<Duration>,
}

impl TlsConfig {
    /// Reads the certificate chain (PEM `CERTIFICATE` sections, the server's own first) and the
    /// private key (PKCS#8, PKCS#1 or SEC1) now, and checks that the key is the certificate's.
    ///
    /// # Errors
    /// When a file cannot be read or holds no certificate or no usable key, or when the key is
    /// not the certificate's; each error names the file.
    pub fn from_pem_files(
        certificate: impl Into<PathBuf>,
        private_key: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        // Named rather than the process default, so that another crate that installs a default
        // provider (or enables a second one) cannot change or break this one.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Files { certificate: certificate.into(), private_key: private_key.into(), provider };
        let stamps = files.stamps();
        let loaded = files.load()?;
        let store =
            Arc::new(Store { current: RwLock::new(Arc::new(loaded)), read: Mutex::new(stamps), files });
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&store.files.provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config { source })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(&store))));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { store, server: Arc::new(server), watch: None })
    }

    /// Also reloads the files whenever their modification time or size changes, looking every
    /// `interval` while the server runs (off by default). A change that does not load (a file
    /// half written, a key that does not match yet) is warned about once and the previous
    /// certificate kept; the next change is tried again.
    #[must_use]
    pub fn watch(mut self, interval: Duration) -> Self {
        // A zero interval would make `tokio::time::interval` panic.
        self.watch = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// Reads both files again and, if they load, serves the new certificate to every handshake
    /// from now on.
    ///
    /// # Errors
    /// As [`from_pem_files`](TlsConfig::from_pem_files); the server then keeps the certificate it
    /// had, and the error is also logged as a warning.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (store, files) = (&self.store, &self.store.files);
        // One reload at a time (a `SIGHUP` and the watch, say): two at once could finish in the
        // wrong order and leave the older files' certificate in place.
        let mut read = store.read.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken before reading: a write that lands during the read shows as a change next time.
        *read = files.stamps();
        match files.load() {
            Ok(loaded) => {
                *store.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
                drop(read);
                tracing::info!(
                    certificate = %files.certificate.display(),
                    private_key = %files.private_key.display(),
                    "TLS certificate reloaded"
                );
                Ok(())
            }
            Err(error) => {
                drop(read);
                tracing::warn!(error = %ErrorChain(&error), "TLS certificate not reloaded; the previous one is still served");
                Err(error)
            }
        }
    }

    /// The server's rustls settings: the certificate resolver and ALPN.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server))
    }

    /// How often the server looks at the files, if it does.
    pub(crate) fn watch_interval(&self) -> Option<Duration> {
        self.watch
    }

    /// Reloads on every change of the files' stamps until `stop` is cancelled.
    pub(crate) async fn watch_files(self, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Two `stat` calls and, on a change, two small local files read inline: cheaper than
            // handing them to the blocking pool, and the pool's threads are not the set's tasks.
            let changed = {
                let read = self.store.read.lock().unwrap_or_else(PoisonError::into_inner);
                *read != self.store.files.stamps()
            };
            if changed {
                // The error is logged by `reload`, once for this change.
                let _ = self.reload();
            }
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("certificate", &self.store.files.certificate)
            .field("private_key", &self.store.files.private_key)
            .field("watch", &self.watch)
            .field("chain_length", &self.store.current().cert.len())
            .finish()
    }
}
