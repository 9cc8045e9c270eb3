use std::time::Duration;

use super::{sync::Owed, *};
use crate::{
    cluster::{LocalBus, PresenceWrite, WriteOutcome},
    hub::{FramedText, Hub, HubHandle, HubSettings, Outbound, Outgoing},
};

fn hub() -> HubHandle {
    Hub::new(HubSettings {
        shards: 2,
        max_connections: 100,
        queue_messages: 1024,
        queue_bytes: 1 << 20,
        history_size: 16,
        history_ttl: Duration::from_secs(60),
        history_max_bytes: 1 << 20,
        ..HubSettings::default()
    })
}

fn name(text: &str) -> ChannelName {
    ChannelName::parse(text, 64).unwrap()
}

fn member(conn_id: ConnId, user: &str) -> Member {
    Member {
        node: Arc::from("n1"),
        conn_id,
        user: Arc::from(user),
        info: Some(RawValue::from_string(format!("{{\"name\":\"{user}\"}}")).unwrap()),
    }
}

/// A subscriber of `channel` without a socket; its frames are read off its queue.
fn subscriber(hub: &HubHandle, channel: &ChannelName) -> Arc<Outbound> {
    let outbound = hub.register(None);
    hub.subscribe(&outbound, channel, None, None, |_| {
        FramedText::from("subscribed".to_owned())
    })
    .unwrap();
    assert!(matches!(outbound.take(), Some(Outgoing::Text(_))));
    outbound
}

fn frames(outbound: &Outbound) -> Vec<serde_json::Value> {
    std::iter::from_fn(|| outbound.take())
        .map(|item| serde_json::from_str(item.text().expect("a ping").json()).unwrap())
        .collect()
}

fn presence(hub: &HubHandle, coalesce: Duration) -> Arc<Presence> {
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(
        Arc::clone(hub),
        Arc::from("n1"),
        crate::cluster::NodeInfo::unbound(),
    ));
    Presence::start(
        PresenceSettings {
            node: Arc::from("n1"),
            coalesce,
            max_listed: 100,
            ttl: Duration::from_secs(30),
            namespaces: crate::auth::Namespaces::default(),
            watch: None,
        },
        bus,
        None,
        &TaskGroup::new(),
        &CancellationToken::new(),
    )
}

/// Lets the event task hand what was queued to the hub.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn members_are_listed_in_pages_and_counted_per_user() {
    let hub = hub();
    let presence = presence(&hub, Duration::ZERO);
    let room = name("room:1");
    for (conn_id, user) in [(3, "alice"), (1, "bob"), (2, "alice"), (4, "")] {
        presence.joined(&room, member(conn_id, user), false);
    }
    // The same connection twice counts once.
    presence.joined(&room, member(3, "alice"), false);
    assert_eq!(
        presence.stats(&room).await.unwrap(),
        Stats {
            connections: 4,
            users: 3
        }
    );
    let first = presence.page(&room, None, 3).await.unwrap();
    let ids: Vec<_> = first.members.iter().map(|m| m.conn_id).collect();
    let cursor = member_id("n1", 3);
    assert_eq!(
        (ids, first.next_cursor.as_deref()),
        (vec![1, 2, 3], Some(&*cursor))
    );
    let rest = presence.page(&room, Some(&cursor), 3).await.unwrap();
    assert_eq!(rest.members.len(), 1);
    assert_eq!(rest.next_cursor, None);
    presence.left(&room, 2, false);
    presence.left(&room, 2, false);
    assert_eq!(
        presence.stats(&room).await.unwrap(),
        Stats {
            connections: 3,
            users: 3
        }
    );
    for conn_id in [1, 3, 4] {
        presence.left(&room, conn_id, false);
    }
    assert_eq!(presence.stats(&room).await.unwrap(), Stats::default());
    assert!(presence.members.is_empty(), "an empty channel is forgotten");
}

