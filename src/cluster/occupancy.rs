//! Cluster-wide occupancy: which nodes hold subscribers of a channel, so that a channel is
//! occupied (its first subscriber on any node) and vacated (its last, on any node) once for
//! the whole cluster. The embedded default has no store: one node's own transitions are
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

/// Where every node's occupancy is kept (Redis in a cluster).
pub trait OccupancyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes this node's `changes` as batch `batch`, and answers per change whether the
    /// channel became occupied (`Some(true)`) or vacated (`Some(false)`) across the
    /// cluster. A batch sent again with the same number after an error (its answer may
    /// have been lost after it was written) is answered as it was the first time.
    ///
    /// # Errors
    /// A [`BusError`] when the store is unreachable: send the same batch again.
    fn apply<'a>(
        &'a self,
        batch: u64,
        changes: &'a [OccupancyChange],
    ) -> BusFuture<'a, Result<Vec<Option<bool>>, BusError>>;

    /// Channels vacated since the last call by removing what dead processes left: a node
    /// that left the registry without deregistering, or an earlier process under this node
    /// id (once, after start). What fails is tried again at the next call.
    fn departed(&self) -> BusFuture<'_, Vec<ChannelName>>;

    /// Whether this node is registered: it writes nothing before, so that a node that
    /// removes a dead process's fields never takes a live process for it.
    fn ready(&self) -> bool;

    /// Changes whenever what this node wrote may have been lost (Redis lost its data, or
    /// the registry judged this node gone and others removed it): write everything again.
    fn state_losses(&self) -> u64;
}
