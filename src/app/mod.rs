//! Assembly: builds every component from the configuration, binds the listeners, spawns and
//! tracks the tasks, and runs the drain on shutdown. The only module that knows everyone.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod listeners;
mod memory_watch;
mod periodic;

use self::{
    listeners::{accept_loop, bind_listener, raise_file_limit},
    memory_watch::{memory_threshold, watch_memory},
    periodic::{keep_jwks, spawn_periodic},
};
use crate::{
    cluster::{Bus, LocalBus, NodeInfo, OccupancyStore, PresenceStore, RedisBus, RedisSettings},
    config::Config,
    control::{self, ControlContext, ControlSettings},
    drain::{DrainRequest, DrainSettings, Drainer, Origin},
    hub::{Hub, HubHandle, HubSettings},
    memory,
    occupancy::{Occupancy, OccupancyWatch},
    presence::{MemberWatch, Presence, PresenceSettings},
    protocol::CloseCode,
    session::{SessionContext, SessionSettings},
    shutdown::{Latch, Readiness, TaskGroup},
    telemetry,
    throttle::{KeyedLimiter, Quota},
};

/// How often expired history and idle channels are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How often the Prometheus recorder folds histogram samples.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A started server. Drop it only after [`Running::stop`]: dropping it leaves tasks running.
#[derive(Debug)]
pub struct Running {
    ws_addr: SocketAddr,
    control_addr: SocketAddr,
    hub: HubHandle,
    readiness: Readiness,
    grace: Duration,
    /// Starts and reports drains (SIGTERM, `/v1/drain`).
    drainer: Drainer,
    /// Cancelled to stop accepting WebSocket connections.
    accept_stop: CancellationToken,
    /// Cancelled to stop the control API and the periodic tasks, after the sessions are gone.
    background_stop: CancellationToken,
    /// The accept loop and every session task.
    sessions: TaskGroup,
    /// The listeners' TLS, when on (reloaded by [`Running::reload_tls`]).
    certificates: crate::tls::Certificates,
    /// Control API and periodic tasks.
    background: TaskGroup,
    /// The webhooks' senders, stopped after `background` so that they take the events the
    /// last writes of presence and occupancy make.
    outbox: TaskGroup,
    outbox_stop: CancellationToken,
}

/// Reads and parses every file the configuration names, as starting would: the listeners'
/// certificates and keys, the auth public keys, the Redis CA. `check-config` runs it, and
/// `serve` before anything starts, so that a bad file is a configuration error (exit 64).
///
/// # Errors
/// The first file that cannot be read or parsed, naming its key.
pub fn preflight(config: &Config) -> anyhow::Result<()> {
    crate::tls::Tls::from_config("server.tls", &config.server.tls)
        .context("server.tls (certificate and key)")?;
    crate::tls::Tls::from_config("control.tls", &config.control.tls)
        .context("control.tls (certificate and key)")?;
    crate::auth::Authenticator::from_config(&config.auth).context("[auth] keys")?;
    if config.cluster.redis.is_set() {
        RedisSettings::from_config(config, Arc::from(config.server.node_id.as_str()))?;
    }
    Ok(())
}

