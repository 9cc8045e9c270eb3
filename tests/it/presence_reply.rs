//! A `presence` reply over the WebSocket is cut to the reply budget from one read of the
//! members (it read them again, with half the limit, until the reply fit: several full reads
//! of a large room per request).

use serde_json::json;

use crate::presence::{answer, builder, member};

/// 300 members of about 110 bytes each do not fit a 16 KiB reply: the reply holds as many as
/// fit (149; halving the read's limit from 1,000 until it fit gave 125) and says
/// `truncated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_room_is_cut_to_the_reply_budget() {
    let server = builder()
        // A quarter of 64 KiB: 16 KiB per reply.
        .configure(|c| {
            c.limits.outbound_queue_bytes = 64 << 10;
            c.limits.max_publish_payload_bytes = 16 << 10;
        })
        .start()
        .await;
    let mut members = Vec::new();
    for n in 0..300 {
        let mut client = member(&server, &format!("user-{n:03}"), "A name of some length").await;
        client.subscribe("room:big").await;
        members.push(client);
    }
    let reply = answer(
        &mut members[0],
        json!({"type": "presence", "id": 9, "channel": "room:big"}),
    )
    .await;
    let listed = reply["members"].as_array().unwrap().len();
    assert_eq!(reply["truncated"], true, "{listed} listed");
    assert!(
        reply.to_string().len() <= 16 << 10,
        "{} bytes",
        reply.to_string().len()
    );
    eprintln!(
        "{listed} of 300 members in {} bytes",
        reply.to_string().len()
    );
    let member_bytes = reply["members"][0].to_string().len() + 1;
    assert!(
        listed * member_bytes >= 15 << 10,
        "the reply is filled, not halved away: {listed} of {member_bytes} bytes listed"
    );
    server.stop().await;
}
