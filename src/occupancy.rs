//! Channels occupied and vacated for the whole cluster (`channel_occupied`,
//! `channel_vacated` webhooks; docs/backend.md).
//!
//! Sessions mark a channel whenever the hub says it became occupied or vacated here
//! ([`Occupancy::changed`]); one task per node reads the hub's answer now for each marked
//! channel (two sessions on two threads may report in either order, the hub's flag is the
//! truth) and, where it differs from what the node last wrote, writes the change:
//! - on one node (no store), each change is the cluster's and is told at once;
//! - in a cluster, to a `cluster::OccupancyStore`, whose answer says which changes made
//!   the channel occupied or vacated on every node together; only those are told, by the
//!   one node whose write made them. Changes wait in batches of `GATHER` (a channel that
//!   is left and joined again within it was never vacant); a failed batch is sent again,
//!   the same, until it is answered. Channels left by dead processes (a node killed, a
//!   process restarted under the same id) are vacated by whoever removes them.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::{OccupancyChange, OccupancyFlip, OccupancyStore},
    hub::HubHandle,
    protocol::ChannelName,
    shutdown::TaskGroup,
    telemetry,
};

/// How long changes gather before they are written.
const GATHER: Duration = Duration::from_millis(20);
/// How often the task looks for dead processes' channels without being woken.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// After a failed write, the first wait; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// At shutdown, a failed write is tried again for this long at most.
const STOP_PATIENCE: Duration = Duration::from_secs(1);

/// Told when a channel becomes occupied (`true`) or vacated, for the whole cluster.
#[derive(Clone)]
pub struct OccupancyWatch(pub Arc<TellOccupancy>);

/// Channel, whether it became occupied (else vacated), and the change's sequence number:
/// it only grows per channel, so that a receiver can order changes told by different nodes
/// (on one node: Unix time in µs, or one more than the last).
pub type TellOccupancy = dyn Fn(&ChannelName, bool, u64) + Send + Sync;

impl std::fmt::Debug for OccupancyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OccupancyWatch")
    }
}

/// The node's side of cluster-wide occupancy.
pub struct Occupancy {
    hub: HubHandle,
    watch: OccupancyWatch,
    /// Channels whose occupancy changed here since the task last looked.
    marked: Mutex<HashSet<ChannelName>>,
    wake: Notify,
    /// On one node: the last sequence number told.
    last_seq: AtomicU64,
}

impl std::fmt::Debug for Occupancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Occupancy").finish_non_exhaustive()
    }
}

impl Occupancy {
    /// Starts the task that writes this node's changes (to `store` in a cluster) and tells
    /// `watch`, in `tasks` until `stop`; it writes what the closed sessions left before it
    /// ends.
    #[must_use]
    pub fn start(
        hub: HubHandle,
        store: Option<Arc<dyn OccupancyStore>>,
        watch: OccupancyWatch,
        tasks: &TaskGroup,
        stop: &CancellationToken,
    ) -> Arc<Self> {
        let occupancy = Arc::new(Self {
            hub,
            watch,
            marked: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            last_seq: AtomicU64::new(0),
        });
        tasks.spawn(Arc::clone(&occupancy).keep(store, stop.clone()));
        occupancy
    }

    /// The hub said `channel` became occupied or vacated here.
    pub fn changed(&self, channel: &ChannelName) {
        let first = {
            let mut marked = self.marked.lock().unwrap_or_else(PoisonError::into_inner);
            let first = marked.is_empty();
            marked.insert(channel.clone());
            first
        };
        if first {
            self.wake.notify_one();
        }
    }

    fn tell(&self, channel: &ChannelName, told: OccupancyFlip) {
        telemetry::channel_occupancy(told.occupied);
        (self.watch.0)(channel, told.occupied, told.seq);
    }

    /// On one node: the next sequence number (see [`TellOccupancy`]).
    fn local_seq(&self) -> u64 {
        let now = crate::clock::unix_micros();
        let mut last = self.last_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_seq.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// The marked channels whose state in the hub differs from `written`.
    fn changes(&self, written: &HashSet<ChannelName>) -> Vec<OccupancyChange> {
        let marked =
            std::mem::take(&mut *self.marked.lock().unwrap_or_else(PoisonError::into_inner));
        marked
            .into_iter()
            .filter_map(|channel| {
                let occupied = self.hub.occupied(channel.as_str());
                (occupied != written.contains(&channel))
                    .then_some(OccupancyChange { channel, occupied })
            })
            .collect()
    }

    async fn keep(
        self: Arc<Self>,
        store: Option<Arc<dyn OccupancyStore>>,
        stop: CancellationToken,
    ) {
        let mut written: HashSet<ChannelName> = HashSet::new();
        let mut batch = 0_u64;
        let mut losses = store.as_ref().map(|store| store.state_losses());
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = self.wake.notified() => false,
                () = tokio::time::sleep(LOOK_EVERY) => false,
            };
            if !stopping {
                tokio::time::sleep(GATHER).await;
            }
            let Some(store) = store.as_deref() else {
                for change in self.changes(&written) {
                    record(&mut written, &change);
                    let seq = self.local_seq();
                    self.tell(
                        &change.channel,
                        OccupancyFlip {
                            occupied: change.occupied,
                            seq,
                        },
                    );
                }
                if stopping {
                    return;
                }
                continue;
            };
            if !store.ready() {
                if stopping {
                    return;
                }
                continue;
            }
            for (channel, told) in store.departed().await {
                self.tell(&channel, told);
            }
            let mut changes = self.changes(&written);
            if losses != Some(store.state_losses()) {
                // What this node wrote may be gone: write every occupied channel again (a
                // channel found empty is told occupied again).
                losses = Some(store.state_losses());
                let changing: HashSet<&ChannelName> =
                    changes.iter().map(|change| &change.channel).collect();
                let again: Vec<OccupancyChange> = written
                    .iter()
                    .filter(|channel| !changing.contains(channel))
                    .map(|channel| OccupancyChange {
                        channel: channel.clone(),
                        occupied: true,
                    })
                    .collect();
                changes.extend(again);
            }
            if !changes.is_empty() {
                batch += 1;
                match self.write(store, batch, &changes, &stop).await {
                    Some(answers) => {
                        for (change, answer) in changes.iter().zip(answers) {
                            record(&mut written, change);
                            if let Some(told) = answer {
                                self.tell(&change.channel, told);
                            }
                        }
                    }
                    None => {
                        tracing::warn!(
                            changes = changes.len(),
                            "Stopping with occupancy changes Redis did not take"
                        );
                        return;
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Sends `changes` as `batch` until the store answers; `None` when it did not answer
    /// within `STOP_PATIENCE` after `stop`.
    async fn write(
        &self,
        store: &dyn OccupancyStore,
        batch: u64,
        changes: &[OccupancyChange],
        stop: &CancellationToken,
    ) -> Option<Vec<Option<OccupancyFlip>>> {
        let mut wait = RETRY_FIRST;
        let mut give_up: Option<tokio::time::Instant> = None;
        loop {
            if let Ok(answers) = store.apply(batch, changes).await {
                return Some(answers);
            }
            telemetry::occupancy_write_failed();
            if stop.is_cancelled() {
                let until =
                    *give_up.get_or_insert_with(|| tokio::time::Instant::now() + STOP_PATIENCE);
                if tokio::time::Instant::now() >= until {
                    return None;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }
}

fn record(written: &mut HashSet<ChannelName>, change: &OccupancyChange) {
    if change.occupied {
        written.insert(change.channel.clone());
    } else {
        written.remove(&change.channel);
    }
}
