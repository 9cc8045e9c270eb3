//! Messages with ids on the Redis bus (see `docs/streams.md`, "Cluster"): running the
//! operation script, its answers, what a channel's read says of its open streams, and the
//! sweep that abandons idle streams whichever node they were opened on.

use std::{sync::atomic::Ordering, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{
    Inner,
    clock::unix_ms,
    inbox_prefix, open_key,
    read::ChannelRead,
    stored::{StoredState, parse_status},
    values::{millis, parse_epoch},
};
use crate::{
    cluster::{ApplyError, BusError},
    config::EditRule,
    hub::{Applied, Editor, HistoryData, Op, OpError, Owner},
    protocol::{self, AbandonReason, ChannelName, MessageStatus, Offset},
    telemetry,
};

/// What a read holds after its `since`, in the order of each message's last operation:
/// `(last, created, what)`.
pub(super) enum Item<'a> {
    Plain(&'a str),
    WithId(&'a StoredState),
}

impl ChannelRead {
    /// The messages published after `since` (the entries, a message with an id as it
    /// stands) and, with `since`, those published before it and changed after, ordered by
    /// their last operation: what a resume replays.
    pub(super) fn items(&self, since: Option<Offset>) -> Vec<(u64, u64, Item<'_>)> {
        let state = |seq: u64| self.states.iter().find(|state| state.seq == seq);
        let mut items: Vec<(u64, u64, Item<'_>)> = self
            .entries
            .iter()
            .filter_map(|entry| {
                if entry.with_id {
                    // A state gone meanwhile (expired with history) is counted as lost.
                    state(entry.seq).map(|state| (state.last(), entry.seq, Item::WithId(state)))
                } else {
                    Some((entry.seq, entry.seq, Item::Plain(&entry.data)))
                }
            })
            .collect();
        if let Some(since) = since {
            items.extend(
                self.states
                    .iter()
                    .filter(|state| state.seq <= since.seq && state.last() > since.seq)
                    .map(|state| (state.last(), state.seq, Item::WithId(state))),
            );
            items.sort_unstable_by_key(|(last, ..)| *last);
        }
        items
    }

    /// The frames of `items`, for a replay: `(last, frame)`.
    pub(super) fn frames(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
    ) -> Vec<(u64, String)> {
        self.items(since)
            .into_iter()
            .map(|(last, seq, item)| {
                let frame = match item {
                    Item::Plain(data) => protocol::encode_message(
                        channel,
                        Offset {
                            epoch: self.epoch,
                            seq,
                        },
                        data,
                    ),
                    Item::WithId(state) => state.frame(channel, self.epoch),
                };
                (last, frame)
            })
            .collect()
    }

    /// Whether a history page after `since` starts right after it: nothing in between is
    /// gone (the page may be cut short: see [`ChannelRead::history_items`]).
    pub(super) fn recoverable_page(&self, since: Offset) -> bool {
        since.epoch == self.epoch
            && since.seq <= self.seq
            && (since.seq == self.seq
                || (since.seq >= self.floor
                    && self.history_exists
                    && !self.aged_out
                    && self.lost == 0))
    }

    /// A history page: the messages after `since` in the order of their last operation, or
    /// without `since` the newest ones. A page cut short by its limit ends before the first
    /// message left out could come (its last operation is at or after its seq), so that the
    /// next page, from the page's last offset, misses nothing.
    pub(super) fn history_items(&self, since: Option<Offset>) -> Vec<(Offset, HistoryData)> {
        let cut = since.and(self.cut_at).unwrap_or(u64::MAX);
        self.items(since)
            .into_iter()
            .filter(|(last, ..)| *last < cut)
            .map(|(_, seq, item)| {
                let offset = Offset {
                    epoch: self.epoch,
                    seq,
                };
                let data = match item {
                    Item::Plain(data) => HistoryData::from_data(data.to_owned()),
                    Item::WithId(state) => state.history_data(self.epoch),
                };
                (offset, data)
            })
            .collect()
    }

    /// The open streams' frames (a read without `since`), for a subscribe that must send
    /// them whole.
    pub(super) fn open_frames(&self, channel: &ChannelName) -> Vec<(u64, String)> {
        let mut open: Vec<&StoredState> = self
            .states
            .iter()
            .filter(|state| state.status == MessageStatus::Open)
            .collect();
        open.sort_unstable_by_key(|state| state.seq);
        open.into_iter()
            .map(|state| (state.last(), state.frame(channel, self.epoch)))
            .collect()
    }
}

/// How an operation is passed to the script: its letter and arguments.
struct OpArgs<'a> {
    kind: &'static str,
    id: &'a str,
    data: Option<&'a str>,
    text: Option<&'a str>,
    stream: bool,
    reason: &'static str,
}

impl<'a> OpArgs<'a> {
    fn new(op: &Op<'a>) -> Self {
        let mut args = Self {
            kind: "p",
            id: "",
            data: None,
            text: None,
            stream: false,
            reason: "",
        };
        match *op {
            Op::Publish {
                data,
                message_id,
                stream,
            } => {
                args.id = message_id.unwrap_or_default();
                args.data = Some(data);
                args.stream = stream;
            }
            Op::Append { message_id, text } => {
                (args.kind, args.id, args.text) = ("a", message_id, Some(text));
            }
            Op::Finish { message_id, data } => {
                (args.kind, args.id, args.data) = ("f", message_id, data)
            }
            Op::Update {
                message_id,
                data,
                text,
            } => (args.kind, args.id, args.data, args.text) = ("u", message_id, data, text),
            Op::Delete { message_id } => (args.kind, args.id) = ("x", message_id),
            Op::Abandon { message_id, reason } => {
                (args.kind, args.id, args.reason) = ("b", message_id, reason.as_str());
            }
        }
        args
    }
}

/// An owner as the script compares them: `` for a backend, `u:<user>`, or `c:<node>:<conn>`
/// (a connection id is only unique on its node).
fn owner_key(owner: &Owner, node: &str) -> String {
    match owner {
        Owner::Backend => String::new(),
        Owner::User(user) => format!("u:{user}"),
        Owner::Conn(conn) => format!("c:{node}:{conn}"),
    }
}

fn refusal(code: &str, detail: &str) -> Option<OpError> {
    let number = || detail.parse().unwrap_or(0);
    Some(match code {
        "not_found" => OpError::NotFound,
        "not_open" => OpError::NotOpen(parse_status(detail)?),
        "not_stream" => OpError::NotStream,
        "text_too_large" => OpError::TextTooLarge(number()),
        "too_many_open" => OpError::TooManyOpen(number()),
        "not_yours" => OpError::NotYours,
        "editing_off" => OpError::EditingOff,
        "not_idle" => OpError::NotIdle,
        _ => return None,
    })
}

impl Inner {
    /// Runs the operation script for `op` (a publish with an id or a stream, or a change).
    pub(super) async fn apply_op(
        &self,
        channel: &ChannelName,
        op: &Op<'_>,
        editor: &Editor,
    ) -> Result<Applied, ApplyError> {
        if self.history_size(channel) == 0 {
            return Err(OpError::NoHistory.into());
        }
        let args = OpArgs::new(op);
        let (owner, rule) = match editor {
            Editor::Backend => (Owner::Backend, "any"),
            Editor::Client { owner, rule } => (
                owner.clone(),
                match rule {
                    EditRule::Own => "own",
                    EditRule::Any => "any",
                    EditRule::None => "none",
                },
            ),
        };
        let streams = &self.settings.streams;
        let mut conn = self.conn()?;
        let keys = self.channel_keys(channel);
        let flag = |given: bool| if given { "1" } else { "0" };
        let depth = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        telemetry::redis_pipeline_depth(depth);
        let mut invocation = keys.writing(&self.op_script);
        invocation
            .arg(args.kind)
            .arg(args.id)
            .arg(args.data.unwrap_or_default())
            .arg(flag(args.data.is_some()))
            .arg(args.text.unwrap_or_default())
            .arg(flag(args.text.is_some()))
            .arg(flag(args.stream))
            .arg(owner_key(&owner, &self.settings.node_id))
            .arg(rule)
            .arg(args.reason)
            .arg(format!("{:016x}", super::values::random_epoch()))
            .arg(self.history_size(channel))
            .arg(self.state_ttl_ms())
            .arg(self.settings.bus_maxlen)
            .arg(channel.as_str())
            .arg(self.history_ttl_ms(channel))
            .arg(self.bus_max_age_ms())
            .arg(inbox_prefix(keys.partition))
            .arg(self.interest_ttl_ms())
            .arg(&keys.message_prefix)
            .arg(&keys.text_prefix)
            .arg(streams.max_text_bytes)
            .arg(streams.max_open_per_channel)
            .arg(millis(streams.idle_timeout))
            .arg(millis(streams.dedupe_window));
        let result = invocation.invoke_async::<Vec<String>>(&mut conn).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let reply = result.map_err(|err| self.failed("apply", &err))?;
        let bad = || BusError::BadReply("redis returned a bad operation reply");
        match reply.as_slice() {
            [sign, epoch, seq] if sign == "+" || sign == "=" => {
                let offset = Offset {
                    epoch: parse_epoch(epoch).ok_or_else(bad)?,
                    seq: seq.parse().map_err(|_| bad())?,
                };
                let duplicate = sign == "=";
                if duplicate {
                    if matches!(op, Op::Publish { .. }) {
                        telemetry::metrics().publishes_deduplicated.increment(1);
                    }
                } else {
                    telemetry::stream_op(op.label());
                    if matches!(op, Op::Publish { .. }) {
                        telemetry::metrics().messages_published.increment(1);
                    }
                }
                Ok(Applied { offset, duplicate })
            }
            [sign, code, detail] if sign == "!" => {
                let err = refusal(code, detail).ok_or_else(bad)?;
                if err != OpError::NotIdle {
                    telemetry::stream_op_refused(err.code());
                }
                Err(err.into())
            }
            _ => Err(bad().into()),
        }
    }

    /// Abandons, through the operation script, the open streams of every partition that got
    /// nothing for `streams.idle_timeout` (the script checks again): those opened on any
    /// node, also one that died mid-stream. Every node runs it; the script lets one win.
    async fn abandon_idle(&self) -> Result<(), BusError> {
        let mut failed = None;
        for partition in 0..self.settings.partitions {
            // One partition's failure (its master down) does not starve the others.
            if let Err(err) = self.abandon_idle_in(partition).await {
                failed = Some(err);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn abandon_idle_in(&self, partition: u32) -> Result<(), BusError> {
        const BATCH: usize = 64;
        let idle_ms = millis(self.settings.streams.idle_timeout);
        let mut conn = self.conn()?;
        let now_ms = unix_ms();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(open_key(partition))
            .arg("-inf")
            .arg(now_ms.saturating_sub(idle_ms))
            .arg("LIMIT")
            .arg(0)
            .arg(BATCH)
            .query_async(&mut conn)
            .await
            .map_err(|err| self.failed("abandon", &err))?;
        for member in due {
            let parsed = member.split_once(' ').and_then(|(channel, id)| {
                Some((ChannelName::parse(channel, usize::MAX).ok()?, id))
            });
            let Some((channel, id)) = parsed else {
                // Not one this server writes: dropped, so it cannot hold the batch's place.
                let _: Result<i64, _> = redis::cmd("ZREM")
                    .arg(open_key(partition))
                    .arg(&member)
                    .query_async(&mut conn)
                    .await;
                continue;
            };
            let op = Op::Abandon {
                message_id: id,
                reason: AbandonReason::Idle,
            };
            match self.apply_op(&channel, &op, &Editor::Backend).await {
                Ok(_) | Err(ApplyError::Refused(_)) => {}
                Err(ApplyError::Bus(err)) => return Err(err),
            }
        }
        Ok(())
    }
}

/// Every node's sweep of idle streams: every quarter of `streams.idle_timeout` (at least
/// every second, at most every 15 s), until `stop`.
pub(super) async fn sweep_idle_streams(inner: std::sync::Arc<Inner>, stop: CancellationToken) {
    let every = (inner.settings.streams.idle_timeout / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(err) = inner.abandon_idle().await {
            tracing::debug!(%err, "Sweep of idle streams failed; next round retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_different_nodes_differ_even_with_equal_connection_ids() {
        let conn = Owner::Conn(7);
        assert_ne!(owner_key(&conn, "a"), owner_key(&conn, "b"));
        assert_eq!(owner_key(&Owner::Backend, "a"), "");
        assert_eq!(owner_key(&Owner::User("alice".into()), "a"), "u:alice");
    }

    #[test]
    fn every_refusal_the_script_answers_is_known() {
        for (code, detail) in [
            ("not_found", ""),
            ("not_open", "finished"),
            ("not_stream", ""),
            ("text_too_large", "1000"),
            ("too_many_open", "3"),
            ("not_yours", ""),
            ("editing_off", ""),
            ("not_idle", ""),
        ] {
            assert!(refusal(code, detail).is_some(), "{code}");
        }
        assert_eq!(
            refusal("text_too_large", "1000"),
            Some(OpError::TextTooLarge(1000))
        );
        assert_eq!(refusal("nonsense", ""), None);
    }
}
