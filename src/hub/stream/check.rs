//! The checks an operation on a message passes before it changes anything (a remote bus
//! makes them itself: see `remote`).

use tokio::time::Instant;

use super::{Applied, Editor, Op, OpError};
use crate::{
    hub::{Hub, channel::Channel},
    protocol::{AbandonReason, MessageStatus, Offset},
};

impl Hub {
    /// Whether `editor` may apply `op` to the message at `index` of history as it stands:
    /// the edit rule, the message's status, `streams.max_text_bytes`, and for an idle
    /// abandon that it is still idle.
    pub(super) fn check(
        &self,
        state: &Channel,
        index: usize,
        op: &Op<'_>,
        editor: &Editor,
        now: Instant,
    ) -> Result<(), OpError> {
        let limits = &self.settings.streams;
        let entry = &state.history[index];
        let message = entry
            .message
            .as_deref()
            .expect("ids name entries with a message");
        editor.may_change(message)?;
        let status = message.status;
        let text_len = message.text.as_ref().map(String::len);
        match *op {
            Op::Append { text, .. } => {
                if status != MessageStatus::Open {
                    return Err(OpError::NotOpen(status));
                }
                let len = text_len.ok_or(OpError::NotStream)?;
                if len + text.len() > limits.max_text_bytes {
                    return Err(OpError::TextTooLarge(limits.max_text_bytes));
                }
            }
            Op::Finish { .. } | Op::Abandon { .. } if status != MessageStatus::Open => {
                return Err(OpError::NotOpen(status));
            }
            Op::Abandon {
                reason: AbandonReason::Idle,
                ..
            } if now.duration_since(entry.published_at) < limits.idle_timeout => {
                return Err(OpError::NotIdle);
            }
            Op::Update { text, .. } => {
                if status == MessageStatus::Deleted {
                    return Err(OpError::NotOpen(status));
                }
                if let Some(text) = text {
                    text_len.ok_or(OpError::NotStream)?;
                    if text.len() > limits.max_text_bytes {
                        return Err(OpError::TextTooLarge(limits.max_text_bytes));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A delete of a message deleted already: answered with the offset of the delete,
    /// changing nothing.
    pub(super) fn deleted_already(state: &Channel, index: usize, op: &Op<'_>) -> Option<Applied> {
        let entry = &state.history[index];
        let deleted = entry
            .message
            .as_deref()
            .is_some_and(|message| message.status == MessageStatus::Deleted);
        (matches!(op, Op::Delete { .. }) && deleted).then_some(Applied {
            offset: Offset {
                epoch: state.epoch,
                seq: entry.last,
            },
            duplicate: true,
        })
    }
}
