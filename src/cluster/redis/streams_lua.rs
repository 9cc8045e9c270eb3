//! The Lua that keeps messages with ids in Redis (see `docs/streams.md`, "Cluster"): the
//! history trimming shared with the publish script, and the operation script.
//!
//! Keys of a channel beside its meta hash and history stream (all in its partition's slot;
//! `<e>` is the channel's epoch, so that an instance created after one expired never meets
//! the keys of the one before):
//! - `ids:<channel>`: hash, `message_id` -> the seq of its publish; `idt:<channel>`: sorted
//!   set, `message_id` by its publish time (ms), for `streams.dedupe_window`.
//! - `m:<channel> <e> <seq>`: hash, the state of the message published at `seq` while
//!   history holds it: `i` id, `o` owner, `st` status, `k` `1` for a stream, `d` data once a
//!   finish or an update replaced it, `l` the seq of its last operation, `t` when it was last
//!   touched (ms). `x:<channel> <e> <seq>`: a stream's text (`APPEND`ed).
//! - `chg:<channel>`: sorted set, the seqs of messages changed since their publish, by `l`.
//! - `opn:<channel>`: sorted set, the seqs of open streams, by `t`; `sb:{sb:P}:open`: the
//!   partition's open streams (`<channel> <message_id>`), by `t`, which every node's sweep
//!   reads to abandon those idle past `streams.idle_timeout`.
//! - The meta hash's `f`, the floor: the greatest seq whose change history no longer holds
//!   (a dropped message's last operation). A resume from below it is not recoverable. `i`:
//!   the channel has had messages with ids, so `trim_history` trims it (see `PUBLISH_LUA`).

/// Shared by the publish, operation and read scripts: `now_ms`, and `trim_history`, which drops
/// history entries beyond `history.size` (oldest first) and older than `history.ttl`,
/// raising the floor past each and dropping a dropped message's state.
pub(super) const HISTORY_LUA: &str = include_str!("lua/streams_history.lua");

/// One operation on a message with an id (a publish with `message_id`, append, finish,
/// update, delete, abandon): checks it against the message's state here, assigns the seq,
/// changes the state, and appends one bus entry routed like a publish (fields `c e s t`,
/// `o` the operation, `m` the id, `d` data, `x` text, `k` stream, `r` reason).
///
/// `KEYS`: meta, hist, bus, born, interest, ids, idt, chg, opn, the partition's open set.
/// `ARGV`: 1 operation (`p a f u x b`), 2 id, 3 data, 4 `1` when data is given, 5 text, 6 `1`
/// when text is given, 7 `1` for a stream, 8 owner (`` for a backend), 9 edit rule (`any
/// own none`), 10 abandon reason, 11 a fresh epoch, 12 `history.size`, 13
/// `channel_state_ttl` ms, 14 `bus_maxlen`, 15 channel, 16 `history.ttl` ms, 17 `bus_max_age`
/// ms, 18 inbox prefix, 19 `interest_ttl` ms, 20 the message key prefix (`...:m:<channel> `),
/// 21 the text key prefix, 22 `max_text_bytes`, 23 `max_open_per_channel`, 24
/// `idle_timeout` ms, 25 `dedupe_window` ms.
///
/// Answers `{'+', epoch, seq}`, `{'=', epoch, seq}` for a duplicate (nothing done), or
/// `{'!', code, detail}` when refused.
pub(super) const OP_LUA: &str = include_str!("lua/streams_op.lua");
