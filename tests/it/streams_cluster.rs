//! Message streams across a cluster (docs/streams.md, "Cluster"): the operations go through
//! Redis, whose state answers resume, late joiners and history on every node, and a stream
//! whose node dies is abandoned by another.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    cluster::nodes,
    harness::{
        BinaryNode, SteadyPublisher, TestClient, TestServer, expect_all_acknowledged, patience, seq,
    },
    redis_server::RedisServer,
    stream_ingest::Chunked,
    stream_model::{Model, check_resumes, frames_until_pong, post_ok},
    streams::script,
};

/// `n` nodes of a cluster on `redis` whose appends are not coalesced: a subscriber sees
/// every offset, each one to resume from.
async fn uncoalesced_nodes(redis: &RedisServer, n: usize) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let node = TestServer::builder()
            .redis(&redis.url())
            .configure(|c| c.streams.coalesce = Duration::ZERO)
            .start()
            .await;
        nodes.push(node);
    }
    nodes
}

/// Reads frames until the one at `offset`.
async fn frames_until(client: &mut TestClient, offset: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        let done = frame["offset"] == offset;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// The backend's script runs through node A while a watcher follows on node B; then a
/// client resumes from every offset the watcher saw, on B (which followed the channel) and
/// on C (which never held it, so Redis answers): each ends with exactly the watcher's
/// messages, each changed message replayed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_any_offset_is_exact_on_every_node_of_a_cluster() {
    let redis = RedisServer::start(false);
    // Appends not coalesced: the watcher sees every offset, each one to resume from.
    let nodes = uncoalesced_nodes(&redis, 3).await;
    let mut watcher = nodes[1].client().await;
    let start = watcher.subscribe("chat:c").await["offset"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = script(&nodes[0], "chat:c").await;
    let frames = frames_until(&mut watcher, &last).await;
    let mut model = Model::default();
    let mut states = vec![(start, model.clone())];
    for frame in &frames {
        model.apply(frame);
        states.push((frame["offset"].as_str().unwrap().to_owned(), model.clone()));
    }
    assert_eq!(
        model.messages["r1"],
        (
            "finished".into(),
            Some("rewritten".into()),
            json!({"role":"assistant","done":true})
        )
    );
    assert_eq!(model.messages["r2"].0, "deleted");
    assert!(states.len() >= 60, "{} offsets", states.len());
    for node in &nodes[1..] {
        let mut resumer = node.client().await;
        check_resumes(&mut resumer, "chat:c", &states, &model).await;
    }
    // History on a node that holds nothing: one entry per message, as it stands.
    let (status, history) = nodes[2].get_json("/v1/channels/chat:c/history").await;
    assert_eq!(status, 200, "{history}");
    let entries = history["messages"].as_array().unwrap();
    let r1 = entries
        .iter()
        .find(|entry| entry["message_id"] == "r1")
        .expect("r1 in history");
    assert_eq!(r1["text"], "rewritten");
    assert_eq!(r1["status"], "finished");
    for node in nodes {
        node.stop().await;
    }
}

/// One long reply (400 appends, and an edit of an earlier message halfway) through node
/// A: a client resumes from 100 offsets drawn at random inside it, on node B (which followed
/// the channel) and on node C (which never held it); the rebuilt text equals the watcher's
/// every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_100_random_offsets_inside_a_long_stream_is_exact_on_both_nodes() {
    use rand::{Rng as _, SeedableRng as _};
    let redis = RedisServer::start(false);
    let nodes = uncoalesced_nodes(&redis, 3).await;
    let mut watcher = nodes[1].client().await;
    watcher.subscribe("chat:long").await;
    post_ok(
        &nodes[0],
        "/v1/publish",
        json!({"channel":"chat:long","message_id":"q","data":{"text":"question"}}),
    )
    .await;
    post_ok(
        &nodes[0],
        "/v1/publish",
        json!({"channel":"chat:long","message_id":"a","stream":true,"data":{"role":"assistant"}}),
    )
    .await;
    let mut last = String::new();
    for n in 0..400 {
        if n == 200 {
            post_ok(
                &nodes[0],
                "/v1/update",
                json!({"channel":"chat:long","message_id":"q","data":{"text":"question (edited)"}}),
            )
            .await;
        }
        last = post_ok(
            &nodes[0],
            "/v1/append",
            json!({"channel":"chat:long","message_id":"a","text": format!("t{n} ")}),
        )
        .await["offset"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let frames = frames_until(&mut watcher, &last).await;
    let mut model = Model::default();
    let mut states = Vec::new();
    for frame in &frames {
        model.apply(frame);
        states.push((frame["offset"].as_str().unwrap().to_owned(), model.clone()));
    }
    let expected: String = (0..400).map(|n| format!("t{n} ")).collect();
    assert_eq!(model.messages["a"].1.as_deref(), Some(expected.as_str()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(28);
    let picked: Vec<(String, Model)> = (0..100)
        .map(|_| states[rng.random_range(0..states.len())].clone())
        .collect();
    for node in &nodes[1..] {
        let mut resumer = node.client().await;
        check_resumes(&mut resumer, "chat:long", &picked, &model).await;
    }
    for node in nodes {
        node.stop().await;
    }
}

/// A second tab opened mid-reply on another node gets the open stream whole from Redis,
/// and the appends that follow apply to it; a retried publish on any node is answered
/// with the first offset, and the `edit` rule holds across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_on_another_node_gets_the_open_stream_whole() {
    let redis = RedisServer::start(false);
    let nodes = nodes(&redis, 2).await;
    let open = json!({"channel":"chat:j","message_id":"a1","stream":true,"data":{"model":"m"}});
    let first = post_ok(&nodes[0], "/v1/publish", open.clone()).await;
    let again = post_ok(&nodes[1], "/v1/publish", open).await;
    assert_eq!(again["offset"], first["offset"]);
    assert_eq!(again["duplicate"], true, "{again}");
    for n in 0..300 {
        post_ok(
            &nodes[0],
            "/v1/append",
            json!({"channel":"chat:j","message_id":"a1","text": format!("{n},")}),
        )
        .await;
    }
    let expected: String = (0..300).map(|n| format!("{n},")).collect();
    let mut late = nodes[1].client().await;
    late.subscribe("chat:j").await;
    let whole = late.recv().await;
    assert_eq!(
        (whole["type"].clone(), whole["status"].clone()),
        (json!("message"), json!("open")),
        "{whole}"
    );
    assert_eq!(whole["text"], expected);
    assert_eq!(whole["data"], json!({"model":"m"}));
    let append = post_ok(
        &nodes[0],
        "/v1/append",
        json!({"channel":"chat:j","message_id":"a1","text":"more"}),
    )
    .await;
    let frame = late.recv_type("append").await;
    assert_eq!(frame["text"], "more");
    assert_eq!(frame["offset"], append["offset"]);
    // A second tab on the node that holds the channel now: whole as well.
    let mut second = nodes[1].client().await;
    second.subscribe("chat:j").await;
    let whole = second.recv().await;
    assert_eq!(whole["text"], format!("{expected}more"), "{whole}");
    // Refused by Redis's state, on the other node: the text bound, and a finished stream.
    let finish = post_ok(
        &nodes[1],
        "/v1/finish",
        json!({"channel":"chat:j","message_id":"a1"}),
    )
    .await;
    assert_eq!(seq(&finish["offset"]), seq(&append["offset"]) + 1);
    let (status, refused) = nodes[0]
        .post(
            "/v1/append",
            json!({"channel":"chat:j","message_id":"a1","text":"late"}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (409, json!("conflict"))
    );
    let (status, _) = nodes[0]
        .post(
            "/v1/append",
            json!({"channel":"chat:j","message_id":"nope","text":"x"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(late.recv_type("finish").await["offset"], finish["offset"]);
    for node in nodes {
        node.stop().await;
    }
}

/// A client's view of one channel from its `subscribed` reply on, as a client keeps it:
/// a change (`append`, `finish`, ...) at or before its position is one a client drops, so
/// the server must never send one; a message frame before it may come (an open stream's
/// state).
struct Tab {
    client: TestClient,
    position: u64,
    model: Model,
}

impl Tab {
    async fn open(node: &TestServer, channel: &str) -> Self {
        let mut client = node.client().await;
        let reply = client.subscribe(channel).await;
        Self {
            client,
            position: seq(&reply["offset"]),
            model: Model::default(),
        }
    }

    /// Applies frames until the one of type `until`.
    async fn follow_until(&mut self, until: &str) {
        loop {
            let frame = self.client.recv().await;
            let kind = frame["type"].as_str().unwrap_or("").to_owned();
            if kind != "message" && frame.get("offset").is_some() {
                assert!(
                    seq(&frame["offset"]) > self.position,
                    "a change at or before the position {} a client drops: {frame}",
                    self.position
                );
            }
            if frame.get("offset").is_some() {
                self.position = self.position.max(seq(&frame["offset"]));
            }
            self.model.apply(&frame);
            if kind == until {
                return;
            }
        }
    }
}

/// Tabs opened one after another on node B while a reply streams through node A, the
/// stream older than B's interest in the channel (so each tab's subscribe reads Redis while
/// appends keep arriving): every tab gets the stream whole and ends with the exact text,
/// and never gets a change it would drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_opened_mid_reply_on_a_following_node_end_with_the_exact_text() {
    let redis = RedisServer::start(false);
    let nodes = uncoalesced_nodes(&redis, 2).await;
    let channel = "chat:tabs";
    post_ok(
        &nodes[0],
        "/v1/publish",
        json!({"channel": channel,"message_id":"r","stream":true,"data":{}}),
    )
    .await;
    post_ok(
        &nodes[0],
        "/v1/append",
        json!({"channel": channel,"message_id":"r","text":"start "}),
    )
    .await;
    let writer = {
        let url = nodes[0].control_url("/v1/append");
        let finish = nodes[0].control_url("/v1/finish");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..400 {
                let body = json!({"channel":"chat:tabs","message_id":"r","text": format!("{n} ")});
                let answer = http.post(&url).json(&body).send().await.unwrap();
                assert_eq!(answer.status(), 200);
            }
            let body = json!({"channel":"chat:tabs","message_id":"r"});
            let answer = http.post(&finish).json(&body).send().await.unwrap();
            assert_eq!(answer.status(), 200);
        })
    };
    let mut tabs = Vec::new();
    for _ in 0..12 {
        tabs.push(Tab::open(&nodes[1], channel).await);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    writer.await.unwrap();
    let expected: String = std::iter::once("start ".to_owned())
        .chain((0..400).map(|n| format!("{n} ")))
        .collect();
    for (index, tab) in tabs.iter_mut().enumerate() {
        tab.follow_until("finish").await;
        let (status, text, _) = &tab.model.messages["r"];
        assert_eq!(status, "finished", "tab {index}");
        assert_eq!(text.as_deref(), Some(expected.as_str()), "tab {index}");
    }
    for node in nodes {
        node.stop().await;
    }
}

/// A resume node B cannot recover (an offset of another epoch) goes on from now with the
/// open stream whole, as on one node; and history pages through messages changed out of
/// order (two streams finished after a later plain message) without an empty page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecoverable_resume_gets_open_streams_whole_and_history_pages_never_stall() {
    let redis = RedisServer::start(false);
    let nodes = nodes(&redis, 2).await;
    let publish = |body: Value| post_ok(&nodes[0], "/v1/publish", body);
    let first = publish(json!({"channel":"chat:u","data":"p"})).await;
    publish(json!({"channel":"chat:u","message_id":"a","stream":true,"data":{}})).await;
    publish(json!({"channel":"chat:u","message_id":"b","stream":true,"data":{}})).await;
    post_ok(
        &nodes[0],
        "/v1/append",
        json!({"channel":"chat:u","message_id":"a","text":"aa"}),
    )
    .await;
    publish(json!({"channel":"chat:u","data":"c"})).await;
    let mut resumer = nodes[1].client().await;
    let reply = resumer
        .subscribe_since("chat:u", "00000000000000ab-3")
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let mut model = Model::default();
    model.apply(&resumer.recv().await);
    model.apply(&resumer.recv().await);
    assert_eq!(
        model
            .contents()
            .iter()
            .map(|(id, (status, text, _))| (id.as_str(), status.as_str(), text.as_deref()))
            .collect::<Vec<_>>(),
        [("a", "open", Some("aa")), ("b", "open", Some(""))],
    );
    let append = post_ok(
        &nodes[0],
        "/v1/append",
        json!({"channel":"chat:u","message_id":"a","text":"!"}),
    )
    .await;
    let frame = resumer.recv_type("append").await;
    assert_eq!(frame["offset"], append["offset"]);
    assert!(seq(&frame["offset"]) > seq(&reply["offset"]));
    for id in ["a", "b"] {
        post_ok(
            &nodes[0],
            "/v1/finish",
            json!({"channel":"chat:u","message_id":id}),
        )
        .await;
    }
    // Pages of 2 after the first message: the plain `c` comes first (changed first), then
    // `a` and `b`, each once, and no page is empty before the end.
    let mut since = first["offset"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (status, page) = nodes[1]
            .get_json(&format!(
                "/v1/channels/chat:u/history?since={since}&limit=2"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["recovered"], true, "{page}");
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        for message in &messages {
            seen.push(message["message_id"].as_str().map_or_else(
                || message["data"].as_str().unwrap().to_owned(),
                str::to_owned,
            ));
        }
        let last = messages.last().unwrap();
        since = last
            .get("updated")
            .unwrap_or(&last["offset"])
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert_eq!(seen, ["c", "a", "b"]);
    for node in nodes {
        node.stop().await;
    }
}

/// The node a stream is written through is killed (-9) mid-stream: every acknowledged
/// append stays readable on the other node, and that node's sweep abandons the stream once
/// it is idle for `streams.idle_timeout`; its subscribers get the `abandon` frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_node_is_killed_is_abandoned_by_another_and_loses_nothing() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    let env = [
        ("SWITCHBOARD_CLUSTER__REDIS", url.as_str()),
        ("SWITCHBOARD_STREAMS__IDLE_TIMEOUT", "2s"),
        // As the test servers' (see `TestServerBuilder::redis`).
        ("SWITCHBOARD_CLUSTER__PARTITIONS", "4"),
    ];
    let doomed = BinaryNode::start(&[], &env).await;
    let survivor = TestServer::builder()
        .redis(&url)
        .configure(|c| c.streams.idle_timeout = Duration::from_secs(2))
        .start()
        .await;
    let mut viewer = survivor.client().await;
    viewer.subscribe("chat:k").await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let url = format!("http://{}{path}", doomed.control_addr);
        let request = http.post(url).json(&body).send();
        async move {
            let response = request.await.expect("the doomed node answers");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    post(
        "/v1/publish",
        json!({"channel":"chat:k","message_id":"s","stream":true,"data":null}),
    )
    .await;
    let mut text = String::new();
    let mut last = Value::Null;
    for n in 0..50 {
        let token = format!("t{n} ");
        text.push_str(&token);
        last = post(
            "/v1/append",
            json!({"channel":"chat:k","message_id":"s","text": token}),
        )
        .await["offset"]
            .clone();
    }
    // SIGKILL: no drain, no goodbye.
    let _ = doomed.log().await;
    let mut model = Model::default();
    loop {
        let frame = viewer.recv_within(patience(Duration::from_secs(10))).await;
        model.apply(&frame);
        if frame["type"] == "abandon" {
            assert_eq!(frame["reason"], "idle");
            assert_eq!(seq(&frame["offset"]), seq(&last) + 1);
            break;
        }
    }
    assert_eq!(model.messages["s"].0, "abandoned");
    assert_eq!(model.messages["s"].1.as_deref(), Some(text.as_str()));
    let (_, history) = survivor.get_json("/v1/channels/chat:k/history").await;
    let entry = &history["messages"][0];
    assert_eq!(
        (entry["status"].clone(), entry["text"].clone()),
        (json!("abandoned"), json!(text)),
        "{history}"
    );
    survivor.stop().await;
}

/// A streaming ingest into node A breaks off: the stream is abandoned (`reason: ingest`)
/// through Redis at once, not after `streams.idle_timeout`, and a viewer on node B sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_off_ingest_on_one_node_is_abandoned_for_every_node() {
    let redis = RedisServer::start(false);
    let nodes = nodes(&redis, 2).await;
    let mut viewer = nodes[1].client().await;
    viewer.subscribe("chat:i").await;
    let mut ingest = Chunked::open(&nodes[0], "channel=chat:i&message_id=cut", &[]).await;
    ingest.send(b"{\"text\":\"half a rep\"}\n").await;
    assert_eq!(viewer.recv_type("append").await["text"], "half a rep");
    drop(ingest);
    let abandon = viewer.recv_type("abandon").await;
    assert_eq!(
        (abandon["message_id"].clone(), abandon["reason"].clone()),
        (json!("cut"), json!("ingest"))
    );
    // The backend retries the reply whole with `update`, as docs/streams.md says.
    post_ok(
        &nodes[0],
        "/v1/update",
        json!({"channel":"chat:i","message_id":"cut","text":"a whole reply"}),
    )
    .await;
    assert_eq!(viewer.recv_type("update").await["text"], "a whole reply");
    for node in nodes {
        node.stop().await;
    }
}

/// History trimmed in Redis (`history.size = 3`) raises the floor past what it drops: a
/// resume from before a change to a dropped message is not recovered, one from after it
/// is; a channel of plain messages only keeps its cheaper trim with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_trimmed_in_redis_answers_resumes_honestly() {
    let redis = RedisServer::start(false);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let node = TestServer::builder()
            .redis(&redis.url())
            .configure(|c| c.history.size = 3)
            .start()
            .await;
        nodes.push(node);
    }
    let first = post_ok(
        &nodes[0],
        "/v1/publish",
        json!({"channel":"chat:t","message_id":"m1","data":1}),
    )
    .await["offset"]
        .as_str()
        .unwrap()
        .to_owned();
    let epoch = first.split('-').next().unwrap().to_owned();
    let at = |seq: u64| format!("{epoch}-{seq}");
    nodes[0].publish("chat:t", json!("p2")).await;
    nodes[0].publish("chat:t", json!("p3")).await;
    post_ok(
        &nodes[0],
        "/v1/update",
        json!({"channel":"chat:t","message_id":"m1","data":"edited"}),
    )
    .await;
    // Drops m1 (published at 1, last changed at 4): the floor is 4.
    nodes[0].publish("chat:t", json!("p5")).await;
    let mut resumer = nodes[1].client().await;
    for (since, recovered, replayed) in [(3, false, vec![]), (4, true, vec![5]), (5, true, vec![])]
    {
        let reply = resumer.subscribe_since("chat:t", &at(since)).await;
        assert_eq!(reply["recovered"], recovered, "from {since}: {reply}");
        let frames = frames_until_pong(&mut resumer).await;
        let seqs: Vec<u64> = frames.iter().map(|frame| seq(&frame["offset"])).collect();
        assert_eq!(seqs, replayed, "from {since}");
        resumer
            .send(json!({"type":"unsubscribe","id":2,"channel":"chat:t"}))
            .await;
        assert_eq!(resumer.recv().await["type"], "unsubscribed");
    }
    // Plain messages only: 1..5 published, 3..5 kept.
    for n in 1..=5 {
        nodes[0].publish("chat:p", json!(n)).await;
    }
    let epoch = nodes[0].get_json("/v1/channels/chat:p/history").await.1["offset"]
        .as_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    for (since, recovered, replayed) in [(1, false, vec![]), (2, true, vec![3, 4, 5])] {
        let reply = resumer
            .subscribe_since("chat:p", &format!("{epoch}-{since}"))
            .await;
        assert_eq!(reply["recovered"], recovered, "from {since}: {reply}");
        let frames = frames_until_pong(&mut resumer).await;
        let seqs: Vec<u64> = frames.iter().map(|frame| seq(&frame["offset"])).collect();
        assert_eq!(seqs, replayed, "from {since}");
        resumer
            .send(json!({"type":"unsubscribe","id":2,"channel":"chat:p"}))
            .await;
        assert_eq!(resumer.recv().await["type"], "unsubscribed");
    }
    for node in nodes {
        node.stop().await;
    }
}

/// The bounds, checked by Redis, refuse cleanly from any node while a bystander on another
/// channel keeps its full rate; under the `edit` rule `own` a connection on another node is
/// another owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_and_the_edit_rule_hold_across_nodes_with_a_bystander_at_full_rate() {
    use switchboard::config::{EditRule, NamespaceConfig, Rule};
    let redis = RedisServer::start(false);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let node = TestServer::builder()
            .redis(&redis.url())
            .configure(|c| {
                c.streams.max_text_bytes = 1000;
                c.streams.max_open_per_channel = 2;
                let namespace = |pattern: &str| NamespaceConfig {
                    pattern: pattern.to_owned(),
                    subscribe: Rule::Anonymous,
                    publish: Rule::Anonymous,
                    history: Rule::Anonymous,
                    presence: Rule::None,
                    join_leave: false,
                    edit: EditRule::Own,
                    history_size: None,
                    history_ttl: None,
                    slow_consumer: switchboard::config::SlowConsumer::Disconnect,
                    conflate_key: None,
                    queue_bytes: None,
                };
                c.namespaces = vec![namespace("own:*"), namespace("*")];
            })
            .start()
            .await;
        nodes.push(node);
    }
    let mut bystander = nodes[1].client().await;
    bystander.subscribe("news").await;
    let steady = SteadyPublisher::start(&nodes[0], "news");
    let open = |id: &str| json!({"channel":"chat:b","message_id": id,"stream":true,"data":null});
    post_ok(&nodes[0], "/v1/publish", open("s1")).await;
    post_ok(&nodes[1], "/v1/publish", open("s2")).await;
    let (status, refused) = nodes[1].post("/v1/publish", open("s3")).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (422, json!("limit_exceeded")),
        "{refused}"
    );
    let big = "x".repeat(600);
    let append = json!({"channel":"chat:b","message_id":"s1","text": big});
    post_ok(&nodes[0], "/v1/append", append.clone()).await;
    for n in 0..50 {
        let (status, refused) = nodes[n % 2].post("/v1/append", append.clone()).await;
        assert_eq!(
            (status, refused["error"]["code"].clone()),
            (413, json!("limit_exceeded"))
        );
    }
    let (_, history) = nodes[1].get_json("/v1/channels/chat:b/history").await;
    assert_eq!(history["messages"][0]["text"], big, "nothing half-applied");
    let mut alice = nodes[0].client().await;
    let mut bob = nodes[1].client().await;
    alice
        .send(json!({"type":"publish","id":1,"channel":"own:1","message_id":"m","stream":true,"data":{}}))
        .await;
    assert_eq!(alice.recv_type("published").await["id"], 1);
    let append = json!({"type":"append","id":2,"channel":"own:1","message_id":"m","text":"t"});
    bob.send(append.clone()).await;
    let reply = bob.recv().await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    alice.send(append).await;
    assert_eq!(alice.recv_type("published").await["id"], 2);
    let (acked, refused, slowest) = steady.finish().await;
    assert_eq!(refused, 0);
    assert!(
        slowest < patience(Duration::from_millis(500)),
        "{slowest:?}"
    );
    expect_all_acknowledged(&mut bystander, &acked).await;
    for node in nodes {
        node.stop().await;
    }
}

