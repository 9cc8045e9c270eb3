//! `LocalBus`: the in-process bus of a single node (the embedded default), offsets and
//! history kept by the hub; the whole cluster is this node.

use std::sync::Arc;

use super::{
    ApplyError, Bus, BusError, BusFuture, Grant, NodeEntry, NodeInfo, RevokeFailed, UserLimit,
};
use crate::{
    hub::{
        Applied, ConnId, Editor, HistoryPage, HubHandle, Op, RemoteView, SessionCommand, WriteBatch,
    },
    protocol::{ChannelName, Offset},
};

/// The in-process bus: a single node, offsets and history kept by the hub.
#[derive(Debug, Clone)]
pub struct LocalBus {
    hub: HubHandle,
    /// This node's id, addresses and start, for [`Bus::nodes`].
    node_id: Arc<str>,
    node: NodeInfo,
    started_unix_ms: u64,
}

impl LocalBus {
    #[must_use]
    pub fn new(hub: HubHandle, node_id: Arc<str>, node: NodeInfo) -> Self {
        let started_unix_ms = crate::clock::unix_ms();
        Self {
            hub,
            node_id,
            node,
            started_unix_ms,
        }
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
            .map_err(|_| BusError::Behind);
        Box::pin(std::future::ready(published))
    }

    fn apply<'a>(
        &'a self,
        channel: &'a ChannelName,
        op: Op<'a>,
        editor: &'a Editor,
        writes: &'a mut WriteBatch,
    ) -> BusFuture<'a, Result<Applied, ApplyError>> {
        let applied = self
            .hub
            .apply(channel, &op, editor, writes)
            .map_err(ApplyError::Refused);
        Box::pin(std::future::ready(applied))
    }

    fn read_channel<'a>(
        &'a self,
        _channel: &'a ChannelName,
        _since: Option<Offset>,
        _limit: usize,
    ) -> BusFuture<'a, Result<RemoteView, BusError>> {
        // The hub orders local messages itself and never asks for a remote view.
        Box::pin(std::future::ready(Err(BusError::Unsupported(
            "the local bus has no remote view",
        ))))
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        limit: usize,
    ) -> BusFuture<'a, Result<HistoryPage, BusError>> {
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

    fn block<'a>(
        &'a self,
        user: &'a str,
        until: Option<u64>,
    ) -> BusFuture<'a, Result<usize, BusError>> {
        self.hub.blocks().block(user, until);
        let closed = self
            .hub
            .disconnect_user(user, crate::protocol::CloseCode::Unauthorized);
        Box::pin(std::future::ready(Ok(closed)))
    }

    fn unblock<'a>(&'a self, user: &'a str) -> BusFuture<'a, Result<bool, BusError>> {
        Box::pin(std::future::ready(Ok(self.hub.blocks().unblock(user))))
    }

    fn revoke<'a>(
        &'a self,
        revocation: &'a crate::revocations::Revocation,
    ) -> BusFuture<'a, Result<usize, RevokeFailed>> {
        Box::pin(std::future::ready(Ok(self.hub.revoke(revocation))))
    }

    fn admit_user<'a>(
        &'a self,
        user: &'a Arc<str>,
        conn_id: ConnId,
        limit: UserLimit,
    ) -> BusFuture<'a, bool> {
        let admitted = self.hub.admit_user(user, conn_id, limit.max, limit.refuse);
        Box::pin(std::future::ready(admitted))
    }

    // This node's users index is the count; the session's end leaves it.
    fn user_left(&self, _user: &str, _conn_id: ConnId) {}

    fn take_grants<'a>(
        &'a self,
        _key: &'a str,
        _wanted: u32,
        _interval: std::time::Duration,
        _burst: u32,
    ) -> BusFuture<'a, Result<Grant, BusError>> {
        Box::pin(std::future::ready(Err(BusError::Unsupported(
            "one node keeps its rate budgets itself",
        ))))
    }

    fn unready_reasons(&self) -> Vec<String> {
        Vec::new()
    }

    fn nodes(&self) -> BusFuture<'_, Result<Vec<NodeEntry>, BusError>> {
        let this = NodeEntry::of(
            &self.node_id,
            "",
            &self.node,
            &self.hub,
            self.started_unix_ms,
        );
        Box::pin(std::future::ready(Ok(vec![this])))
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}
