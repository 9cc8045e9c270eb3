//! The message bus: where a publish goes before it reaches subscribers.
//!
//! [`Bus`] is the one seam between the publishing side (sessions, control API) and whatever
//! orders messages. [`LocalBus`], the embedded default, orders them in this process by handing
//! them straight to the hub, which assigns offsets and keeps history. A clustered bus (Redis
//! Streams) implements the same trait: it acknowledges a publish once Redis accepted the entry
//! and feeds entries read back from Redis to the hub. Sessions and the control API hold an
//! `Arc<dyn Bus>` and never know which one runs. Depends on `hub` only through its handle.

mod local;
mod nodes;
mod occupancy;
mod redis;

pub use self::{
    local::LocalBus,
    nodes::{NodeEntry, NodeInfo},
    occupancy::{OccupancyChange, OccupancyFlip, OccupancyStore},
    redis::{RedisBus, RedisOccupancy, RedisPresence, RedisSettings},
};

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{
    hub::{
        Applied, ConnId, Editor, HistoryPage, Op, OpError, RemoteView, SessionCommand, WriteBatch,
    },
    protocol::{ChannelName, ErrorCode, Offset},
};

/// A boxed future, as returned by [`Bus`] methods.
pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the bus did not do what was asked. Every variant means the same to a caller:
/// nothing was published (or read), retry later, or answer `unavailable` / HTTP 503; they
/// differ in what a log or a retry should know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The channel's fan-out is behind its publishers: its outbox already holds a subscriber
    /// queue's worth (`limits.outbound_queue_messages` / `_bytes`).
    #[error("message bus unavailable: the channel's fan-out is behind; retry later")]
    Behind,
    /// No connection to the backend now (down, or being reconnected).
    #[error("message bus unavailable: redis is unreachable")]
    Unreachable,
    /// The backend did not answer within its timeout.
    #[error("message bus unavailable: redis timed out")]
    TimedOut,
    /// The backend failed the command (an error reply, or the connection broke under it).
    #[error("message bus unavailable: redis failed")]
    Failed,
    /// The backend answered something its script never returns; says what.
    #[error("message bus unavailable: {0}")]
    BadReply(&'static str),
    /// Asked of a bus that cannot answer it (the local bus has no remote view).
    #[error("message bus unavailable: {0}")]
    Unsupported(&'static str),
}

/// `limits.max_connections_per_user`, and which connection goes over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimit {
    pub max: usize,
    pub refuse: crate::config::RefuseConnection,
}

/// What a budget of the cluster's rate limits handed out ([`Bus::take_grants`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Grants taken (0: none free).
    pub granted: u32,
    /// With none free, when one will be.
    pub retry_after: std::time::Duration,
}

/// Why a revocation ([`Bus::revoke`]) was not taken. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeFailed {
    /// The bus could not take it: retry later.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The cluster's list refused it (full).
    #[error(transparent)]
    Refused(#[from] crate::revocations::RevokeError),
}

/// Why an operation on a message ([`Bus::apply`]) did not happen. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The bus could not take it: retry later.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The operation was refused: see the [`OpError`].
    #[error(transparent)]
    Refused(#[from] OpError),
}

impl ApplyError {
    /// The error code a client's `error` frame says (the control API's kind is
    /// `control::error::Kind`, with the same code).
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            ApplyError::Bus(_) => ErrorCode::Unavailable,
            ApplyError::Refused(err) => err.code(),
        }
    }
}

