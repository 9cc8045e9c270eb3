//! `[[namespaces]]` checks: each pattern's grammar and the rules it can hold, and the order
//! of the entries (the first matching entry governs a channel, so an entry an earlier one
//! covers entirely is never used: the natural mistake is a `*` catch-all above specific
//! rules). The `[[namespaces]]` schema and the shipped default are here too.

use serde::{Deserialize, Serialize};

use super::HooksConfig;

/// Who may do something with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// Anyone, with or without a token.
    Anonymous,
    /// Any connection with a valid token.
    Authenticated,
    /// The connection whose token's whole `sub`, in place of the pattern's `{sub}`, gives
    /// the channel.
    Owner,
    /// A connection whose token's `channels` (`publish` for publishing) has a matching pattern.
    Claim,
    /// Nobody (backends still can, through the control API).
    None,
    /// The application backend decides, per request (`hooks.subscribe_url` for subscribe,
    /// history and presence, `hooks.publish_url` for publish; see `docs/backend.md`).
    Hook,
}

/// A `[[namespaces]]` entry's `pattern`, parsed: `*`, a prefix ending in `*`, an exact name,
/// or a name with `{sub}` for the token's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPattern {
    All,
    Prefix(String),
    Exact(String),
    /// `before{sub}after`; `after` may end in `*` (then a prefix after the user).
    Owner {
        before: String,
        after: String,
    },
}

impl ChannelPattern {
    /// The pattern `text` writes (see `pattern`).
    #[must_use]
    pub fn parse(text: &str) -> Self {
        if text == "*" {
            return ChannelPattern::All;
        }
        if let Some((before, after)) = text.split_once("{sub}") {
            return ChannelPattern::Owner {
                before: before.to_owned(),
                after: after.to_owned(),
            };
        }
        match text.strip_suffix('*') {
            Some(prefix) => ChannelPattern::Prefix(prefix.to_owned()),
            None => ChannelPattern::Exact(text.to_owned()),
        }
    }

    /// Whether `channel` has this pattern's shape: for an owner pattern, with some non-empty
    /// user in place of `{sub}`. Who asks does not matter.
    #[must_use]
    pub fn fits(&self, channel: &str) -> bool {
        match self {
            ChannelPattern::All => true,
            ChannelPattern::Prefix(prefix) => channel.starts_with(prefix.as_str()),
            ChannelPattern::Exact(name) => channel == name,
            ChannelPattern::Owner { before, after } => {
                let Some(rest) = channel.strip_prefix(before.as_str()) else {
                    return false;
                };
                match after.strip_suffix('*') {
                    // `{sub}*`: the user runs to the end.
                    Some("") => !rest.is_empty(),
                    // The user is not empty: the part after it starts past the first char.
                    Some(after_prefix) => rest
                        .char_indices()
                        .skip(1)
                        .any(|(at, _)| rest[at..].starts_with(after_prefix)),
                    None => rest.len() > after.len() && rest.ends_with(after.as_str()),
                }
            }
        }
    }

    /// Whether `channel` is `user`'s under this owner pattern: `before`, the whole `user`,
    /// then `after` (or what `after` starts with, when it ends in `*`). The user is compared
    /// whole, never cut out of the channel's name, so that a `sub` holding the character
    /// after `{sub}` (`a:b` in `user:{sub}:*`) is still found. False for other patterns and
    /// an empty user.
    #[must_use]
    pub fn owned_by(&self, channel: &str, user: &str) -> bool {
        let ChannelPattern::Owner { before, after } = self else {
            return false;
        };
        let Some(rest) = channel
            .strip_prefix(before.as_str())
            .and_then(|rest| rest.strip_prefix(user))
        else {
            return false;
        };
        !user.is_empty()
            && match after.strip_suffix('*') {
                // `{sub}*` is `{sub}`: a prefix would give `alice` the channels of `alice2`.
                Some("") => rest.is_empty(),
                Some(after_prefix) => rest.starts_with(after_prefix),
                None => rest == after,
            }
    }
}

