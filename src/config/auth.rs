//! `[auth]`: the keys tokens are verified with, issuer and audience, JWKS, and what a
//! connection without a token may do.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, is_placeholder};

/// Client authentication with JSON Web Tokens. Off while `keys` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Refuse connections that do not authenticate: a token in the upgrade, or an `auth` frame
    /// within `timeout`; others get `unauthorized` and close 4003. Default false.
    pub required: bool,
    /// Clock skew allowed on `exp` and `nbf`. Default 5s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The longest a token may live: one whose `exp` is further ahead is refused. Also how
    /// long a revocation (`POST /v1/revoke`) holds when it names no `until`: by then every
    /// token it can match has expired. Default 7d.
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// Accept the token in the upgrade URL's `?token=` (browsers cannot set headers on a
    /// WebSocket; URLs end up in access logs). Default true.
    pub token_query: bool,
    /// With `required`: time a connection without a token in its upgrade has to send `auth`.
    /// Default 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The `iss` tokens must carry; empty: not checked.
    pub issuer: String,
    /// The `aud` tokens must carry; empty: not checked.
    pub audience: String,
    /// Verification keys; several at once for rotation, chosen by the token's `kid`.
    pub keys: Vec<AuthKeyConfig>,
    /// A JWKS endpoint (`https://issuer/.well-known/jwks.json`) whose keys are used beside
    /// `keys`. Empty: none.
    pub jwks_url: String,
    /// How often the JWKS is fetched again. Default 5m.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Shortest time between two fetches caused by a token with an unknown `kid`, so that
    /// clients cannot make the node hammer the endpoint. Default 10s.
    #[serde(with = "humantime_serde")]
    pub jwks_min_interval: Duration,
}

/// One verification key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthKeyConfig {
    /// The `kid` tokens signed with this key carry; empty: tokens without a `kid`.
    pub kid: String,
    /// HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA.
    pub algorithm: String,
    /// The HMAC secret (HS*), at least 32 bytes.
    pub secret: String,
    /// A PEM public key file (RS*, PS256, ES*, EdDSA).
    pub public_key_file: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: false,
            leeway: Duration::from_secs(5),
            max_token_ttl: Duration::from_secs(7 * 24 * 3600),
            token_query: true,
            timeout: Duration::from_secs(10),
            issuer: String::new(),
            audience: String::new(),
            keys: Vec::new(),
            jwks_url: String::new(),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_interval: Duration::from_secs(10),
        }
    }
}

pub(super) const AUTH_ALGORITHMS: [&str; 10] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
];

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.required && self.keys.is_empty() && self.jwks_url.is_empty() {
            return Err(invalid(
                "auth.required",
                "needs at least one [[auth.keys]] entry or auth.jwks_url".to_owned(),
            ));
        }
        let url = self.jwks_url.as_str();
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(
                "auth.jwks_url",
                format!("'{}' is not an https:// (or http://) URL", self.jwks_url),
            ));
        }
        if self.jwks_refresh < Duration::from_secs(1) || self.jwks_min_interval.is_zero() {
            return Err(invalid(
                "auth.jwks_refresh",
                "jwks_refresh must be at least 1s and jwks_min_interval greater than 0".to_owned(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("auth.timeout", "must be greater than 0".to_owned()));
        }
        if self.max_token_ttl < Duration::from_secs(60)
            || self.max_token_ttl > Duration::from_secs(366 * 24 * 3600)
        {
            return Err(invalid(
                "auth.max_token_ttl",
                "must be between 1m and 366d".to_owned(),
            ));
        }
        for (index, key) in self.keys.iter().enumerate() {
            if !AUTH_ALGORITHMS.contains(&key.algorithm.as_str()) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}].algorithm '{}' is not one of {}",
                        key.algorithm,
                        AUTH_ALGORITHMS.join(", ")
                    ),
                ));
            }
            let hmac = key.algorithm.starts_with("HS");
            if hmac && is_placeholder(&key.secret) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}]: the secret is a placeholder from an example: generate one \
                         (e.g. `openssl rand -base64 48`) and put it in your secret store"
                    ),
                ));
            }
            if hmac && (key.secret.len() < 32 || !key.public_key_file.is_empty()) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}]: {} takes a `secret` of at least 32 bytes and no public_key_file",
                        key.algorithm
                    ),
                ));
            }
            if !hmac && (key.public_key_file.is_empty() || !key.secret.is_empty()) {
                return Err(invalid(
                    "auth.keys",
                    format!(
                        "[{index}]: {} takes a `public_key_file` (PEM) and no secret",
                        key.algorithm
                    ),
                ));
            }
            if self.keys[..index]
                .iter()
                .any(|other| !key.kid.is_empty() && other.kid == key.kid)
            {
                return Err(invalid(
                    "auth.keys",
                    format!("[{index}]: kid '{}' is used twice", key.kid),
                ));
            }
        }
        Ok(())
    }
}
