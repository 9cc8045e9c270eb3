//! Who may subscribe to, publish to and read the history of a channel: the `[[namespaces]]`
//! of the configuration, the first whose pattern matches a channel governing it.
//!
//! Patterns: `*` (every channel), a prefix ending in `*` (`room:*`), an exact name, or a
//! name with `{sub}` standing for the token's user (`user:{sub}`, `user:{sub}:*`). A rule is
//! one of `anonymous` (anyone), `authenticated` (any valid token), `owner` (the `{sub}` part of
//! the channel is the token's user), `claim` (the token's `channels`, or `publish` for
//! publishing, has a pattern matching the channel) or `none`. A channel no pattern matches is
//! refused. Checking allocates nothing: it compares slices of the channel's name.

use crate::config::{NamespaceConfig, Rule};

use super::Identity;

/// What a client wants to do with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
    /// Replay history: a subscribe with `since`.
    History,
    /// Read a channel's members: `presence`, `presence_stats`.
    Presence,
}

impl Action {
    /// A bounded label for metrics and messages.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
            Action::History => "history",
            Action::Presence => "presence",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    All,
    Prefix(String),
    Exact(String),
    /// `before{sub}after`; `after` may end in `*` (then a prefix after the user).
    Owner {
        before: String,
        after: String,
    },
}

impl Pattern {
    fn parse(text: &str) -> Self {
        if text == "*" {
            return Pattern::All;
        }
        if let Some((before, after)) = text.split_once("{sub}") {
            return Pattern::Owner {
                before: before.to_owned(),
                after: after.to_owned(),
            };
        }
        match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(text.to_owned()),
        }
    }

    /// Whether `channel` matches; for an owner pattern, also the user part.
    fn matches<'c>(&self, channel: &'c str) -> Option<Option<&'c str>> {
        match self {
            Pattern::All => Some(None),
            Pattern::Prefix(prefix) => channel.starts_with(prefix.as_str()).then_some(None),
            Pattern::Exact(name) => (channel == name).then_some(None),
            Pattern::Owner { before, after } => {
                let rest = channel.strip_prefix(before.as_str())?;
                let user = match after.strip_suffix('*') {
                    Some(after_prefix) if !after_prefix.is_empty() => {
                        rest.split_once(after_prefix).map(|(user, _)| user)?
                    }
                    // `{sub}*`: the user runs to the end.
                    Some(_) => rest,
                    None => rest.strip_suffix(after.as_str())?,
                };
                (!user.is_empty()).then_some(Some(user))
            }
        }
    }
}

/// Whether one of a token's claim patterns (`channels`, `publish`) matches `channel`.
fn claimed(patterns: &[String], channel: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => channel == pattern,
        })
}

#[derive(Debug, Clone)]
struct Namespace {
    pattern: Pattern,
    subscribe: Rule,
    publish: Rule,
    history: Rule,
    presence: Rule,
    join_leave: bool,
}

/// What a channel's namespace asks of its subscribers' membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// Members are listed (`presence`); false when only `join_leave` asked for tracking.
    pub listed: bool,
    /// Subscribers get `join` and `leave` frames.
    pub join_leave: bool,
}

/// The configured namespaces, in order.
#[derive(Debug, Clone, Default)]
pub struct Namespaces(Vec<Namespace>);

impl Namespaces {
    /// From `[[namespaces]]` (validated by `config`).
    #[must_use]
    pub fn new(config: &[NamespaceConfig]) -> Self {
        Self(
            config
                .iter()
                .map(|namespace| Namespace {
                    pattern: Pattern::parse(&namespace.pattern),
                    subscribe: namespace.subscribe,
                    publish: namespace.publish,
                    history: namespace.history,
                    presence: namespace.presence,
                    join_leave: namespace.join_leave,
                })
                .collect(),
        )
    }

    /// Whether `identity` (or an anonymous client) may do `action` on `channel`.
    #[must_use]
    pub fn allows(&self, channel: &str, action: Action, identity: Option<&Identity>) -> bool {
        let Some((namespace, owner)) = self
            .0
            .iter()
            .find_map(|namespace| Some((namespace, namespace.pattern.matches(channel)?)))
        else {
            return false;
        };
        let rule = match action {
            Action::Subscribe => namespace.subscribe,
            Action::Publish => namespace.publish,
            Action::History => namespace.history,
            Action::Presence => namespace.presence,
        };
        match rule {
            Rule::Anonymous => true,
            Rule::None => false,
            Rule::Authenticated => identity.is_some(),
            Rule::Owner => identity
                .zip(owner)
                .is_some_and(|(identity, owner)| *identity.user == *owner),
            Rule::Claim => identity.is_some_and(|identity| {
                let patterns = match action {
                    Action::Publish => &identity.publish,
                    Action::Subscribe | Action::History | Action::Presence => &identity.channels,
                };
                claimed(patterns, channel)
            }),
        }
    }
}

