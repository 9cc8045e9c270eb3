//! Why a token was refused, in words that say what to fix: the `error` frame's message,
//! the debug log, and a bounded label for metrics.

use std::fmt;

use serde::Deserialize;

use super::unix_now;

/// Why a token was refused. The connection gets `unauthorized` and close 4003, or 4004
/// when the token expired (a fresh one fixes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Not a JWT, or its header or claims could not be read: fix the token issuer.
    Malformed,
    /// The header names a `kid` no configured key has: a key was retired, or the token is
    /// forged.
    UnknownKey,
    /// No key of the header's algorithm (or `alg: none`): forged, or a key is missing.
    WrongAlgorithm,
    /// The signature does not verify with any candidate key.
    BadSignature,
    /// `exp` is past (beyond the leeway): get a fresh token.
    Expired { exp: Option<u64> },
    /// `nbf` is ahead (beyond the leeway).
    NotYetValid { nbf: Option<u64> },
    /// A claim is missing or not accepted here.
    Claims(ClaimsError),
    /// The user is blocked (`POST /v1/block`) until `until` (Unix seconds; `None`: until
    /// the block is lifted): an operator's decision, not the token's fault.
    Blocked { until: Option<u64> },
    /// The token is revoked (`POST /v1/revoke`): by its `jti` (`issued_before: None`), or
    /// as one of its user's tokens issued before `issued_before`.
    Revoked { issued_before: Option<u64> },
    /// The user holds `limits.max_connections_per_user` (`max`) connections already and the
    /// newest is refused: close 4005, not 4003.
    TooManyConnections { max: usize },
}

/// Which claim a token was refused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimsError {
    /// A required claim (`exp`, `sub`) is missing (or not of its type: `sub` a string,
    /// `exp` a whole number of seconds).
    Missing(&'static str),
    /// `iss` is not the configured issuer (the token's, cut short; `None`: it has none).
    Issuer(Option<String>),
    /// `aud` does not name the configured audience (likewise).
    Audience(Option<String>),
    /// `sub` is empty: a user nobody can be.
    EmptySubject,
    /// `exp` is past the year 9999.
    EndlessExpiry,
    /// `exp` is further ahead than `auth.max_token_ttl` (`max_ttl`, seconds) allows.
    TooLong { exp: u64, max_ttl: u64 },
    /// `jti` is longer than 256 bytes.
    LongJti,
}

/// What a refused token's message may quote of its own claims, at most.
const QUOTED: usize = 64;

impl AuthError {
    /// A bounded label for metrics.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::Claims(_) => "claims",
            AuthError::Blocked { .. } => "blocked",
            AuthError::Revoked { .. } => "revoked",
            AuthError::TooManyConnections { .. } => "too_many_connections",
        }
    }

    /// Whether a fresh token fixes it (close 4004, which clients answer with a new token),
    /// rather than the token being wrong (4003, terminal).
    #[must_use]
    pub const fn is_expired(&self) -> bool {
        matches!(self, AuthError::Expired { .. })
    }

    /// `kind` (from `jsonwebtoken`, after the signature verified), with what the token
    /// itself says where that helps.
    pub(super) fn from_claims(kind: &jsonwebtoken::errors::ErrorKind, token: &str) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        let said = || Said::read(token);
        match kind {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired { exp: said().exp },
            ErrorKind::ImmatureSignature => AuthError::NotYetValid { nbf: said().nbf },
            ErrorKind::InvalidIssuer => AuthError::Claims(ClaimsError::Issuer(said().iss())),
            ErrorKind::InvalidAudience => AuthError::Claims(ClaimsError::Audience(said().aud())),
            ErrorKind::MissingRequiredClaim(claim) => {
                AuthError::Claims(ClaimsError::Missing(match claim.as_str() {
                    "exp" => "exp",
                    "sub" => "sub",
                    "iss" => "iss",
                    "aud" => "aud",
                    "nbf" => "nbf",
                    _ => "a required claim",
                }))
            }
            ErrorKind::InvalidSubject => AuthError::Claims(ClaimsError::EmptySubject),
            // The claims did not fit: say which required one is missing, if one is.
            ErrorKind::Json(_) => match jsonwebtoken::dangerous::insecure_decode_claims::<
                serde_json::Map<String, serde_json::Value>,
            >(token)
            {
                Ok(claims) if !claims.get("sub").is_some_and(serde_json::Value::is_string) => {
                    AuthError::Claims(ClaimsError::Missing("sub"))
                }
                Ok(claims) if !claims.get("exp").is_some_and(serde_json::Value::is_u64) => {
                    AuthError::Claims(ClaimsError::Missing("exp"))
                }
                _ => AuthError::Malformed,
            },
            _ => AuthError::Malformed,
        }
    }
}

