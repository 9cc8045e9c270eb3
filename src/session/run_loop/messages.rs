//! Client frames that publish or change a message: `publish` (with `message_id` and
//! `stream`), `append`, `finish`, `update` and `delete` (see `docs/streams.md`). They follow
//! the namespace's `publish` rule; changing a message follows its `edit` rule too.

use super::Session;
use crate::{
    auth::Decision,
    config::EditRule,
    hub::{Applied, Editor, Op, Owner},
    protocol::{self, ClientFrame, ErrorCode},
    telemetry,
};

impl Session {
    /// Acts on a frame that publishes or changes a message; `false` for any other frame.
    pub(super) async fn publishing_frame(&mut self, frame: &ClientFrame<'_>) -> bool {
        let (id, channel, op) = match frame {
            ClientFrame::Publish {
                id,
                channel,
                data,
                message_id,
                stream,
            } => (
                *id,
                channel,
                Op::Publish {
                    data: data.get(),
                    message_id: message_id.as_deref(),
                    stream: *stream,
                },
            ),
            ClientFrame::Append {
                id,
                channel,
                message_id,
                text,
            } => (*id, channel, Op::Append { message_id, text }),
            ClientFrame::Finish {
                id,
                channel,
                message_id,
                data,
            } => (
                *id,
                channel,
                Op::Finish {
                    message_id,
                    data: data.map(|data| data.get()),
                },
            ),
            ClientFrame::Update {
                id,
                channel,
                message_id,
                data,
                text,
            } => (
                *id,
                channel,
                Op::Update {
                    message_id,
                    data: data.map(|data| data.get()),
                    text: text.as_deref(),
                },
            ),
            ClientFrame::Delete {
                id,
                channel,
                message_id,
            } => (*id, channel, Op::Delete { message_id }),
            _ => return false,
        };
        self.operate(id, channel, op).await;
        true
    }

    async fn operate(&mut self, id: Option<u64>, name: &str, op: Op<'_>) {
        if !self.ctx.settings.client_publish {
            return self.error(
                id,
                ErrorCode::Forbidden,
                "publishing from clients is disabled on this server",
            );
        }
        let Some(channel) = self.channel(id, name) else {
            return;
        };
        let Some(decision) = self.publish_decision(id, &channel) else {
            return;
        };
        let (message_id, data, text) = match op {
            Op::Publish {
                data, message_id, ..
            } => (message_id, Some(data), None),
            Op::Append { message_id, text } => (Some(message_id), None, Some(text)),
            Op::Finish { message_id, data } => (Some(message_id), data, None),
            Op::Update {
                message_id,
                data,
                text,
            } => (Some(message_id), data, text),
            Op::Delete { message_id } | Op::Abandon { message_id, .. } => {
                (Some(message_id), None, None)
            }
        };
        if let Some(Err(err)) = message_id.map(protocol::check_message_id) {
            return self.error(id, ErrorCode::BadRequest, &err.to_string());
        }
        if let Op::Publish {
            message_id: None,
            stream: true,
            ..
        } = op
        {
            return self.error(id, ErrorCode::BadRequest, "a stream needs a `message_id`");
        }
        let max = self.ctx.settings.max_publish_payload_bytes;
        if data.is_some_and(|data| data.len() > max) {
            return self.error(id, ErrorCode::LimitExceeded, "`data` is too large");
        }
        if matches!(op, Op::Append { .. }) && text.is_some_and(|text| text.len() > max) {
            return self.error(id, ErrorCode::LimitExceeded, "`text` is too large");
        }
        let bytes = data.map_or(0, str::len) + text.map_or(0, str::len);
        if let Some(refused) = self.charge_publish(&channel, bytes) {
            return self.error(id, ErrorCode::RateLimited, &refused);
        }
        if !self.charge_publish_rate(id).await {
            return;
        }
        // A `hook` rule asks the backend last, about an operation this node would carry
        // out: it may put its own `data` in place of the client's.
        let replaced = match decision {
            Decision::Hook => match self.ask_publish_hook(id, &channel, &op).await {
                Some(replaced) => replaced,
                None => return,
            },
            Decision::Allow | Decision::Deny => None,
        };
        let op = match (op, replaced.as_deref()) {
            (
                Op::Publish {
                    message_id, stream, ..
                },
                Some(data),
            ) => Op::Publish {
                data: data.get(),
                message_id,
                stream,
            },
            (Op::Finish { message_id, .. }, Some(data)) => Op::Finish {
                message_id,
                data: Some(data.get()),
            },
            (
                Op::Update {
                    message_id, text, ..
                },
                Some(data),
            ) => Op::Update {
                message_id,
                data: Some(data.get()),
                text,
            },
            (op, _) => op,
        };
        // A publish records the connection's user (or the connection) as the owner; a
        // change is checked against it under the namespace's `edit` rule.
        let rule = match op {
            Op::Publish { .. } => EditRule::Own,
            _ => self
                .ctx
                .settings
                .namespaces
                .edit_rule(channel.as_str(), self.identity()),
        };
        let editor = Editor::Client {
            owner: self.owner(),
            rule,
        };
        // Written when this frame is handled (the batch is dropped): a large channel's round
        // writes in its own task anyway, and a client's publishes are one per frame.
        let mut writes = self.ctx.hub.write_batch();
        match self.ctx.bus.apply(&channel, op, &editor, &mut writes).await {
            Ok(Applied {
                offset,
                duplicate: false,
            }) => {
                self.send(protocol::encode_published(id, &channel, offset));
                if let Op::Publish { data, .. } = op {
                    self.published_event(&channel, offset, data);
                }
            }
            Ok(Applied {
                offset,
                duplicate: true,
            }) => self.send(protocol::encode_published_duplicate(id, &channel, offset)),
            Err(err) => {
                if err.code() == ErrorCode::Forbidden {
                    telemetry::forbidden("edit");
                }
                self.error(id, err.code(), &err.to_string());
            }
        }
    }

    /// Who this connection creates messages as: its user, or itself when anonymous.
    fn owner(&self) -> Owner {
        match &self.account {
            Some(account) => Owner::User(account.identity.user.clone()),
            None => Owner::Conn(self.outbound.conn_id()),
        }
    }
}
