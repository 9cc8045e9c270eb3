//! Draining a node before it goes away, so that its clients move to other nodes a few at a
//! time and lose nothing.
//!
//! A drain starts on SIGTERM (`app::run`) or `POST /v1/drain`, and goes through phases:
//!
//! 1. `announcing` (`shutdown.drain_delay`): `/readyz` answers 503 at once (`/healthz` stays
//!    200) so that load balancers stop sending new clients; upgrades are still accepted
//!    meanwhile, since a balancer that has not noticed yet would otherwise fail them.
//! 2. `closing` (`shutdown.drain_window`): new upgrades get 503 with `Retry-After`, and the
//!    connections open at the start of the phase are closed in a random order, evenly paced
//!    over the window with a random offset within each one's slot: each gets
//!    `{"type":"reconnect","reason":"draining","after_ms":N}` and then close code 1012, after
//!    everything queued for it. Messages keep flowing to the connections not closed yet.
//! 3. `closed`: every connection is closed (or the deadline came): the drain is done and the
//!    process exits 0.
//!
//! `DELETE /v1/drain` cancels a drain started through the API: the node is ready again and
//! accepts upgrades (connections already closed stay closed). A drain started by a signal
//! cannot be cancelled: the orchestrator wants the process gone.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::MAX_DRAIN,
    hub::{FramedText, HubHandle},
    protocol::{self, CloseCode},
    shutdown::{Latch, Readiness, TaskGroup},
    telemetry,
};

/// How often the closing phase wakes to close the connections whose time came.
const TICK: Duration = Duration::from_millis(10);
/// Upper bound of the `after_ms` hint in the reconnect frame: a client waits a random time
/// below it before reconnecting, spreading reconnects further than the pacing alone.
const MAX_RECONNECT_AFTER_MS: u64 = 1000;

/// The configured defaults of a drain (`[shutdown]`).
#[derive(Debug, Clone, Copy)]
pub struct DrainSettings {
    pub delay: Duration,
    pub window: Duration,
    /// After the start; `None`: delay + window + `grace`.
    pub deadline: Option<Duration>,
    pub grace: Duration,
}

impl DrainSettings {
    /// From `[shutdown]`.
    #[must_use]
    pub fn from_config(shutdown: &crate::config::ShutdownConfig) -> Self {
        Self {
            delay: shutdown.drain_delay,
            window: shutdown.drain_window,
            deadline: (!shutdown.drain_deadline.is_zero()).then_some(shutdown.drain_deadline),
            grace: shutdown.grace,
        }
    }
}

/// Who started a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Signal,
    Api,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Signal => "signal",
            Origin::Api => "api",
        }
    }
}

/// Why a drain request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("a drain is already running")]
    AlreadyDraining,
    #[error("no drain is running")]
    NotDraining,
    #[error("a drain started by a signal cannot be cancelled")]
    StartedBySignal,
    /// The window or the deadline asked for is longer than a drain may take.
    #[error("window at most {max_window_s} s, deadline at most {max_deadline_s} s")]
    TooLong {
        max_window_s: u64,
        max_deadline_s: u64,
    },
    /// The deadline asked for comes before the delay and the window are over.
    #[error(
        "the deadline ({deadline_ms} ms) must leave room for shutdown.drain_delay and the \
         window ({needed_ms} ms)"
    )]
    DeadlineTooSoon { deadline_ms: u64, needed_ms: u64 },
}

/// Starts, reports and cancels drains. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Drainer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: HubHandle,
    readiness: Readiness,
    settings: DrainSettings,
    tasks: TaskGroup,
    current: Mutex<Option<Run>>,
    /// Set once a drain has closed every connection or reached its deadline.
    done: watch::Sender<bool>,
}

/// A drain in progress.
#[derive(Debug)]
struct Run {
    origin: Origin,
    started: Instant,
    delay: Duration,
    window: Duration,
    deadline: Duration,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    /// Holds `/readyz` at 503 while the drain runs.
    _unready: Latch,
}

#[derive(Debug, Default)]
struct Progress {
    /// 1 announcing, 2 closing, 3 closed.
    phase: AtomicUsize,
    /// Connections open when the closing phase began.
    at_start: AtomicUsize,
    /// Of those, how many this drain closed.
    closed: AtomicUsize,
}

