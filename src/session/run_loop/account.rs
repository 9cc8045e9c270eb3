//! Who a connection is: a token accepted (`auth`) or refreshed (`refresh`), checked against
//! the block list, the revocations and the user's connection limit, and the subscriptions a
//! refreshed token no longer grants taken back.

use std::time::Duration;

use super::{Account, Session};
use crate::{
    auth::{self, Action, AuthError, Decision, Identity},
    protocol::{self, ChannelName, CloseCode, ErrorCode, UnsubscribeReason},
    revocations::Revoked,
    telemetry,
};

impl Session {
    /// Refuses an identity whose user is blocked (`POST /v1/block`) or whose token is
    /// revoked (`POST /v1/revoke`).
    pub(in crate::session) fn check_allowed(&self, identity: &Identity) -> Result<(), AuthError> {
        let (hub, now) = (&self.ctx.hub, auth::unix_now());
        if let Some(until) = hub.blocks().blocked(&identity.user, now) {
            return Err(AuthError::Blocked { until });
        }
        match hub
            .revocations()
            .revoked(&identity.user, identity.jti.as_deref(), identity.iat, now)
        {
            Some(revoked) => Err(AuthError::Revoked {
                issued_before: match revoked {
                    Revoked::Token => None,
                    Revoked::IssuedBefore(before) => Some(before),
                },
            }),
            None => Ok(()),
        }
    }

    /// Counts the connection as `identity`'s user's across the cluster
    /// (`limits.max_connections_per_user`); a refresh is counted already.
    pub(in crate::session) async fn admit_user(
        &self,
        identity: &Identity,
    ) -> Result<(), AuthError> {
        let Some(limit) = self.ctx.settings.user_limit else {
            return Ok(());
        };
        if self.account.is_some() {
            return Ok(());
        }
        let conn_id = self.outbound.conn_id();
        if self
            .ctx
            .bus
            .admit_user(&identity.user, conn_id, limit)
            .await
        {
            Ok(())
        } else {
            Err(AuthError::TooManyConnections { max: limit.max })
        }
    }

    /// Checks `identity` ([`Session::check_allowed`]) and counts it against its user's
    /// connections ([`Session::admit_user`]).
    pub(in crate::session) async fn check_and_admit(
        &self,
        identity: &Identity,
    ) -> Result<(), AuthError> {
        self.check_allowed(identity)?;
        self.admit_user(identity).await
    }

    /// [`SessionCommand::CheckRevoked`]: closes the connection with 4003 when its token was
    /// revoked since it was taken.
    pub(super) fn check_revoked(&self) {
        if let Some(identity) = self.identity()
            && let Err(err) = self.check_allowed(identity)
        {
            self.unauthorized(None, err);
        }
    }

    /// Indexes (or, `add: false`, unindexes) the connection under its token's `jti`, so
    /// that a revocation finds it.
    pub(in crate::session) fn index_token(&self, identity: &Identity, add: bool) {
        let Some(jti) = identity.jti.as_deref() else {
            return;
        };
        let hub = &self.ctx.hub;
        let key = hub.revocations().token_key(jti);
        if add {
            hub.add_token(key, self.outbound.conn_id());
        } else {
            hub.remove_token(key, self.outbound.conn_id());
        }
    }

