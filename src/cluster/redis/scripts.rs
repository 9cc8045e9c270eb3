//! The Lua scripts a publish and a read run (one round trip each), and running them (what
//! a read answers is parsed in `read`).

use std::{sync::atomic::Ordering, time::Duration};

use redis::Value;
use tokio::time::Instant;

use super::{
    Inner, inbox_prefix,
    read::{ChannelRead, ReadEntry},
    values::{millis, parse_epoch, random_epoch},
};
use crate::{
    cluster::BusError,
    protocol::{ChannelName, Offset},
    telemetry,
};

/// Appends an entry to the inbox of every node whose interest in the channel has not
/// expired (and forgets the expired ones), under the log entry's id, so that an inbox is the
/// log filtered: its ids are log positions, in the log's order. `interest`: the channel's
/// interest hash (field: the inbox's name after `prefix`, value: expiry in Redis ms); `ttl`:
/// an inbox unread for this long (its node is gone) expires. An inbox whose newest id is
/// not below `id` (only if someone wrote to it by hand) is skipped rather than failing the
/// publish, which the log already holds. Prepended to the scripts that call `route`.
pub(super) const ROUTE_LUA: &str = include_str!("lua/bus_route.lua");

/// The publish: creates the channel's epoch if it has none, bumps its seq, appends to its
/// history, to the partition's bus (the log) and to the inboxes of the nodes that follow the
/// channel (see [`ROUTE_LUA`]), and trims them. `KEYS`: meta hash, history stream, bus
/// stream, `born`, interest hash, then the keys of messages with ids (`ids`, `idt`, `chg`,
/// `opn`, the partition's open set: see `streams_lua`). `ARGV`: data, a fresh epoch,
/// `history.size`, `channel_state_ttl` (ms), `bus_maxlen`, channel, `history.ttl` (ms),
/// `bus_max_age` (ms), the inbox prefix, `interest_ttl` (ms), the message and text key
/// prefixes, `dedupe_window` (ms).
///
/// History keeps `history.size` entries, none older than `history.ttl`; the stream expires
/// `history.ttl` after the last publish. A channel that has had messages with ids (the meta
/// hash's `i`) is trimmed by `trim_history` (`streams_lua::HISTORY_LUA`), each dropped
/// entry raising the floor `f`; one with plain messages only as it always was (`MAXLEN`,
/// then the entries older than `history.ttl`, found by their `t` from the oldest on in
/// doubling batches), what it drops being below the oldest entry kept, which a read reports
/// (see [`ChannelRead::floor`]): 3 µs of Redis CPU less per publish than `trim_history`
/// (`loadtest/bus-cost.sh` with `history.size = 5`). The meta hash
/// lives `channel_state_ttl`: it is what says no message came after a resume's offset and
/// no other epoch came and went (see [`continuous_since`]).
pub(super) const PUBLISH_LUA: &str = include_str!("lua/bus_publish.lua");

/// Appends a request or event entry to a bus stream (`KEYS[1]`) and to the inboxes of the
/// nodes interested (`KEYS[2]`: the channel's interest hash, or the one every node joins
/// for requests about users), and trims it like a publish does. `ARGV`: `bus_maxlen`,
/// `bus_max_age` (ms), the inbox prefix, `interest_ttl` (ms), then the entry's field-value
/// pairs.
pub(super) const APPEND_LUA: &str = include_str!("lua/bus_append.lua");

/// Renews this node's interest in channels of one partition and tells what was missing:
/// `KEYS`: the partition's bus stream, then the channels' interest hashes. `ARGV`: this
/// node's field (its inbox's name), `interest_ttl` (ms). Answers how many of the channels
/// had no interest of this node (expired, or Redis lost it), and the newest entry id of the
/// bus at that moment: every entry after it reaches the inbox, so entries up to it that the
/// node missed are read from the bus (see `follow`).
pub(super) const INTEREST_LUA: &str = include_str!("lua/bus_interest.lua");

/// Removes this node's interest (`ARGV[1]`, its field) from the interest hashes in `KEYS`:
/// channels it no longer holds.
pub(super) const FORGET_LUA: &str = include_str!("lua/bus_forget.lua");

/// Reads a channel: a channel without a meta hash answers an empty epoch and seq 0,
/// whoever asks and however often (see [`ChannelRead::since_as_read`]), and writes nothing
/// about it. `KEYS`: meta hash, history stream, `born`, `chg`, `opn`, and for a subscribe's
/// read the channel's interest hash, whose read also registers this node's interest
/// (`ARGV[5]`, its field; `ARGV[6]`, `interest_ttl` ms) in the same step: what the read does
/// not hold reaches the node's inbox. `ARGV[1]`: the first entry id to read (`` for the
/// newest), `ARGV[2]`: how many at most (one more is read to tell a cut-short read),
/// `ARGV[3]`/`ARGV[4]`: the message and text key prefixes (see `streams_lua`).
///
/// Answers the epoch, the seq, Redis time, the entries, `born`, the floor `f`, whether the
/// history stream exists, and the states of messages with ids: of those among the entries,
/// of those published up to `since` and changed after it, or without `since` of the open
/// streams, each `{seq, id, status, stream, data replaced, last, touched, text, data
/// published}`; and how many states named by `chg` or `opn` were gone.
pub(super) const READ_LUA: &str = include_str!("lua/bus_read.lua");

