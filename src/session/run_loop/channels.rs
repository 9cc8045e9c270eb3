//! A connection's channels: `subscribe` (permissions, the hub's subscribe with the remote
//! pin, the reply and the replay), `unsubscribe`, `history`, and presence (`presence`,
//! `presence_stats`, the member a subscribe announces).

use std::sync::Arc;

use super::Session;
use crate::{
    auth::Action,
    hub::{FramedText, HistoryData, SubscribeError, Subscribed},
    presence::Member,
    protocol::{self, ChannelName, ErrorCode, Offset},
};

/// Messages a `history` frame returns without `limit`, and at most.
const DEFAULT_HISTORY_LIMIT: u64 = 50;
const MAX_HISTORY_LIMIT: u64 = 100;

/// The messages of `ordered` that fit in `budget` bytes (at least one), and whether some
/// were left out.
fn within<'a>(
    ordered: impl Iterator<Item = &'a (Offset, HistoryData)> + Clone,
    budget: usize,
) -> (Vec<&'a (Offset, HistoryData)>, bool) {
    let sizes = ordered.clone().map(|(_, data)| data.size());
    let (n, more) = fitting(sizes, budget);
    (ordered.take(n).collect(), more)
}

/// How many of the items, of these `sizes` in order, fit in `budget` bytes (at least one),
/// and whether some were left out.
pub(super) fn fitting(sizes: impl Iterator<Item = usize>, budget: usize) -> (usize, bool) {
    let (mut used, mut n) = (0, 0);
    for size in sizes {
        if n > 0 && used + size > budget {
            return (n, true);
        }
        used += size;
        n += 1;
    }
    (n, false)
}

impl Session {
    pub(in crate::session) fn subscriptions(&self) -> &[ChannelName] {
        &self.subscriptions
    }

    /// The channels the token's `subs` claim asks the server to subscribe to.
    pub(in crate::session) fn server_subs(&self) -> &[String] {
        self.identity()
            .map_or(&[], |identity| identity.subs.as_slice())
    }

    /// Subscribes to the token's `subs` channels, each as if the client had asked (its
    /// namespace, the subscription limit): a `subscribed` frame (no `id`) or an `error` each.
    pub(in crate::session) async fn subscribe_server_side(&mut self) {
        let subs = self.server_subs().to_vec();
        for channel in subs {
            self.subscribe(None, &channel, None).await;
        }
    }

    /// This connection as a member of a channel.
    pub(super) fn member(&self) -> Member {
        Member {
            node: Arc::clone(self.ctx.presence.node()),
            conn_id: self.outbound.conn_id(),
            user: self
                .identity()
                .map_or_else(Member::anonymous_user, |identity| {
                    Arc::clone(&identity.user)
                }),
            info: self.identity().and_then(|identity| identity.info.clone()),
        }
    }

    /// The session ended: it leaves every channel where it was a member.
    pub(in crate::session) fn leave_all(&self) {
        for channel in &self.subscriptions {
            self.left(channel);
        }
    }

    fn left(&self, channel: &ChannelName) {
        if let Some(membership) = self.ctx.settings.namespaces.membership(channel.as_str()) {
            self.ctx
                .presence
                .left(channel, self.outbound.conn_id(), membership.join_leave);
        }
    }

    /// `{"type":"presence"}`: the channel's members, as many as fit in one reply.
    pub(super) async fn presence(&self, id: Option<u64>, name: &str) {
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        if !self.permitted(id, &channel, Action::Presence).await {
            return;
        }
        let presence = &self.ctx.presence;
        let mut page = match presence.page(&channel, None, presence.max_listed()).await {
            Ok(page) => page,
            Err(err) => return self.error(id, ErrorCode::Unavailable, &err.to_string()),
        };
        // Cut to the reply's budget here, from the one read: reading again with a halved
        // limit read a large room from Redis several times per request.
        let budget = self.ctx.settings.history_reply_bytes;
        loop {
            let reply = crate::protocol::encode_presence(
                id,
                &channel,
                &page.members,
                page.next_cursor.is_some(),
            );
            let members = page.members.len();
            if reply.len() <= budget || members <= 1 {
                return self.send(reply);
            }
            // In proportion to the overshoot, and at least one fewer.
            let keep = (members * budget / reply.len()).min(members - 1);
            page.members.truncate(keep.max(1));
            // Marks the reply `truncated`; the WebSocket reply carries no cursor.
            page.next_cursor.get_or_insert_with(String::new);
        }
    }

