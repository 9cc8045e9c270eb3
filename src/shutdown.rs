//! Process lifetime: task trackers and the readiness latch.
//!
//! Every task is spawned through a [`TaskGroup`] so that shutdown can wait for all of them;
//! what tells a group of tasks to stop is a cancellation token that `app` owns per group.
//! Readiness is a set of reasons to be unready, each held by a [`Latch`]; dropping the latch
//! removes its reason, so a reason cannot outlive the code that holds it. Depends on nothing
//! else in the crate.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Tracks a group of tasks so that shutdown can wait for them. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TaskGroup {
    tracker: TaskTracker,
}

impl TaskGroup {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a tracked task.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Waits until every tracked task has finished.
    ///
    /// # Cancel safety
    /// Cancel safe; the tracker is closed on the first call.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Whether the node should receive traffic: ready when no [`Latch`] is held.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    // A short critical section (insert/remove/clone of a small map); never held across await.
    reasons: Arc<Mutex<BTreeMap<u64, &'static str>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// Holds the node unready for one reason until dropped.
#[derive(Debug)]
#[must_use = "dropping the latch makes the node ready again"]
pub struct Latch {
    id: u64,
    reasons: Arc<Mutex<BTreeMap<u64, &'static str>>>,
}

impl Readiness {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the node unready for `reason` until the returned latch is dropped.
    pub fn hold(&self, reason: &'static str) -> Latch {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, reason);
        Latch {
            id,
            reasons: Arc::clone(&self.reasons),
        }
    }

    /// The reasons the node is not ready; empty when ready.
    #[must_use]
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut reasons: Vec<_> = self.lock().values().copied().collect();
        reasons.dedup();
        reasons
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, &'static str>> {
        // The map stays consistent even if a holder panicked mid-insert.
        self.reasons.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Latch {
    fn drop(&mut self) {
        self.reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_latches() {
        let readiness = Readiness::new();
        assert!(readiness.reasons().is_empty());
        let starting = readiness.hold("starting");
        let draining = readiness.hold("draining");
        assert_eq!(readiness.reasons(), vec!["starting", "draining"]);
        drop(starting);
        assert_eq!(readiness.reasons(), vec!["draining"]);
        drop(draining);
        assert!(readiness.reasons().is_empty());
    }
}
