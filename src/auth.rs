//! Who a connection is: JSON Web Tokens verified with the configured keys (`[auth]`).
//!
//! Verification uses `jsonwebtoken` (RustCrypto backend). Each key has one algorithm, and a
//! token is checked only against a key of the algorithm its header names: an HMAC token
//! "signed" with an RSA public key (algorithm confusion) finds no HMAC key and is refused,
//! and `alg: none` is no algorithm at all. A token with a `kid` is checked against the key
//! with that `kid` only (an unknown `kid` is refused); one without against each key of its
//! algorithm, which is how keys are rotated when tokens carry no `kid`. `exp` and `sub` are
//! required; `exp`, `nbf`, and `iss`/`aud` when configured, are checked with `auth.leeway`.
//!
//! Keys come from `[[auth.keys]]` and from a JWKS endpoint (`auth.jwks_url`, see [`jwks`]);
//! a token whose `kid` neither has makes the JWKS be fetched again (rate-limited) before it
//! is refused.
//!
//! Channel permissions (`namespaces`) use the identity a token gives.
//!
//! Must not depend on anything internal but `config`.

use std::{fmt, sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::AuthConfig;

mod error;
pub mod jwks;
pub mod mint;
pub mod namespaces;
pub use self::{
    error::{AuthError, ClaimsError},
    jwks::Jwks,
    namespaces::{Action, Decision, Namespaces},
};

/// An authenticated connection's identity, from its token's claims.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `sub`: the user.
    pub user: Arc<str>,
    /// `exp`: when the token expires, in Unix seconds.
    pub exp: u64,
    /// `channels`: patterns of channels the connection may subscribe to.
    pub channels: Vec<String>,
    /// `publish`: patterns of channels it may publish to.
    pub publish: Vec<String>,
    /// `info`: JSON about the user, for presence and the control API.
    pub info: Option<Box<RawValue>>,
    /// `subs`: channels the server subscribes the connection to on its own, once the token
    /// is accepted (each still checked against its namespace).
    pub subs: Vec<String>,
    /// `jti`: the token's identifier, by which it can be revoked (`POST /v1/revoke`).
    pub jti: Option<Box<str>>,
    /// `iat`: when the token was issued (Unix seconds), for revoking a user's older tokens;
    /// a hook's identity is issued when the hook answers.
    pub iat: Option<u64>,
}

/// Why the `[auth]` configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.keys[{index}]: {message}")]
pub struct KeyError {
    index: usize,
    message: String,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    decoding: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<Key>,
    /// Keys from `auth.jwks_url`, tried after `keys`.
    jwks: Option<Arc<Jwks>>,
    leeway: Duration,
    /// `auth.max_token_ttl`: tokens whose `exp` lies further ahead are refused.
    max_ttl: Duration,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Authenticator({} keys, {:?})",
            self.keys.len(),
            self.jwks
        )
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    subs: Vec<String>,
    #[serde(default)]
    jti: Option<String>,
    /// A NumericDate may have a fraction (RFC 7519): taken, rounded down.
    #[serde(default)]
    iat: Option<f64>,
}

/// The algorithm named in configuration, as `jsonwebtoken` spells it.
#[must_use]
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

