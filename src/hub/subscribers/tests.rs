use super::*;

fn subscriber(conn_id: ConnId) -> Subscriber {
    Subscriber {
        outbound: super::super::Outbound::new(conn_id, None, 16, 1 << 16, 0),
        skip: Offset { epoch: 0, seq: 0 },
    }
}

/// The ids in the list, sorted, after checking the index against the list.
fn ids(subscribers: &Subscribers) -> Vec<ConnId> {
    if let Some(index) = &subscribers.index {
        assert_eq!(index.len(), subscribers.list.len());
        for (at, (conn_id, _)) in subscribers.list.iter().enumerate() {
            assert_eq!(index[conn_id] as usize, at);
        }
    }
    let mut ids: Vec<_> = subscribers.list.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn one_subscriber_allocates_nothing_and_a_crowd_is_indexed_then_given_back() {
    let mut subscribers = Subscribers::default();
    assert!(subscribers.insert(7, subscriber(7)).is_none());
    assert!(!subscribers.list.spilled(), "one subscriber is held inline");
    assert!(
        subscribers.insert(7, subscriber(7)).is_some(),
        "replaced, not added"
    );
    assert_eq!(subscribers.len(), 1);

    for conn_id in 0..1000 {
        if conn_id != 7 {
            assert!(subscribers.insert(conn_id, subscriber(conn_id)).is_none());
        }
    }
    assert!(subscribers.index.is_some());
    assert_eq!(ids(&subscribers), (0..1000).collect::<Vec<_>>());

    // Removals in an order unlike insertion keep the index true.
    for conn_id in (0..1000).rev().step_by(2) {
        assert!(subscribers.swap_remove(conn_id).is_some());
        assert!(subscribers.swap_remove(conn_id).is_none());
    }
    assert_eq!(ids(&subscribers), (0..1000).step_by(2).collect::<Vec<_>>());

    subscribers.retain(|subscriber| subscriber.outbound.conn_id() % 4 == 0);
    assert_eq!(ids(&subscribers), (0..1000).step_by(4).collect::<Vec<_>>());
    assert!(
        subscribers.list.capacity() < 1000,
        "the crowd's memory is given back"
    );

    subscribers.retain(|subscriber| subscriber.outbound.conn_id() < 8);
    assert_eq!(ids(&subscribers), vec![0, 4]);
    assert!(subscribers.index.is_none(), "a small channel scans");
    assert!(subscribers.swap_remove(4).is_some());
    assert!(
        !subscribers.list.spilled(),
        "one subscriber is held inline again"
    );
    assert_eq!(ids(&subscribers), vec![0]);
}
