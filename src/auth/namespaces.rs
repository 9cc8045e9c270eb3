//! Who may subscribe to, publish to and read the history of a channel: the `[[namespaces]]`
//! of the configuration, the first whose pattern matches a channel governing it.
//!
//! Patterns: `*` (every channel), a prefix ending in `*` (`room:*`), an exact name, or a
//! name with `{sub}` standing for the token's user (`user:{sub}`, `user:{sub}:*`). A rule is
//! one of `anonymous` (anyone), `authenticated` (any valid token), `owner` (the channel is the
//! pattern with the token's whole `sub` in place of `{sub}`), `claim` (the token's
//! `channels`, or `publish` for publishing, has a pattern matching the channel) or `none`. A
//! channel no pattern matches is refused. Checking allocates nothing: it compares slices of
//! the channel's name.
//!
//! An owner pattern governs every channel of its shape, whoever's it is, so that another
//! user's channel never falls through to a wider pattern listed later; but a channel that is
//! someone else's under one owner pattern and the caller's own under a later one (user `a:b`
//! and `user:a:b` with `user:{sub}:*` before `user:{sub}`) is the caller's
//! (`Namespaces::governing`).

use crate::config::{ChannelPattern, EditRule, NamespaceConfig, Rule};

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
    pattern: ChannelPattern,
    subscribe: Rule,
    publish: Rule,
    history: Rule,
    presence: Rule,
    join_leave: bool,
    edit: EditRule,
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
                    pattern: ChannelPattern::parse(&namespace.pattern),
                    subscribe: namespace.subscribe,
                    publish: namespace.publish,
                    history: namespace.history,
                    presence: namespace.presence,
                    join_leave: namespace.join_leave,
                    edit: namespace.edit,
                })
                .collect(),
        )
    }

    /// The namespace governing `channel` for `identity`, and whether the channel is the
    /// identity's own under it (for `owner` rules).
    ///
    /// The first namespace that matches governs, an owner pattern matching the channels it
    /// gives the identity's `sub` and, so that another user's channel never falls through
    /// to a wider pattern after it, every channel of its shape. The one exception: a channel
    /// that is another user's under an owner pattern goes to a later owner pattern under
    /// which it is the identity's own, if one comes before any other match. So user `a:b`
    /// owns its inbox `user:a:b` through `user:{sub}`, although `user:{sub}:*` comes first
    /// and makes it user `a`'s.
    fn governing(&self, channel: &str, identity: Option<&Identity>) -> Option<(&Namespace, bool)> {
        let user = identity.map(|identity| &*identity.user);
        // The first owner pattern under which the channel is someone else's.
        let mut others: Option<&Namespace> = None;
        for namespace in &self.0 {
            let pattern = &namespace.pattern;
            if user.is_some_and(|user| pattern.owned_by(channel, user)) {
                return Some((namespace, true));
            }
            if !pattern.fits(channel) {
                continue;
            }
            match pattern {
                ChannelPattern::Owner { .. } => {
                    others.get_or_insert(namespace);
                }
                ChannelPattern::All | ChannelPattern::Prefix(_) | ChannelPattern::Exact(_) => {
                    return Some((others.unwrap_or(namespace), false));
                }
            }
        }
        others.map(|namespace| (namespace, false))
    }

    /// Whether `identity` (or an anonymous client) may do `action` on `channel`; a `hook`
    /// rule is not an allowance here (see [`Namespaces::decide`]).
    #[must_use]
    pub fn allows(&self, channel: &str, action: Action, identity: Option<&Identity>) -> bool {
        self.decide(channel, action, identity) == Decision::Allow
    }

    /// What the namespaces say about `identity` (or an anonymous client) doing `action` on
    /// `channel`: allowed, refused, or for the backend to decide (a `hook` rule).
    #[must_use]
    pub fn decide(&self, channel: &str, action: Action, identity: Option<&Identity>) -> Decision {
        let Some((namespace, owned)) = self.governing(channel, identity) else {
            return Decision::Deny;
        };
        let rule = match action {
            Action::Subscribe => namespace.subscribe,
            Action::Publish => namespace.publish,
            Action::History => namespace.history,
            Action::Presence => namespace.presence,
        };
        let allowed = match rule {
            Rule::Hook => return Decision::Hook,
            Rule::Anonymous => true,
            Rule::None => false,
            Rule::Authenticated => identity.is_some(),
            Rule::Owner => owned,
            Rule::Claim => identity.is_some_and(|identity| {
                let patterns = match action {
                    Action::Publish => &identity.publish,
                    Action::Subscribe | Action::History | Action::Presence => &identity.channels,
                };
                claimed(patterns, channel)
            }),
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

/// What a namespace rule says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// The rule is `hook`: the backend decides.
    Hook,
}

impl Namespaces {
    /// Which messages of `channel` `identity` (or an anonymous client) may change, where
    /// its namespace lets it publish: the namespace's `edit` (`none` with no namespace).
    #[must_use]
    pub fn edit_rule(&self, channel: &str, identity: Option<&Identity>) -> EditRule {
        self.governing(channel, identity)
            .map_or(EditRule::None, |(namespace, _)| namespace.edit)
    }

    /// Whether `channel`'s subscribers are tracked as members, and how: `None` when its
    /// namespace has neither `presence` nor `join_leave` (or no namespace matches).
    #[must_use]
    pub fn membership(&self, channel: &str) -> Option<Membership> {
        // Per channel, not per connection (all its members share it): the first namespace
        // of the channel's shape, whoever's channel it is.
        let namespace = self
            .0
            .iter()
            .find(|namespace| namespace.pattern.fits(channel))?;
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
            edit: crate::config::EditRule::Own,
            history_size: None,
            history_ttl: None,
            slow_consumer: crate::config::SlowConsumer::Disconnect,
            conflate_key: None,
            queue_bytes: None,
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
            jti: None,
            iat: None,
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
            // The order docs/security.md gives; with whole-sub matching either order gives
            // each user the same channels.
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
    }

    #[test]
    fn owner_patterns_match_the_whole_sub() {
        let chat = chat();
        // A sub with a colon owns its inbox, although `user:{sub}:*` (listed first) has the
        // channel's shape: under it `user:a:b` would be user "a"'s.
        let colon = user("a:b", &[], &[]);
        assert!(chat.allows("user:a:b", Action::Subscribe, Some(&colon)));
        assert!(chat.allows("user:a:b", Action::History, Some(&colon)));
        // The inbox's rules govern it (`publish = none`), not those of `user:{sub}:*`...
        assert!(!chat.allows("user:a:b", Action::Publish, Some(&colon)));
        // ...which govern the channels under it.
        assert!(chat.allows("user:a:b:drafts", Action::Publish, Some(&colon)));
        // Neither a part of the sub nor a longer one owns anything through `user:{sub}`.
        assert!(!chat.allows("user:a", Action::Subscribe, Some(&colon)));
        assert!(!chat.allows(
            "user:a:b:c",
            Action::Subscribe,
            Some(&user("a:b:c:d", &[], &[]))
        ));
        assert!(!chat.allows(
            "user:alice",
            Action::Subscribe,
            Some(&user("ali", &[], &[]))
        ));
        // Through `user:{sub}:*`, "alice:drafts" is not the user of `user:alice:drafts`
        // (that is "alice", who may publish there); through `user:{sub}` it is, so it owns
        // the channel as its inbox, under the inbox's rules: a sub holding the character
        // that follows `{sub}` in a pattern shares channels (docs/security.md).
        let drafts = user("alice:drafts", &[], &[]);
        assert!(chat.allows("user:alice:drafts", Action::Subscribe, Some(&drafts)));
        assert!(!chat.allows("user:alice:drafts", Action::Publish, Some(&drafts)));
        let alice = user("alice", &[], &[]);
        assert!(chat.allows("user:alice:drafts", Action::Publish, Some(&alice)));
        // An empty sub owns nothing.
        assert!(!chat.allows("user:", Action::Subscribe, Some(&user("", &[], &[]))));
    }

    #[test]
    fn another_users_channel_never_falls_through_to_a_later_namespace() {
        let namespaces = Namespaces::new(&[
            namespace("user:{sub}:*", Rule::Owner, Rule::Owner, Rule::Owner),
            namespace("user:{sub}", Rule::Owner, Rule::None, Rule::Owner),
            namespace("*", Rule::Anonymous, Rule::Anonymous, Rule::Anonymous),
        ]);
        let bob = user("bob", &[], &[]);
        for channel in ["user:alice", "user:alice:drafts", "user:a:b"] {
            assert!(
                !namespaces.allows(channel, Action::Subscribe, Some(&bob)),
                "{channel}"
            );
            assert!(
                !namespaces.allows(channel, Action::Publish, None),
                "{channel}"
            );
        }
        // Not of any `{sub}` shape: the catch-all.
        assert!(namespaces.allows("user:", Action::Subscribe, None));
        assert!(namespaces.allows("news", Action::Publish, Some(&bob)));
        // Membership does not depend on who asks: the first entry of the channel's shape.
        assert_eq!(namespaces.membership("user:a:b"), None);
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
