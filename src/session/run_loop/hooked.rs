//! What a session asks the application backend (`hooks`): whether it may subscribe, read
//! history or presence, or publish where a namespace rule is `hook` (a publish's `data` may
//! come back replaced), `rpc` requests, and a fresh identity before the connect hook's
//! expires. Every request names the connection, the node and the user.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Session;
use crate::{
    auth::{self, Action, Decision},
    hooks::{Answer, Hook, Hooks, connect},
    hub::{FramedText, Op, Outbound, SessionCommand},
    protocol::{self, ChannelName, CloseCode, ErrorCode},
    telemetry,
};

#[derive(Serialize)]
struct ChannelRequest<'a> {
    conn_id: u64,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    channel: &'a str,
    /// `subscribe`, `history` or `presence`.
    action: &'static str,
}

#[derive(Serialize)]
struct PublishRequest<'a> {
    conn_id: u64,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    channel: &'a str,
    /// `publish`, `append`, `finish`, `update` or `delete`.
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

#[derive(Serialize)]
struct RpcRequest<'a> {
    conn_id: u64,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    method: &'a str,
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct RefreshRequest<'a> {
    conn_id: u64,
    node: &'a str,
    user: &'a str,
}

/// A publish hook's or an rpc's `result`: `data` replaces the client's (publish) or is the
/// reply (rpc).
#[derive(Deserialize)]
struct DataResult {
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// How long before an identity expires the refresh hook is asked, at most; and how soon it
/// is asked again when it could not answer.
const REFRESH_AHEAD: Duration = Duration::from_secs(10);
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// A refresh timer's longest sleep before it checks its connection is still there.
const REFRESH_STEP: Duration = Duration::from_secs(30);

/// Sends `text` to a connection from outside its session (an rpc's task): enqueued, and
/// written at once when the lane was free (as a publisher writes). A full queue closes the
/// connection as a slow consumer.
fn send(outbound: &Outbound, text: String) {
    if let Ok(true) = outbound.enqueue(&FramedText::from(text)) {
        outbound.flush();
    }
}

impl Session {
    fn hooks(&self) -> Option<&Arc<Hooks>> {
        self.ctx.hooks.as_ref()
    }

    /// Whether the namespaces, or for a `hook` rule the backend, let this connection do
    /// `action` on `channel`; answers `forbidden` (or what the backend said) when not.
    pub(super) async fn permitted(
        &self,
        id: Option<u64>,
        channel: &ChannelName,
        action: Action,
    ) -> bool {
        let decision =
            self.ctx
                .settings
                .namespaces
                .decide(channel.as_str(), action, self.identity());
        match decision {
            Decision::Allow => true,
            Decision::Deny => {
                self.forbidden(id, action);
                false
            }
            Decision::Hook => {
                let request = ChannelRequest {
                    conn_id: self.outbound.conn_id(),
                    node: &self.ctx.node_id,
                    user: self.user(),
                    channel: channel.as_str(),
                    action: action.label(),
                };
                let hook = if action == Action::Publish {
                    Hook::Publish
                } else {
                    Hook::Subscribe
                };
                self.ask(id, hook, &request).await.is_some()
            }
        }
    }

    /// Refuses `action` with `forbidden`.
    pub(super) fn forbidden(&self, id: Option<u64>, action: Action) {
        telemetry::forbidden(action.label());
        if let Some(suppressed) = telemetry::refusal_loggable(telemetry::Refused::Forbidden) {
            tracing::info!(
                conn_id = self.outbound.conn_id(),
                user = self.user().unwrap_or(""),
                action = action.label(),
                suppressed,
                "Forbidden by the namespaces ([[namespaces]])"
            );
        }
        let message = match action {
            Action::Subscribe => "not allowed to subscribe to this channel",
            Action::Publish => "not allowed to publish to this channel",
            Action::History => "not allowed to read this channel's history (`since`)",
            Action::Presence => "not allowed to read this channel's presence",
        };
        self.error(id, ErrorCode::Forbidden, message);
    }

    /// What the namespaces say about this connection publishing to (or changing a message
    /// of) `channel`: `None` when refused (answered `forbidden`).
    pub(super) fn publish_decision(
        &self,
        id: Option<u64>,
        channel: &ChannelName,
    ) -> Option<Decision> {
        let decision =
            self.ctx
                .settings
                .namespaces
                .decide(channel.as_str(), Action::Publish, self.identity());
        if decision == Decision::Deny {
            self.forbidden(id, Action::Publish);
            return None;
        }
        Some(decision)
    }

