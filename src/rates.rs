//! Client publish rate limits per user (`limits.publishes_per_minute_per_user`) and per
//! address for anonymous connections (`limits.publishes_per_minute_per_address`), one budget
//! across the cluster: a user with connections on two nodes has one budget, not two.
//!
//! On one node the budgets are this node's token buckets. Clustered, each budget lives in
//! Redis (`rate.lua`, GCRA) and nodes take **leases**: a batch of grants at once, spent
//! locally, so that a busy user costs one Redis call per lease, not per message. A lease
//! starts at one grant and doubles each time the last was used up within half its life, up
//! to a quarter of the burst (at most 64); one that ends with grants unused halves the next.
//! Grants a node leased and did not use within [`LEASE_LIFE`] are lost to the budget, so a
//! user spread thin over many nodes gets somewhat less than the rate, never more. A refusal
//! is remembered until the retry time Redis gave, so a client hammering over its limit costs
//! no Redis call either. When Redis cannot be asked, this node's own bucket decides: an
//! outage neither lifts the limit nor blocks everyone.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::{
    cluster::Bus,
    throttle::{KeyedLimiter, Quota},
};

/// How long a lease's grants may be spent.
pub const LEASE_LIFE: Duration = Duration::from_secs(2);

/// Whose budget a publish is taken from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An authenticated user's (token `sub`, or the connect hook's user).
    User(Arc<str>),
    /// Anonymous connections' from one source (see `hub::source_of`).
    Address(IpAddr),
}

impl RateKey {
    /// The budget's name in Redis (after `sb:{rl:`).
    fn name(&self) -> String {
        match self {
            RateKey::User(user) => format!("u:{user}"),
            RateKey::Address(address) => format!("a:{address}"),
        }
    }
}

/// Why a publish was refused: which limit, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The configured publishes per minute.
    pub per_minute: u32,
    /// Whether it is the per-user limit (else the per-address one).
    pub user: bool,
    pub retry_after: Duration,
}

/// The budgets' quotas, and what a limit says of itself.
#[derive(Debug, Clone, Copy)]
struct Budget {
    quota: Quota,
    per_minute: u32,
}

/// A node's lease on one budget.
#[derive(Debug)]
struct Lease {
    /// Grants left to spend.
    left: u32,
    /// How many the last lease asked for.
    size: u32,
    taken_at: Instant,
    /// Refused by the cluster until then.
    refused_until: Option<Instant>,
}

/// This node's view of the publish budgets.
pub struct PublishRates {
    user: Option<Budget>,
    address: Option<Budget>,
    /// The cluster's budgets; `None` on one node.
    bus: Option<Arc<dyn Bus>>,
    leases: DashMap<RateKey, Lease>,
    /// This node's own buckets: the budgets on one node, the fallback while Redis is away.
    local_users: Option<KeyedLimiter<RateKey>>,
    local_addresses: Option<KeyedLimiter<RateKey>>,
    /// Publishes seen, to prune ended leases every so many.
    seen: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for PublishRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublishRates(user: {:?}, address: {:?}, clustered: {}, leases: {})",
            self.user.map(|budget| budget.per_minute),
            self.address.map(|budget| budget.per_minute),
            self.bus.is_some(),
            self.leases.len()
        )
    }
}

