//! What a read of a channel from Redis (the read script, `scripts::READ_LUA`) answers:
//! [`ChannelRead`], parsed, and whether a resume from it is continuous.

use redis::Value;

use super::{
    stored::StoredState,
    values::{ABSENT_EPOCH_LIMIT, as_string, as_u64, parse_epoch},
};
use crate::protocol::Offset;

/// One channel read from Redis.
#[derive(Debug)]
pub(super) struct ChannelRead {
    /// The channel's epoch; for a channel without state (`absent`), an absent epoch.
    pub(super) epoch: u64,
    /// Redis held no state for the channel: it never had a message, or its state expired or
    /// was lost. `seq` is then 0 and there are no entries.
    pub(super) absent: bool,
    pub(super) seq: u64,
    pub(super) now_ms: u64,
    pub(super) entries: Vec<ReadEntry>,
    /// The read's `since` as an offset of this read's epoch where it stands for one (see
    /// [`ChannelRead::since_as_read`]).
    pub(super) since: Option<Offset>,
    /// The greatest seq whose change history no longer holds: the meta hash's `f`, or the
    /// seq before the oldest entry kept when greater (plain messages are trimmed without
    /// raising `f`).
    pub(super) floor: u64,
    /// The history stream exists (it expires `history.ttl` after the last publish).
    pub(super) history_exists: bool,
    /// More entries than asked for followed: `entries` are the first ones only.
    pub(super) truncated: bool,
    /// Then the first entry left out (in the read's direction).
    pub(super) cut_at: Option<u64>,
    /// Entries after `since` had aged past `history.ttl` and were left out.
    pub(super) aged_out: bool,
    /// The states of messages with ids the read found (see [`READ_LUA`]).
    pub(super) states: Vec<StoredState>,
    /// States `chg` or `opn` named that were gone (expired with history).
    pub(super) lost: u64,
}

#[derive(Debug)]
pub(super) struct ReadEntry {
    pub(super) seq: u64,
    pub(super) time_ms: u64,
    pub(super) data: String,
    /// The entry is a message with an id: its state is among the read's `states` (unless
    /// it was gone).
    pub(super) with_id: bool,
}