/// What `GET /v1/drain` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainStatus {
    /// `serving`, `announcing`, `closing` or `closed`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<&'static str>,
    /// Open WebSocket connections on the node now.
    pub connections: usize,
    /// Connections open when the closing phase began, and how many of them are closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_at_start: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// A drain's window and deadline, when the caller gives them (else the configured ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct DrainRequest {
    pub window: Option<Duration>,
    pub deadline: Option<Duration>,
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drainer {
    /// `tasks`: where the drain's task runs (tracked so that shutdown waits for it).
    #[must_use]
    pub fn new(
        hub: HubHandle,
        readiness: Readiness,
        settings: DrainSettings,
        tasks: TaskGroup,
    ) -> Self {
        telemetry::drain_registered();
        Self {
            inner: Arc::new(Inner {
                hub,
                readiness,
                settings,
                tasks,
                current: Mutex::new(None),
                done: watch::Sender::new(false),
            }),
        }
    }

    /// Starts a drain. A signal during an API drain takes it over (it can no longer be
    /// cancelled) rather than starting another.
    ///
    /// # Errors
    /// [`DrainError::AlreadyDraining`] for a second API request, [`DrainError::TooLong`]
    /// or [`DrainError::DeadlineTooSoon`] for a window or deadline out of range.
    pub fn start(&self, origin: Origin, request: DrainRequest) -> Result<DrainStatus, DrainError> {
        let settings = self.inner.settings;
        let window = request.window.unwrap_or(settings.window);
        let deadline = request
            .deadline
            .or(settings.deadline)
            .unwrap_or(settings.delay + window + settings.grace);
        if window > MAX_DRAIN || deadline > MAX_DRAIN * 2 {
            return Err(DrainError::TooLong {
                max_window_s: MAX_DRAIN.as_secs(),
                max_deadline_s: 2 * MAX_DRAIN.as_secs(),
            });
        }
        if deadline < settings.delay + window {
            return Err(DrainError::DeadlineTooSoon {
                deadline_ms: ms(deadline),
                needed_ms: ms(settings.delay + window),
            });
        }
        {
            let mut current = lock(&self.inner.current);
            if let Some(run) = current.as_mut() {
                if origin == Origin::Signal {
                    run.origin = Origin::Signal;
                    drop(current);
                    return Ok(self.status());
                }
                return Err(DrainError::AlreadyDraining);
            }
            let progress = Arc::new(Progress::default());
            progress.phase.store(1, Ordering::Relaxed);
            let cancel = CancellationToken::new();
            *current = Some(Run {
                origin,
                started: Instant::now(),
                delay: settings.delay,
                window,
                deadline,
                progress: Arc::clone(&progress),
                cancel: cancel.clone(),
                _unready: self.inner.readiness.hold("draining"),
            });
            tracing::info!(
                started_by = origin.as_str(),
                connections = self.inner.hub.connections(),
                delay_ms = ms(settings.delay),
                window_ms = ms(window),
                deadline_ms = ms(deadline),
                "Drain started: unready now, closing connections over the window"
            );
            self.inner.tasks.spawn(drive(
                Arc::clone(&self.inner),
                origin,
                progress,
                (settings.delay, window, deadline),
                cancel,
            ));
        }
        telemetry::drain_state(1);
        Ok(self.status())
    }

    /// Cancels a drain started through the API: ready again, upgrades accepted again.
    ///
    /// # Errors
    /// [`DrainError::NotDraining`], or [`DrainError::StartedBySignal`].
    pub fn cancel(&self) -> Result<DrainStatus, DrainError> {
        {
            let mut current = lock(&self.inner.current);
            match current.as_ref() {
                None => return Err(DrainError::NotDraining),
                Some(run) if run.origin == Origin::Signal => {
                    return Err(DrainError::StartedBySignal);
                }
                Some(run) if run.progress.phase.load(Ordering::Relaxed) == 3 => {
                    return Err(DrainError::NotDraining);
                }
                Some(run) => run.cancel.cancel(),
            }
            *current = None;
            // Under the lock: see `under_lock`.
            self.inner.hub.set_draining(false);
        }
        telemetry::drain_state(0);
        telemetry::drain_connections_left(0);
        tracing::info!("Drain cancelled: serving again");
        Ok(self.status())
    }

    /// The node is stopping: the drain's task, if one runs, ends now (a second signal, or
    /// the end of the process), so that stopping does not wait for its phases.
    pub fn abandon(&self) {
        if let Some(run) = lock(&self.inner.current).as_ref() {
            run.cancel.cancel();
        }
    }

    /// Where the node stands.
    #[must_use]
    pub fn status(&self) -> DrainStatus {
        let connections = self.inner.hub.connections();
        let current = lock(&self.inner.current);
        let Some(run) = current.as_ref() else {
            return DrainStatus {
                state: "serving",
                started_by: None,
                connections,
                connections_at_start: None,
                closed: None,
                elapsed_ms: None,
                delay_ms: None,
                window_ms: None,
                deadline_ms: None,
            };
        };
        let phase = run.progress.phase.load(Ordering::Relaxed);
        let closing = phase >= 2;
        DrainStatus {
            state: match phase {
                1 => "announcing",
                2 => "closing",
                _ => "closed",
            },
            started_by: Some(run.origin.as_str()),
            connections,
            connections_at_start: closing.then(|| run.progress.at_start.load(Ordering::Relaxed)),
            closed: closing.then(|| run.progress.closed.load(Ordering::Relaxed)),
            elapsed_ms: Some(ms(run.started.elapsed())),
            delay_ms: Some(ms(run.delay)),
            window_ms: Some(ms(run.window)),
            deadline_ms: Some(ms(run.deadline)),
        }
    }

    /// Resolves once a drain has closed every connection or reached its deadline.
    pub async fn finished(&self) {
        let mut done = self.inner.done.subscribe();
        let _ = done.wait_for(|done| *done).await;
    }
}