/// Records when the partition's keys began (`sb:{sb:P}:born`, Redis time in ms), unless
/// they already have, and answers it: run by every node when it connects (a new value means
/// Redis lost its data since the last connection), and inline by the publish that creates a
/// channel, so that the key exists before any read a node answers.
pub(super) const BORN_LUA: &str = include_str!("lua/bus_born.lua");

impl Inner {
    pub(super) fn state_ttl_ms(&self) -> u64 {
        millis(self.settings.channel_state_ttl)
    }

    /// How long `channel`'s history keeps a message (its namespace's `history_ttl`, or
    /// `history.ttl`), in ms.
    pub(super) fn history_ttl_ms(&self, channel: &ChannelName) -> u64 {
        millis(self.hub.history_limit(channel.as_str()).ttl)
    }

    /// How many messages `channel`'s history keeps (its namespace's `history_size`, or
    /// `history.size`).
    pub(super) fn history_size(&self, channel: &ChannelName) -> usize {
        self.hub.history_limit(channel.as_str()).size
    }

    pub(super) fn bus_max_age_ms(&self) -> u64 {
        millis(self.settings.bus_max_age)
    }

    pub(super) async fn publish(
        &self,
        channel: &ChannelName,
        data: &str,
    ) -> Result<Offset, BusError> {
        let mut conn = self.conn()?;
        let keys = self.channel_keys(channel);
        let depth = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        telemetry::redis_pipeline_depth(depth);
        let mut invocation = keys.writing(&self.publish_script);
        invocation
            .arg(data)
            .arg(format!("{:016x}", random_epoch()))
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
            .arg(millis(self.settings.streams.dedupe_window));
        let result = invocation.invoke_async::<(String, u64)>(&mut conn).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok((epoch, seq)) => Ok(Offset {
                epoch: parse_epoch(&epoch)
                    .ok_or(BusError::BadReply("redis returned a bad epoch"))?,
                seq,
            }),
            Err(err) => Err(self.failed("publish", &err)),
        }
    }

    /// Runs the read script: the channel's epoch and seq, Redis time, and history entries
    /// after `since` (or the newest `limit`). Writes nothing about the channel, so a read of
    /// a channel that never had a message costs Redis no memory; a subscribe's read
    /// (`subscribing`) registers this node's interest in it when it reads its inbox. A read
    /// is safe to repeat, so one that finds the connection broken waits briefly for the
    /// keeper's new one and tries once more.
    pub(super) async fn read(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
        subscribing: bool,
    ) -> Result<ChannelRead, BusError> {
        let subscribing = subscribing && self.reads_inbox();
        match self.read_once(channel, since, limit, subscribing).await {
            Err(BusError::Failed) => {
                let deadline = Instant::now() + self.settings.publish_timeout;
                while self.conn.load().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.read_once(channel, since, limit, subscribing).await
            }
            other => other,
        }
    }

    async fn read_once(
        &self,
        channel: &ChannelName,
        since: Option<Offset>,
        limit: usize,
        subscribing: bool,
    ) -> Result<ChannelRead, BusError> {
        let mut conn = self.conn()?;
        let keys = self.channel_keys(channel);
        let start = since.map_or(String::new(), |since| format!("{}-0", since.seq + 1));
        let mut invocation = self.read_script.key(&keys.meta);
        invocation
            .key(&keys.hist)
            .key(&keys.born)
            .key(&keys.chg)
            .key(&keys.opn)
            .arg(start)
            .arg(limit.max(1))
            .arg(&keys.message_prefix)
            .arg(&keys.text_prefix);
        if subscribing {
            invocation
                .key(&keys.interest)
                .arg(self.inbox_name())
                .arg(self.interest_ttl_ms());
        }
        let answer = invocation.invoke_async::<Value>(&mut conn).await;
        if subscribing {
            // Once the script ran (or may have, on an error): a renewal that ran meanwhile
            // would otherwise count the interest it had not written yet as lost. The hub
            // holds the channel (the subscribe's pin) from before the script to after this.
            self.interest[keys.partition as usize]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(channel.clone());
        }
        let value = answer.map_err(|err| self.failed("read", &err))?;
        let mut read = ChannelRead::parse(value, since, self.state_ttl_ms())
            .ok_or(BusError::BadReply("redis returned a bad reply"))?;
        if read.entries.len() > limit.max(1) {
            read.cut_at = read.entries.pop().map(|entry| entry.seq);
            read.entries.truncate(limit.max(1));
            read.truncated = true;
        }
        // The stream is trimmed by age only when published to: drop what aged out since.
        let oldest_ms = read.now_ms.saturating_sub(self.history_ttl_ms(channel));
        let states = &read.states;
        let touched = |entry: &ReadEntry| {
            states
                .iter()
                .find(|state| entry.with_id && state.seq == entry.seq)
                .map_or(entry.time_ms, |state| state.touched_ms)
        };
        let before = read.entries.len();
        read.entries.retain(|entry| touched(entry) >= oldest_ms);
        read.aged_out = read.entries.len() < before;
        if since.is_none() {
            read.entries.reverse();
        }
        Ok(read)
    }
}
