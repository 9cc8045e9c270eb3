//! A connection's start, right after the upgrade: who it is (the connect hook's answer when
//! it is asked, else its token's identity, or nobody), the `welcome`, and the refusal when
//! it is refused (its token: 4003; the hook: its message and 4003, its own code, or a
//! `reconnect` frame and 1013 when the backend is busy or failing).

use super::{
    SessionContext, duration_ms,
    hooked::{self, ConnectInputs, Connected},
    run_loop,
};
use crate::{
    auth::AuthError,
    hub::{FramedText, Outbound},
    protocol::{self, CloseCode, ErrorCode},
    telemetry,
};

/// Who a connection says it is, as the upgrade brought it: a token, and what the connect
/// hook is sent when it is asked. Boxed, and only when there is either: the session's
/// task keeps a pointer for its whole life, not the token.
pub(super) struct Start {
    pub token: Option<String>,
    pub connect: Option<Box<ConnectInputs>>,
    /// The peer's source, where a publish limit per address needs it.
    pub source: Option<std::net::IpAddr>,
}

/// Why a connection is refused at its start, told after the welcome.
enum Refused {
    /// Its token (4003).
    Token(AuthError),
    /// The connect hook's answer or failure.
    Hook(Connected),
}

impl Refused {
    fn tell(self, session: &run_loop::Session, outbound: &Outbound) {
        match self {
            Refused::Token(err) => session.unauthorized(None, err),
            Refused::Hook(Connected::Refused(message)) => {
                telemetry::auth("hook_refused");
                session.error(None, ErrorCode::Unauthorized, &message);
                outbound.close(CloseCode::Unauthorized);
            }
            Refused::Hook(Connected::Disconnect { code, reason }) => {
                telemetry::auth("hook_disconnect");
                session.disconnect_by_hook(code, &reason);
            }
            Refused::Hook(Connected::Unavailable(failure)) => {
                telemetry::auth("hook_unavailable");
                // Spread over 1-5 s, so that a storm's clients do not all come back at once.
                let after_ms = rand::random_range(1000..5000);
                let _ = outbound.try_enqueue(&FramedText::from(protocol::encode_reconnect(
                    "backend_unavailable",
                    after_ms,
                )));
                session.error(None, ErrorCode::Unavailable, &failure.message());
                outbound.close(CloseCode::TryAgainLater);
            }
            Refused::Hook(Connected::Allowed(_)) => {}
        }
    }
}

/// The connection's start: who it is ([`identify`]), the welcome, and the refusal when it
/// is refused or, with `auth.required` and nobody identified, the deadline for `auth`.
pub(super) async fn greet(
    session: &mut run_loop::Session,
    ctx: &SessionContext,
    outbound: &Outbound,
    start: Option<Box<Start>>,
) {
    let conn_id = outbound.conn_id();
    let refused = identify(session, ctx, conn_id, start).await;
    let heartbeat_ms = u64::try_from(ctx.settings.heartbeat.as_millis()).unwrap_or(u64::MAX);
    let welcome = protocol::encode_welcome(
        conn_id,
        &ctx.node_id,
        heartbeat_ms,
        session.user(),
        session.server_subs(),
    );
    // A fresh queue always has room for the welcome.
    let _ = outbound.try_enqueue(&FramedText::from(welcome));
    if let Some(refused) = refused {
        refused.tell(session, outbound);
    } else if session.user().is_none() && ctx.settings.auth_required {
        ctx.hub.set_deadline(
            outbound,
            ctx.hub
                .clock_ms()
                .saturating_add(duration_ms(ctx.settings.auth_timeout)),
            CloseCode::Unauthorized,
        );
    }
}

/// Who the connection is: the connect hook's answer when it is asked, else its token's
/// identity (or nobody). `Some` when the connection must be refused.
async fn identify(
    session: &mut run_loop::Session,
    ctx: &SessionContext,
    conn_id: u64,
    start: Option<Box<Start>>,
) -> Option<Refused> {
    let Start {
        token,
        connect,
        source,
    } = *start?;
    session.set_source(source);
    if let (Some(inputs), Some(hooks)) = (connect, &ctx.hooks) {
        return match hooked::connect(hooks, conn_id, &inputs, token.as_deref()).await {
            Connected::Allowed(identity) => {
                if let Some(identity) = identity {
                    if let Err(err) = session.check_and_admit(&identity).await {
                        return Some(Refused::Token(err));
                    }
                    session.authenticated(identity);
                    session.schedule_refresh(false);
                }
                None
            }
            refused => Some(Refused::Hook(refused)),
        };
    }
    match (token, &ctx.auth) {
        // It may wait for a JWKS fetch.
        (Some(token), Some(auth)) => {
            let verified = match auth.authenticate(&token).await {
                Ok(identity) => session.check_and_admit(&identity).await.map(|()| identity),
                Err(err) => Err(err),
            };
            match verified {
                Ok(identity) => {
                    session.authenticated(identity);
                    None
                }
                Err(err) => Some(Refused::Token(err)),
            }
        }
        // Without keys, tokens are not checked (and give nobody any right).
        _ => None,
    }
}
