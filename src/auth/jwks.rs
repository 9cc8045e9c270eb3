//! Verification keys from a JWKS endpoint (`auth.jwks_url`, RFC 7517).
//!
//! The set is fetched at start, again every `auth.jwks_refresh`, and when a token names a
//! `kid` no key has (a key the issuer just rotated in), at most once per
//! `auth.jwks_min_interval` whatever tokens clients send. A fetch that fails, or a document
//! without a usable key, keeps the keys already held. Tokens that wait on a fetch share it.
//!
//! Each key gets the algorithm its `alg` names, or, without one, the one its type implies
//! (RSA: RS256; EC: ES256 or ES384 by curve; OKP Ed25519: EdDSA). Symmetric (`oct`) keys and
//! keys marked for encryption are skipped: a JWKS is public, so an HMAC secret in it would
//! let anyone mint tokens.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::{TlsConnector, rustls};

use super::Key;
use crate::telemetry;

/// Largest JWKS document accepted; real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Longest one fetch (connect, TLS, request, body) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most keys taken from one document.
const MAX_KEYS: usize = 64;

/// Why a fetch did not replace the keys.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("auth.jwks_url '{0}' is not an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error("setting up TLS for the JWKS fetch failed: {0}")]
    Tls(#[source] rustls::Error),
    #[error("auth.jwks_url's host is not a name TLS can verify: {0}")]
    ServerName(#[source] rustls::pki_types::InvalidDnsNameError),
    #[error("connecting to the JWKS endpoint failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the JWKS request failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("the JWKS request could not be built: {0}")]
    Request(#[source] hyper::http::Error),
    #[error("the JWKS endpoint gave no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("the JWKS document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("reading the JWKS document failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the JWKS document is not a JSON key set: {0}")]
    Document(#[source] serde_json::Error),
    #[error("the JWKS document holds no usable signing key")]
    NoKeys,
}

/// The keys of one JWKS endpoint, refreshed in place.
pub struct Jwks {
    url: Uri,
    keys: ArcSwap<Vec<Key>>,
    /// Shortest time between two fetches for an unknown `kid`.
    min_interval: Duration,
    /// When the last fetch started; `None` before the first.
    last_fetch: Mutex<Option<Instant>>,
    /// Held while fetching, so concurrent tokens with a new `kid` wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
    tls: TlsConnector,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({}, {} keys)", self.url, self.keys.load().len())
    }
}

impl Jwks {
    /// An empty key set for `url`; [`Jwks::refresh`] fills it.
    ///
    /// # Errors
    /// [`JwksError::BadUrl`] when `url` cannot be fetched from.
    pub fn new(url: &str, min_interval: Duration) -> Result<Self, JwksError> {
        let uri: Uri = url.parse().map_err(|_| JwksError::BadUrl(url.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(JwksError::BadUrl(url.to_owned()));
        }
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped; an https:// fetch then fails and says so.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(JwksError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            url: uri,
            keys: ArcSwap::from_pointee(Vec::new()),
            min_interval,
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The keys held now.
    pub(super) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.load_full()
    }

    /// Whether a fetch has ever produced keys.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// Fetches the set and replaces the keys; on failure logs why and keeps the old ones.
    /// Returns how many keys are held after.
    pub async fn refresh(&self) -> usize {
        let _fetching = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// For a token whose `kid` no key has: fetches the set unless a fetch started within
    /// `auth.jwks_min_interval`. Returns whether the keys may have changed (worth verifying
    /// again).
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let started = Instant::now();
        let _fetching = self.fetching.lock().await;
        let last = *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match last {
            // Another token's fetch finished while this one waited: verify against it.
            Some(last) if last >= started => true,
            Some(last) if last.elapsed() < self.min_interval => {
                telemetry::jwks_refresh("rate_limited");
                false
            }
            _ => {
                self.fetch_and_store().await;
                true
            }
        }
    }

    async fn fetch_and_store(&self) -> usize {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(JwksError::Timeout(FETCH_TIMEOUT)),
        };
        match fetched.and_then(|body| parse_key_set(&body)) {
            Ok(keys) => {
                telemetry::jwks_refresh("ok");
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                let held = keys.len();
                self.keys.store(Arc::new(keys));
                held
            }
            Err(err) => {
                telemetry::jwks_refresh("error");
                let held = self.keys.load().len();
                tracing::warn!(url = %self.url, error = %err, held, "JWKS fetch failed; keeping the keys held");
                held
            }
        }
    }

    async fn fetch(&self) -> Result<Bytes, JwksError> {
        let host = self.url.host().unwrap_or_default();
        let https = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(JwksError::Connect)?;
        let request = Request::get(self.url.path_and_query().map_or("/", |path| path.as_str()))
            .header(
                hyper::header::HOST,
                self.url.authority().map_or(host, |a| a.as_str()),
            )
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "switchboard")
            .body(Empty::<Bytes>::new())
            .map_err(JwksError::Request)?;
        if https {
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(JwksError::ServerName)?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(JwksError::Connect)?;
            send(tls, request).await
        } else {
            send(tcp, request).await
        }
    }
}

/// One HTTP/1.1 GET on `io`; the body, when the status is 200 and it fits the limit.
async fn send<IO>(io: IO, request: Request<Empty<Bytes>>) -> Result<Bytes, JwksError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(JwksError::Http)?;
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(JwksError::Http)?;
    let status = response.status().as_u16();
    if status != 200 {
        connection.abort();
        return Err(JwksError::Status(status));
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                JwksError::TooLarge
            } else {
                JwksError::Body(err)
            }
        })?
        .to_bytes();
    connection.abort();
    Ok(body)
}

/// The usable signing keys of a JWKS document. A key this server cannot use (unknown type,
/// symmetric, for encryption) is skipped, so one odd key does not hide the others.
///
/// # Errors
/// When the document is not a key set, or holds no usable key.
pub(super) fn parse_key_set(body: &[u8]) -> Result<Vec<Key>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(body).map_err(JwksError::Document)?;
    let keys: Vec<Key> = document
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| key_from_jwk(&jwk))
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoKeys);
    }
    Ok(keys)
}

fn key_from_jwk(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // Symmetric keys never come from a public document; unknown types cannot verify.
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        None => implied,
        Some(named) => {
            let named = signing_algorithm(named)?;
            // The named algorithm must fit the key (no HS256 on an RSA key, no ES384 on a
            // P-256 one); an RSA key may be for any RSA algorithm.
            let rsa = |alg| {
                matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
            };
            let fits = named == implied || (rsa(named) && rsa(implied));
            fits.then_some(named)?
        }
    };
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithm,
        decoding: DecodingKey::from_jwk(jwk).ok()?,
    })
}

fn signing_algorithm(algorithm: KeyAlgorithm) -> Option<Algorithm> {
    Some(match algorithm {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
