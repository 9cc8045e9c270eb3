//! `switchboard token`: tokens signed with the configured HMAC key, for development and
//! tests (as `centrifugo gentoken`). Production tokens come from the application's own
//! issuer; this only signs with a key the server already holds, and refuses the public
//! keys it could not sign with.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value, json};

use super::{MAX_EXP, parse_algorithm, unix_now};
use crate::config::AuthConfig;

/// What `switchboard token` puts in a token.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// `sub`.
    pub sub: String,
    /// From now to `exp`.
    pub ttl: Duration,
    /// `channels` (subscribe patterns).
    pub channels: Vec<String>,
    /// `publish` patterns.
    pub publish: Vec<String>,
    /// `subs`: channels the server subscribes the connection to.
    pub subs: Vec<String>,
    /// `info`, as JSON.
    pub info: Option<Value>,
    /// Sign with the key of this `kid` (default: the first HMAC key).
    pub kid: Option<String>,
}

/// Why no token was made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    #[error("`sub` must not be empty")]
    EmptySubject,
    #[error("the TTL must be between 1 s and auth.max_token_ttl ({0} s)")]
    BadTtl(u64),
    #[error(
        "auth.keys has no HMAC key (HS256, HS384, HS512) to sign with{0}: tokens for public \
         keys are signed by their private key, which the server never holds"
    )]
    NoHmacKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A token for `request`, signed with the configured HMAC key (the one of `request.kid`,
/// or the first), with `iss` and `aud` when `[auth]` sets them.
///
/// # Errors
/// [`MintError`] when the request or the configuration cannot make one.
pub fn mint(auth: &AuthConfig, request: &TokenRequest) -> Result<String, MintError> {
    if request.sub.is_empty() {
        return Err(MintError::EmptySubject);
    }
    let exp = unix_now().saturating_add(request.ttl.as_secs());
    let max_ttl = auth.max_token_ttl.as_secs();
    if request.ttl.as_secs() == 0 || request.ttl.as_secs() > max_ttl || exp > MAX_EXP {
        return Err(MintError::BadTtl(max_ttl));
    }
    let key = auth
        .keys
        .iter()
        .filter(|key| key.algorithm.starts_with("HS") && !key.secret.is_empty())
        .find(|key| request.kid.as_deref().is_none_or(|kid| key.kid == kid))
        .ok_or_else(|| {
            MintError::NoHmacKey(
                request
                    .kid
                    .as_deref()
                    .map(|kid| format!(" with kid `{kid}`"))
                    .unwrap_or_default(),
            )
        })?;
    let algorithm = parse_algorithm(&key.algorithm)
        .ok_or_else(|| MintError::Signing(format!("unknown algorithm {}", key.algorithm)))?;
    let mut header = Header::new(algorithm);
    if !key.kid.is_empty() {
        header.kid = Some(key.kid.clone());
    }
    let mut claims = Map::new();
    claims.insert("sub".to_owned(), json!(request.sub));
    claims.insert("exp".to_owned(), json!(exp));
    claims.insert("iat".to_owned(), json!(unix_now()));
    // So that the token can be revoked on its own (`POST /v1/revoke {"jti"}`).
    claims.insert(
        "jti".to_owned(),
        json!(format!("{:032x}", rand::random::<u128>())),
    );
    for (name, values) in [
        ("channels", &request.channels),
        ("publish", &request.publish),
        ("subs", &request.subs),
    ] {
        if !values.is_empty() {
            claims.insert(name.to_owned(), json!(values));
        }
    }
    if let Some(info) = &request.info {
        claims.insert("info".to_owned(), info.clone());
    }
    if !auth.issuer.is_empty() {
        claims.insert("iss".to_owned(), json!(auth.issuer));
    }
    if !auth.audience.is_empty() {
        claims.insert("aud".to_owned(), json!(auth.audience));
    }
    let encoding = EncodingKey::from_secret(key.secret.as_bytes())
        .map_err(|err| MintError::Signing(err.to_string()))?;
    jsonwebtoken::encode(&header, &Value::Object(claims), &encoding)
        .map_err(|err| MintError::Signing(err.to_string()))
}

#[cfg(test)]
mod tests;
