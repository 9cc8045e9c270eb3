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
mod tests;