    /// `{"type":"presence_stats"}`: how many connections and users the channel has.
    pub(super) async fn presence_stats(&self, id: Option<u64>, name: &str) {
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        if !self.permitted(id, &channel, Action::Presence).await {
            return;
        }
        match self.ctx.presence.stats(&channel).await {
            Ok(stats) => self.send(crate::protocol::encode_presence_stats(
                id,
                &channel,
                stats.connections,
                stats.users,
            )),
            Err(err) => self.error(id, ErrorCode::Unavailable, &err.to_string()),
        }
    }

    pub(in crate::session) fn channel(&self, id: Option<u64>, name: &str) -> Option<ChannelName> {
        match ChannelName::parse(name, self.ctx.settings.max_channel_name_bytes) {
            Ok(channel) => Some(channel),
            Err(err) => {
                self.error(id, ErrorCode::BadRequest, &err.to_string());
                None
            }
        }
    }

    /// `{"type":"history"}`: the newest `limit` messages, or those after `since`, within
    /// `settings.history_reply_bytes` (`truncated` says when some were left out: with
    /// `since` the newest, else the oldest, so that paging on with the last offset works).
    pub(super) async fn history(
        &mut self,
        id: Option<u64>,
        name: &str,
        since: Option<&str>,
        limit: Option<u64>,
    ) {
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        let since = match since.map(str::parse::<Offset>).transpose() {
            Ok(since) => since,
            Err(err) => return self.error(id, ErrorCode::BadRequest, &err.to_string()),
        };
        let limit = match limit {
            None => DEFAULT_HISTORY_LIMIT,
            Some(limit @ 1..=MAX_HISTORY_LIMIT) => limit,
            Some(_) => {
                return self.error(
                    id,
                    ErrorCode::BadRequest,
                    "`limit` must be an integer from 1 to 100",
                );
            }
        };
        if !self.permitted(id, &channel, Action::History).await {
            return;
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let history = match self.ctx.bus.history(&channel, since, limit).await {
            Ok(history) => history,
            Err(err) => return self.error(id, ErrorCode::Unavailable, &err.to_string()),
        };
        let budget = self.ctx.settings.history_reply_bytes;
        // With `since`: the oldest that fit (page on from the last one); else the newest.
        let (messages, truncated) = if since.is_some() {
            within(history.messages.iter(), budget)
        } else {
            let (mut newest, truncated) = within(history.messages.iter().rev(), budget);
            newest.reverse();
            (newest, truncated)
        };
        let size = messages.iter().map(|(_, data)| data.size()).sum();
        self.send(protocol::encode_history(
            id,
            &channel,
            history.offset,
            history.recovered,
            size,
            |out| {
                for (index, (offset, data)) in messages.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    data.write_entry(out, *offset);
                }
            },
            truncated,
        ));
    }

    pub(super) async fn subscribe(&mut self, id: Option<u64>, name: &str, since: Option<&str>) {
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        let since = match since.map(str::parse::<Offset>).transpose() {
            Ok(since) => since,
            Err(err) => return self.error(id, ErrorCode::BadRequest, &err.to_string()),
        };
        self.subscribe_checked(id, channel, since, true).await;
    }

