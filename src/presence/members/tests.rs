use std::collections::BTreeMap;

use super::*;

fn member(conn_id: ConnId, user: &str) -> Arc<Member> {
    Arc::new(Member {
        node: Arc::from("n1"),
        conn_id,
        user: Arc::from(user),
        info: None,
    })
}

/// Conns against a plain map through thousands of joins and leaves that cross between the
/// list and the maps both ways: the same members, order, users, and first/last answers.
#[test]
fn conns_answer_as_a_map_does_across_list_and_maps() {
    let users = ["", "alice", "bob", "carol", "dave"];
    let mut conns = Conns::default();
    let mut model: BTreeMap<ConnId, &str> = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut was_many, mut switches) = (false, 0);
    for step in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Mostly joins while small, mostly leaves while large: the size swings over FEW.
        let conn_id = seed % 40;
        let user = users[usize::try_from(conn_id % 5).unwrap()];
        let join = (seed >> 32) % 40 >= if step % 4000 < 2000 { 8 } else { 32 };
        if join {
            let first = !model.values().any(|held| *held == user);
            let expected = (!model.contains_key(&conn_id)).then_some(first);
            assert_eq!(
                conns.insert(member(conn_id, user)),
                expected,
                "join {conn_id}"
            );
            model.entry(conn_id).or_insert(user);
        } else {
            let removed = conns.remove(conn_id).map(|(m, last)| (m.conn_id, last));
            let expected = model
                .remove(&conn_id)
                .map(|held| (conn_id, !model.values().any(|other| *other == held)));
            assert_eq!(removed, expected, "leave {conn_id}");
        }
        let listed: Vec<ConnId> = conns.iter().map(|m| m.conn_id).collect();
        assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
        let mut distinct: Vec<&str> = model.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(conns.users(), distinct.len());
        assert_eq!(conns.contains(conn_id), model.contains_key(&conn_id));
        let from = Bound::Excluded(10);
        let page: Vec<ConnId> = conns
            .range(from, Bound::Included(30), 5)
            .iter()
            .map(|m| m.conn_id)
            .collect();
        let expected: Vec<ConnId> = model.range(11..=30).map(|(id, _)| *id).take(5).collect();
        assert_eq!(page, expected);
        let many = matches!(conns, Conns::Many(_));
        switches += usize::from(many != was_many);
        was_many = many;
        assert!(many || conns.len() <= FEW);
    }
    assert!(
        switches >= 4,
        "the run crossed between list and maps {switches} times"
    );
}

#[test]
fn a_channel_with_one_member_here_is_small() {
    // The DashMap holds Members inline, one per channel: a node of the million run holds
    // one channel per socket.
    assert!(
        std::mem::size_of::<Members>() <= 64,
        "{}",
        std::mem::size_of::<Members>()
    );
    let mut conns = Conns::default();
    conns.insert(member(1, "alice"));
    conns.insert(member(2, "bob"));
    conns.remove(2);
    assert!(
        matches!(&conns, Conns::Few(list) if !list.spilled()),
        "back inline"
    );
}
