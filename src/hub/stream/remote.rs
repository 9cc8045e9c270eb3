//! Operations a remote bus ordered (and checked): applied here to what this node holds,
//! and fanned out to its subscribers in the channel's order.

use tokio::time::Instant;

use super::{Editor, Op};
use crate::{
    hub::{
        FramedText, Hub, WriteBatch,
        channel::{Channel, Queued},
    },
    protocol::{self, ChannelName, Offset},
};

impl Hub {
    /// Delivers an operation on a message with an id that a remote bus ordered at `offset`
    /// (a publish with an id, append, finish, update, delete, abandon): like
    /// [`Hub::deliver_batched`] for a message, in offset order, once, and only for a
    /// channel held here. Returns how many subscribers it goes to.
    pub fn deliver_op_batched(
        &self,
        channel: &str,
        offset: Offset,
        op: &Op<'_>,
        writes: &mut WriteBatch,
    ) -> usize {
        self.deliver_with(channel, writes, |hub, state, channel| {
            let reset = hub.order_remote(state, channel, offset)?;
            let mut round = None;
            // Checked by the bus: applying cannot be refused.
            let _ = hub.apply_locked(
                state,
                channel,
                op,
                &Editor::Backend,
                Some(offset),
                &mut round,
            );
            Some(reset.or(round))
        })
    }

    /// An operation on a message this node does not hold (published before it followed
    /// the channel, or dropped from its history): its frame goes to the subscribers, who
    /// may hold the message, and a resume from before it is answered from the bus, which
    /// holds the message's state. Returns whether a round must start.
    pub(super) fn apply_unheld(
        state: &mut Channel,
        channel: &ChannelName,
        op: &Op<'_>,
        offset: Offset,
        now: Instant,
    ) -> Option<usize> {
        let frame = FramedText::from(op_frame(channel, offset, op));
        state.remember_pending(offset.seq, &frame);
        state.floor = state.floor.max(offset.seq);
        state.unheld = true;
        let flushed = Self::flush_held(state, channel);
        flushed.or(Self::enqueue_round(
            state,
            Queued::message(offset, &frame, now),
        ))
    }
}

/// The frame an operation sends at `offset`.
pub(super) fn op_frame(channel: &ChannelName, offset: Offset, op: &Op<'_>) -> String {
    match *op {
        Op::Publish {
            data,
            message_id,
            stream,
        } => match message_id {
            Some(id) => protocol::encode_message_with_id(channel, offset, id, stream, data),
            None => protocol::encode_message(channel, offset, data),
        },
        Op::Append { message_id, text } => {
            protocol::encode_append(channel, offset, message_id, text)
        }
        Op::Finish { message_id, data } => {
            protocol::encode_finish(channel, offset, message_id, data)
        }
        Op::Update {
            message_id,
            data,
            text,
        } => protocol::encode_update(channel, offset, message_id, data, text),
        Op::Delete { message_id } => protocol::encode_delete(channel, offset, message_id),
        Op::Abandon { message_id, reason } => {
            protocol::encode_abandon(channel, offset, message_id, reason)
        }
    }
}
