//! TLS for the public listener (`wss://`, `server.tls`) and the control listener (HTTPS,
//! `control.tls`): the certificate chain and key from PEM files, served through
//! `tokio-rustls` (TLS 1.2 and 1.3, the `ring` provider), and reloaded without dropping a
//! connection.
//!
//! The acceptor sits behind an `ArcSwap`: a reload builds a whole new configuration first
//! and swaps it in only if that succeeded, so a bad new certificate leaves the old one
//! serving. Connections already established keep the configuration they were accepted with.
//! Must not depend on anything internal but `config`.

use std::{fs::File, io::BufReader, path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_rustls::{TlsAcceptor, rustls};

use crate::config::TlsConfig;

mod stream;
pub use self::stream::ServerTls;

/// Why a certificate or key could not be used. The caller logs it (a reload) or refuses to
/// start; fix the file it names.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("the certificate and key cannot be used together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One listener's TLS, reloadable.
pub struct Tls {
    /// The configuration section it comes from (`server.tls`), for logs and answers.
    name: &'static str,
    cert_file: PathBuf,
    key_file: PathBuf,
    acceptor: ArcSwap<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({}: {})", self.name, self.cert_file.display())
    }
}

impl Tls {
    /// Loads the section `name` (`server.tls`); `None` when it is off.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be used.
    pub fn from_config(
        name: &'static str,
        config: &TlsConfig,
    ) -> Result<Option<Arc<Self>>, TlsError> {
        if !config.is_set() {
            return Ok(None);
        }
        let cert_file = PathBuf::from(&config.cert_file);
        let key_file = PathBuf::from(&config.key_file);
        let acceptor = load(&cert_file, &key_file)?;
        Ok(Some(Arc::new(Self {
            name,
            cert_file,
            key_file,
            acceptor: ArcSwap::from_pointee(acceptor),
        })))
    }

    /// The acceptor for a new connection (`tokio-rustls`, for the control listener).
    #[must_use]
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// The configuration a new connection is served with ([`ServerTls`], for the WebSocket
    /// listener).
    #[must_use]
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(self.acceptor.load().config())
    }

    /// Reads the certificate and key files again and serves them to new connections.
    ///
    /// # Errors
    /// [`TlsError`] when the new files cannot be used; the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = load(&self.cert_file, &self.key_file)?;
        self.acceptor.store(Arc::new(acceptor));
        Ok(())
    }
}

/// Every listener's TLS, reloaded together (SIGHUP, `POST /v1/reload-tls`).
#[derive(Debug, Clone, Default)]
pub struct Certificates {
    /// `server.tls`: the WebSocket listener.
    pub server: Option<Arc<Tls>>,
    /// `control.tls`: the control listener.
    pub control: Option<Arc<Tls>>,
}

impl Certificates {
    /// Whether any listener serves TLS.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.server.is_none() && self.control.is_none()
    }

    /// Reloads each listener's certificate, each on its own: one that fails keeps its old
    /// certificate and does not hold the other back. Logs each outcome; returns the names of
    /// the sections reloaded, or the first failure.
    ///
    /// # Errors
    /// The section and the reason of the first reload that failed.
    pub fn reload(&self) -> Result<Vec<&'static str>, (&'static str, TlsError)> {
        let mut reloaded = Vec::new();
        let mut failed = None;
        for tls in [&self.server, &self.control].into_iter().flatten() {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(section = tls.name, "TLS certificate reloaded");
                    reloaded.push(tls.name);
                }
                Err(err) => {
                    tracing::error!(
                        section = tls.name,
                        error = %err,
                        "TLS reload failed; the old certificate stays"
                    );
                    failed.get_or_insert((tls.name, err));
                }
            }
        }
        match failed {
            Some(failure) => Err(failure),
            None => Ok(reloaded),
        }
    }
}

fn load(cert_file: &std::path::Path, key_file: &std::path::Path) -> Result<TlsAcceptor, TlsError> {
    let open = |path: &std::path::Path| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_reader_iter(open(cert_file)?)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.display().to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_reader(open(key_file)?).map_err(|_| TlsError::NoKey {
        path: key_file.display().to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
