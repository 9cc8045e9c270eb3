//! The connection registry: admission (upgraded connections counted against
//! `limits.max_connections`, memory pressure, draining), connections by id and by user,
//! commands for a user's sessions, disconnects, and the keepalive pass.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use smallvec::SmallVec;

use super::{ConnId, Hub, Keepalive, Outbound, PendingUpgrades, Registered, Wire, flush_all};
use crate::{
    config::RefuseConnection,
    protocol::{self, ChannelName},
    telemetry,
};

/// What one [`Hub::keepalive`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveSweep {
    pub pinged: usize,
    pub idle_closed: usize,
    /// Closed at their deadline: token expired (4004), or no `auth` in time (4003).
    pub deadline_closed: usize,
}

/// What the control API asks a user's sessions to do (`POST /v1/subscribe`,
/// `/v1/unsubscribe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    Subscribe(ChannelName),
    Unsubscribe(ChannelName),
    /// The identity the connect hook gave is about to expire: ask the refresh hook.
    RefreshIdentity,
    /// A token was revoked (`POST /v1/revoke`): close the connection if it holds it.
    CheckRevoked,
}

/// Commands one connection holds at most; more are dropped (its session is not taking them).
const MAX_SESSION_COMMANDS: usize = 64;

impl Hub {
    /// Reserves room for one more connection; `false` when the node is full.
    /// Pair every `true` with [`Hub::release_admission`].
    pub fn try_admit(&self) -> bool {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release_admission(&self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections accepted and not yet upgraded.
    #[must_use]
    pub fn pending_upgrades(&self) -> &Arc<PendingUpgrades> {
        &self.pending
    }

    /// Whether the process is above its memory threshold, so that new upgrades are refused
    /// (existing connections go on).
    #[must_use]
    pub fn under_memory_pressure(&self) -> bool {
        self.memory_pressure.load(Ordering::Relaxed)
    }

    /// Set by the node's memory watch.
    pub fn set_memory_pressure(&self, pressure: bool) {
        self.memory_pressure.store(pressure, Ordering::Relaxed);
    }

    /// Whether the event loop lags past `limits.max_event_loop_lag`, so that new upgrades
    /// are refused (existing connections go on).
    #[must_use]
    pub fn is_overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Set by the node's lag watch (`overload`).
    pub fn set_overloaded(&self, overloaded: bool) {
        self.overloaded.store(overloaded, Ordering::Relaxed);
    }

    /// How late the node's event loop ran, summed: see [`LagClock`](super::LagClock).
    #[must_use]
    pub fn lag_clock(&self) -> &Arc<super::LagClock> {
        &self.lag_clock
    }

    /// The users blocked (`POST /v1/block`), on this node's copy of the list.
    #[must_use]
    pub fn blocks(&self) -> &crate::blocks::Blocklist {
        &self.blocks
    }

    /// The revoked tokens (`POST /v1/revoke`), on this node's copy of the list.
    #[must_use]
    pub fn revocations(&self) -> &crate::revocations::Revocations {
        &self.revocations
    }

    /// Takes `revocation` into this node's list and has the connections that may hold a
    /// token it matches check theirs (each closes with 4003 if so): how many were asked.
    pub fn revoke(&self, revocation: &crate::revocations::Revocation) -> usize {
        use crate::revocations::Revocation;
        if !self.revocations.apply(revocation) {
            return 0;
        }
        match revocation {
            Revocation::User { user, .. } => self.command_user(user, &SessionCommand::CheckRevoked),
            Revocation::Token { jti, .. } => {
                let key = self.revocations.token_key(jti);
                let conns: SmallVec<[ConnId; 1]> = match self.tokens.get(&key) {
                    Some(conns) => conns.clone(),
                    None => return 0,
                };
                conns
                    .into_iter()
                    .filter(|&conn_id| self.command_conn(conn_id, SessionCommand::CheckRevoked))
                    .count()
            }
        }
    }

    /// Records that connection `conn_id` holds the token whose `jti` has `key`.
    pub fn add_token(&self, key: u64, conn_id: ConnId) {
        self.tokens.entry(key).or_default().push(conn_id);
    }

    /// Forgets that `conn_id` holds the token with `key` (refreshed, or the session ended).
    pub fn remove_token(&self, key: u64, conn_id: ConnId) {
        self.tokens.remove_if_mut(&key, |_, conns| {
            conns.retain(|conn| *conn != conn_id);
            conns.is_empty()
        });
    }

    /// Whether a drain refuses new upgrades (see `drain`).
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Set by a drain when it starts closing connections, cleared when it is cancelled.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Every open connection, for a drain to close them one by one.
    #[must_use]
    pub fn connections_snapshot(&self) -> Vec<Arc<Outbound>> {
        self.conns
            .iter()
            .map(|entry| Arc::clone(&entry.value().outbound))
            .collect()
    }

    /// Registers a connection and returns its outbound handle. With a `wire`, publishers
    /// write to the socket themselves while it has room; without one, the session task
    /// writes everything.
    pub fn register(&self, wire: Option<Arc<dyn Wire>>) -> Arc<Outbound> {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let outbound = Outbound::new(
            conn_id,
            wire,
            self.settings.queue_messages,
            self.settings.queue_bytes,
            self.clock_ms(),
        );
        self.conns.insert(
            conn_id,
            Registered {
                outbound: Arc::clone(&outbound),
                check_at_ms: AtomicU64::new(0),
            },
        );
        outbound
    }

    /// Closes connection `outbound` with `code` at `at_ms` on the hub clock (checked by the
    /// keepalive sweep, so up to one of its ticks late), unless set again; `at_ms` 0 clears
    /// it. Has the sweep look at the connection on its next tick: the deadline may come
    /// before what the sweep last noted.
    pub fn set_deadline(&self, outbound: &Outbound, at_ms: u64, code: protocol::CloseCode) {
        outbound.set_deadline(at_ms, code);
        if let Some(entry) = self.conns.get(&outbound.conn_id()) {
            entry.check_at_ms.store(0, Ordering::SeqCst);
        }
    }

    /// Removes a connection and its subscriptions. O(number of its subscriptions). Returns
    /// the channels it was the last subscriber of on this node.
    pub fn deregister<'a>(
        &self,
        conn_id: ConnId,
        channels: impl IntoIterator<Item = &'a ChannelName>,
    ) -> Vec<ChannelName> {
        let vacated = channels
            .into_iter()
            .filter(|channel| self.leave(conn_id, channel).vacated)
            .cloned()
            .collect();
        self.conns.remove(&conn_id);
        self.commands.remove(&conn_id);
        vacated
    }

    /// Records that connection `conn_id` is `user`'s (after its token was accepted); once.
    pub fn add_user(&self, user: &Arc<str>, conn_id: ConnId) {
        let mut conns = self.users.entry(Arc::clone(user)).or_default();
        if !conns.contains(&conn_id) {
            conns.push(conn_id);
        }
    }

    /// Takes connection `conn_id` as `user`'s unless the user holds `max` connections on
    /// this node already: then, with [`RefuseConnection::Oldest`], the user's oldest ones
    /// are closed with 4005 to make room (`true`), with [`RefuseConnection::Newest`] the
    /// new one is not taken (`false`). Counting and taking are one step, so a burst of
    /// connects cannot all pass.
    pub fn admit_user(
        &self,
        user: &Arc<str>,
        conn_id: ConnId,
        max: usize,
        refuse: RefuseConnection,
    ) -> bool {
        let victims: SmallVec<[ConnId; 2]> = {
            let mut conns = self.users.entry(Arc::clone(user)).or_default();
            if conns.contains(&conn_id) {
                return true;
            }
            let over = (conns.len() + 1).saturating_sub(max);
            if over > 0 && refuse == RefuseConnection::Newest {
                return false;
            }
            // Connection ids only grow: the smallest are the oldest.
            conns.sort_unstable();
            let over = over.min(conns.len());
            let victims = conns.drain(..over).collect();
            conns.push(conn_id);
            victims
        };
        for victim in victims {
            self.disconnect(victim, protocol::CloseCode::TooManyConnections);
        }
        true
    }

    /// Forgets `conn_id` as `user`'s (the session ended).
    pub fn remove_user(&self, user: &str, conn_id: ConnId) {
        self.users.remove_if_mut(user, |_, conns| {
            conns.retain(|conn| *conn != conn_id);
            conns.is_empty()
        });
    }

    /// Asks every connection of `user` on this node to close with `code`; how many.
    pub fn disconnect_user(&self, user: &str, code: protocol::CloseCode) -> usize {
        let conns: SmallVec<[ConnId; 2]> = match self.users.get(user) {
            Some(conns) => conns.clone(),
            None => return 0,
        };
        conns
            .into_iter()
            .filter(|conn_id| self.disconnect(*conn_id, code))
            .count()
    }

    /// Hands `command` to every session of `user` on this node; how many.
    pub fn command_user(&self, user: &str, command: &SessionCommand) -> usize {
        let conns: SmallVec<[ConnId; 2]> = match self.users.get(user) {
            Some(conns) => conns.clone(),
            None => return 0,
        };
        conns
            .into_iter()
            .filter(|&conn_id| self.command_conn(conn_id, command.clone()))
            .count()
    }

    /// Hands `command` to connection `conn_id`'s session; `false` when it is gone or holds
    /// `MAX_SESSION_COMMANDS` (64) already.
    pub fn command_conn(&self, conn_id: ConnId, command: SessionCommand) -> bool {
        let Some(outbound) = self
            .conns
            .get(&conn_id)
            .map(|entry| Arc::clone(&entry.outbound))
        else {
            return false;
        };
        {
            let mut held = self.commands.entry(conn_id).or_default();
            if held.len() >= MAX_SESSION_COMMANDS {
                telemetry::session_command_dropped();
                return false;
            }
            held.push(command);
        }
        if !self.conns.contains_key(&conn_id) {
            // Deregistered meanwhile: nobody will take them.
            self.commands.remove(&conn_id);
            return false;
        }
        outbound.notify_commands();
        true
    }

    /// The commands held for connection `conn_id`, in order.
    #[must_use]
    pub fn take_commands(&self, conn_id: ConnId) -> Vec<SessionCommand> {
        self.commands
            .remove(&conn_id)
            .map(|(_, commands)| commands)
            .unwrap_or_default()
    }

    /// Asks one connection to close. Returns `false` when no such connection exists.
    pub fn disconnect(&self, conn_id: ConnId, code: protocol::CloseCode) -> bool {
        match self.conns.get(&conn_id) {
            Some(entry) => {
                entry.outbound.close(code);
                true
            }
            None => false,
        }
    }

    /// One keepalive pass over every connection (see [`Outbound::keepalive`]). One periodic
    /// task does this for the whole node instead of two timers in every connection: a timer
    /// costs each connection memory and each inbound frame a reset.
    pub fn keepalive(&self, heartbeat: Duration, idle_timeout: Duration) -> KeepaliveSweep {
        let now_ms = self.clock_ms();
        let heartbeat_ms = u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut sweep = KeepaliveSweep::default();
        let mut to_flush = Vec::new();
        for entry in &self.conns {
            let registered = entry.value();
            // Read from the map's own memory: the connection itself (a cache miss each, at a
            // million of them every tick) is touched only when something may be due.
            if now_ms < registered.check_at_ms.load(Ordering::SeqCst) {
                continue;
            }
            let outbound = &registered.outbound;
            match outbound.keepalive(now_ms, heartbeat_ms, idle_ms) {
                Keepalive::Alive => {}
                Keepalive::Pinged { flush } => {
                    sweep.pinged += 1;
                    if flush {
                        to_flush.push(Arc::clone(outbound));
                    }
                }
                Keepalive::IdleClosed => sweep.idle_closed += 1,
                Keepalive::DeadlineClosed(code) => {
                    sweep.deadline_closed += 1;
                    if code == protocol::CloseCode::Unauthorized
                        && let Some(suppressed) =
                            telemetry::refusal_loggable(telemetry::Refused::AuthTimeout)
                    {
                        tracing::info!(
                            conn_id = outbound.conn_id(),
                            suppressed,
                            "Closed with 4003: no `auth` within auth.timeout (auth.required)"
                        );
                    }
                }
            }
            registered.check_at_ms.store(
                outbound.next_keepalive_ms(now_ms, heartbeat_ms, idle_ms),
                Ordering::SeqCst,
            );
            // The deadline read after the store: one a session sets meanwhile is either seen
            // here or followed by its own reset of the check (`Hub::set_deadline`), never lost
            // under the store above.
            let deadline = outbound.deadline_ms();
            if deadline != 0 {
                registered.check_at_ms.fetch_min(deadline, Ordering::SeqCst);
            }
        }
        flush_all(to_flush, self.workers.as_ref());
        sweep
    }

    /// Asks every connection to close with `code` (shutdown).
    pub fn disconnect_all(&self, code: protocol::CloseCode) -> usize {
        let mut n = 0;
        for entry in &self.conns {
            entry.value().outbound.close(code);
            n += 1;
        }
        n
    }

    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}
