//! What a session tells the application's webhooks (`[[webhooks]]`, docs/backend.md):
//! channels occupied and vacated, members added and removed, and client publishes. On this
//! node: a channel is occupied when it gets its first subscriber here, a member added when
//! its user's first connection here joins.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::Session;
use crate::{config::WebhookEvent, protocol::ChannelName, protocol::Offset, webhooks::About};

impl Session {
    /// The webhooks, when one of them takes `event`: nothing is built for an event nobody
    /// takes.
    fn webhooks_for(&self, event: WebhookEvent) -> Option<&crate::webhooks::Webhooks> {
        self.ctx
            .webhooks
            .as_deref()
            .filter(|webhooks| webhooks.wants(event))
    }

    /// `channel_occupied` or `channel_vacated`.
    pub(super) fn channel_event(&self, event: WebhookEvent, channel: &ChannelName) {
        if let Some(webhooks) = self.webhooks_for(event) {
            webhooks.emit(
                event,
                About {
                    channel: Some(channel.as_str().to_owned()),
                    ..About::default()
                },
            );
        }
    }

    /// `member_added` or `member_removed`.
    pub(super) fn member_event(&self, event: WebhookEvent, channel: &ChannelName, user: Arc<str>) {
        if let Some(webhooks) = self.webhooks_for(event) {
            webhooks.emit(
                event,
                About {
                    channel: Some(channel.as_str().to_owned()),
                    user: Some(user),
                    conn_id: Some(self.outbound.conn_id()),
                    ..About::default()
                },
            );
        }
    }

    /// `client_publish`: what the client published (its data after a publish hook).
    pub(super) fn published_event(&self, channel: &ChannelName, offset: Offset, data: &str) {
        let Some(webhooks) = self.webhooks_for(WebhookEvent::ClientPublish) else {
            return;
        };
        webhooks.emit(
            WebhookEvent::ClientPublish,
            About {
                channel: Some(channel.as_str().to_owned()),
                user: self.user().map(Arc::from),
                conn_id: Some(self.outbound.conn_id()),
                data: RawValue::from_string(data.to_owned()).ok(),
                offset: Some(offset.to_string()),
                ..About::default()
            },
        );
    }
}

impl Session {
    /// `channel_vacated` for each of `channels` (the session ended, and it was their last
    /// subscriber here).
    pub(in crate::session) fn vacated(&self, channels: &[ChannelName]) {
        for channel in channels {
            self.channel_event(WebhookEvent::ChannelVacated, channel);
        }
    }

    /// `connection_closed`, with the close code sent (none when the peer vanished).
    pub(in crate::session) fn closed_event(&self, code: Option<u16>) {
        if let Some(webhooks) = self.webhooks_for(WebhookEvent::ConnectionClosed) {
            webhooks.emit(
                WebhookEvent::ConnectionClosed,
                About {
                    user: self.user().map(Arc::from),
                    conn_id: Some(self.outbound.conn_id()),
                    code,
                    ..About::default()
                },
            );
        }
    }
}
