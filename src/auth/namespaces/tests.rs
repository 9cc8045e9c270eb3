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