impl ChannelRead {
    /// Parses the read script's reply to a read after `since`; `state_ttl_ms` is
    /// `cluster.channel_state_ttl`.
    pub(super) fn parse(value: Value, since: Option<Offset>, state_ttl_ms: u64) -> Option<Self> {
        let Value::Array(mut parts) = value else {
            return None;
        };
        if parts.len() != 9 {
            return None;
        }
        let lost = as_u64(&parts.pop()?)?;
        let Value::Array(states) = parts.pop()? else {
            return None;
        };
        let states = states
            .into_iter()
            .map(StoredState::parse)
            .collect::<Option<Vec<_>>>()?;
        let history_exists = as_u64(&parts.pop()?)? == 1;
        let floor = as_u64(&parts.pop()?)?;
        let born_ms = as_u64(&parts.pop()?);
        let entries = parts.pop()?;
        let now_ms = as_u64(&parts.pop()?)?;
        let seq = as_u64(&parts.pop()?)?;
        let epoch = match as_string(&parts.pop()?)?.as_str() {
            "" => None,
            text => Some(parse_epoch(text)?),
        };
        let Value::Array(entries) = entries else {
            return None;
        };
        let entries = entries
            .into_iter()
            .map(|entry| {
                let Value::Array(mut pair) = entry else {
                    return None;
                };
                let fields = pair.pop()?;
                let id = as_string(&pair.pop()?)?;
                let seq = id.split_once('-')?.0.parse().ok()?;
                let mut data = None;
                let mut time_ms = 0;
                let mut with_id = false;
                if let Value::Array(fields) = fields {
                    for pair in fields.chunks(2) {
                        match (as_string(&pair[0]).as_deref(), pair.get(1)) {
                            (Some("d"), Some(value)) => data = as_string(value),
                            (Some("t"), Some(value)) => time_ms = as_u64(value).unwrap_or(0),
                            (Some("m"), Some(_)) => with_id = true,
                            _ => {}
                        }
                    }
                }
                Some(ReadEntry {
                    seq,
                    time_ms,
                    data: data?,
                    with_id,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let absent_since =
            since.filter(|since| continuous_since(*since, born_ms, now_ms, state_ttl_ms));
        let (epoch, absent) = match epoch {
            Some(epoch) => (epoch, false),
            // Asked again from an absent epoch that still holds: the same answer, so the
            // resume is recovered; else the time of this read.
            None => (absent_since.map_or(now_ms, |since| since.epoch), true),
        };
        let since = since.map(|since| match absent_since {
            Some(_) => Offset { epoch, seq: 0 },
            None => since,
        });
        Some(Self {
            epoch,
            absent,
            seq,
            now_ms,
            entries,
            since,
            floor,
            history_exists,
            truncated: false,
            cut_at: None,
            aged_out: false,
            states,
            lost,
        })
    }

    /// Whether the entries hold every message after `since` up to `self.seq`: the resume is
    /// recoverable, and the read was not cut short by its limit or the history's TTL.
    pub(super) fn covers(&self) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        if since.epoch != self.epoch || since.seq > self.seq {
            return false;
        }
        // Every message published after `since` and every change after it is held unless
        // history dropped something changed after `since` (the floor), the stream expired,
        // or the read left entries out.
        since.seq == self.seq
            || (since.seq >= self.floor
                && self.history_exists
                && !self.truncated
                && !self.aged_out
                && self.lost == 0)
    }
}

/// Whether `since` is an absent epoch (the Redis time `t` at which a read found the channel
/// without state, seq 0) that stands for the start of whatever instance the channel has now:
/// no other instance can have come and gone since `t`. That holds when the partition's keys
/// began before `t` (`born_ms`: Redis was not restarted empty or flushed since), and when less
/// than `cluster.channel_state_ttl` has passed (an instance lives at least that long after its
/// first publish), so an instance read now was created after `t` and is the first since.
fn continuous_since(since: Offset, born_ms: Option<u64>, now_ms: u64, state_ttl_ms: u64) -> bool {
    let t = since.epoch;
    since.seq == 0
        && t < ABSENT_EPOCH_LIMIT
        && born_ms.is_some_and(|born| born <= t)
        && t <= now_ms
        && now_ms - t < state_ttl_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::redis::values::random_epoch;

    const DAY_MS: u64 = 24 * 3600 * 1000;
    const T: u64 = 1_700_000_000_000;

    fn absent(epoch: u64) -> Offset {
        Offset { epoch, seq: 0 }
    }

    #[test]
    fn an_absent_epoch_stands_for_the_first_instance_only_while_provably_continuous() {
        // Redis kept the partition's keys since before the read, and a day has not passed.
        assert!(continuous_since(absent(T), Some(T - 5), T + 60_000, DAY_MS));
        // Redis lost its data after the read (the partition's keys began later).
        assert!(!continuous_since(
            absent(T),
            Some(T + 1),
            T + 60_000,
            DAY_MS
        ));
        assert!(!continuous_since(absent(T), None, T + 60_000, DAY_MS));
        // An instance created after the read could have expired since.
        assert!(!continuous_since(
            absent(T),
            Some(T - 5),
            T + DAY_MS,
            DAY_MS
        ));
        // From Redis's future, past a message, or a random epoch: not an absent epoch.
        assert!(!continuous_since(absent(T + 1), Some(T - 5), T, DAY_MS));
        assert!(!continuous_since(
            Offset { epoch: T, seq: 1 },
            Some(T - 5),
            T + 1,
            DAY_MS
        ));
        assert!(!continuous_since(
            absent(random_epoch()),
            Some(0),
            u64::MAX,
            u64::MAX
        ));
    }
}
