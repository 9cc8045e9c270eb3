//! A node whose event loop lags past `limits.max_event_loop_lag` refuses new upgrades (503
//! `overloaded`, `Retry-After: 2`) and reports `overloaded` on `/readyz`, while its
//! connections go on; it accepts again once it has caught up. The node runs in this process
//! on a runtime of its own with one worker, which a task keeps busy in 400 ms stretches (a
//! node starved of CPU, or handed more work than it can do).

use std::time::Duration;

use serde_json::json;

use crate::{
    busy_node::{StallableNode, block_worker},
    harness::{TestClient, TestServer},
};

/// Upgrades to `server`: `Ok` when accepted, else the refusal's status, `Retry-After` and
/// body.
async fn upgrade(server: &TestServer) -> Result<(), (u16, String, String)> {
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            Err((response.status().as_u16(), retry_after, body))
        }
        Err(other) => panic!("the upgrade failed otherwise: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_refuses_upgrades_and_serves_its_connections() {
    let node = StallableNode::start(TestServer::builder().configure(|config| {
        config.limits.max_event_loop_lag = Duration::from_millis(200);
    }))
    .await;
    let server = &node.server;
    let mut bystander = server.client().await;
    bystander.subscribe("news").await;
    assert_eq!(
        upgrade(server).await,
        Ok(()),
        "accepted while the node keeps up"
    );

    // The node's only worker busy 400 ms at a time for about 6 s.
    let busy = node.runtime.spawn(async {
        for _ in 0..15 {
            block_worker(Duration::from_millis(400));
            tokio::task::yield_now().await;
        }
    });
    crate::assert_eventually!(
        server.get("/readyz").await.1.contains("overloaded"),
        "the lagging node reports overloaded"
    );
    let refused = upgrade(server).await;
    let Err((status, retry_after, body)) = refused else {
        panic!("an upgrade to the lagging node was accepted");
    };
    assert_eq!((status, retry_after.as_str()), (503, "2"), "{body}");
    assert!(body.contains("behind on its work"), "{body}");
    // The connection it has is served meanwhile.
    server.publish("news", json!({"n": 1})).await;
    let message = bystander.recv_type("message").await;
    assert_eq!(message["data"]["n"], 1);
    assert!(
        server
            .metric("switchboard_connections_rejected_total{reason=\"overloaded\"}")
            .await
            >= 1.0
    );
    assert!(server.metric("switchboard_event_loop_lag_seconds").await > 0.0);

    busy.await.unwrap();
    crate::assert_eventually!(
        upgrade(server).await.is_ok(),
        "accepted again once the node caught up"
    );
    assert_eq!(server.get("/readyz").await.0, 200);
    let mut after = TestClient::connect(&server.ws_url()).await;
    after.subscribe("news").await;

    drop((bystander, after));
    node.stop().await;
}