    /// Asks the publish hook about `op` on `channel` (a `hook` publish rule): `None` when
    /// refused (answered); else the `data` the backend put in place of the client's, if it
    /// did.
    pub(super) async fn ask_publish_hook(
        &self,
        id: Option<u64>,
        channel: &ChannelName,
        op: &Op<'_>,
    ) -> Option<Option<Box<RawValue>>> {
        let (kind, message_id, data, text) = match *op {
            Op::Publish {
                data, message_id, ..
            } => ("publish", message_id, Some(data), None),
            Op::Append { message_id, text } => ("append", Some(message_id), None, Some(text)),
            Op::Finish { message_id, data } => ("finish", Some(message_id), data, None),
            Op::Update {
                message_id,
                data,
                text,
            } => ("update", Some(message_id), data, text),
            Op::Delete { message_id } | Op::Abandon { message_id, .. } => {
                ("delete", Some(message_id), None, None)
            }
        };
        // Raw JSON the decoder checked; refused rather than published unasked if not.
        let data = match data.map(serde_json::from_str::<&RawValue>) {
            Some(Ok(data)) => Some(data),
            Some(Err(_)) => {
                self.error(id, ErrorCode::BadRequest, "`data` is not valid JSON");
                return None;
            }
            None => None,
        };
        let request = PublishRequest {
            conn_id: self.outbound.conn_id(),
            node: &self.ctx.node_id,
            user: self.user(),
            channel: channel.as_str(),
            op: kind,
            message_id,
            data,
            text,
        };
        let result = self.ask(id, Hook::Publish, &request).await?;
        let replaced = serde_json::from_str::<DataResult>(result.get())
            .ok()
            .and_then(|result| result.data)
            // Only where the operation carries `data`.
            .filter(|_| data.is_some());
        if replaced
            .as_ref()
            .is_some_and(|data| data.get().len() > self.ctx.settings.max_publish_payload_bytes)
        {
            self.error(
                id,
                ErrorCode::LimitExceeded,
                "the data the application put in place is too large",
            );
            return None;
        }
        Some(replaced)
    }

    /// Asks `hook` about `request`; its result when allowed. A refusal answers `forbidden`
    /// with the backend's message, a disconnect closes the connection, a failure answers
    /// `unavailable`.
    async fn ask(
        &self,
        id: Option<u64>,
        hook: Hook,
        request: &impl Serialize,
    ) -> Option<Box<RawValue>> {
        let hooks = self.hooks()?;
        let Ok(body) = serde_json::to_vec(request) else {
            self.error(id, ErrorCode::Internal, "the request could not be encoded");
            return None;
        };
        match hooks.call(hook, body).await {
            Ok(Answer::Allowed(result)) => Some(result),
            Ok(Answer::Refused(message)) => {
                telemetry::forbidden(hook.label());
                self.error(id, ErrorCode::Forbidden, &message);
                None
            }
            Ok(Answer::Disconnect { code, reason }) => {
                self.disconnect_by_hook(code, &reason);
                None
            }
            Err(failure) => {
                self.error(id, ErrorCode::Unavailable, &failure.message());
                None
            }
        }
    }

    /// Closes the connection as the backend said: its reason in an `error` frame, then its
    /// code.
    pub(in crate::session) fn disconnect_by_hook(&self, code: u16, reason: &str) {
        self.error(None, ErrorCode::Forbidden, reason);
        self.outbound
            .close(CloseCode::from_code(code).unwrap_or(CloseCode::Custom(code)));
    }

    /// Whether `rpc` frames reach a backend here (`[hooks]` has an rpc hook).
    pub(super) fn serves_rpc(&self) -> bool {
        self.hooks().is_some_and(|hooks| hooks.has(Hook::Rpc))
    }