impl PublishRates {
    /// From `[limits]`; `None` when neither limit is set. `bus`: the cluster's, when there
    /// is one.
    #[must_use]
    pub fn new(limits: &crate::config::LimitsConfig, bus: Option<Arc<dyn Bus>>) -> Option<Self> {
        let budget = |per_minute: u32, burst: u32| {
            Quota::per_minute(per_minute, burst).map(|quota| Budget { quota, per_minute })
        };
        let user = budget(
            limits.publishes_per_minute_per_user,
            limits.publish_burst_per_user,
        );
        let address = budget(
            limits.publishes_per_minute_per_address,
            limits.publish_burst_per_address,
        );
        if user.is_none() && address.is_none() {
            return None;
        }
        Some(Self {
            local_users: user.map(|budget| KeyedLimiter::new(budget.quota)),
            local_addresses: address.map(|budget| KeyedLimiter::new(budget.quota)),
            user,
            address,
            bus,
            leases: DashMap::new(),
            seen: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Whether anonymous connections are limited per address (so sessions keep theirs).
    #[must_use]
    pub fn limits_addresses(&self) -> bool {
        self.address.is_some()
    }

    /// Takes one publish from `key`'s budget.
    ///
    /// # Errors
    /// [`Limited`] when the budget has none left.
    pub async fn take(&self, key: &RateKey) -> Result<(), Limited> {
        let Some(budget) = (match key {
            RateKey::User(_) => self.user,
            RateKey::Address(_) => self.address,
        }) else {
            return Ok(());
        };
        let limited = |retry_after| Limited {
            per_minute: budget.per_minute,
            user: matches!(key, RateKey::User(_)),
            retry_after,
        };
        if self.seen.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.prune();
        }
        let Some(bus) = &self.bus else {
            return self.take_locally(key).map_err(limited);
        };
        let now = Instant::now();
        let wanted = match self.spend_lease(key, now) {
            Spent::Granted => return Ok(()),
            Spent::Refused(retry_after) => return Err(limited(retry_after)),
            Spent::Ask(wanted) => wanted,
        };
        let quota = budget.quota;
        let grant = bus
            .take_grants(&key.name(), wanted, quota.interval(), quota.burst())
            .await;
        if let Ok(grant) = &grant {
            crate::telemetry::rate_lease(grant.granted > 0);
        }
        match grant {
            Ok(grant) if grant.granted > 0 => {
                self.leases.insert(
                    key.clone(),
                    Lease {
                        left: grant.granted - 1,
                        size: wanted,
                        taken_at: now,
                        refused_until: None,
                    },
                );
                Ok(())
            }
            Ok(grant) => {
                let retry_after = grant.retry_after.max(Duration::from_millis(1));
                self.leases.insert(
                    key.clone(),
                    Lease {
                        left: 0,
                        size: 1,
                        taken_at: now,
                        refused_until: Some(now + retry_after),
                    },
                );
                Err(limited(retry_after))
            }
            // Redis away: this node's own bucket decides.
            Err(_) => self.take_locally(key).map_err(limited),
        }
    }

    /// Spends from the lease held on `key`, or says how many grants to ask the cluster for.
    fn spend_lease(&self, key: &RateKey, now: Instant) -> Spent {
        let Some(mut lease) = self.leases.get_mut(key) else {
            return Spent::Ask(1);
        };
        if let Some(until) = lease.refused_until {
            if until > now {
                return Spent::Refused(until - now);
            }
            lease.refused_until = None;
        }
        let age = now.duration_since(lease.taken_at);
        if lease.left > 0 && age < LEASE_LIFE {
            lease.left -= 1;
            return Spent::Granted;
        }
        let most = self.max_lease(key);
        Spent::Ask(if lease.left == 0 && age < LEASE_LIFE / 2 {
            // Used up quickly: a busy key gets more at once.
            lease.size.saturating_mul(2).min(most)
        } else if lease.left > 0 {
            // Ended unused: ask for less.
            (lease.size / 2).max(1)
        } else {
            lease.size.min(most)
        })
    }

    /// The most grants one lease takes: a quarter of the burst, 1 to 64.
    fn max_lease(&self, key: &RateKey) -> u32 {
        let budget = match key {
            RateKey::User(_) => self.user,
            RateKey::Address(_) => self.address,
        };
        budget.map_or(1, |budget| (budget.quota.burst() / 4).clamp(1, 64))
    }

    fn take_locally(&self, key: &RateKey) -> Result<(), Duration> {
        let limiter = match key {
            RateKey::User(_) => &self.local_users,
            RateKey::Address(_) => &self.local_addresses,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        limiter
            .try_acquire(key, now, 1)
            .map_err(|rejected| rejected.retry_after)
    }

    /// Forgets leases that ended and refusals that passed, and this node's full buckets.
    pub fn prune(&self) {
        let now = Instant::now();
        self.leases.retain(|_, lease| {
            now.duration_since(lease.taken_at) < LEASE_LIFE
                || lease.refused_until.is_some_and(|until| until > now)
        });
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        for limiter in [&self.local_users, &self.local_addresses]
            .into_iter()
            .flatten()
        {
            limiter.forget_full(nanos);
        }
    }
}

enum Spent {
    Granted,
    Refused(Duration),
    Ask(u32),
}
