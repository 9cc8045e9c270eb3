//! What a session tells the application's webhooks (`[[webhooks]]`, docs/backend.md):
//! client publishes and closed connections; and what it tells `occupancy` (channels
//! occupied and vacated here), which finds whether that changed for the whole cluster.
//! Members added and removed come from `presence`, which knows the same for users.

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

    /// The hub said `channel` became occupied or vacated here.
    pub(super) fn occupancy_changed(&self, channel: &ChannelName) {
        if let Some(occupancy) = &self.ctx.occupancy {
            occupancy.changed(channel);
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
    /// `channels` were vacated here (the session ended, and it was their last subscriber).
    pub(in crate::session) fn vacated(&self, channels: &[ChannelName]) {
        for channel in channels {
            self.occupancy_changed(channel);
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