    /// `{"type":"rpc"}`: asks the backend in a task of its own (the session reads on), at
    /// most `hooks.max_rpc_in_flight_per_connection` at once; the answer is an `rpc_result`
    /// with the request's `id`, or an `error`.
    pub(super) fn rpc(&self, id: Option<u64>, method: &str, data: Option<&RawValue>) {
        let Some(hooks) = self.hooks().filter(|hooks| hooks.has(Hook::Rpc)) else {
            return self.error(
                id,
                ErrorCode::NotFound,
                "rpc is not configured on this server",
            );
        };
        let conn_id = self.outbound.conn_id();
        let Some(slot) = hooks.rpc_slot(conn_id) else {
            return self.error(
                id,
                ErrorCode::LimitExceeded,
                "too many rpc requests in flight on this connection",
            );
        };
        let request = RpcRequest {
            conn_id,
            node: &self.ctx.node_id,
            user: self.user(),
            method,
            data,
        };
        let Ok(body) = serde_json::to_vec(&request) else {
            return self.error(id, ErrorCode::Internal, "the request could not be encoded");
        };
        let hooks = Arc::clone(hooks);
        let outbound = Arc::clone(&self.outbound);
        tokio::spawn(async move {
            let _slot = slot;
            let reply = match hooks.call(Hook::Rpc, body).await {
                Ok(Answer::Allowed(result)) => {
                    let data = serde_json::from_str::<DataResult>(result.get())
                        .ok()
                        .and_then(|result| result.data);
                    protocol::encode_rpc_result(id, data.as_deref().map_or("null", RawValue::get))
                }
                Ok(Answer::Refused(message)) => {
                    protocol::encode_error(id, ErrorCode::Forbidden, &message)
                }
                Ok(Answer::Disconnect { code, reason }) => {
                    let error = protocol::encode_error(None, ErrorCode::Forbidden, &reason);
                    send(&outbound, error);
                    outbound.close(CloseCode::from_code(code).unwrap_or(CloseCode::Custom(code)));
                    return;
                }
                Err(failure) => {
                    protocol::encode_error(id, ErrorCode::Unavailable, &failure.message())
                }
            };
            send(&outbound, reply);
        });
    }

    /// After an identity from the connect hook with an expiry: asks the refresh hook
    /// [`REFRESH_AHEAD`] before it (or halfway, for a short one), or after [`REFRESH_RETRY`]
    /// when the hook could not answer (`retry`); without a refresh hook the connection
    /// closes with 4004 at the expiry (`Session::authenticated`'s deadline) and the client
    /// reconnects, asking the connect hook again. The timer is a task that wakes at least
    /// every [`REFRESH_STEP`] and ends once the connection has: an identity may hold for a
    /// day, its connection much less.
    pub(in crate::session) fn schedule_refresh(&self, retry: bool) {
        if !self.hooks().is_some_and(|hooks| hooks.has(Hook::Refresh)) {
            return;
        }
        let Some(identity) = self
            .identity()
            .filter(|identity| identity.exp != auth::MAX_EXP)
        else {
            return;
        };
        let left = Duration::from_secs(auth::seconds_until(identity.exp));
        let wait = if retry {
            REFRESH_RETRY
        } else {
            left.saturating_sub(REFRESH_AHEAD.min(left / 2))
        };
        let hub = self.ctx.hub.clone();
        let conn_id = self.outbound.conn_id();
        let outbound = Arc::downgrade(&self.outbound);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + wait;
            loop {
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                tokio::time::sleep((until - now).min(REFRESH_STEP)).await;
                if outbound
                    .upgrade()
                    .is_none_or(|outbound| outbound.is_closing())
                {
                    return;
                }
            }
            hub.command_conn(conn_id, SessionCommand::RefreshIdentity);
        });
    }

    /// [`SessionCommand::RefreshIdentity`]: asks the refresh hook; a new identity for the
    /// same user replaces the old one (its rights too: subscriptions it no longer allows
    /// end); a refusal closes with 4004; a failure asks again shortly, until the expiry
    /// closes the connection.
    pub(super) async fn refresh_by_hook(&mut self) {
        let (Some(hooks), Some(user)) = (self.hooks().cloned(), self.user().map(Arc::<str>::from))
        else {
            return;
        };
        let request = RefreshRequest {
            conn_id: self.outbound.conn_id(),
            node: &self.ctx.node_id,
            user: &user,
        };
        let Ok(body) = serde_json::to_vec(&request) else {
            return;
        };
        match hooks.call(Hook::Refresh, body).await {
            Ok(Answer::Allowed(result)) => match connect::identity(&result, Some(&user)) {
                Ok(Some(identity)) if identity.user == user => {
                    if let Err(err) = self.check_allowed(&identity) {
                        return self.unauthorized(None, err);
                    }
                    let exp = identity.exp;
                    self.authenticated(identity);
                    self.send(protocol::encode_authenticated(
                        "refreshed",
                        None,
                        &user,
                        exp,
                    ));
                    self.recheck();
                    self.schedule_refresh(false);
                }
                Ok(_) => {
                    telemetry::auth("other_user");
                    self.error(
                        None,
                        ErrorCode::Unauthorized,
                        "a refresh must be for the same user",
                    );
                    self.outbound.close(CloseCode::Unauthorized);
                }
                Err(_) => self.schedule_refresh(true),
            },
            Ok(Answer::Refused(message)) => {
                telemetry::auth("refresh_refused");
                self.error(None, ErrorCode::Unauthorized, &message);
                self.outbound.close(CloseCode::TokenExpired);
            }
            Ok(Answer::Disconnect { code, reason }) => self.disconnect_by_hook(code, &reason),
            Err(_) => self.schedule_refresh(true),
        }
    }
}
