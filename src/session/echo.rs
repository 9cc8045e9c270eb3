//! The conformance echo endpoint: every text and binary message comes back as it was, on
//! the same upgrade, frame decoder and transport as real sessions. Off by default
//! (`session.echo_path`); the Autobahn fuzzingclient cases run against it. It has no frame
//! budgets (the suite sends floods on purpose), so never enable it in production. With
//! permessage-deflate negotiated, it inflates what the client compressed and compresses its
//! replies as the fan-out does (once per message, no context kept), so the suite's
//! compression cases check both directions.

use std::{future::poll_fn, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{CLOSE_TIMEOUT, End, socket::Socket};
use crate::{
    hub::Compression,
    protocol::{
        deflate::{self, Deflate},
        ws::{self, Inbound, Limits},
    },
};

/// The largest message the conformance suite sends (its 9.x cases go to 16 MiB).
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// `compression`: what the connection negotiated, with `[compression]`'s threshold and level.
pub(super) async fn run<S>(
    mut socket: Socket<S>,
    idle_timeout: Duration,
    compression: Option<(Compression, Deflate)>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits {
        max_message_bytes: MAX_MESSAGE_BYTES,
        // Case 9.4.1 sends a 4 MiB message in 64-byte fragments.
        max_fragments: u32::MAX,
        inflate: compression.is_some(),
    };
    let message = |text: bool, payload: &[u8]| {
        let opcode = if text { 0x81 } else { 0x82 };
        compression
            .filter(|(compression, _)| compression.applies_to(payload.len()))
            .and_then(|(compression, deflate)| {
                deflate::compress_frame(
                    opcode,
                    payload,
                    deflate.compress_bits(),
                    compression.level(),
                )
            })
            .unwrap_or_else(|| ws::message_frame(text, payload))
    };
    loop {
        let next = poll_fn(|cx| socket.poll_frame(cx, &limits));
        let Ok(next) = tokio::time::timeout(idle_timeout, next).await else {
            return;
        };
        let reply = match next {
            Ok(Inbound::Text(payload)) => message(true, payload.as_bytes()),
            Ok(Inbound::Binary(payload)) => message(false, &payload),
            Ok(Inbound::Ping(payload)) => ws::pong_frame(&payload),
            Ok(Inbound::Pong | Inbound::Fragment) => continue,
            Ok(Inbound::Close(code)) => {
                return close(&mut socket, End::ClientClosed(code)).await;
            }
            Err(end) => return close(&mut socket, end).await,
        };
        socket.stream.push(reply);
        if poll_fn(|cx| socket.stream.poll_write_out(cx))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn close<S>(socket: &mut Socket<S>, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(frame) = end.close_frame() else {
        return;
    };
    socket.stream.push(frame);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush_and_shutdown()).await;
}
