//! The presence scripts (Lua run in Redis): what each key holds and what every script
//! removes before anything else is told at [`COMMON_LUA`].

/// Shared by every script: Redis time, and removing a node's members (all four keys). Every
/// script's `ARGV` starts with this node's id, its incarnation, the Redis time (ms) until
/// which it may judge other nodes departed (0: it may not), and the TTL in ms.
///
/// A channel's `pn` hash holds, per node, `<node>` -> the Redis time (ms) its members expire
/// at; beside it `!<node>` -> the incarnation that wrote them, and for a while after another
/// node removed a node's members for not refreshing them, `~<node>` -> until when (ms) that
/// is remembered (two TTLs), so that the node, if it was only paused, learns that their
/// `leave` was sent and sends `join` when it writes them back. Every value is a number and
/// node ids never start with `!` or `~`, so the scripts of releases before incarnations
/// (which take every field for a node and its value for an expiry) keep working beside
/// these during a rolling upgrade: an incarnation is above 2^47 (a time they never reach)
/// and a tombstone's time is when they drop it.
///
/// Every script removes, before anything else:
/// - this node id's members that another incarnation wrote (the process restarted under the
///   same id: they are ghosts), reason `r`;
/// - when it may judge, the members of other nodes whose expiry passed, reason `e`, leaving
///   a tombstone; a node that is forced out (gone from the registry) is reason `g`.
///
/// Removed members come back as `<reason><member JSON>` for `leave` events.
///
/// Every script also answers, second, the users whose connections on every node together
/// went from none to some (`+<user>`) or from some to none (`-<user>`) in this call: every
/// change of the `pu` hash is made by these scripts, one at a time, so each such crossing
/// is answered to exactly one call of one node (`member_added`, `member_removed`).
pub(super) const COMMON_LUA: &str = include_str!("../lua/presence_common.lua");

/// ARGV (after the common four): expect (0/1), full (0/1), joins J, then J x (id, user,
/// json), then (id, user) per leave, then this call's number and the number of this node's
/// first call on the channel whose answer was lost since one was answered (0: none).
///
/// The crossings a call answers are also kept in `KEYS[5]` (`pc`: node ->
/// `<incarnation>:<call>:<JSON list>`) until the node's next call: when that one says
/// answers were lost since a call at or before the kept one, the kept crossings are
/// answered again, first (they were never told: a timeout, a dropped link).
///
/// Returns `{departed, crossings, outcome}`: 0 done; 1 not done, because this node's members were not there although `expect` said so (Redis lost them,
/// or another node removed them): write in full; 2 done in full over a tombstone: another
/// node removed this node's members and sent their `leave`, so they need a `join` again.
pub(super) const WRITE_LUA: &str = include_str!("../lua/presence_write.lua");

/// ARGV (after the common four): cursor ('' from the start), count. Returns
/// `{departed, crossings, ids, jsons}`.
///
/// The members' JSON is read `HMGET` by `HMGET` of at most 1,000 ids: `unpack` puts every id
/// on Lua's C stack, which holds about 8,000, and `presence.max_listed` allows 100,000.
pub(super) const PAGE_LUA: &str = include_str!("../lua/presence_page.lua");

/// Returns `{departed, crossings, connections, users, own}`: `own` is this node's connections
/// in the store, which the caller replaces with what it holds itself.
pub(super) const STATS_LUA: &str = include_str!("../lua/presence_stats.lua");

/// ARGV (after the common four): the node gone, or '' to only prune. Returns
/// `{departed, crossings}`.
pub(super) const FORGET_LUA: &str = include_str!("../lua/presence_forget.lua");
