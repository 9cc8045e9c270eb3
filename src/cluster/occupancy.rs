//! Cluster-wide occupancy: which processes hold subscribers of a channel, so that a channel
//! is occupied (its first subscriber on any node) and vacated (its last, on any node) once
//! for the whole cluster. The embedded default has no store: one node's own changes are
//! the cluster's. See `crate::occupancy` for the node's side, `redis::occupancy` for the
//! keys.

use super::{BusError, BusFuture};
use crate::protocol::ChannelName;

/// A change of whether this node holds subscribers of `channel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OccupancyChange {
    pub channel: ChannelName,
    pub occupied: bool,
}

/// A channel became occupied (or vacated) on every node together: the `seq`-th change of
/// its occupancy, a number that only grows per channel (receivers order by it: events from
/// different nodes travel apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OccupancyFlip {
    pub occupied: bool,
    pub seq: u64,
}

/// Where every node's occupancy is kept (Redis in a cluster).
pub trait OccupancyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes this node's `changes` as batch `batch` (numbers only grow), and answers per
    /// change whether it made the channel occupied or vacated across the cluster. A batch
    /// sent again with the same number after an error (its answer may have been lost after
    /// it was written) is answered as it was the first time; one that runs after a later
    /// batch (it waited in a dropped connection) changes nothing.
    ///
    /// # Errors
    /// A [`BusError`] when the store is unreachable: send the same batch again.
    fn apply<'a>(
        &'a self,
        batch: u64,
        changes: &'a [OccupancyChange],
    ) -> BusFuture<'a, Result<Vec<Option<OccupancyFlip>>, BusError>>;

    /// Channels vacated by removing what dead processes left (processes no longer
    /// registered, and earlier processes under this node id), looked for every few seconds
    /// (other calls answer nothing). What fails is tried again at a later call.
    fn departed(&self) -> BusFuture<'_, Vec<(ChannelName, OccupancyFlip)>>;

    /// Whether this node is registered: it writes nothing before, so that a node that
    /// removes a dead process's fields never takes a live process for it.
    fn ready(&self) -> bool;

    /// Changes whenever what this node wrote may have been lost (Redis lost its data, or
    /// the registry judged this node gone and others removed it): write everything again.
    fn state_losses(&self) -> u64;
}