impl Namespaces {
    /// Whether `channel`'s subscribers are tracked as members, and how: `None` when its
    /// namespace has neither `presence` nor `join_leave` (or no namespace matches).
    #[must_use]
    pub fn membership(&self, channel: &str) -> Option<Membership> {
        let namespace = self
            .0
            .iter()
            .find(|namespace| namespace.pattern.matches(channel).is_some())?;
        let listed = namespace.presence != Rule::None;
        (listed || namespace.join_leave).then_some(Membership {
            listed,
            join_leave: namespace.join_leave,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn namespace(pattern: &str, subscribe: Rule, publish: Rule, history: Rule) -> NamespaceConfig {
        NamespaceConfig {
            pattern: pattern.to_owned(),
            subscribe,
            publish,
            history,
            presence: Rule::None,
            join_leave: false,
        }
    }

    fn user(name: &str, channels: &[&str], publish: &[&str]) -> Identity {
        Identity {
            user: Arc::from(name),
            exp: 0,
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            publish: publish.iter().map(|c| (*c).to_owned()).collect(),
            info: None,
            subs: Vec::new(),
        }
    }

    /// The chat of docs/security.md: public rooms, private rooms by claim, an inbox per user.
    fn chat() -> Namespaces {
        Namespaces::new(&[
            namespace(
                "public:*",
                Rule::Anonymous,
                Rule::Authenticated,
                Rule::Anonymous,
            ),
            namespace("room:*", Rule::Claim, Rule::Claim, Rule::Claim),
            // The longer pattern first: `user:{sub}` would take `user:alice:drafts` with the
            // user "alice:drafts".
            namespace("user:{sub}:*", Rule::Owner, Rule::Owner, Rule::Owner),
            namespace("user:{sub}", Rule::Owner, Rule::None, Rule::Owner),
        ])
    }

    #[test]
    fn the_first_matching_namespace_governs_and_unmatched_channels_are_refused() {
        let chat = chat();
        let alice = user("alice", &["room:7", "room:team-*"], &["room:7"]);
        assert!(chat.allows("public:lobby", Action::Subscribe, None));
        assert!(!chat.allows("public:lobby", Action::Publish, None));
        assert!(chat.allows("public:lobby", Action::Publish, Some(&alice)));
        assert!(!chat.allows("elsewhere", Action::Subscribe, Some(&alice)));
        assert!(!Namespaces::default().allows("public:lobby", Action::Subscribe, None));
    }

    #[test]
    fn claims_and_owners() {
        let chat = chat();
        let alice = user("alice", &["room:7", "room:team-*"], &["room:7"]);
        assert!(chat.allows("room:7", Action::Subscribe, Some(&alice)));
        assert!(chat.allows("room:team-blue", Action::History, Some(&alice)));
        assert!(!chat.allows("room:8", Action::Subscribe, Some(&alice)));
        assert!(chat.allows("room:7", Action::Publish, Some(&alice)));
        assert!(!chat.allows("room:team-blue", Action::Publish, Some(&alice)));
        assert!(!chat.allows("room:7", Action::Subscribe, None));
        assert!(chat.allows("user:alice", Action::Subscribe, Some(&alice)));
        assert!(!chat.allows("user:alice", Action::Publish, Some(&alice)));
        assert!(!chat.allows("user:bob", Action::Subscribe, Some(&alice)));
        assert!(!chat.allows("user:alice", Action::Subscribe, None));
        assert!(chat.allows("user:alice:drafts", Action::Publish, Some(&alice)));
        assert!(!chat.allows("user:bob:drafts", Action::Subscribe, Some(&alice)));
        // `user:{sub}:*` comes first, so a user named "alice:drafts" does not own it.
        let colon = user("alice:drafts", &[], &[]);
        assert!(!chat.allows("user:alice:drafts", Action::Subscribe, Some(&colon)));
    }

    #[test]
    fn presence_and_join_leave_make_members() {
        let mut rooms = namespace("room:*", Rule::Claim, Rule::Claim, Rule::Claim);
        rooms.presence = Rule::Claim;
        rooms.join_leave = true;
        let mut feed = namespace("feed:*", Rule::Anonymous, Rule::None, Rule::None);
        feed.join_leave = true;
        let namespaces = Namespaces::new(&[
            rooms,
            feed,
            namespace("*", Rule::Anonymous, Rule::None, Rule::None),
        ]);
        let alice = user("alice", &["room:7"], &[]);
        assert!(namespaces.allows("room:7", Action::Presence, Some(&alice)));
        assert!(!namespaces.allows("room:8", Action::Presence, Some(&alice)));
        assert!(!namespaces.allows("room:7", Action::Presence, None));
        assert!(!namespaces.allows("feed:1", Action::Presence, None));
        let both = Membership {
            listed: true,
            join_leave: true,
        };
        assert_eq!(namespaces.membership("room:7"), Some(both));
        let events_only = Membership {
            listed: false,
            join_leave: true,
        };
        assert_eq!(namespaces.membership("feed:1"), Some(events_only));
        assert_eq!(namespaces.membership("other"), None);
    }

    #[test]
    fn a_star_alone_governs_everything() {
        let open = Namespaces::new(&[namespace("*", Rule::Anonymous, Rule::None, Rule::Anonymous)]);
        assert!(open.allows("anything/at:all", Action::Subscribe, None));
        assert!(!open.allows("anything", Action::Publish, None));
    }
}