/// Builds the node from `config`, binds both listeners and starts serving. Each subsystem
/// takes its settings from its own config sections (`*Settings::from_config`).
///
/// # Errors
/// When a listener cannot be bound, or a file the config names cannot be read.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics_handle = telemetry::install_recorder();
    raise_file_limit(config.limits.max_connections);
    telemetry::node_started(config.limits.max_connections);
    let readiness = Readiness::new();
    let starting = readiness.hold("starting");
    let node_id: Arc<str> = Arc::from(config.server.node_id.as_str());
    let hub = Hub::new(HubSettings::from_config(&config));

    let ws_listener = bind_listener(config.server.listen)
        .with_context(|| format!("binding the WebSocket listener on {}", config.server.listen))?;
    let control_listener = TcpListener::bind(config.control.listen)
        .await
        .with_context(|| format!("binding the control listener on {}", config.control.listen))?;
    let node = NodeInfo {
        ws_addr: ws_listener.local_addr()?,
        control_addr: control_listener.local_addr()?,
    };

    let sessions = TaskGroup::new();
    let background = TaskGroup::new();
    let accept_stop = CancellationToken::new();
    let background_stop = CancellationToken::new();

    // Every TLS client and server here (wss://, HTTPS, rediss://) uses ring; a crate that
    // asks rustls for the process default must get the same. Fails only if already set.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let certificates = crate::tls::Certificates {
        server: crate::tls::Tls::from_config("server.tls", &config.server.tls)
            .context("loading server.tls (certificate and key)")?,
        control: crate::tls::Tls::from_config("control.tls", &config.control.tls)
            .context("loading control.tls (certificate and key)")?,
    };
    let (bus, stores) = start_bus(
        &config,
        &hub,
        &node_id,
        node.clone(),
        &background,
        &background_stop,
    )?;
    let auth = start_auth(&config, &readiness, &background, &background_stop)?;
    let outbox = TaskGroup::new();
    let outbox_stop = CancellationToken::new();
    let webhooks = crate::webhooks::Webhooks::start(
        &config.webhooks,
        Arc::clone(&node_id),
        &outbox,
        &outbox_stop,
    );
    let mut presence_settings = PresenceSettings::from_config(&config, Arc::clone(&node_id));
    presence_settings.watch = webhooks
        .as_ref()
        .and_then(|webhooks| webhooks.member_events())
        .map(|tell| MemberWatch(Arc::new(tell)));
    let presence = Presence::start(
        presence_settings,
        Arc::clone(&bus),
        stores.presence,
        &background,
        &background_stop,
    );
    let occupancy = webhooks
        .as_ref()
        .and_then(|webhooks| webhooks.occupancy_events())
        .map(|tell| {
            Occupancy::start(
                Arc::clone(&hub),
                stores.occupancy,
                OccupancyWatch(Arc::new(tell)),
                &background,
                &background_stop,
            )
        });
    let drainer = Drainer::new(
        Arc::clone(&hub),
        readiness.clone(),
        DrainSettings::from_config(&config.shutdown),
        background.clone(),
    );

    // One budget per channel for clients and another for the control API, so that clients
    // using up a channel's cannot make a backend's publishes to it fail.
    let channel_budget = || {
        Quota::new(
            config.limits.channel_publish_bytes_per_second,
            config.limits.channel_publish_byte_burst,
        )
        .map(|quota| Arc::new(KeyedLimiter::new(quota)))
    };
    let session_ctx = Arc::new(SessionContext {
        hub: Arc::clone(&hub),
        channel_budget: channel_budget(),
        bus: Arc::clone(&bus),
        node_id: Arc::clone(&node_id),
        settings: SessionSettings::from_config(&config),
        auth,
        presence: Arc::clone(&presence),
        hooks: crate::hooks::Hooks::new(&config.hooks, Arc::clone(&node_id)),
        webhooks,
        occupancy,
        publish_rates: crate::rates::PublishRates::new(
            &config.limits,
            config.cluster.redis.is_set().then(|| Arc::clone(&bus)),
        )
        .map(Arc::new),
        connect_limiter: Quota::new(
            config.limits.connects_per_ip_per_second,
            config.limits.connect_burst_per_ip,
        )
        .map(KeyedLimiter::new),
    });
    if session_ctx.settings.origins.allows_any() {
        tracing::warn!(
            "server.allowed_origins contains \"*\": any web page may open WebSockets here \
             with its visitors' credentials"
        );
    }
    let control_ctx = Arc::new(ControlContext {
        channel_budget: channel_budget(),
        drain: drainer.clone(),
        presence,
        certificates: certificates.clone(),
        hub: Arc::clone(&hub),
        bus: Arc::clone(&bus),
        readiness: readiness.clone(),
        node_id: Arc::clone(&node_id),
        metrics: metrics_handle.clone(),
        settings: ControlSettings::from_config(&config),
    });

    spawn_periodic(
        &config,
        &hub,
        (&session_ctx, &control_ctx),
        &background,
        &background_stop,
    );
    if config.server.allowed_origins.is_empty() && !config.server.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.server.listen,
            "server.allowed_origins is empty: browsers may connect only from pages served by \
             localhost or an IP address. List your web app's origins"
        );
    }
    if config.demo.enabled {
        tracing::info!(
            "Demo on: /demo on the WebSocket listener, a ticker on demo:ticker, replies \
             streamed to demo:assistant"
        );
        background.spawn(crate::demo::ticker(
            Arc::clone(&bus),
            Arc::clone(&hub),
            Arc::clone(&node_id),
            background_stop.clone(),
        ));
        background.spawn(crate::demo::assistant(
            Arc::clone(&bus),
            Arc::clone(&hub),
            Arc::clone(&node_id),
            background_stop.clone(),
        ));
    }
    let meter = memory::meter();
    let threshold = memory_threshold(config.limits.memory_pressure_bytes, meter);
    // Which memory the watch compares (and `switchboard_memory_used_bytes` reports): an operator
    // sizing the threshold needs to know whether socket buffers and page cache count.
    tracing::info!(
        source = meter.source.label(),
        cgroup = ?meter.source,
        cgroup_limit_bytes = meter.limit,
        threshold_bytes = threshold,
        "Memory measured for memory-pressure admission"
    );
    telemetry::memory_threshold(threshold.unwrap_or(0));
    if let Some(threshold) = threshold {
        background.spawn(watch_memory(
            Arc::clone(&hub),
            readiness.clone(),
            threshold,
            background_stop.clone(),
        ));
    }
    background.spawn(crate::overload::watch_lag(
        Arc::clone(&hub),
        readiness.clone(),
        (!config.limits.max_event_loop_lag.is_zero()).then_some(config.limits.max_event_loop_lag),
        background_stop.clone(),
    ));
    sessions.spawn(accept_loop(
        ws_listener,
        session_ctx,
        certificates.server.clone(),
        readiness.clone(),
        accept_stop.clone(),
        sessions.clone(),
    ));
    let control_done = control::serve_on_own_thread(
        control_listener,
        certificates.control.clone(),
        control_ctx,
        background_stop.clone(),
    )
    .await
    .context("starting the control API's thread")?;
    background.spawn(control_done);

    tracing::info!(
        ws_addr = %node.ws_addr,
        ws_path = %config.server.ws_path,
        control_addr = %node.control_addr,
        node = %node_id,
        shards = config.server.shards,
        bus = bus.kind(),
        tls = certificates.server.is_some(),
        control_tls = certificates.control.is_some(),
        "Switchboard listening"
    );
    drop::<Latch>(starting);
    Ok(Running {
        ws_addr: node.ws_addr,
        control_addr: node.control_addr,
        hub,
        readiness,
        grace: config.shutdown.grace,
        drainer,
        accept_stop,
        background_stop,
        sessions,
        background,
        certificates,
        outbox,
        outbox_stop,
    })
}

