//! The connect hook, asked once per connection right after the upgrade (`hooks.connect_url`):
//! who the connection is, from what its upgrade request brought.

use std::net::IpAddr;

use crate::{
    auth::Identity,
    hooks::{
        Answer, Failure, Hook, Hooks,
        connect::{self, Cache, ConnectRequest},
    },
};

use super::upgrade::Forwarded;

/// What the connect hook is sent of an upgrade, kept from the upgrade to the session's start
/// (boxed: only while the hook is asked).
#[derive(Debug)]
pub(super) struct ConnectInputs {
    pub headers: Forwarded,
    pub query: Forwarded,
    pub peer: Option<IpAddr>,
}

/// The connect hook's decision.
#[derive(Debug)]
pub(super) enum Connected {
    /// Allowed: who the connection is (`None`: anonymous).
    Allowed(Option<Identity>),
    /// `{"error"}`: the client gets `unauthorized` with this message, then close 4003.
    Refused(String),
    /// `{"disconnect"}`: closed with this code, the reason in an `error` frame first.
    Disconnect { code: u16, reason: String },
    /// Not asked or not answered: close 1013 with a `reconnect` frame.
    Unavailable(Failure),
}

/// Asks the connect hook about connection `conn_id` (or answers from the connect cache).
pub(super) async fn connect(
    hooks: &Hooks,
    conn_id: u64,
    inputs: &ConnectInputs,
    token: Option<&str>,
) -> Connected {
    let request = ConnectRequest {
        conn_id,
        node: hooks.node(),
        remote_addr: inputs.peer.map(|peer| peer.to_string()),
        headers: &inputs.headers,
        query: &inputs.query,
        token,
    };
    let cached = hooks
        .connect_cache()
        .map(|cache| (cache, Cache::key(&request)));
    if let Some((cache, key)) = &cached
        && let Some(result) = cache.get(key)
        && let Ok(identity) = connect::identity(&result, None)
    {
        crate::telemetry::hook_request(Hook::Connect.label(), "cached", None);
        return Connected::Allowed(identity);
    }
    let Ok(body) = serde_json::to_vec(&request) else {
        return Connected::Unavailable(Failure::Transport);
    };
    match hooks.call(Hook::Connect, body).await {
        Ok(Answer::Allowed(result)) => match connect::identity(&result, None) {
            Ok(identity) => {
                if let Some((cache, key)) = cached {
                    cache.put(key, result);
                }
                Connected::Allowed(identity)
            }
            Err(err) => {
                tracing::warn!(%err, "The connect hook's result is not valid");
                Connected::Unavailable(Failure::BadAnswer)
            }
        },
        Ok(Answer::Refused(message)) => Connected::Refused(message),
        Ok(Answer::Disconnect { code, reason }) => Connected::Disconnect { code, reason },
        Err(failure) => Connected::Unavailable(failure),
    }
}