/// One `[[namespaces]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// `*`, a prefix ending in `*` (`room:*`), an exact name, or a name with `{sub}` for the
    /// token's user (`user:{sub}`, `user:{sub}:*`).
    pub pattern: String,
    pub subscribe: Rule,
    pub publish: Rule,
    /// Reading history: a subscribe with `since`, or a `history` frame.
    pub history: Rule,
    /// Reading who is subscribed: the `presence` and `presence_stats` frames. Subscribers of
    /// a namespace with `presence` other than `none`, or with `join_leave`, are tracked as
    /// members (connection, user, the token's `info`). Default `none`: not tracked.
    #[serde(default = "no_one")]
    pub presence: Rule,
    /// Send subscribers `join` and `leave` frames as members come and go (coalesced during a
    /// burst, see `[presence]`). Default false.
    #[serde(default)]
    pub join_leave: bool,
    /// Which messages a client may change (`append`, `finish`, `update`, `delete`) where
    /// `publish` lets it: `own` (those its user created; an anonymous client, those its
    /// connection created), `any`, or `none`. Backends may change any. Default `own`.
    #[serde(default)]
    pub edit: EditRule,
    /// Messages each channel keeps for resume and `history`; absent: `history.size`. 0: no
    /// history at all (ephemeral channels such as typing indicators: nothing is written to
    /// Redis's history, a resume answers `recovered: false`, messages with ids are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    /// How long they are kept; absent: `history.ttl`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub history_ttl: Option<std::time::Duration>,
    /// What happens to a subscriber whose outbound queue is full when a message of this
    /// namespace's channels does not fit: `disconnect` (4001, the default), `drop_oldest`
    /// (its oldest queued messages of the namespace go, and a `gap` frame says which), or
    /// `conflate` (it keeps the newest queued message per channel, or per `conflate_key`).
    #[serde(default, skip_serializing_if = "SlowConsumer::is_default")]
    pub slow_consumer: SlowConsumer,
    /// With `conflate`: a top-level field of the messages' `data` whose value separates what
    /// is conflated (one newest message per channel and value, e.g. a ticker's `symbol`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflate_key: Option<String>,
    /// With `drop_oldest` or `conflate`: the bytes of a connection's outbound queue this
    /// namespace's messages may hold at most, so that a noisy namespace cannot starve
    /// another on the same connection: past it, the policy makes room among its own.
    /// Absent: the whole queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<usize>,
}

/// A namespace's `slow_consumer`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Close the connection with 4001.
    #[default]
    Disconnect,
    /// Drop the connection's oldest queued messages of the namespace; send `gap` instead.
    DropOldest,
    /// Keep only the newest queued message per channel (and `conflate_key` value).
    Conflate,
}

impl SlowConsumer {
    fn is_default(&self) -> bool {
        *self == Self::Disconnect
    }
}

/// Which messages a client may change: a namespace's `edit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditRule {
    /// Those it created (its user's; an anonymous connection's own).
    #[default]
    Own,
    /// Any message of the channel.
    Any,
    /// None.
    None,
}

pub(super) const fn no_one() -> Rule {
    Rule::None
}

pub(super) fn default_namespaces() -> Vec<NamespaceConfig> {
    vec![NamespaceConfig {
        pattern: "*".to_owned(),
        subscribe: Rule::Anonymous,
        publish: Rule::None,
        history: Rule::Anonymous,
        presence: Rule::None,
        join_leave: false,
        edit: EditRule::Own,
        history_size: None,
        history_ttl: None,
        slow_consumer: SlowConsumer::Disconnect,
        conflate_key: None,
        queue_bytes: None,
    }]
}

