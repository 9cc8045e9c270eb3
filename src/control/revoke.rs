//! `POST /v1/revoke`: revoking a token by its `jti`, or a user's tokens issued before a time,
//! on every node (see `crate::revocations`).

use hyper::{Request, body::Incoming};
use serde::Deserialize;

use super::{
    ControlContext, JSON,
    error::{ApiError, Handled, Kind},
    fields,
    request::json_body,
    response,
};
use crate::{
    auth,
    blocks::unix_now,
    cluster::RevokeFailed,
    revocations::{self, Revocation, RevokeError},
};

// A token the node takes has a `jti` this request can name.
const _: () = assert!(auth::MAX_JTI_BYTES == revocations::MAX_JTI_BYTES);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    #[serde(default, deserialize_with = "fields::present")]
    jti: Option<String>,
    #[serde(default, deserialize_with = "fields::present")]
    user: Option<String>,
    /// Unix seconds; absent with `user`: now.
    #[serde(default, deserialize_with = "fields::whole_number")]
    issued_before: Option<u64>,
    /// Unix seconds; absent: for as long as a token it matches can live.
    #[serde(default, deserialize_with = "fields::whole_number")]
    until: Option<u64>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(Kind::Invalid, message)
}

/// The revocation a request asks for, its defaults filled in.
fn revocation(body: RevokeRequest, ctx: &ControlContext, now: u64) -> Result<Revocation, ApiError> {
    let max_ttl = ctx.settings.max_token_ttl.as_secs();
    match (body.jti, body.user) {
        (Some(jti), None) => {
            if body.issued_before.is_some() {
                return Err(invalid("`issued_before` goes with `user`, not with `jti`"));
            }
            Ok(Revocation::Token {
                jti,
                until: body.until.unwrap_or(now.saturating_add(max_ttl)),
            })
        }
        (None, Some(user)) => {
            let issued_before = body.issued_before.unwrap_or(now);
            // By then every token issued before `issued_before` has expired.
            let until = body.until.unwrap_or_else(|| {
                issued_before
                    .saturating_add(max_ttl)
                    .max(now.saturating_add(1))
            });
            Ok(Revocation::User {
                user,
                issued_before,
                until,
            })
        }
        _ => Err(invalid("give either `jti` or `user`, not both")),
    }
}

/// `POST /v1/revoke`: revokes on every node; answers what is revoked and how many of this
/// node's connections were asked to check their token (those holding a revoked one close
/// with 4003).
pub(super) async fn revoke(request: Request<Incoming>, ctx: &ControlContext) -> Handled {
    let body: RevokeRequest = json_body(request, ctx).await?;
    let now = unix_now();
    let revocation = revocation(body, ctx, now)?;
    let full = |err: RevokeError| ApiError::new(Kind::Full, err.to_string());
    ctx.hub
        .revocations()
        .check(&revocation, now)
        .map_err(|err| match err {
            RevokeError::Full(_) => full(err),
            _ => invalid(err.to_string()),
        })?;
    let checked = ctx.bus.revoke(&revocation).await.map_err(|err| match err {
        RevokeFailed::Bus(err) => ApiError::from(err),
        RevokeFailed::Refused(err) => full(err),
    })?;
    let mut answer = match &revocation {
        Revocation::Token { jti, until } => serde_json::json!({ "jti": jti, "until": until }),
        Revocation::User {
            user,
            issued_before,
            until,
        } => serde_json::json!({
            "user": user,
            "issued_before": issued_before,
            "until": until,
        }),
    };
    answer["checked_here"] = checked.into();
    Ok(response(200, JSON, answer.to_string()))
}