/// Redis paused mid-stream: an append answers 503 (and may still run when Redis wakes), once
/// it is back the stream goes on, and an update sets the text the backend meant. Redis restarted empty: the state is gone,
/// an append answers 404; the backend opens the reply again under the same id and sets
/// its whole text, and the viewer, told by `reset` that its offsets name nothing, ends with
/// the whole text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_redis_pause_and_recovers_from_a_redis_restart() {
    let mut redis = RedisServer::start(false);
    let nodes = nodes(&redis, 2).await;
    let mut viewer = nodes[1].client().await;
    viewer.subscribe("chat:f").await;
    let open = json!({"channel":"chat:f","message_id":"r","stream":true,"data":null});
    post_ok(&nodes[0], "/v1/publish", open.clone()).await;
    let append = |text: &str| json!({"channel":"chat:f","message_id":"r","text": text});
    let mut acked = String::new();
    for token in ["a", "b"] {
        post_ok(&nodes[0], "/v1/append", append(token)).await;
        acked.push_str(token);
    }
    redis.pause();
    let (status, _) = nodes[0].post("/v1/append", append("?")).await;
    assert_eq!(status, 503, "Redis does not answer");
    redis.resume();
    crate::assert_eventually!(
        nodes[0].post("/v1/append", append("c")).await.0 == 200,
        "appends go on once Redis is back"
    );
    acked.push('c');
    // The append that timed out may have run once Redis woke (docs/streams.md): the
    // backend sets the text it meant, and every view agrees.
    post_ok(
        &nodes[0],
        "/v1/update",
        json!({"channel":"chat:f","message_id":"r","text": acked}),
    )
    .await;
    let mut model = Model::default();
    while model.messages.get("r").and_then(|m| m.1.clone()) != Some(acked.clone()) {
        model.apply(&viewer.recv().await);
    }
    let (_, history) = nodes[1].get_json("/v1/channels/chat:f/history").await;
    assert_eq!(history["messages"][0]["text"], acked);
    redis.stop();
    redis.start_again(false);
    crate::assert_eventually!(
        nodes[0].post("/v1/append", append("d")).await.0 == 404,
        "Redis lost the stream: not found"
    );
    post_ok(&nodes[0], "/v1/publish", open).await;
    post_ok(
        &nodes[0],
        "/v1/update",
        json!({"channel":"chat:f","message_id":"r","text":"abcd"}),
    )
    .await;
    let reset = viewer.recv_type("reset").await;
    assert_eq!(reset["channel"], "chat:f");
    let mut model = Model::default();
    while model.messages.get("r").and_then(|m| m.1.clone()).as_deref() != Some("abcd") {
        model.apply(&viewer.recv().await);
    }
    for node in nodes {
        node.stop().await;
    }
}