#[tokio::test(start_paused = true)]
async fn a_quiet_channel_hears_of_a_join_at_once_and_a_burst_in_one_frame_each_way() {
    let hub = hub();
    let presence = presence(&hub, Duration::from_millis(200));
    let room = name("room:1");
    let listener = subscriber(&hub, &room);

    presence.joined(&room, member(10, "alice"), true);
    settle().await;
    let got = frames(&listener);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "join");
    assert_eq!(got[0]["user"], "alice");
    assert_eq!(got[0]["conn_id"], 10);
    assert_eq!(got[0]["node"], "n1");
    assert_eq!(got[0]["info"]["name"], "alice");

    // A burst within the interval: nothing until its end, then one frame each way.
    for conn_id in 11..=60 {
        presence.joined(&room, member(conn_id, &format!("u{conn_id}")), true);
    }
    for conn_id in 11..=20 {
        presence.left(&room, conn_id, true);
    }
    presence.left(&room, 10, true);
    settle().await;
    assert!(frames(&listener).is_empty(), "held until the interval ends");
    tokio::time::sleep(Duration::from_millis(201)).await;
    settle().await;
    let got = frames(&listener);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["type"], "join");
    let joined: Vec<u64> = got[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conn_id"].as_u64().unwrap())
        .collect();
    // 11..=20 came and went within the interval: in neither frame.
    assert_eq!(joined, (21..=60).collect::<Vec<_>>());
    assert_eq!(got[1]["type"], "leave");
    assert_eq!(got[1]["user"], "alice", "one member: the single shape");
    assert_eq!(presence.local_stats(&room).connections, 40);

    // Quiet for an interval again: the channel holds no coalescing state, and the next
    // event leaves at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    settle().await;
    assert!(frames(&listener).is_empty());
    assert!(presence.pending.is_empty(), "a quiet channel is forgotten");
    presence.left(&room, 21, true);
    settle().await;
    let got = frames(&listener);
    assert_eq!(
        (got.len(), &got[0]["type"]),
        (1, &serde_json::json!("leave"))
    );
    // One event and a quiet interval: forgotten too.
    tokio::time::sleep(Duration::from_millis(201)).await;
    settle().await;
    assert!(presence.pending.is_empty(), "a quiet channel is forgotten");
}

#[tokio::test(start_paused = true)]
async fn events_keep_their_place_among_messages() {
    let hub = hub();
    let presence = presence(&hub, Duration::ZERO);
    let room = name("room:1");
    let listener = subscriber(&hub, &room);
    hub.publish(&room, "1").unwrap();
    presence.joined(&room, member(5, "bob"), true);
    settle().await;
    hub.publish(&room, "2").unwrap();
    let kinds: Vec<String> = frames(&listener)
        .iter()
        .map(|frame| frame["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["message", "join", "message"]);
}

#[tokio::test(start_paused = true)]
async fn without_join_leave_nobody_hears() {
    let hub = hub();
    let presence = presence(&hub, Duration::ZERO);
    let room = name("room:1");
    let listener = subscriber(&hub, &room);
    presence.joined(&room, member(5, "bob"), false);
    presence.left(&room, 5, false);
    settle().await;
    assert!(frames(&listener).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_refreshed_member_is_listed_with_its_new_info_and_nobody_hears() {
    let hub = hub();
    let presence = presence(&hub, Duration::ZERO);
    let room = name("room:1");
    let listener = subscriber(&hub, &room);
    presence.joined(&room, member(5, "bob"), true);
    settle().await;
    assert_eq!(frames(&listener).len(), 1, "the join");
    let mut renamed = member(5, "bob");
    renamed.info = Some(RawValue::from_string(r#"{"name":"Robert"}"#.to_owned()).unwrap());
    presence.refreshed(&room, renamed);
    // Not a member there: nothing to update, nothing added.
    presence.refreshed(&name("room:2"), member(5, "bob"));
    settle().await;
    assert!(frames(&listener).is_empty(), "no join or leave");
    let page = presence.local_page(&room, None, 10);
    assert_eq!(page.members.len(), 1);
    assert_eq!(
        page.members[0].info.as_deref().map(RawValue::get),
        Some(r#"{"name":"Robert"}"#)
    );
    assert_eq!(presence.local_stats(&name("room:2")).connections, 0);
}

/// Events owed to a write keep one net change per connection, in order: a connection that
/// came and went before anyone was told costs nothing, however often it churned (a Redis
/// outage holds them all), and a failed write's events go back before the later ones.
#[test]
fn owed_events_keep_one_net_change_per_connection_in_order() {
    let conns = |owed: Owed| -> Vec<(Change, ConnId)> {
        owed.into_ordered()
            .into_iter()
            .map(|(change, member)| (change, member.conn_id))
            .collect()
    };
    let mut owed = Owed::default();
    owed.push(Change::Join, Arc::new(member(1, "ada")));
    for _ in 0..1000 {
        owed.push(Change::Join, Arc::new(member(2, "bob")));
        owed.push(Change::Leave, Arc::new(member(2, "bob")));
    }
    owed.push(Change::Leave, Arc::new(member(3, "cy")));
    assert_eq!(owed.changes.len(), 2);
    assert_eq!(conns(owed), [(Change::Join, 1), (Change::Leave, 3)]);

    // Taken for a write that failed: put back before what came meanwhile.
    let mut earlier = Owed::default();
    earlier.push(Change::Join, Arc::new(member(4, "dee")));
    earlier.push(Change::Join, Arc::new(member(5, "eve")));
    let mut current = Owed::default();
    current.push(Change::Join, Arc::new(member(6, "fay")));
    current.push(Change::Leave, Arc::new(member(4, "dee")));
    current.put_back(earlier);
    assert_eq!(conns(current), [(Change::Join, 5), (Change::Join, 6)]);
}

/// A store whose writes wait until the test lets them through, and which records them.
#[derive(Debug)]
struct GatedStore {
    gate: tokio::sync::Semaphore,
    writes: std::sync::Mutex<Vec<PresenceWrite>>,
}

impl PresenceStore for GatedStore {
    fn write(
        &self,
        writes: Vec<PresenceWrite>,
    ) -> crate::cluster::BusFuture<'_, Vec<WriteOutcome>> {
        Box::pin(async move {
            self.gate
                .acquire()
                .await
                .expect("the gate stays open")
                .forget();
            let outcomes = vec![WriteOutcome::Done; writes.len()];
            self.writes.lock().unwrap().extend(writes);
            outcomes
        })
    }

    fn page<'a>(
        &'a self,
        _channel: &'a ChannelName,
        _cursor: Option<&'a str>,
        _limit: usize,
    ) -> crate::cluster::BusFuture<'a, Result<crate::cluster::StoredPage, BusError>> {
        Box::pin(async { Ok(crate::cluster::StoredPage::default()) })
    }

    fn stats<'a>(
        &'a self,
        _channel: &'a ChannelName,
    ) -> crate::cluster::BusFuture<'a, Result<crate::cluster::StoredStats, BusError>> {
        Box::pin(async { Ok(crate::cluster::StoredStats::default()) })
    }

    fn index(
        &self,
        _channels: Vec<ChannelName>,
        _replace: bool,
    ) -> crate::cluster::BusFuture<'_, ()> {
        Box::pin(async {})
    }

    fn departed(&self) -> crate::cluster::BusFuture<'_, Vec<crate::cluster::Departed>> {
        Box::pin(async { Vec::new() })
    }

    fn state_losses(&self) -> u64 {
        0
    }

    fn crossings(&self) -> Vec<crate::cluster::Crossing> {
        Vec::new()
    }
}