/// Orders and distributes published messages.
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes `data` (valid JSON) to `channel` and resolves to its offset once the message
    /// is durable in the bus's sense (for the local bus: ordered in the hub). Connections a
    /// local fan-out claimed are left in `writes` (see [`Hub::publish_batched`]): the caller
    /// writes them when it is done publishing.
    ///
    /// [`Hub::publish_batched`]: crate::hub::Hub::publish_batched
    ///
    /// # Errors
    /// A [`BusError`] when nothing was published.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published the message.
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: &'a str,
        writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Offset, BusError>>;

    /// Applies an operation on a message (a publish with an id or a stream, an append, a
    /// finish, an edit, a delete; see `docs/streams.md`) and resolves to its offset, as
    /// [`Bus::publish`] does for a plain publish (which it also takes).
    ///
    /// # Errors
    /// An [`ApplyError`] when nothing was done.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have applied the operation.
    fn apply<'a>(
        &'a self,
        channel: &'a ChannelName,
        op: Op<'a>,
        editor: &'a Editor,
        writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Applied, ApplyError>>;

    /// Reads a channel's position and the messages after `since` (at most `limit`) from the
    /// bus, for a subscribe the hub cannot answer alone.
    ///
    /// # Errors
    /// A [`BusError`] when the bus cannot be read.
    fn read_channel<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<RemoteView, BusError>>;

    /// The history API: the newest `limit` messages, or those after `since`.
    ///
    /// # Errors
    /// A [`BusError`] when the bus cannot be read.
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<HistoryPage, BusError>>;

    /// Sends an event frame (`join`, `leave`) to the channel's subscribers on every node, in
    /// the channel's order (see [`Hub::announce`]).
    ///
    /// [`Hub::announce`]: crate::hub::Hub::announce
    ///
    /// # Errors
    /// A [`BusError`] when the other nodes cannot be told.
    fn announce<'a>(
        &'a self,
        channel: &'a ChannelName,
        text: String,
    ) -> BusFuture<'a, Result<(), BusError>>;

    /// Subscribes (or unsubscribes) every connection of `user` on every node to `channel`:
    /// this node's at once (how many is the answer), the others' as they read the request
    /// from the bus.
    ///
    /// # Errors
    /// A [`BusError`] when the other nodes cannot be told (this node's connections
    /// are told anyway).
    fn command_user<'a>(
        &'a self,
        user: &'a str,
        command: SessionCommand,
    ) -> BusFuture<'a, Result<usize, BusError>>;

    /// Closes every connection of `user` with 4000 on every node: this node's at once (how
    /// many is the answer), the others' as they read the request from the bus.
    ///
    /// # Errors
    /// A [`BusError`] when the other nodes cannot be told (this node's connections
    /// are closed anyway).
    fn disconnect_user<'a>(
        &'a self,
        user: &'a str,
        code: crate::protocol::CloseCode,
    ) -> BusFuture<'a, Result<usize, BusError>>;

    /// Blocks `user` on every node until `until` (Unix seconds; `None`: until lifted): this
    /// node's list at once and its connections of the user closed with 4003 (how many is
    /// the answer), the other nodes' through the bus. Check it with
    /// [`crate::blocks::Blocklist::check`] first.
    ///
    /// # Errors
    /// A [`BusError`] when the cluster's list cannot be written: nothing was done.
    fn block<'a>(
        &'a self,
        user: &'a str,
        until: Option<u64>,
    ) -> BusFuture<'a, Result<usize, BusError>>;

    /// Lifts `user`'s block on every node: whether there was one.
    ///
    /// # Errors
    /// A [`BusError`] when the cluster's list cannot be written: nothing was done.
    fn unblock<'a>(&'a self, user: &'a str) -> BusFuture<'a, Result<bool, BusError>>;

    /// Revokes tokens on every node (`POST /v1/revoke`): this node's list at once, and its
    /// connections that may hold a matching token asked to check it (how many is the
    /// answer; each closes with 4003 if so); the other nodes' within a quarter of a second.
    /// Check it with [`crate::revocations::Revocations::check`] first.
    ///
    /// # Errors
    /// [`RevokeFailed`] when the cluster's list cannot be written or is full: nothing was
    /// done.
    fn revoke<'a>(
        &'a self,
        revocation: &'a crate::revocations::Revocation,
    ) -> BusFuture<'a, Result<usize, RevokeFailed>>;

    /// Counts connection `conn_id` (of this node) as `user`'s across the cluster, under
    /// `limit`: `false` when it is refused ([`RefuseConnection::Newest`]); with
    /// [`RefuseConnection::Oldest`] the user's oldest connections, wherever they are, are
    /// closed with 4005 to make room. When the count cannot be kept (Redis unreachable) the
    /// connection is taken: an outage must not lock users out.
    ///
    /// [`RefuseConnection::Newest`]: crate::config::RefuseConnection::Newest
    /// [`RefuseConnection::Oldest`]: crate::config::RefuseConnection::Oldest
    fn admit_user<'a>(
        &'a self,
        user: &'a Arc<str>,
        conn_id: ConnId,
        limit: UserLimit,
    ) -> BusFuture<'a, bool>;

    /// Connection `conn_id`, counted by [`Bus::admit_user`], closed.
    fn user_left(&self, user: &str, conn_id: ConnId);

    /// Takes up to `wanted` grants from the cluster's budget `key` (one grant costs
    /// `interval`, at most `burst` at once): see `crate::rates`.
    ///
    /// # Errors
    /// A [`BusError`] when the budget cannot be asked; [`BusError::Unsupported`] on a bus
    /// with no cluster (one node keeps its budgets itself).
    fn take_grants<'a>(
        &'a self,
        key: &'a str,
        wanted: u32,
        interval: std::time::Duration,
        burst: u32,
    ) -> BusFuture<'a, Result<Grant, BusError>>;

    /// Reasons the bus is unfit to serve, for `/readyz`; empty when healthy.
    fn unready_reasons(&self) -> Vec<String>;

    /// Conditions worth reporting in `/readyz` that do not fail readiness (e.g. an outage of
    /// Redis itself, shared by every node).
    fn details(&self) -> Vec<String> {
        Vec::new()
    }

    /// The nodes serving now, as `/v1/nodes` and `/v1/stats?scope=cluster` list them (JSON
    /// objects with at least `node` and `connections`): the cluster's registry, or this
    /// node alone.
    ///
    /// # Errors
    /// A [`BusError`] when the registry cannot be read.
    fn nodes(&self) -> BusFuture<'_, Result<Vec<NodeEntry>, BusError>>;

    /// A short name for logs and `/v1/stats`: `local` or `redis`.
    fn kind(&self) -> &'static str;
}

