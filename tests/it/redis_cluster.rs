//! The core cluster behaviour against a real three-master Redis Cluster.

use serde_json::json;

use crate::{
    harness::{TestServer, seq},
    redis_server::RedisCluster,
};

async fn node(cluster: &RedisCluster) -> TestServer {
    TestServer::builder()
        .configure(|c| {
            c.cluster.redis = switchboard::config::RedisTarget::ClusterSeeds(cluster.seeds());
            c.cluster.partitions = 6;
            c.cluster.publish_timeout = std::time::Duration::from_secs(1);
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_carries_order_resume_and_registry() {
    let cluster = RedisCluster::start();
    let a = node(&cluster).await;
    let b = node(&cluster).await;
    // Channels spread over partitions, and so over the three masters.
    let channels = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut subscriber = b.client().await;
    for channel in channels {
        subscriber.subscribe(channel).await;
    }
    for n in 0..10 {
        for channel in channels {
            a.publish(channel, json!(n)).await;
        }
    }
    let mut next = std::collections::HashMap::new();
    for _ in 0..10 * channels.len() {
        let message = subscriber.recv_type("message").await;
        let channel = message["channel"].as_str().unwrap().to_owned();
        let expected = next.entry(channel).or_insert(1);
        assert_eq!(seq(&message["offset"]), *expected, "per-channel order");
        *expected += 1;
    }
    assert!(next.values().all(|n| *n == 11));

    // Resume on the other node.
    let (_, history) = b.get_json("/v1/channels/alpha/history?limit=10").await;
    let fifth = history["messages"][4]["offset"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut client = a.client().await;
    let reply = client.subscribe_since("alpha", &fifth).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for expected in 6..=10 {
        assert_eq!(seq(&client.recv_type("message").await["offset"]), expected);
    }
    crate::assert_eventually!(
        a.get_json("/v1/nodes").await.1["nodes"]
            .as_array()
            .map(Vec::len)
            == Some(2),
        "both nodes registered"
    );
    a.stop().await;
    b.stop().await;
}

/// Two nodes, a subscriber on one, a steady publisher on the other, and `fault` applied to
/// the cluster meanwhile: every acknowledged message must arrive once, in order. Returns
/// how many publishes were refused.
async fn fault_case(fault: impl AsyncFnOnce(&RedisCluster)) -> usize {
    let cluster = RedisCluster::start();
    let a = node(&cluster).await;
    let b = node(&cluster).await;
    let mut on_b = b.client().await;
    on_b.subscribe("steady").await;
    let publisher = crate::harness::SteadyPublisher::start(&a, "steady");
    publisher.wait_acked(10).await;
    fault(&cluster).await;
    // Publishing goes on after the fault.
    publisher.wait_acked(20).await;
    let (acked, refused, slowest) = publisher.finish().await;
    assert!(
        slowest < std::time::Duration::from_secs(3),
        "slowest answer {slowest:?}"
    );
    crate::harness::expect_all_acknowledged(&mut on_b, &acked).await;
    a.stop().await;
    b.stop().await;
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_connections_killed_on_every_master_lose_nothing() {
    fault_case(async |cluster: &RedisCluster| {
        for master in &cluster.masters {
            master.kill_clients();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_cluster_master_loses_no_acknowledged_message() {
    let refused = fault_case(async |cluster: &RedisCluster| {
        // Every master in turn, so the channel's own master is among them.
        for master in &cluster.masters {
            master.pause();
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            master.resume();
        }
    })
    .await;
    assert!(
        refused > 0,
        "the channel's master was paused past the publish timeout"
    );
}

/// The same cluster over TLS (`rediss://` seeds, `tls-cluster yes`, a private CA through
/// `cluster.redis_ca_file`): messages cross nodes through every master, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_over_tls_carries_messages_between_nodes() {
    let cluster = RedisCluster::start_tls();
    let tls = cluster.tls.as_ref().unwrap();
    let ca_file =
        std::env::temp_dir().join(format!("sb-cluster-ca-{}.pem", cluster.masters[0].port));
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let node = || {
        TestServer::builder()
            .configure(|c| {
                c.cluster.redis =
                    switchboard::config::RedisTarget::ClusterSeeds(cluster.tls_seeds());
                c.cluster.redis_ca_file = ca_file.display().to_string();
                c.cluster.partitions = 6;
                c.cluster.publish_timeout = std::time::Duration::from_secs(1);
            })
            .start()
    };
    let (a, b) = (node().await, node().await);
    let channels = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut subscriber = b.client().await;
    for channel in channels {
        subscriber.subscribe(channel).await;
    }
    for n in 0..3 {
        for channel in channels {
            a.publish(channel, json!(n)).await;
        }
    }
    let mut next = std::collections::HashMap::new();
    for _ in 0..3 * channels.len() {
        let message = subscriber.recv_type("message").await;
        let channel = message["channel"].as_str().unwrap().to_owned();
        let expected = next.entry(channel).or_insert(1);
        assert_eq!(seq(&message["offset"]), *expected, "per-channel order");
        *expected += 1;
    }
    assert!(next.values().all(|n| *n == 4));
    a.stop().await;
    b.stop().await;
    std::fs::remove_file(ca_file).unwrap();
}

/// Message streams over a three-master Redis Cluster: every key a stream operation touches
/// (including those its script names itself: the message's state and text, the
/// partition's open set, the inboxes) sits in its partition's slot, on channels spread over
/// every master; a late joiner on the other node gets each open stream whole, a resume
/// from inside it is exact, and history gives one entry per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_carries_message_streams() {
    let cluster = RedisCluster::start();
    let a = node(&cluster).await;
    let b = node(&cluster).await;
    let channels = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut watcher = b.client().await;
    for channel in channels {
        watcher.subscribe(channel).await;
    }
    for channel in channels {
        let (status, _) = a
            .post(
                "/v1/publish",
                json!({"channel": channel, "message_id": "r", "stream": true, "data": {}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let mut middle = std::collections::HashMap::new();
    for n in 0..20 {
        for channel in channels {
            let (status, answer) = a
                .post(
                    "/v1/append",
                    json!({"channel": channel, "message_id": "r", "text": format!("{n},")}),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
            if n == 9 {
                middle.insert(channel, answer["offset"].as_str().unwrap().to_owned());
            }
        }
    }
    let expected: String = (0..20).map(|n| format!("{n},")).collect();
    let tail: String = (10..20).map(|n| format!("{n},")).collect();
    // The watcher saw every append (coalesced, in order): each text is whole.
    let mut texts: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    while texts.values().filter(|text| **text == expected).count() < channels.len() {
        let frame = watcher.recv().await;
        if frame["type"] == "append" {
            texts
                .entry(frame["channel"].as_str().unwrap().to_owned())
                .or_default()
                .push_str(frame["text"].as_str().unwrap());
        }
    }
    let mut late = b.client().await;
    for channel in channels {
        late.subscribe(channel).await;
        let whole = late.recv().await;
        assert_eq!(whole["text"], expected, "{channel}: {whole}");
        let mut resumer = a.client().await;
        let reply = resumer.subscribe_since(channel, &middle[channel]).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let state = resumer.recv().await;
        assert_eq!(
            (state["message_id"].clone(), state["text"].clone()),
            (json!("r"), json!(expected)),
            "{channel}: the changed message whole, once ({tail} after the offset)"
        );
        let (_, history) = a.get_json(&format!("/v1/channels/{channel}/history")).await;
        assert_eq!(history["messages"].as_array().unwrap().len(), 1);
        assert_eq!(history["messages"][0]["text"], expected);
    }
}