/// A token refresh that changes a member's `info` while a write is in flight asks for the
/// channel in full; the write's success must not cancel that (it used to: the member that
/// left meanwhile stayed in the store for good, and the new `info` never reached it).
#[tokio::test]
async fn a_rewrite_asked_for_during_a_write_is_written_in_full() {
    let hub = hub();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(
        hub,
        Arc::from("n1"),
        crate::cluster::NodeInfo::unbound(),
    ));
    let store = Arc::new(GatedStore {
        gate: tokio::sync::Semaphore::new(0),
        writes: std::sync::Mutex::default(),
    });
    let presence = Presence::start(
        PresenceSettings {
            node: Arc::from("n1"),
            coalesce: Duration::ZERO,
            max_listed: 100,
            ttl: Duration::from_secs(30),
            namespaces: crate::auth::Namespaces::default(),
            watch: None,
        },
        bus,
        Some(Arc::clone(&store) as Arc<dyn PresenceStore>),
        &TaskGroup::new(),
        &CancellationToken::new(),
    );
    let room = name("room");
    presence.joined(&room, member(1, "ada"), false);
    presence.joined(&room, member(2, "bob"), false);
    // The first write (both joins) is taken and waits at the gate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.writes.lock().unwrap().is_empty());
    presence.left(&room, 2, false);
    let mut renamed = member(1, "ada");
    renamed.info = Some(RawValue::from_string(r#"{"name":"Ada L."}"#.to_owned()).unwrap());
    presence.refreshed(&room, renamed);
    store.gate.add_permits(10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = store.writes.lock().unwrap();
    assert_eq!(writes.len(), 2, "{writes:?}");
    let second = &writes[1];
    assert!(second.full, "the rewrite runs in full: {second:?}");
    let listed: Vec<u64> = second
        .joins
        .iter()
        .map(|(conn_id, _, _)| *conn_id)
        .collect();
    assert_eq!(listed, [1], "bob left, ada stays");
    assert!(second.joins[0].2.contains("Ada L."), "{second:?}");
}