/// A member's id in a [`PresenceStore`], and the `next_cursor` of the page it ends:
/// `<node> <conn_id>`, the connection zero-padded to 20 digits, so that ids sort by node,
/// then connection (node ids are `A-Z a-z 0-9 - _ .`, all after the space).
#[must_use]
pub fn member_id(node: &str, conn_id: ConnId) -> String {
    use std::fmt::Write as _;
    let mut id = String::with_capacity(node.len() + 21);
    let _ = write!(id, "{node} {conn_id:020}");
    id
}

/// The node and connection of a [`member_id`]; `None` when `id` is not one.
#[must_use]
pub fn parse_member_id(id: &str) -> Option<(&str, ConnId)> {
    let (node, conn) = id.split_once(' ')?;
    let node_ok = (1..=64).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let conn_ok = conn.len() == 20 && conn.bytes().all(|b| b.is_ascii_digit());
    // Past u64::MAX (20 digits can be): after every connection of the node.
    let conn_id = conn.parse::<u128>().ok()?.min(u128::from(u64::MAX));
    (node_ok && conn_ok).then_some((node, u64::try_from(conn_id).ok()?))
}

/// One channel's presence changes from this node, for a [`PresenceStore`].
#[derive(Debug, Clone)]
pub struct PresenceWrite {
    pub channel: ChannelName,
    /// Replace this node's members of the channel with `joins` (after a failed write, or
    /// when the store lost them).
    pub full: bool,
    /// The store should hold this node's members of the channel: if it does not, it lost
    /// them (expired, Redis restarted), and the answer is [`WriteOutcome::Lost`].
    pub expect: bool,
    /// Members that joined: connection, user, the member as JSON.
    pub joins: Vec<(ConnId, std::sync::Arc<str>, String)>,
    /// Members that left: connection, user.
    pub leaves: Vec<(ConnId, std::sync::Arc<str>)>,
}