/// A namespace's pattern: `*`, or a name with at most one `{sub}` and a `*` only at the end;
/// `owner` rules need `{sub}`.
pub(super) fn check(
    namespace: &NamespaceConfig,
    hooks: &HooksConfig,
    limits: &super::LimitsConfig,
) -> Result<(), String> {
    let pattern = namespace.pattern.as_str();
    if pattern.is_empty() {
        return Err("pattern is empty".to_owned());
    }
    if pattern.matches("{sub}").count() > 1 {
        return Err(format!("pattern '{pattern}' has more than one {{sub}}"));
    }
    if pattern.trim_end_matches('*').contains('*') {
        return Err(format!(
            "pattern '{pattern}': `*` may only end a pattern (or be all of it)"
        ));
    }
    let owner_rule = [
        namespace.subscribe,
        namespace.publish,
        namespace.history,
        namespace.presence,
    ]
    .contains(&Rule::Owner);
    if owner_rule && !pattern.contains("{sub}") {
        return Err(format!(
            "pattern '{pattern}' has no {{sub}}, so `owner` can never match"
        ));
    }
    let asks_subscribe_hook =
        [namespace.subscribe, namespace.history, namespace.presence].contains(&Rule::Hook);
    if asks_subscribe_hook && hooks.subscribe_url.is_empty() {
        return Err(format!(
            "pattern '{pattern}': a `hook` rule for subscribe, history or presence needs \
             hooks.subscribe_url"
        ));
    }
    if namespace.publish == Rule::Hook && hooks.publish_url.is_empty() {
        return Err(format!(
            "pattern '{pattern}': `publish = \"hook\"` needs hooks.publish_url"
        ));
    }
    if namespace
        .history_size
        .is_some_and(|size| size >= limits.outbound_queue_messages)
    {
        // As for history.size: a resume replays up to this many at once.
        return Err(format!(
            "pattern '{pattern}': history_size must be smaller than \
             limits.outbound_queue_messages"
        ));
    }
    if namespace.queue_bytes.is_some_and(|bytes| {
        bytes < limits.max_publish_payload_bytes || bytes > limits.outbound_queue_bytes
    }) {
        return Err(format!(
            "pattern '{pattern}': queue_bytes must be between limits.max_publish_payload_bytes \
             and limits.outbound_queue_bytes"
        ));
    }
    if namespace.queue_bytes.is_some() && namespace.slow_consumer == SlowConsumer::Disconnect {
        return Err(format!(
            "pattern '{pattern}': queue_bytes goes with slow_consumer = \"drop_oldest\" or \
             \"conflate\" (a share that closes the connection when full would starve the others)"
        ));
    }
    if namespace.conflate_key.is_some() && namespace.slow_consumer != SlowConsumer::Conflate {
        return Err(format!(
            "pattern '{pattern}': conflate_key goes with slow_consumer = \"conflate\""
        ));
    }
    if namespace.history_ttl.is_some_and(|ttl| ttl.is_zero()) {
        return Err(format!(
            "pattern '{pattern}': history_ttl must be greater than 0 (history_size = 0 keeps \
             no history)"
        ));
    }
    Ok(())
}

/// What a pattern matches, for the order check.
enum Shape<'a> {
    All,
    Prefix(&'a str),
    Exact(&'a str),
    /// Any pattern with `{sub}`: the part before it, and the whole pattern.
    Owner(&'a str, &'a str),
}

fn shape(pattern: &str) -> Shape<'_> {
    if pattern == "*" {
        return Shape::All;
    }
    if let Some((before, _)) = pattern.split_once("{sub}") {
        return Shape::Owner(before, pattern);
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => Shape::Prefix(prefix),
        None => Shape::Exact(pattern),
    }
}

/// Whether every channel `later` matches is matched by `earlier`.
fn covers(earlier: &Shape<'_>, later: &Shape<'_>) -> bool {
    match (earlier, later) {
        (Shape::All, _) => true,
        (Shape::Prefix(prefix), Shape::Prefix(name) | Shape::Exact(name))
        | (Shape::Prefix(prefix), Shape::Owner(name, _)) => name.starts_with(prefix),
        (Shape::Exact(a), Shape::Exact(b)) | (Shape::Owner(_, a), Shape::Owner(_, b)) => a == b,
        _ => false,
    }
}

/// The first entry an earlier one makes unreachable, as a message that says how to fix it.
pub(super) fn shadowed(namespaces: &[NamespaceConfig]) -> Option<String> {
    for (later, entry) in namespaces.iter().enumerate() {
        let later_shape = shape(&entry.pattern);
        for (earlier, before) in namespaces[..later].iter().enumerate() {
            if covers(&shape(&before.pattern), &later_shape) {
                return Some(format!(
                    "[{later}] pattern '{}' is never used: [{earlier}] pattern '{}' comes first \
                     and matches every channel it would (the first matching entry governs); \
                     move the more specific entry above",
                    entry.pattern, before.pattern
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
