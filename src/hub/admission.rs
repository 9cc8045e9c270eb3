//! Admission before the upgrade: connections accepted but not yet upgraded, counted for the
//! node and per source address, each capped (`limits.max_pending_upgrades`, `_per_ip`).
//! Upgraded connections are counted separately, by [`super::Hub::try_admit`], against
//! `limits.max_connections`, so sockets that never upgrade cannot take real clients' slots.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use dashmap::DashMap;

/// Connections accepted but not yet upgraded (or refused): a count for the node and one per
/// address, each capped.
#[derive(Debug)]
pub struct PendingUpgrades {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    max_total: usize,
    max_per_ip: usize,
}

/// One pending upgrade; released when dropped.
#[derive(Debug)]
pub struct PendingSlot {
    pending: Arc<PendingUpgrades>,
    ip: Option<IpAddr>,
}

impl PendingUpgrades {
    #[must_use]
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            max_total,
            max_per_ip,
        })
    }

    /// Upgrades in progress on this node.
    #[must_use]
    pub fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `ip`; `Err` with the reason label when a cap is
    /// reached.
    ///
    /// # Errors
    /// `max_pending_upgrades` or `max_pending_upgrades_per_ip`: the cap that was reached.
    pub fn try_acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<PendingSlot, &'static str> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err("max_pending_upgrades");
        }
        if let Some(ip) = ip {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(count);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err("max_pending_upgrades_per_ip");
            }
            *count += 1;
        }
        Ok(PendingSlot {
            pending: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            // The entry goes with its last slot, so the map holds only addresses upgrading now.
            self.pending.per_ip.remove_if_mut(&ip, |_, count| {
                *count -= 1;
                *count == 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_upgrades_are_capped_in_total_and_per_address() {
        let pending = PendingUpgrades::new(3, 2);
        let a_ip = IpAddr::from([10, 0, 0, 1]);
        let a = Some(a_ip);
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let first = pending.try_acquire(a).unwrap();
        let _second = pending.try_acquire(a).unwrap();
        assert_eq!(
            pending.try_acquire(a).unwrap_err(),
            "max_pending_upgrades_per_ip"
        );
        let _third = pending.try_acquire(b).unwrap();
        assert_eq!(pending.try_acquire(b).unwrap_err(), "max_pending_upgrades");
        drop(first);
        assert_eq!(pending.count(), 2);
        let again = pending.try_acquire(a).unwrap();
        drop(again);
        drop(_second);
        assert!(
            pending.per_ip.get(&a_ip).is_none(),
            "an address's entry goes with its last slot"
        );
    }
}