/// What became of a [`PresenceWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    /// Written in full over the mark another node left when it removed this node's members
    /// for not refreshing them (the node was paused, or cut off from the store): their
    /// `leave` was sent, so they need a `join` again.
    Rejoined,
    /// The store did not hold what `expect` said it should (it lost them, or another node
    /// removed them): nothing written; write the channel in full.
    Lost,
    /// A write in several calls whose first found the mark [`WriteOutcome::Rejoined`]
    /// names and a later one failed: write the channel in full later, and send the `join`.
    PartlyRejoined,
    /// Not written (the store is unreachable): write the channel in full later.
    Failed,
}

/// One page of a channel's members from a [`PresenceStore`].
#[derive(Debug, Clone, Default)]
pub struct StoredPage {
    /// Each member as the JSON its node wrote.
    pub members: Vec<String>,
    pub next_cursor: Option<String>,
}

/// A channel's connections and distinct users in a [`PresenceStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredStats {
    pub connections: usize,
    pub users: usize,
    /// Of `connections`, this node's (which it knows better itself).
    pub own: usize,
}

/// Why a member was removed from a [`PresenceStore`] by someone other than its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Its node stopped refreshing it for the TTL.
    Expired,
    /// Its node left the node registry without deregistering.
    NodeGone,
    /// Its node's process restarted under the same node id: a ghost of the old process.
    Restarted,
}

impl Departure {
    /// The metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NodeGone => "node_gone",
            Self::Restarted => "restarted",
        }
    }
}

/// Members removed from the store by this node's scripts (their node died, or restarted),
/// for `leave` events.
#[derive(Debug, Clone)]
pub struct Departed {
    pub channel: ChannelName,
    /// Why, and each member as the JSON its node wrote.
    pub members: Vec<(Departure, String)>,
}

/// A user whose connections in a channel, on every node together, went from none to some
/// (`added`) or from some to none: found by the one script call that made the change, so
/// each is reported by one node only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub channel: ChannelName,
    pub user: String,
    pub added: bool,
}

/// Cluster-wide presence: every node's members of a channel, kept where every node reads
/// them. Each node writes its own members in batches and refreshes them; a node that stops
/// refreshing loses them after the store's TTL, or sooner when the node registry sees it
/// gone. The embedded default has none: a single node answers from its own members.
pub trait PresenceStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes this node's changes (a write with no changes refreshes the channel's
    /// members); one outcome per write, in order.
    fn write(&self, writes: Vec<PresenceWrite>) -> BusFuture<'_, Vec<WriteOutcome>>;

    /// Up to `limit` members of `channel` on every node, after `cursor` (a `next_cursor`).
    ///
    /// # Errors
    /// A [`BusError`] when the store cannot be read.
    fn page<'a>(
        &'a self,
        channel: &'a ChannelName,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BusFuture<'a, Result<StoredPage, BusError>>;

    /// The channel's connections and distinct users on every node, from counters.
    ///
    /// # Errors
    /// A [`BusError`] when the store cannot be read.
    fn stats<'a>(
        &'a self,
        channel: &'a ChannelName,
    ) -> BusFuture<'a, Result<StoredStats, BusError>>;

    /// Records the channels this node has members in, so that the node that sees it gone
    /// from the registry can remove them at once.
    fn index(&self, channels: Vec<ChannelName>, replace: bool) -> BusFuture<'_, ()>;

    /// Members of departed nodes removed since the last call (by this node's queries, or
    /// because the registry saw their node gone), for `leave` events.
    fn departed(&self) -> BusFuture<'_, Vec<Departed>>;

    /// The users this node's calls found added to or removed from a channel across the
    /// cluster since the last call, in the order found (`member_added`, `member_removed`).
    fn crossings(&self) -> Vec<Crossing>;

    /// A number that changes whenever this node's members in the store may have been lost
    /// (the store lost its data, or judged this node departed): every channel is then
    /// written again at once. An outage or a stall alone does not change it: the members
    /// were kept, and refreshing every channel of every node at once is what would turn an
    /// overloaded store into an unavailable one.
    fn state_losses(&self) -> u64;
}

#[cfg(test)]
mod tests;