/// Where presence and occupancy are kept across nodes (`None` on a single node).
#[derive(Default)]
struct Stores {
    presence: Option<Arc<dyn PresenceStore>>,
    occupancy: Option<Arc<dyn OccupancyStore>>,
}

/// The bus, and the stores.
type BusAndStore = (Arc<dyn Bus>, Stores);

/// The bus `[cluster]` asks for: Redis Streams (and presence and occupancy in the same
/// Redis) when `cluster.redis` is set, else the in-process bus.
fn start_bus(
    config: &Config,
    hub: &HubHandle,
    node_id: &Arc<str>,
    node: NodeInfo,
    tasks: &TaskGroup,
    stop: &CancellationToken,
) -> anyhow::Result<BusAndStore> {
    if !config.cluster.redis.is_set() {
        return Ok((
            Arc::new(LocalBus::new(Arc::clone(hub), Arc::clone(node_id), node)),
            Stores::default(),
        ));
    }
    let settings = RedisSettings::from_config(config, Arc::clone(node_id))?;
    let bus = RedisBus::start(settings, Arc::clone(hub), node, tasks, stop)
        .context("starting the Redis bus")?;
    let stores = Stores {
        presence: Some(Arc::new(bus.presence(config.presence.ttl))),
        occupancy: Some(Arc::new(bus.occupancy())),
    };
    Ok((Arc::new(bus), stores))
}