    /// Subscribes to a parsed channel; `by_client`: the namespaces decide (a backend's
    /// `POST /v1/subscribe` needs no client permission).
    pub(super) async fn subscribe_checked(
        &mut self,
        id: Option<u64>,
        channel: ChannelName,
        since: Option<Offset>,
        by_client: bool,
    ) {
        if by_client
            && (!self.permitted(id, &channel, Action::Subscribe).await
                || (since.is_some() && !self.permitted(id, &channel, Action::History).await))
        {
            return;
        }
        if self.subscriptions.contains(&channel) {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "already subscribed to this channel",
            );
        }
        if self.subscriptions.len() >= self.ctx.settings.max_subscriptions {
            return self.error(
                id,
                ErrorCode::LimitExceeded,
                "too many subscriptions on this connection",
            );
        }
        // A replay larger than a reply may carry goes ahead in pages, the client reading
        // each before the next; the subscribe then replays only the rest. Boxed: rare, and
        // its state would size every request's future.
        let since = match since {
            Some(since) => match Box::pin(self.replay_ahead(&channel, since)).await {
                Some(since) => Some(since),
                None => return,
            },
            None => None,
        };
        let reply = |outcome: &Subscribed| {
            FramedText::from(protocol::encode_subscribed(
                id,
                &channel,
                outcome.offset,
                outcome.recovered,
            ))
        };
        let hub = &self.ctx.hub;
        let mut result = hub.subscribe(&self.outbound, &channel, since, None, reply);
        if result == Err(SubscribeError::NeedRemote) {
            // The guard gives the pin back on every path, also when the session ends during
            // the read and this future is dropped; a leaked pin would keep the channel from
            // being swept and fail later resumes with `recovered:false`.
            let pin = hub.adopt_pin(&channel);
            let limit = hub.history_limit(channel.as_str()).size;
            match self.ctx.bus.read_channel(&channel, since, limit).await {
                Ok(mut view) => {
                    // Boxed: rare, as `replay_ahead`.
                    let since = match since {
                        Some(since) => {
                            match Box::pin(self.page_view(&channel, since, &mut view)).await {
                                Some(since) => Some(since),
                                None => return,
                            }
                        }
                        None => None,
                    };
                    result = hub.subscribe(&self.outbound, &channel, since, Some(&view), reply);
                    pin.consumed();
                }
                Err(err) => {
                    drop(pin);
                    return self.error(id, ErrorCode::Unavailable, &err.to_string());
                }
            }
        }
        match result {
            // Recorded even on failure: the hub may hold the subscription, and the session's
            // cleanup must find it.
            Ok(_) | Err(SubscribeError::SlowConsumer | SubscribeError::Closing) => {
                if matches!(&result, Ok(outcome) if outcome.first) {
                    self.occupancy_changed(&channel);
                }
                if self.subscriptions.len() == self.subscriptions.capacity()
                    && self.subscriptions.len() < 4
                {
                    // Most connections follow one or two channels (a room and a global
                    // one): room for each as it comes up to four, not the four a first push
                    // reserves (32-48 bytes per connection); a subscribe is rare enough to
                    // pay its own growth.
                    self.subscriptions.reserve_exact(1);
                }
                self.subscriptions.push(hub.intern(&channel));
                if let Some(membership) = self.ctx.settings.namespaces.membership(channel.as_str())
                {
                    self.ctx
                        .presence
                        .joined(&channel, self.member(), membership.join_leave);
                }
            }
            Err(SubscribeError::NeedRemote) => {
                // A subscribe given a remote view never asks for another.
                self.error(id, ErrorCode::Internal, "subscribe could not be merged");
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, id: Option<u64>, name: &str) {
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        if !self.drop_subscription(&channel) {
            return self.error(id, ErrorCode::NotFound, "not subscribed to this channel");
        }
        self.send(protocol::encode_unsubscribed(id, &channel, None));
    }

    /// Ends a subscription (hub, presence, what a backend granted); false when there was
    /// none. No frame of the channel is enqueued after it returns.
    pub(super) fn drop_subscription(&mut self, channel: &ChannelName) -> bool {
        let Some(position) = self.subscriptions.iter().position(|c| c == channel) else {
            return false;
        };
        self.subscriptions.swap_remove(position);
        if let Some(account) = self.account.as_deref_mut() {
            account.by_backend.retain(|granted| granted != channel);
        }
        if self.ctx.hub.leave(self.outbound.conn_id(), channel).vacated {
            self.occupancy_changed(channel);
        }
        self.left(channel);
        true
    }
}
