//! One session of a socket: from the upgrade to its end, its subscribes and what the
//! server sends.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::Instant};

use super::{GLOBAL, ROOM, Shared, stats::Stats, unix_now};
use crate::{
    million::{
        Offset,
        wire::{self, Event},
    },
    now_ns,
};

/// Subscribes answered with an error that are sent again, per session and channel.
pub(super) const MAX_SUBSCRIBE_RETRIES: u32 = 20;
/// A session that has not got both channels by then ends (and the socket tries another
/// node), so that a stuck one cannot hold a ramp slot for ever.
pub(super) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Broadcast numbers tracked.
pub(super) const MAX_BROADCASTS: usize = 1000;

/// The frames the server sends, as far as the run reads them.
#[derive(Debug, Deserialize)]
pub(super) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    channel: Option<&'a str>,
    #[serde(default, borrow)]
    offset: Option<&'a str>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    after_ms: Option<u64>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// What the publishers put in `data`: the send time (CLOCK_REALTIME, ns) and, for
/// broadcasts, their number.
#[derive(Debug, Deserialize)]
pub(super) struct Stamp {
    ts: u64,
    #[serde(default)]
    n: Option<u64>,
}

/// How a session ended.
pub(super) enum End {
    Closed(u16),
    Eof,
    Refused(u16),
    Failed(String),
}

/// One session's progress.
#[derive(Default)]
pub(super) struct Session {
    /// The socket was never subscribed before: this is its ramp connect, not a resume.
    pub(super) first: bool,
    /// Channels subscribed in this session.
    pub(super) subscribed: [bool; 2],
    /// Subscribes to send (again).
    pub(super) to_send: [bool; 2],
    pub(super) retries: [u32; 2],
    /// A subscribe to retry after a pause (answered with an error).
    pub(super) retry_at: Option<Instant>,
    pub(super) after_ms: Option<u64>,
    pub(super) closed: Option<u16>,
}