/// The claims a refusal quotes, read without verifying: only after the signature has
/// verified (so they are the issuer's), and only to explain.
#[derive(Debug, Default, Deserialize)]
struct Said {
    exp: Option<u64>,
    nbf: Option<u64>,
    iss: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
}

impl Said {
    fn read(token: &str) -> Self {
        jsonwebtoken::dangerous::insecure_decode_claims::<Said>(token).unwrap_or_default()
    }

    fn iss(&self) -> Option<String> {
        self.iss.as_ref().map(quote)
    }

    fn aud(&self) -> Option<String> {
        self.aud.as_ref().map(quote)
    }
}

/// A claim's value as a message shows it: JSON, at most `QUOTED` characters.
fn quote(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut cut: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(QUOTED)
        .collect();
    if text.chars().count() > QUOTED {
        cut.push('…');
    }
    cut
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed => f.write_str("the token is malformed (not a JWT)"),
            AuthError::UnknownKey => f.write_str("no key has the token's kid"),
            AuthError::WrongAlgorithm => f.write_str("no key for the token's algorithm"),
            AuthError::BadSignature => f.write_str("the token's signature is invalid"),
            AuthError::Expired { exp: Some(exp) } => write!(
                f,
                "the token has expired: exp {exp} is {} s ago; get a fresh token",
                unix_now().saturating_sub(*exp)
            ),
            AuthError::Expired { exp: None } => {
                f.write_str("the token has expired; get a fresh token")
            }
            AuthError::NotYetValid { nbf: Some(nbf) } => write!(
                f,
                "the token is not valid before nbf {nbf}, {} s from now (check the clocks)",
                nbf.saturating_sub(unix_now())
            ),
            AuthError::NotYetValid { nbf: None } => f.write_str("the token is not valid yet"),
            AuthError::Claims(claims) => claims.fmt(f),
            AuthError::Blocked { until: Some(until) } => write!(
                f,
                "the user is blocked until {until} (Unix seconds), {} s from now",
                until.saturating_sub(unix_now())
            ),
            AuthError::Blocked { until: None } => f.write_str("the user is blocked"),
            AuthError::Revoked {
                issued_before: None,
            } => f.write_str("the token is revoked"),
            AuthError::TooManyConnections { max } => write!(
                f,
                "the user holds {max} connections already (limits.max_connections_per_user)"
            ),
            AuthError::Revoked {
                issued_before: Some(before),
            } => write!(
                f,
                "the user's tokens issued before {before} (Unix seconds) are revoked: get a new one"
            ),
        }
    }
}

impl fmt::Display for ClaimsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimsError::Missing(claim @ ("sub" | "exp")) => write!(
                f,
                "the token has no `{claim}` claim (`sub`: a string, `exp`: Unix seconds)"
            ),
            ClaimsError::Missing(claim) => write!(f, "the token has no `{claim}` claim"),
            ClaimsError::Issuer(Some(iss)) => {
                write!(f, "issuer `{iss}` is not accepted here (auth.issuer)")
            }
            ClaimsError::Issuer(None) => f.write_str("the token has no `iss` claim"),
            ClaimsError::Audience(Some(aud)) => {
                write!(f, "audience `{aud}` is not accepted here (auth.audience)")
            }
            ClaimsError::Audience(None) => f.write_str("the token has no `aud` claim"),
            ClaimsError::EmptySubject => f.write_str("the token's `sub` is empty"),
            ClaimsError::EndlessExpiry => f.write_str("the token's `exp` is past the year 9999"),
            ClaimsError::TooLong { exp, max_ttl } => write!(
                f,
                "the token's `exp` ({exp}) is more than {max_ttl} s ahead (auth.max_token_ttl): \
                 issue shorter-lived tokens"
            ),
            ClaimsError::LongJti => f.write_str("the token's `jti` is longer than 256 bytes"),
        }
    }
}

impl std::error::Error for AuthError {}
