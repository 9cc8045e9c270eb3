use std::time::Duration;

use crate::harness::{TestClient, TestServer, patience};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_disconnect_does_not_stall_accepting() {
    const CLIENTS: usize = 2_000;
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut clients = Vec::with_capacity(CLIENTS);
    for chunk in 0..CLIENTS / 100 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut client = TestClient::connect(&url).await;
                    client.subscribe(&format!("room-{}", chunk % 10)).await;
                    client
                })
            })
            .collect();
        for handle in batch {
            clients.push(handle.await.unwrap());
        }
    }
    assert_eq!(server.hub().connections(), CLIENTS);
    // Everyone drops at once; a newcomer must still get in quickly.
    drop(clients);
    let started = tokio::time::Instant::now();
    let mut newcomer = TestClient::connect(&url).await;
    newcomer.subscribe("room-1").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < patience(Duration::from_secs(1)),
        "newcomer waited {elapsed:?}"
    );
    crate::assert_eventually!(server.hub().connections() == 1, "cleanup finished");
    let (_, stats) = server.get_json("/v1/stats").await;
    assert_eq!(stats["subscriptions"], 1, "{stats}");
    server.stop().await;
}
