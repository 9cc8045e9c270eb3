//! What a listener's accept loop does when `accept` fails: count it
//! (`switchboard_accept_errors_total{listener, error}`), log it at most once a second, hold the node
//! unready while it lasts (the WebSocket listener), and keep one file descriptor in reserve
//! for the moment the process runs out of them, so that a waiting client can still be
//! answered instead of hanging in the backlog.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    shutdown::{Latch, Readiness},
    telemetry,
};

/// `errno` values told apart (Linux).
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const ENOMEM: i32 = 12;
const ENOBUFS: i32 = 105;

/// How long without an accept failure before the node is ready again.
const RECOVERY: Duration = Duration::from_secs(1);

/// A listener's accept failures.
#[derive(Debug)]
pub struct AcceptFailures {
    listener: &'static str,
    /// Where `accept failing` is held while accepts fail; `None`: never unready for it.
    readiness: Option<Readiness>,
    latch: Option<Latch>,
    last_failure: Option<Instant>,
    last_log: Option<Instant>,
    unlogged: u64,
    /// A descriptor held in reserve, given up to accept one connection when the process is
    /// out of descriptors.
    reserve: Option<std::fs::File>,
}

impl AcceptFailures {
    #[must_use]
    pub fn new(listener: &'static str, readiness: Option<Readiness>) -> Self {
        // At zero from the start, so that dashboards and alerts see the series before the
        // first failure.
        telemetry::accept_failures_registered(listener);
        Self {
            listener,
            readiness,
            latch: None,
            last_failure: None,
            last_log: None,
            unlogged: 0,
            reserve: open_reserve(),
        }
    }

    /// Records a failed accept; true when the process is out of file descriptors (the
    /// caller may then use the reserve).
    pub fn failed(&mut self, err: &std::io::Error) -> bool {
        let kind = match err.raw_os_error() {
            Some(EMFILE) => "emfile",
            Some(ENFILE) => "enfile",
            Some(ENOBUFS) => "enobufs",
            Some(ENOMEM) => "enomem",
            _ => "other",
        };
        telemetry::accept_failed(self.listener, kind);
        let now = Instant::now();
        self.last_failure = Some(now);
        if self.latch.is_none()
            && let Some(readiness) = &self.readiness
        {
            self.latch = Some(readiness.hold("accept failing"));
        }
        if self
            .last_log
            .is_some_and(|logged| now.duration_since(logged) < Duration::from_secs(1))
        {
            self.unlogged += 1;
        } else {
            tracing::warn!(
                listener = self.listener,
                error = %err,
                kind,
                suppressed = self.unlogged,
                "Accept failed (logged at most once a second)"
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        matches!(kind, "emfile" | "enfile")
    }

    /// Resolves when a failing listener has gone a second without a failure (the node is
    /// then ready again); never while accepts succeed.
    pub async fn recovered(&mut self) {
        let Some(last) = self.last_failure else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(last + RECOVERY).await;
        if self.last_failure == Some(last) {
            self.last_failure = None;
            if self.latch.take().is_some() {
                tracing::info!(listener = self.listener, "Accepts succeed again; ready");
            }
        }
    }

    /// Closes the reserve descriptor, so that one `accept` can succeed.
    pub fn release_reserve(&mut self) {
        self.reserve = None;
    }

    /// Takes a reserve descriptor again when there is none and one is free.
    pub fn restore_reserve(&mut self) {
        if self.reserve.is_none() {
            self.reserve = open_reserve();
        }
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}
