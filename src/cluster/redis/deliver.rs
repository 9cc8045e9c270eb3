//! Handing what the bus readers read to the hub: messages, operations on messages, events
//! and requests to users and connections, in the order of the stream; used by the partition
//! readers (`follow`) and by the read of the log for what an inbox missed (`interest`).

use redis::Value;

use super::{
    Inner,
    entries::{BusEntry, OpEntry, Request},
    unix_ms,
    values::as_string,
};
use crate::{
    hub::WriteBatch,
    protocol::{CloseCode, Offset},
    telemetry,
};

/// Entries one `XREAD` (or a log read after lost interest) returns at most.
pub(super) const READ_COUNT: usize = 512;

/// Hands one `XREAD` reply to the hub. Returns the last entry id, if any.
pub(super) fn deliver_batch(inner: &Inner, value: Value) -> Option<String> {
    // Reply shape: [[key, [[id, [field, value, ...]], ...]]], or nil on timeout.
    let Value::Array(streams) = value else {
        return None;
    };
    let mut last_id = None;
    let mut n_entries = 0_u32;
    // Written when the reply is handed over: a connection that several of its entries
    // reach gets one `writev`.
    let mut writes = inner.hub.write_batch();
    for stream in streams {
        let Value::Array(mut key_and_entries) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = key_and_entries.pop() else {
            continue;
        };
        last_id = deliver_entries(inner, entries, &mut writes, &mut n_entries).or(last_id);
    }
    telemetry::bus_read_batch(n_entries);
    last_id
}

/// Hands stream entries (`[id, [field, value, ...]]` each) to the hub, in order. Returns the
/// last entry id, if any; counts the entries in `n_entries`.
pub(super) fn deliver_entries(
    inner: &Inner,
    entries: Vec<Value>,
    writes: &mut WriteBatch,
    n_entries: &mut u32,
) -> Option<String> {
    let mut last_id = None;
    let now_ms = unix_ms();
    for entry in entries {
        let Value::Array(mut pair) = entry else {
            continue;
        };
        let Some(fields) = pair.pop() else { continue };
        let Some(id) = pair.pop().as_ref().and_then(as_string) else {
            continue;
        };
        *n_entries += 1;
        if let Some(request) = Request::parse(&fields, &inner.settings.node_id) {
            match request {
                Request::Event { channel, text } => {
                    inner.hub.announce(&channel, text, writes);
                }
                Request::Command { user, command } => {
                    inner.hub.command_user(&user, &command);
                }
                Request::Disconnect { user, code } => {
                    let closed = inner.hub.disconnect_user(&user, code);
                    tracing::info!(
                        %user,
                        closed,
                        code = code.code(),
                        "Disconnect of a user requested through the bus"
                    );
                }
                Request::Block { user, until } => {
                    inner.hub.blocks().block(&user, until);
                    let closed = inner.hub.disconnect_user(&user, CloseCode::Unauthorized);
                    tracing::info!(%user, ?until, closed, "User blocked through the bus");
                }
                Request::Unblock { user } => {
                    inner.hub.blocks().unblock(&user);
                }
                Request::Kick { process, conn_id } => {
                    if process == inner.inbox_name() {
                        inner.hub.disconnect(conn_id, CloseCode::TooManyConnections);
                    }
                }
                Request::Own => {}
            }
        } else if let Some(entry) = OpEntry::parse(&fields) {
            if let Some(op) = entry.op() {
                let offset = Offset {
                    epoch: entry.epoch,
                    seq: entry.seq,
                };
                if inner
                    .hub
                    .deliver_op_batched(&entry.channel, offset, &op, writes)
                    > 0
                {
                    let lag = now_ms.saturating_sub(entry.time_ms) as f64 / 1000.0;
                    telemetry::bus_lag(lag);
                }
            } else {
                tracing::warn!(%id, "Malformed operation entry skipped");
            }
        } else if let Some(message) = BusEntry::parse(&fields) {
            let offset = Offset {
                epoch: message.epoch,
                seq: message.seq,
            };
            if inner
                .hub
                .deliver_batched(&message.channel, offset, &message.data, writes)
                > 0
            {
                let lag = now_ms.saturating_sub(message.time_ms) as f64 / 1000.0;
                telemetry::bus_lag(lag);
            }
        } else {
            tracing::warn!(%id, "Malformed bus entry skipped");
        }
        last_id = Some(id);
    }
    last_id
}