/// Runs one drain's phases; stops early when `cancel` fires.
async fn drive(
    inner: Arc<Inner>,
    origin: Origin,
    progress: Arc<Progress>,
    (delay, window, deadline): (Duration, Duration, Duration),
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let deadline_at = started + deadline;
    // The delay gives load balancers time to see the node unready before its upgrades are
    // refused; a node told by a signal that has no connection has nobody to hand over (a
    // developer's Ctrl-C): it goes at once. A drain asked through the API (an orchestrator
    // that then waits for it) keeps its delay.
    let delay = if origin == Origin::Signal && inner.hub.connections() == 0 {
        Duration::ZERO
    } else {
        delay
    };
    let phases = async {
        tokio::time::sleep(delay).await;
        // Under the lock `Drainer::cancel` takes, so that a cancel cannot come between the
        // check and the flag and leave upgrades refused on a serving node.
        if !under_lock(&inner, &cancel, || inner.hub.set_draining(true)) {
            return std::future::pending().await;
        }
        progress.phase.store(2, Ordering::Relaxed);
        telemetry::drain_state(2);
        close_paced(&inner.hub, &progress, window).await;
        // Closed sessions finish their close handshakes; wait for them to go.
        while inner.hub.connections() > 0 {
            tokio::time::sleep(TICK).await;
        }
    };
    tokio::select! {
        () = cancel.cancelled() => return,
        () = phases => {}
        () = tokio::time::sleep_until(deadline_at) => {
            tracing::warn!(
                remaining = inner.hub.connections(),
                "Drain deadline reached with connections left"
            );
        }
    }
    // A cancel that came after the phases ended but before this point wins: no exit.
    if !under_lock(&inner, &cancel, || {
        progress.phase.store(3, Ordering::Relaxed)
    }) {
        return;
    }
    telemetry::drain_state(3);
    telemetry::drain_connections_left(0);
    tracing::info!(
        closed = progress.closed.load(Ordering::Relaxed),
        elapsed_ms = ms(started.elapsed()),
        "Drain done"
    );
    inner.done.send_replace(true);
}

/// Runs `step` unless the drain was cancelled, holding the lock `Drainer::cancel` holds
/// while it cancels; returns whether it ran.
fn under_lock(inner: &Inner, cancel: &CancellationToken, step: impl FnOnce()) -> bool {
    let _current = lock(&inner.current);
    if cancel.is_cancelled() {
        return false;
    }
    step();
    true
}

/// Closes the connections open now, in a random order, the k-th of n at
/// `(k + r) * window / n` with r random in [0, 1): evenly paced, with jitter, and never
/// two timers: one tick closes whatever came due.
async fn close_paced(hub: &HubHandle, progress: &Progress, window: Duration) {
    let mut conns = hub.connections_snapshot();
    let n = conns.len();
    progress.at_start.store(n, Ordering::Relaxed);
    if n == 0 {
        return;
    }
    // Seeded from the thread's generator: that one cannot be held across an await.
    let mut rng = StdRng::from_rng(&mut rand::rng());
    conns.shuffle(&mut rng);
    let slot = window.as_secs_f64() / n as f64;
    let due: Vec<Duration> = (0..n)
        .map(|k| Duration::from_secs_f64((k as f64 + rng.random::<f64>()) * slot))
        .collect();
    let start = Instant::now();
    let mut next = 0;
    while next < n {
        let elapsed = start.elapsed();
        while next < n && due[next] <= elapsed {
            let outbound = &conns[next];
            if !outbound.is_closing() {
                let after_ms = rng.random_range(0..MAX_RECONNECT_AFTER_MS);
                let frame = protocol::encode_reconnect("draining", after_ms);
                // A full queue is closed as a slow consumer anyway; the close below then
                // changes nothing.
                let _ = outbound.try_enqueue(&FramedText::from(frame));
                outbound.close(CloseCode::ServiceRestart);
                telemetry::drain_closed();
            }
            progress.closed.fetch_add(1, Ordering::Relaxed);
            next += 1;
        }
        telemetry::drain_connections_left(n - next);
        if next < n {
            tokio::time::sleep(TICK.max(due[next].saturating_sub(start.elapsed()))).await;
        }
    }
}

#[cfg(test)]
mod tests;
