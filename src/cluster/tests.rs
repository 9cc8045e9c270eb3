use super::*;

#[test]
fn member_ids_sort_by_node_then_connection() {
    let mut ids = vec![
        member_id("n-2", 1),
        member_id("n", 10),
        member_id("n", 9),
        member_id("n.1", 0),
    ];
    ids.sort();
    assert_eq!(
        ids,
        [
            "n 00000000000000000009",
            "n 00000000000000000010",
            "n-2 00000000000000000001",
            "n.1 00000000000000000000",
        ]
    );
    // The Redis store reads a node's members as the range `[n ` .. `(n!`.
    let of_n: Vec<_> = ids
        .iter()
        .filter(|id| id.as_str() >= "n " && id.as_str() < "n!")
        .collect();
    assert_eq!(of_n.len(), 2);
}

#[test]
fn member_ids_parse_back_and_nothing_else_does() {
    assert_eq!(
        parse_member_id(&member_id("node-1", 42)),
        Some(("node-1", 42))
    );
    for bad in [
        "",
        "42",
        "node 42",
        " 00000000000000000042",
        "no\u{1}de 00000000000000000042",
        "node 0000000000000000004x",
        "node 000000000000000000042",
    ] {
        assert_eq!(parse_member_id(bad), None, "{bad:?}");
    }
    // Past the last connection id: a cursor after every connection of the node.
    assert_eq!(
        parse_member_id("node 99999999999999999999"),
        Some(("node", u64::MAX))
    );
    assert_eq!(parse_member_id(&member_id(&"n".repeat(65), 1)), None);
}