/// A session from `welcome` to its end: subscribes (with `since` when a position is held),
/// checks what arrives.
pub(super) async fn run_session(
    shared: &Shared,
    local: usize,
    room: &str,
    mut stream: TcpStream,
    mut left: Vec<u8>,
    session: &mut Session,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> End {
    let mut replies = Vec::new();
    let subscribe_by = Instant::now() + SUBSCRIBE_TIMEOUT;
    // What the upgrade's read brought beyond the head.
    let used = wire::parse(&left, &mut replies, &mut |event| {
        on_event(shared, local, room, session, event);
    });
    left.drain(..used);
    loop {
        // Subscribes owed (after `welcome`, or a retry that is due).
        let due = session.retry_at.is_none_or(|at| Instant::now() >= at);
        if due && session.to_send.contains(&true) {
            session.retry_at = None;
            let positions = shared.positions.borrow()[local];
            for (which, channel) in [(ROOM, room), (GLOBAL, shared.args.global.as_str())] {
                if std::mem::take(&mut session.to_send[which]) {
                    let since = positions[which]
                        .get()
                        .map(|at| format!(r#","since":"{:016x}-{}""#, at.epoch, at.seq))
                        .unwrap_or_default();
                    let frame = format!(
                        r#"{{"type":"subscribe","id":{},"channel":"{channel}"{since}}}"#,
                        which + 1
                    );
                    wire::text(&frame, &mut replies);
                }
            }
        }
        if let Some(code) = session.closed {
            wire::close(code, &mut replies);
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&replies)).await;
            return End::Closed(code);
        }
        if !replies.is_empty() {
            if let Err(err) = stream.write_all(&replies).await {
                return End::Failed(format!("io_{:?}", err.kind()));
            }
            replies.clear();
        }
        if session.subscribed == [true, true] {
            // The ramp's next socket may start upgrading.
            drop(permit.take());
        }
        let subscribed = session.subscribed == [true, true];
        if !subscribed && Instant::now() >= subscribe_by {
            return End::Failed("subscribe_timeout".to_owned());
        }
        // Wake for a retry that is due, or to give up on a session that never subscribes.
        let wake = match (session.retry_at, subscribed) {
            (Some(retry), false) => Some(retry.min(subscribe_by)),
            (retry, true) => retry,
            (None, false) => Some(subscribe_by),
        };
        let read = {
            let mut on = |event: Event<'_>| on_event(shared, local, room, session, event);
            tokio::select! {
                read = wire::read(&stream, &shared.scratch, &mut left, &mut replies, &mut on) => Some(read),
                () = sleep_until_some(wake) => None,
            }
        };
        match read {
            None => {}
            Some(Ok(wire::Read::More)) => {}
            Some(Ok(wire::Read::Eof)) => return End::Eof,
            Some(Err(err)) => return End::Failed(format!("io_{:?}", err.kind())),
        }
    }
}

pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One frame from the server.
pub(super) fn on_event(
    shared: &Shared,
    local: usize,
    room: &str,
    session: &mut Session,
    event: Event<'_>,
) {
    let text = match event {
        Event::Close(code) => {
            session.closed = Some(code);
            return;
        }
        Event::Text(text) => text,
    };
    let Ok(frame) = serde_json::from_slice::<Frame<'_>>(text) else {
        shared.stats.borrow_mut().unparsed += 1;
        return;
    };
    let which = |channel: Option<&str>| match channel {
        Some(channel) if channel == room => Some(ROOM),
        Some(channel) if channel == shared.args.global => Some(GLOBAL),
        _ => None,
    };
    match frame.kind {
        "message" => {
            let (Some(which), Some(offset)) =
                (which(frame.channel), frame.offset.and_then(Offset::parse))
            else {
                shared.stats.borrow_mut().unparsed += 1;
                return;
            };
            let mut stats = shared.stats.borrow_mut();
            let fresh = shared.positions.borrow_mut()[local][which]
                .message(offset, &mut stats.losses[which]);
            if !fresh {
                return;
            }
            stats.delivered[which] += 1;
            let stamp = frame
                .data
                .and_then(|data| serde_json::from_str::<Stamp>(data.get()).ok());
            let Some(stamp) = stamp else {
                return;
            };
            let micros = (now_ns().saturating_sub(stamp.ts) / 1000).max(1);
            if which == ROOM {
                stats.last_room_delivery = Instant::now();
                let second = stats.second();
                second.room_deliveries += 1;
                let _ = second.room_latency.record(micros);
            } else if let Some(n) = stamp.n.and_then(|n| usize::try_from(n).ok()) {
                if n < MAX_BROADCASTS {
                    if stats.broadcasts.len() <= n {
                        stats.broadcasts.resize_with(n + 1, || None);
                    }
                    let (deliveries, latency) = stats.broadcasts[n]
                        .get_or_insert_with(|| (0, crate::million::latency_histogram()));
                    *deliveries += 1;
                    let _ = latency.record(micros);
                }
            }
        }
        "subscribed" => {
            let Some(which) = which(frame.channel) else {
                return;
            };
            let Some(offset) = frame.offset.and_then(Offset::parse) else {
                shared.stats.borrow_mut().unparsed += 1;
                return;
            };
            let mut stats = shared.stats.borrow_mut();
            shared.positions.borrow_mut()[local][which].subscribed(
                offset,
                frame.recovered,
                &mut stats.losses[which],
            );
            session.subscribed[which] = true;
            if session.subscribed == [true, true] {
                stats.subscribed_now += 1;
                let first = session.first;
                let second = stats.second();
                if first {
                    second.connects += 1;
                } else {
                    second.resumes += 1;
                }
                if !first {
                    stats.resumed += 1;
                } else {
                    stats.first_subscribed += 1;
                    if stats.first_subscribed == shared.positions.borrow().len() {
                        stats.ramp_done_unix = unix_now();
                    }
                }
            }
        }
        "reset" => {
            let (Some(which), Some(offset)) =
                (which(frame.channel), frame.offset.and_then(Offset::parse))
            else {
                return;
            };
            let mut stats = shared.stats.borrow_mut();
            shared.positions.borrow_mut()[local][which].reset(offset, &mut stats.losses[which]);
        }
        "welcome" => {
            session.to_send = [true, true];
        }
        "join" => shared.stats.borrow_mut().joins += 1,
        "leave" => shared.stats.borrow_mut().leaves += 1,
        "reconnect" => {
            session.after_ms = frame.after_ms;
            shared.stats.borrow_mut().reconnect_frames += 1;
        }
        "error" => {
            let Some(id) = frame.id.and_then(|id| usize::try_from(id).ok()) else {
                return;
            };
            let code = frame.code.unwrap_or("unknown").to_owned();
            Stats::count(&mut shared.stats.borrow_mut().subscribe_errors, code);
            if let Some(which) = id.checked_sub(1).filter(|&which| which < 2)
                && session.retries[which] < MAX_SUBSCRIBE_RETRIES
            {
                session.retries[which] += 1;
                session.to_send[which] = true;
                session.retry_at = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        _ => {}
    }
}