    /// Takes `identity` as the connection's, and closes it with 4004 when its token expires
    /// (plus the leeway) unless a `refresh` comes first.
    pub(in crate::session) fn authenticated(&mut self, identity: Identity) {
        telemetry::auth("ok");
        let leeway = self
            .ctx
            .auth
            .as_ref()
            .map_or(Duration::ZERO, |auth| auth.leeway());
        let remaining = Duration::from_secs(auth::seconds_until(identity.exp)) + leeway;
        let at_ms = self
            .ctx
            .hub
            .clock_ms()
            .saturating_add(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX))
            .max(1);
        self.ctx
            .hub
            .set_deadline(&self.outbound, at_ms, CloseCode::TokenExpired);
        if let Some(old) = self.identity() {
            // A refresh: the old token is no longer held.
            self.index_token(old, false);
        }
        self.index_token(&identity, true);
        match &mut self.account {
            // A refresh: the same user.
            Some(account) => account.identity = identity,
            None => {
                self.ctx
                    .hub
                    .add_user(&identity.user, self.outbound.conn_id());
                self.account = Some(Box::new(Account {
                    identity,
                    by_backend: Vec::new(),
                }));
            }
        }
    }

    /// Refuses a token: `error` `unauthorized` saying why, then close 4003 (after what is
    /// queued); or `token_expired` and 4004 when it expired (a fresh token fixes that:
    /// clients get one and reconnect on their own). Logged at info, rate-limited, without the token.
    pub(in crate::session) fn unauthorized(&self, id: Option<u64>, err: AuthError) {
        telemetry::auth(err.label());
        let conn_id = self.outbound.conn_id();
        match telemetry::refusal_loggable(telemetry::Refused::Token) {
            Some(suppressed) => {
                tracing::info!(conn_id, reason = %err, suppressed, "Token refused");
            }
            None => tracing::debug!(conn_id, reason = %err, "Token refused"),
        }
        if err.is_expired() {
            self.error(id, ErrorCode::TokenExpired, &err.to_string());
            self.outbound.close(CloseCode::TokenExpired);
        } else if let AuthError::TooManyConnections { .. } = err {
            self.error(id, ErrorCode::LimitExceeded, &err.to_string());
            self.outbound.close(CloseCode::TooManyConnections);
        } else {
            self.error(id, ErrorCode::Unauthorized, &err.to_string());
            self.outbound.close(CloseCode::Unauthorized);
        }
    }

    /// `{"type":"auth"}`: authenticates a connection whose upgrade brought no token.
    pub(super) async fn authenticate(&mut self, id: Option<u64>, token: &str) {
        let Some(verifier) = self.ctx.auth.clone() else {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "authentication is not configured on this server",
            );
        };
        if self.account.is_some() {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "already authenticated; send `refresh` to replace the token",
            );
        }
        let verified = match verifier.authenticate(token).await {
            Ok(identity) => self.check_and_admit(&identity).await.map(|()| identity),
            Err(err) => Err(err),
        };
        match verified {
            Ok(identity) => {
                let reply = protocol::encode_authenticated(
                    "authenticated",
                    id,
                    &identity.user,
                    identity.exp,
                );
                self.authenticated(identity);
                self.send(reply);
                self.subscribe_server_side().await;
            }
            Err(err) => self.unauthorized(id, err),
        }
    }

    /// `{"type":"refresh"}`: a fresh token for the same user moves the expiry, and its rights
    /// replace the old token's (`recheck`).
    pub(super) async fn refresh(&mut self, id: Option<u64>, token: &str) {
        let (Some(verifier), true) = (self.ctx.auth.clone(), self.account.is_some()) else {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "not authenticated; send `auth` first",
            );
        };
        match verifier
            .authenticate(token)
            .await
            .and_then(|identity| self.check_allowed(&identity).map(|()| identity))
        {
            Ok(identity) if self.user() == Some(&*identity.user) => {
                let reply =
                    protocol::encode_authenticated("refreshed", id, &identity.user, identity.exp);
                self.authenticated(identity);
                self.send(reply);
                self.recheck();
            }
            Ok(_) => {
                telemetry::auth("other_user");
                self.error(
                    id,
                    ErrorCode::Unauthorized,
                    "a refresh token must be for the same user",
                );
                self.outbound.close(CloseCode::Unauthorized);
            }
            Err(err) => self.unauthorized(id, err),
        }
    }

    /// After a refresh: the new token's rights replace the old one's. Each subscription the
    /// namespaces no longer allow (a backend's excepted) ends as an unsubscribe does, with an
    /// `unsubscribed` frame without `id` giving the reason; where the connection stays a
    /// member, presence takes the new token's `info`.
    pub(super) fn recheck(&mut self) {
        let namespaces = &self.ctx.settings.namespaces;
        let identity = self.identity();
        let by_backend = self
            .account
            .as_deref()
            .map_or(&[][..], |account| account.by_backend.as_slice());
        let revoked: Vec<ChannelName> = self
            .subscriptions
            .iter()
            .filter(|channel| {
                // A `hook` rule's subscriptions stay: the backend allowed them.
                !by_backend.contains(channel)
                    && namespaces.decide(channel.as_str(), Action::Subscribe, identity)
                        == Decision::Deny
            })
            .cloned()
            .collect();
        for channel in &revoked {
            telemetry::forbidden(Action::Subscribe.label());
            self.drop_subscription(channel);
            self.send(protocol::encode_unsubscribed(
                None,
                channel,
                Some(UnsubscribeReason::Forbidden),
            ));
        }
        for channel in &self.subscriptions {
            if self
                .ctx
                .settings
                .namespaces
                .membership(channel.as_str())
                .is_some()
            {
                self.ctx.presence.refreshed(channel, self.member());
            }
        }
    }
}
