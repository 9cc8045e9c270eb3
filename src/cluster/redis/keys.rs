//! The names of a cluster's Redis keys: a channel's, all in its partition's hash slot
//! (`{sb:P}`), and a partition's.

use redis::{Script, ScriptInvocation};

use crate::protocol::ChannelName;

pub(super) fn bus_key(partition: u32) -> String {
    format!("sb:{{sb:{partition}}}:bus")
}

/// The keys of one channel, all in its partition's slot.
pub(super) struct ChannelKeys {
    pub(super) partition: u32,
    pub(super) meta: String,
    pub(super) hist: String,
    pub(super) bus: String,
    pub(super) born: String,
    pub(super) interest: String,
    pub(super) ids: String,
    pub(super) idt: String,
    pub(super) chg: String,
    pub(super) opn: String,
    /// The partition's open streams, for the sweep that abandons idle ones.
    pub(super) open: String,
    /// `...:m:<channel> `: a message's state is this, its epoch, a space and its seq.
    pub(super) message_prefix: String,
    /// `...:x:<channel> `: a stream's text, likewise.
    pub(super) text_prefix: String,
}

/// A partition's open streams (`<channel> <message_id>` by when last touched, ms).
pub(super) fn open_key(partition: u32) -> String {
    format!("sb:{{sb:{partition}}}:open")
}

/// The prefix of a partition's inboxes: `<prefix><node>:<incarnation>` is one process's.
pub(super) fn inbox_prefix(partition: u32) -> String {
    format!("sb:{{sb:{partition}}}:in:")
}

/// A channel's interest hash: which processes' inboxes its messages are appended to (field
/// `<node>:<incarnation>`, value: until when, in Redis ms).
pub(super) fn interest_key(partition: u32, channel: &str) -> String {
    format!("sb:{{sb:{partition}}}:int:{channel}")
}

/// The interest hash every node reading its inbox joins for requests about users (`!` is
/// outside the channel-name alphabet, so no channel shares it). Partition 0's, where those
/// requests are appended.
pub(super) const USERS_INTEREST: &str = "!users";

pub(super) fn born_key(partition: u32) -> String {
    format!("sb:{{sb:{partition}}}:born")
}

impl ChannelKeys {
    pub(super) fn new(partition: u32, channel: &ChannelName) -> Self {
        Self {
            partition,
            meta: format!("sb:{{sb:{partition}}}:meta:{channel}"),
            hist: format!("sb:{{sb:{partition}}}:hist:{channel}"),
            bus: bus_key(partition),
            born: born_key(partition),
            interest: interest_key(partition, channel.as_str()),
            ids: format!("sb:{{sb:{partition}}}:ids:{channel}"),
            idt: format!("sb:{{sb:{partition}}}:idt:{channel}"),
            chg: format!("sb:{{sb:{partition}}}:chg:{channel}"),
            opn: format!("sb:{{sb:{partition}}}:opn:{channel}"),
            open: open_key(partition),
            message_prefix: format!("sb:{{sb:{partition}}}:m:{channel} "),
            text_prefix: format!("sb:{{sb:{partition}}}:x:{channel} "),
        }
    }

    /// `script` with the ten keys the scripts that write a channel take, in their order
    /// (`scripts::PUBLISH_LUA`, `streams_lua::OP_LUA`): meta, history, bus, born, interest,
    /// ids, idt, chg, opn, and the partition's open set.
    pub(super) fn writing<'a>(&'a self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.key(&self.meta);
        invocation
            .key(&self.hist)
            .key(&self.bus)
            .key(&self.born)
            .key(&self.interest)
            .key(&self.ids)
            .key(&self.idt)
            .key(&self.chg)
            .key(&self.opn)
            .key(&self.open);
        invocation
    }
}
