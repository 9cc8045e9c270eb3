use super::*;

fn entries(patterns: &[&str]) -> Vec<NamespaceConfig> {
    patterns
        .iter()
        .map(|pattern| NamespaceConfig {
            pattern: (*pattern).to_owned(),
            subscribe: Rule::Anonymous,
            publish: Rule::None,
            history: Rule::None,
            presence: Rule::None,
            join_leave: false,
            edit: super::super::EditRule::Own,
            history_size: None,
            history_ttl: None,
            slow_consumer: SlowConsumer::Disconnect,
            conflate_key: None,
            queue_bytes: None,
        })
        .collect()
}

#[test]
fn an_entry_an_earlier_one_covers_is_refused() {
    for (patterns, unreachable) in [
        (&["*", "room:*"][..], Some("[1] pattern 'room:*'")),
        (
            &["room:*", "room:vip:*"][..],
            Some("[1] pattern 'room:vip:*'"),
        ),
        (&["room:*", "room:7"][..], Some("[1] pattern 'room:7'")),
        (
            &["user:*", "user:{sub}"][..],
            Some("[1] pattern 'user:{sub}'"),
        ),
        (&["news", "news"][..], Some("[1] pattern 'news'")),
        (&["user:{sub}", "user:{sub}"][..], Some("[1]")),
        (&["room:vip:*", "room:*", "*"][..], None),
        (&["user:{sub}", "user:*", "*"][..], None),
        (&["room:7", "room:*"][..], None),
        (&["user:{sub}:*", "user:{sub}"][..], None),
        (&["user:1*", "user:{sub}"][..], None),
    ] {
        let found = shadowed(&entries(patterns));
        match unreachable {
            Some(start) => assert!(
                found
                    .as_deref()
                    .is_some_and(|message| message.starts_with(start)),
                "{patterns:?}: {found:?}"
            ),
            None => assert_eq!(found, None, "{patterns:?}"),
        }
    }
}
