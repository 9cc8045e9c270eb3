//! Admission before the upgrade: connections accepted but not yet upgraded, counted for the
//! node and per source, each capped (`limits.max_pending_upgrades`, `_per_ip`). Upgraded
//! connections are counted separately, by [`super::Hub::try_admit`], against
//! `limits.max_connections`, so sockets that never upgrade cannot take real clients' slots.
//!
//! A *source* is an IPv4 address, or the IPv6 prefix of `limits.ipv6_source_prefix` bits
//! ([`source_of`]): one host holds a whole /64, so counting IPv6 by address would give it a
//! cap per address it cares to use.
//!
//! When the node-wide cap is full, a newcomer is not refused: the oldest pending upgrades of
//! the most represented sources are told to go ([`PendingSlot::evicted`]) and the newcomer
//! takes a place. Silent sockets from a few sources therefore cannot lock out a client from
//! another source; a source already holding the most slots pushes out its own oldest. One
//! pass evicts a batch (a 64th of the cap), so a flood of newcomers costs one scan of the
//! sources per batch, not one per newcomer.

use std::{
    collections::{BTreeMap, BinaryHeap},
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use dashmap::DashMap;
use tokio::sync::Notify;

/// The source `ip` is counted under: an IPv4 address (also when mapped into IPv6) as it is,
/// an IPv6 address cut to its first `ipv6_prefix` bits.
#[must_use]
pub fn source_of(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Connections accepted but not yet upgraded (or refused): a count for the node and the
/// slots of each source, each capped.
#[derive(Debug)]
pub struct PendingUpgrades {
    /// Slots held, those told to go included.
    total: AtomicUsize,
    /// Slots told to go and not yet released: they no longer count against the cap.
    evicting: AtomicUsize,
    per_source: DashMap<IpAddr, Source>,
    next_id: AtomicU64,
    /// One eviction pass at a time: a pass scans every source.
    evicting_pass: Mutex<()>,
    max_total: usize,
    max_per_source: usize,
}

/// The pending upgrades of one source, oldest first.
#[derive(Debug, Default)]
struct Source {
    slots: BTreeMap<u64, Arc<Eviction>>,
    /// Of `slots`, those told to go.
    evicted: usize,
}

impl Source {
    fn live(&self) -> usize {
        self.slots.len() - self.evicted
    }
}

/// Tells one pending upgrade to go.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

/// One pending upgrade; released when dropped.
#[derive(Debug)]
pub struct PendingSlot {
    pending: Arc<PendingUpgrades>,
    source: Option<IpAddr>,
    id: u64,
    eviction: Arc<Eviction>,
}

impl PendingSlot {
    /// Completes when the node needs this slot for a newcomer: the upgrade should end.
    ///
    /// # Cancel safety
    /// Cancel-safe: an eviction is remembered, and a later call completes at once.
    pub async fn evicted(&self) {
        loop {
            let notified = self.eviction.notify.notified();
            if self.eviction.evicted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl PendingUpgrades {
    #[must_use]
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            evicting: AtomicUsize::new(0),
            per_source: DashMap::new(),
            next_id: AtomicU64::new(0),
            evicting_pass: Mutex::new(()),
            max_total,
            max_per_source,
        })
    }

    /// Upgrades in progress on this node (those told to go and not gone yet included).
    #[must_use]
    pub fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `source` (see [`source_of`]), evicting others
    /// when the node's cap is full; `Err` with the reason label when it cannot.
    ///
    /// # Errors
    /// `max_pending_upgrades_per_ip`: this source holds its cap. `max_pending_upgrades`:
    /// the node's cap is full and nothing could be evicted.
    pub fn try_acquire(
        self: &Arc<Self>,
        source: Option<IpAddr>,
    ) -> Result<PendingSlot, &'static str> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let eviction = Arc::new(Eviction::default());
        if let Some(source) = source {
            let mut entry = self.per_source.entry(source).or_default();
            if entry.live() >= self.max_per_source {
                drop(entry);
                self.forget_if_empty(source);
                return Err("max_pending_upgrades_per_ip");
            }
            entry.slots.insert(id, Arc::clone(&eviction));
        }
        // Built first, so that every way out below releases what was taken.
        let slot = PendingSlot {
            pending: Arc::clone(self),
            source,
            id,
            eviction,
        };
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if total.saturating_sub(self.evicting.load(Ordering::Relaxed)) > self.max_total
            && !self.evict_for(id)
        {
            return Err("max_pending_upgrades");
        }
        Ok(slot)
    }

    /// The node's cap is full: tells the oldest slots of the most represented sources to go,
    /// a batch at once, never slot `except` (the newcomer). Whether room was made.
    fn evict_for(&self, except: u64) -> bool {
        // Poisoning cannot leave the guarded nothing inconsistent.
        let _pass = self
            .evicting_pass
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let over = || {
            self.total
                .load(Ordering::Relaxed)
                .saturating_sub(self.evicting.load(Ordering::Relaxed))
                > self.max_total
        };
        if !over() {
            // Another pass made room meanwhile.
            return true;
        }
        let mut heaviest: BinaryHeap<(usize, IpAddr)> = self
            .per_source
            .iter()
            .filter(|source| source.live() > 0)
            .map(|source| (source.live(), *source.key()))
            .collect();
        let mut batch = (self.max_total / 64).max(1);
        while batch > 0
            && let Some((live, source)) = heaviest.pop()
        {
            if !self.evict_oldest(source, except) {
                continue;
            }
            batch -= 1;
            if live > 1 {
                heaviest.push((live - 1, source));
            }
        }
        !over()
    }

    /// Tells the oldest live slot of `source` other than `except` to go.
    fn evict_oldest(&self, source: IpAddr, except: u64) -> bool {
        let Some(mut entry) = self.per_source.get_mut(&source) else {
            return false;
        };
        let Some(eviction) = entry
            .slots
            .iter()
            .find(|(id, eviction)| **id != except && !eviction.evicted.load(Ordering::Relaxed))
            .map(|(_, eviction)| Arc::clone(eviction))
        else {
            return false;
        };
        entry.evicted += 1;
        self.evicting.fetch_add(1, Ordering::Relaxed);
        eviction.evicted.store(true, Ordering::Release);
        eviction.notify.notify_one();
        true
    }

    fn forget_if_empty(&self, source: IpAddr) {
        self.per_source
            .remove_if(&source, |_, entry| entry.slots.is_empty());
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut was_evicted = false;
        if let Some(source) = self.source {
            // The entry goes with its last slot, so the map holds only sources upgrading
            // now. The flag is read under the entry's lock, where evictions set it.
            self.pending.per_source.remove_if_mut(&source, |_, entry| {
                entry.slots.remove(&self.id);
                if self.eviction.evicted.load(Ordering::Acquire) {
                    entry.evicted -= 1;
                    was_evicted = true;
                }
                entry.slots.is_empty()
            });
        }
        if was_evicted {
            self.pending.evicting.fetch_sub(1, Ordering::Relaxed);
        }
        self.pending.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