/// The token verifier `[auth]` describes, if it has keys; with a JWKS URL, the task that
/// keeps its keys (holding readiness until the first fetch when it is the only source).
fn start_auth(
    config: &Config,
    readiness: &Readiness,
    tasks: &TaskGroup,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Arc<crate::auth::Authenticator>>> {
    let authenticator = crate::auth::Authenticator::from_config(&config.auth)
        .context("loading the [auth] keys")?
        .map(Arc::new);
    if let Some(jwks) = authenticator.as_ref().and_then(|auth| auth.jwks()) {
        tasks.spawn(keep_jwks(
            Arc::clone(jwks),
            config.auth.jwks_refresh,
            config.auth.jwks_min_interval,
            // With no key of its own, the node cannot verify any token before the first fetch.
            config
                .auth
                .keys
                .is_empty()
                .then(|| readiness.hold("jwks not loaded")),
            stop.clone(),
        ));
    }
    Ok(authenticator)
}

/// Runs the node until a drain is done, then stops it. `signal` (SIGTERM or SIGINT) starts
/// a drain; a second SIGTERM or SIGINT stops at once; `POST /v1/drain` starts one too.
///
/// # Errors
/// When the node cannot start.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal as unix_signal};
    let running = start(config).await?;
    let mut hangups = unix_signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::pin!(signal);
    let drainer = running.drainer.clone();
    let finished = drainer.finished();
    tokio::pin!(finished);
    let mut again: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> = None;
    loop {
        tokio::select! {
            () = &mut signal, if again.is_none() => {
                if let Err(err) = drainer.start(Origin::Signal, DrainRequest::default()) {
                    tracing::error!(error = %err, "Cannot drain; stopping at once");
                    break;
                }
                // Listened for only now: until the first signal, the default action of a
                // second one would be the process's end, not a drain's.
                again = Some((
                    unix_signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                    unix_signal(SignalKind::interrupt()).context("listening for SIGINT")?,
                ));
            }
            () = &mut finished => break,
            () = async {
                match again.as_mut() {
                    Some((terminate, interrupt)) => tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    },
                    None => std::future::pending().await,
                }
            } => {
                tracing::warn!("Second signal during the drain: stopping at once");
                break;
            }
            _ = hangups.recv() => {
                tracing::info!("SIGHUP received: reloading the TLS certificates");
                running.reload_tls();
            }
        }
    }
    running.stop().await;
    Ok(())
}

impl Running {
    #[must_use]
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    #[must_use]
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    #[must_use]
    pub fn hub(&self) -> &HubHandle {
        &self.hub
    }

    /// Reads `server.tls`'s and `control.tls`'s files again for new connections; one that
    /// fails is logged and keeps its old certificate. Returns whether every configured
    /// certificate was reloaded (false with none configured).
    pub fn reload_tls(&self) -> bool {
        if self.certificates.is_empty() {
            tracing::info!("No TLS configured: nothing to reload");
            return false;
        }
        self.certificates.reload().is_ok()
    }

    /// The node's drains (what `/v1/drain` drives).
    #[must_use]
    pub fn drainer(&self) -> &Drainer {
        &self.drainer
    }

    /// Stops the node: unready, stop accepting, close every session still open with 1001
    /// (none after a drain that finished), wait for them up to the grace period, then stop
    /// the control API and the periodic tasks.
    pub async fn stop(self) {
        let _draining = self.readiness.hold("stopping");
        self.accept_stop.cancel();
        self.drainer.abandon();
        let n_sessions = self.hub.disconnect_all(CloseCode::GoingAway);
        if n_sessions > 0 {
            tracing::info!(n_sessions, "Stopping: closing the sessions left with 1001");
        }
        if tokio::time::timeout(self.grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.hub.connections(),
                grace = ?self.grace,
                "Grace period over, dropping the remaining sessions"
            );
        }
        self.background_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.background.wait()).await;
        // Each webhook tries once more with what is queued, within its timeout.
        self.outbox_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.outbox.wait()).await;
        tracing::info!("Switchboard stopped");
    }
}
