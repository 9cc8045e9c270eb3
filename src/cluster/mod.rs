//! The message bus: where a publish goes before it reaches subscribers.
//!
//! [`Bus`] is the one seam between the publishing side (sessions, control API) and whatever
//! orders messages. [`LocalBus`], the embedded default, orders them in this process by handing
//! them straight to the hub, which assigns offsets and keeps history. A clustered bus (Redis
//! Streams) implements the same trait: it acknowledges a publish once Redis accepted the entry
//! and feeds entries read back from Redis to the hub. Sessions and the control API hold an
//! `Arc<dyn Bus>` and never know which one runs. Depends on `hub` only through its handle.

mod redis;

pub use self::redis::{NodeInfo, RedisBus, RedisSettings};

use std::{future::Future, pin::Pin};

use crate::{
    hub::{History, HubHandle, RemoteView, SessionCommand, WriteBatch},
    protocol::{ChannelName, Offset},
};

/// A boxed future, as returned by [`Bus`] methods.
pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a publish was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus cannot accept messages now (e.g. its backend is unreachable). Nothing was
    /// published: retry later, or answer `unavailable` / HTTP 503.
    #[error("message bus unavailable: {0}")]
    Unavailable(&'static str),
}

/// Orders and distributes published messages.
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes `data` (valid JSON) to `channel` and resolves to its offset once the message
    /// is durable in the bus's sense (for the local bus: ordered in the hub). Connections a
    /// local fan-out claimed are left in `writes` (see [`Hub::publish_batched`]): the caller
    /// writes them when it is done publishing.
    ///
    /// [`Hub::publish_batched`]: crate::hub::Hub::publish_batched
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when nothing was published.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published the message.
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: &'a str,
        writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Offset, BusError>>;

    /// Reads a channel's position and the messages after `since` (at most `limit`) from the
    /// bus, for a subscribe the hub cannot answer alone.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot be read.
    fn read_channel<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<RemoteView, BusError>>;

    /// The history API: the newest `limit` messages, or those after `since`.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the bus cannot be read.
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<History, BusError>>;

    /// Sends an event frame (`join`, `leave`) to the channel's subscribers on every node, in
    /// the channel's order (see [`Hub::announce`]).
    ///
    /// [`Hub::announce`]: crate::hub::Hub::announce
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the other nodes cannot be told.
    fn announce<'a>(
        &'a self,
        channel: &'a ChannelName,
        text: String,
    ) -> BusFuture<'a, Result<(), BusError>>;

    /// Subscribes (or unsubscribes) every connection of `user` on every node to `channel`:
    /// this node's at once (how many is the answer), the others' as they read the request
    /// from the bus.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the other nodes cannot be told (this node's connections
    /// are told anyway).
    fn command_user<'a>(
        &'a self,
        user: &'a str,
        command: SessionCommand,
    ) -> BusFuture<'a, Result<usize, BusError>>;

    /// Closes every connection of `user` with 4000 on every node: this node's at once (how
    /// many is the answer), the others' as they read the request from the bus.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the other nodes cannot be told (this node's connections
    /// are closed anyway).
    fn disconnect_user<'a>(
        &'a self,
        user: &'a str,
        code: crate::protocol::CloseCode,
    ) -> BusFuture<'a, Result<usize, BusError>>;

    /// Reasons the bus is unfit to serve, for `/readyz`; empty when healthy.
    fn unready_reasons(&self) -> Vec<String>;

    /// Conditions worth reporting in `/readyz` that do not fail readiness (e.g. an outage of
    /// Redis itself, shared by every node).
    fn details(&self) -> Vec<String> {
        Vec::new()
    }

    /// The Redis bus, for cluster-wide queries (`/v1/nodes`).
    fn as_redis(&self) -> Option<&RedisBus> {
        None
    }

    /// A short name for logs and `/v1/stats`: `local` or `redis`.
    fn kind(&self) -> &'static str;
}

/// The in-process bus: a single node, offsets and history kept by the hub.
#[derive(Debug, Clone)]
pub struct LocalBus {
    hub: HubHandle,
}

impl LocalBus {
    #[must_use]
    pub fn new(hub: HubHandle) -> Self {
        Self { hub }
    }
}

impl Bus for LocalBus {
    fn publish<'a>(
        &'a self,
        channel: &'a ChannelName,
        data: &'a str,
        writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Offset, BusError>> {
        let published = self
            .hub
            .publish_batched(channel, data, writes)
            .map_err(|_| BusError::Unavailable("the channel's fan-out is behind; retry later"));
        Box::pin(std::future::ready(published))
    }

    fn read_channel<'a>(
        &'a self,
        _channel: &'a ChannelName,
        _since: Option<Offset>,
        _limit: usize,
    ) -> BusFuture<'a, Result<RemoteView, BusError>> {
        // The hub orders local messages itself and never asks for a remote view.
        Box::pin(std::future::ready(Err(BusError::Unavailable(
            "the local bus has no remote view",
        ))))
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<History, BusError>> {
        Box::pin(std::future::ready(Ok(self
            .hub
            .history(channel, since, limit))))
    }

    fn announce<'a>(
        &'a self,
        channel: &'a ChannelName,
        text: String,
    ) -> BusFuture<'a, Result<(), BusError>> {
        self.hub
            .announce(channel.as_str(), text, &mut self.hub.write_batch());
        Box::pin(std::future::ready(Ok(())))
    }

    fn command_user<'a>(
        &'a self,
        user: &'a str,
        command: SessionCommand,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        let told = self.hub.command_user(user, &command);
        Box::pin(std::future::ready(Ok(told)))
    }

    fn disconnect_user<'a>(
        &'a self,
        user: &'a str,
        code: crate::protocol::CloseCode,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        let closed = self.hub.disconnect_user(user, code);
        Box::pin(std::future::ready(Ok(closed)))
    }

    fn unready_reasons(&self) -> Vec<String> {
        Vec::new()
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}
