//! Who calls the control API: the `Authorization: Bearer` key, checked in constant time,
//! or a loopback caller when no key is configured.

use std::net::SocketAddr;

use hyper::{Request, body::Incoming, header};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable as _, ConstantTimeEq};

use super::{
    ControlContext,
    error::{ApiError, Kind},
    is_loopback,
};

/// The configured API keys, kept as SHA-256 digests so that comparing a presented key takes
/// the same time whatever its length and whichever key (if any) it matches.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

impl ApiKeys {
    #[must_use]
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|key| digest(key.as_bytes())).collect(),
        }
    }

    /// Whether no key is configured (then `/v1/*` is loopback-only).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Which key `presented` is (its index in the configuration), if any. Every key is
    /// compared, and the index chosen, without branching on the comparison.
    #[must_use]
    pub fn position(&self, presented: &[u8]) -> Option<usize> {
        let presented = digest(presented);
        let mut matched = subtle::Choice::from(0);
        let mut position = 0_u64;
        for (index, key) in (0_u64..).zip(&self.digests) {
            let equal = key.ct_eq(&presented);
            position = u64::conditional_select(&position, &index, equal);
            matched |= equal;
        }
        bool::from(matched).then(|| usize::try_from(position).unwrap_or(usize::MAX))
    }
}

/// Who is calling, as far as rate limits go: the index of the API key presented, or
/// `LOOPBACK_CALLER` when no keys are configured.
pub(super) type Caller = usize;
const LOOPBACK_CALLER: Caller = usize::MAX;

pub(super) fn authorize(
    request: &Request<Incoming>,
    peer: SocketAddr,
    ctx: &ControlContext,
) -> Result<Caller, ApiError> {
    if ctx.settings.api_keys.is_empty() {
        if is_loopback(peer) {
            return Ok(LOOPBACK_CALLER);
        }
        return Err(ApiError::new(
            Kind::Forbidden,
            "no API key is configured, so /v1 answers loopback clients only",
        ));
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match presented.map(|key| ctx.settings.api_keys.position(key.trim().as_bytes())) {
        Some(Some(caller)) => Ok(caller),
        Some(None) => Err(ApiError::new(Kind::Unauthorized, "invalid API key")),
        None => Err(ApiError::new(
            Kind::Unauthorized,
            "missing `Authorization: Bearer <key>` header",
        )),
    }
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    // One or more spaces between the scheme and the credentials (RFC 9110 11.4).
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_read_whatever_the_scheme_case_and_spacing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("  Bearer   abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn finds_only_configured_keys() {
        let keys = ApiKeys::new(&[
            "first-key-0123456789".to_owned(),
            "second-key-0123456789".to_owned(),
        ]);
        assert_eq!(keys.position(b"first-key-0123456789"), Some(0));
        assert_eq!(keys.position(b"second-key-0123456789"), Some(1));
        assert_eq!(keys.position(b"first-key-012345678"), None);
        assert_eq!(keys.position(b""), None);
        assert_eq!(keys.position(b"third-key-0123456789"), None);
        assert!(ApiKeys::new(&[]).is_empty());
    }
}
