//! A certificate authority for the HTTPS tests: server certificates for 127.0.0.1 it signs, and
//! clients that trust it.

use std::sync::Arc;

use rcgen::{CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use tokio_rustls::TlsConnector;

/// A test certificate authority, which the clients trust.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate for 127.0.0.1 and its key.
#[derive(Debug)]
pub struct Leaf {
    /// The certificate, as a client is shown it.
    pub der: CertificateDer<'static>,
    /// The certificate in PEM.
    pub certificate: String,
    /// Its private key in PEM.
    pub key: String,
}

/// Panics with what failed: test certificates are made by the test itself.
fn made<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| panic!("test certificate: {error}"))
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Default for Authority {
    fn default() -> Self {
        Self::new()
    }
}

impl Authority {
    /// A new authority with its own key.
    ///
    /// # Panics
    /// When the certificate cannot be made.
    pub fn new() -> Self {
        let mut params = made(CertificateParams::new(Vec::<String>::new()));
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "lifecycle test authority");
        Self { issuer: made(CertifiedIssuer::self_signed(params, made(KeyPair::generate()))) }
    }

    /// A certificate for 127.0.0.1 and `localhost` named `name` (its subject's common name).
    ///
    /// # Panics
    /// When the certificate cannot be made.
    pub fn leaf(&self, name: &str) -> Leaf {
        let key = made(KeyPair::generate());
        let mut params = made(CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]));
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = made(params.signed_by(&key, &self.issuer));
        Leaf { der: certificate.der().clone(), certificate: certificate.pem(), key: key.serialize_pem() }
    }

    /// The authority's certificate in PEM (for `sslrootcert=`, `SSL_CERT_FILE`, `--cacert`).
    pub fn certificate_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The authority as a root store.
    ///
    /// # Panics
    /// When the authority's certificate is refused.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        made(roots.add(self.issuer.der().clone()));
        roots
    }

    /// A client that trusts this authority, offers `alpn`, and never resumes a session (a resumed
    /// session shows the certificate of the session it resumes, not the one served now).
    ///
    /// # Panics
    /// When the client configuration cannot be made.
    pub fn client(&self, alpn: &[u8]) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config =
            made(rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions())
                .with_root_certificates(self.roots())
                .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

impl Leaf {
    /// Writes the certificate and key to `dir`'s `cert.pem` and `key.pem`.
    ///
    /// # Panics
    /// When they cannot be written.
    pub fn write_to(&self, dir: &std::path::Path) {
        made(std::fs::write(dir.join("cert.pem"), &self.certificate));
        made(std::fs::write(dir.join("key.pem"), &self.key));
    }
}