impl Authenticator {
    /// Builds the verifier from `[auth]`, reading the public key files; `None` when no key is
    /// configured. The JWKS (when `auth.jwks_url` is set) starts empty: the caller fetches it
    /// ([`Authenticator::jwks`]).
    ///
    /// # Errors
    /// [`KeyError`] naming the key that cannot be read or parsed, or a bad `jwks_url`.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, KeyError> {
        if config.keys.is_empty() && config.jwks_url.is_empty() {
            return Ok(None);
        }
        let jwks = match config.jwks_url.as_str() {
            "" => None,
            url => Some(Arc::new(Jwks::new(url, config.jwks_min_interval).map_err(
                |err| KeyError {
                    index: config.keys.len(),
                    message: err.to_string(),
                },
            )?)),
        };
        let mut keys = Vec::with_capacity(config.keys.len());
        for (index, key) in config.keys.iter().enumerate() {
            let fail = |message: String| KeyError { index, message };
            let algorithm = parse_algorithm(&key.algorithm)
                .ok_or_else(|| fail(format!("unknown algorithm '{}'", key.algorithm)))?;
            let decoding = match algorithm {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                    DecodingKey::from_secret(key.secret.as_bytes())
                        .map_err(|err| fail(err.to_string()))?
                }
                _ => {
                    let pem = std::fs::read(&key.public_key_file).map_err(|err| {
                        fail(format!("cannot read {}: {err}", key.public_key_file))
                    })?;
                    let parsed = match algorithm {
                        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                        _ => DecodingKey::from_rsa_pem(&pem),
                    };
                    parsed.map_err(|err| {
                        fail(format!(
                            "{} is not a {} public key in PEM: {err}",
                            key.public_key_file, key.algorithm
                        ))
                    })?
                }
            };
            keys.push(Key {
                kid: (!key.kid.is_empty()).then(|| key.kid.clone()),
                algorithm,
                decoding,
            });
        }
        Ok(Some(Self {
            keys,
            jwks,
            leeway: config.leeway,
            max_ttl: config.max_token_ttl,
            issuer: (!config.issuer.is_empty()).then(|| config.issuer.clone()),
            audience: (!config.audience.is_empty()).then(|| config.audience.clone()),
        }))
    }

    /// The leeway applied to `exp` and `nbf`.
    #[must_use]
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// The JWKS endpoint's keys, when `auth.jwks_url` is set.
    #[must_use]
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Verifies `token` as [`Authenticator::verify`] does, but a `kid` no key has first makes
    /// the JWKS be fetched again (at most once per `auth.jwks_min_interval`), so that a key
    /// the issuer just rotated in is accepted on its first token.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        match (self.verify(token), &self.jwks) {
            (Err(AuthError::UnknownKey), Some(jwks)) => {
                // Boxed: the fetch's state is large and rare; every session's task would
                // otherwise carry room for it.
                if Box::pin(jwks.refresh_for_unknown_kid()).await {
                    self.verify(token)
                } else {
                    Err(AuthError::UnknownKey)
                }
            }
            (verified, _) => verified,
        }
    }

    /// Verifies `token` against the keys held now and returns who it names.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let fetched = self.jwks.as_ref().map(|jwks| jwks.keys());
        let all = self
            .keys
            .iter()
            .chain(fetched.iter().flat_map(|keys| keys.iter()));
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let key = all
                    .clone()
                    .find(|key| key.kid.as_deref() == Some(kid.as_str()))
                    .ok_or(AuthError::UnknownKey)?;
                vec![key]
            }
            None => all.collect(),
        };
        let mut candidates = candidates
            .into_iter()
            .filter(|key| key.algorithm == header.alg)
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::WrongAlgorithm);
        }
        let mut error = AuthError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation(key)) {
                Ok(data) => {
                    let claims = data.claims;
                    // A user nobody can be, or an expiry past any real clock: a token
                    // minted by mistake, or made to overflow the expiry's arithmetic.
                    if claims.sub.is_empty() {
                        return Err(AuthError::Claims(ClaimsError::EmptySubject));
                    }
                    if claims.exp > MAX_EXP {
                        return Err(AuthError::Claims(ClaimsError::EndlessExpiry));
                    }
                    if claims.exp > unix_now().saturating_add(self.max_ttl.as_secs()) {
                        return Err(AuthError::Claims(ClaimsError::TooLong {
                            exp: claims.exp,
                            max_ttl: self.max_ttl.as_secs(),
                        }));
                    }
                    if claims
                        .jti
                        .as_ref()
                        .is_some_and(|jti| jti.len() > MAX_JTI_BYTES)
                    {
                        return Err(AuthError::Claims(ClaimsError::LongJti));
                    }
                    return Ok(Identity {
                        user: Arc::from(claims.sub),
                        exp: claims.exp,
                        channels: claims.channels,
                        publish: claims.publish,
                        info: claims.info,
                        subs: claims.subs,
                        jti: claims.jti.map(String::into_boxed_str),
                        // Saturating: a negative or huge `iat` reads as 0 or the largest.
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        iat: claims.iat.map(|iat| iat.floor() as u64),
                    });
                }
                Err(err) => {
                    error = AuthError::from_claims(err.kind(), token);
                    // A bad signature may verify with another key of the same algorithm;
                    // anything else is the token's own fault.
                    if error != AuthError::BadSignature {
                        return Err(error);
                    }
                }
            }
        }
        Err(error)
    }

    fn validation(&self, key: &Key) -> Validation {
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }
}

/// The longest `jti` accepted (also the longest `POST /v1/revoke` takes).
pub const MAX_JTI_BYTES: usize = 256;

/// The latest `exp` accepted: 9999-12-31T23:59:59Z, in Unix seconds.
pub const MAX_EXP: u64 = 253_402_300_799;

/// Now, in Unix seconds: the clock `exp` and `nbf` are read against.
pub use crate::clock::unix_now;

/// Seconds from now until `exp` (Unix seconds), 0 when past.
#[must_use]
pub fn seconds_until(exp: u64) -> u64 {
    exp.saturating_sub(unix_now())
}

#[cfg(test)]
mod tests;
