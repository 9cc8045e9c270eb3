//! Message streams (docs/streams.md): ids and deduplication, appends, finishes, edits and
//! deletes, and what resume, late joiners and history make of them, over real sockets.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, seq},
    stream_model::{Model, check_resumes, frames_until_pong, post_ok},
};

/// A backend's script: two streams (one edited after it finished, one abandoned by a
/// delete), plain messages and a message with an id between them. Returns the offset of
/// its last operation.
pub(crate) async fn script(server: &TestServer, channel: &str) -> String {
    let publish = |id: &str, stream: bool, data: Value| json!({"channel": channel, "message_id": id, "stream": stream, "data": data});
    post_ok(
        server,
        "/v1/publish",
        publish("r1", true, json!({"role":"assistant"})),
    )
    .await;
    for n in 0..40 {
        let text = format!("tok{n} ");
        post_ok(
            server,
            "/v1/append",
            json!({"channel": channel, "message_id":"r1","text": text}),
        )
        .await;
        if n == 10 {
            server.publish(channel, json!({"plain": n})).await;
            post_ok(
                server,
                "/v1/publish",
                publish("r2", true, json!({"role":"tool"})),
            )
            .await;
        }
        if n > 10 && n % 3 == 0 {
            post_ok(
                server,
                "/v1/append",
                json!({"channel": channel, "message_id":"r2","text": "é✓"}),
            )
            .await;
        }
        if n == 20 {
            post_ok(
                server,
                "/v1/publish",
                publish("u1", false, json!({"text":"hi"})),
            )
            .await;
        }
    }
    post_ok(
        server,
        "/v1/finish",
        json!({"channel": channel, "message_id":"r1","data":{"role":"assistant","done":true}}),
    )
    .await;
    post_ok(
        server,
        "/v1/update",
        json!({"channel": channel, "message_id":"u1","data":{"text":"hi (edited)"}}),
    )
    .await;
    post_ok(
        server,
        "/v1/append",
        json!({"channel": channel, "message_id":"r2","text":" last"}),
    )
    .await;
    post_ok(
        server,
        "/v1/update",
        json!({"channel": channel, "message_id":"r1","text":"rewritten"}),
    )
    .await;
    post_ok(
        server,
        "/v1/delete",
        json!({"channel": channel, "message_id":"r2"}),
    )
    .await["offset"]
        .as_str()
        .expect("an offset")
        .to_owned()
}

/// Every offset a resume may start from inside the streams: the client that resumes from
/// it, starting from what an uninterrupted subscriber had there, ends with exactly what that
/// subscriber ends with: no duplicate, no gap, each changed message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_any_offset_inside_a_stream_ends_with_the_exact_text() {
    resume_is_exact(Duration::ZERO).await;
}

/// The same with appends coalesced (the default): the uninterrupted subscriber gets fewer,
/// merged frames, and a resume from any offset it saw is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_is_exact_with_appends_coalesced() {
    resume_is_exact(Duration::from_millis(40)).await;
}

async fn resume_is_exact(coalesce: Duration) {
    let server = TestServer::builder()
        .configure(|c| c.streams.coalesce = coalesce)
        .start()
        .await;
    let mut watcher = server.client().await;
    let start = watcher.subscribe("chat:r").await["offset"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = script(&server, "chat:r").await;
    let frames = frames_until_pong(&mut watcher).await;
    // The model as it stood after each frame, by the frame's offset.
    let mut model = Model::default();
    let mut states = vec![(start.clone(), model.clone())];
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
    assert_eq!(model.messages["u1"].2, json!({"text":"hi (edited)"}));
    let mut resumer = server.client().await;
    check_resumes(&mut resumer, "chat:r", &states, &model).await;
    server.stop().await;
}

/// A second tab opened mid-reply: `subscribe` without `since` gets the open stream whole
/// (its text so far, `stream: open`) right after `subscribed`, and the appends that follow
/// apply to it; history answers one entry per message, not one per append.
#[tokio::test]
async fn a_late_joiner_gets_the_open_stream_whole_and_history_one_entry_per_message() {
    let server = TestServer::start().await;
    post_ok(
        &server,
        "/v1/publish",
        json!({"channel":"chat:l","message_id":"a1","stream":true,"data":{"model":"m"}}),
    )
    .await;
    for n in 0..500 {
        post_ok(
            &server,
            "/v1/append",
            json!({"channel":"chat:l","message_id":"a1","text": format!("{n},")}),
        )
        .await;
    }
    let expected: String = (0..500).map(|n| format!("{n},")).collect();
    let mut late = server.client().await;
    late.subscribe("chat:l").await;
    let whole = late.recv().await;
    assert_eq!(whole["type"], "message", "{whole}");
    assert_eq!(whole["message_id"], "a1");
    assert_eq!(whole["stream"], "open");
    assert_eq!(whole["status"], "open");
    assert_eq!(whole["text"], expected);
    assert_eq!(whole["data"], json!({"model":"m"}));
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"chat:l","message_id":"a1","text":"more"}),
    )
    .await;
    let append = late.recv().await;
    assert_eq!(append["type"], "append");
    assert_eq!(append["text"], "more");

    // History: one entry, with the whole text; appends do not count against history.size.
    let (status, history) = server.get_json("/v1/channels/chat:l/history").await;
    assert_eq!(status, 200);
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{history}");
    assert_eq!(messages[0]["status"], "open");
    assert_eq!(messages[0]["text"], format!("{expected}more"));
    assert_eq!(messages[0]["updated"], history["offset"]);
    // The same over the WebSocket.
    late.send(json!({"type":"history","id":5,"channel":"chat:l"}))
        .await;
    let frame = late.recv_type("history").await;
    assert_eq!(frame["messages"], history["messages"]);
    server.stop().await;
}

/// A backend retrying a publish (a timeout, a crash between the send and the answer) with
/// its `message_id` gets the first offset back and publishes nothing, over HTTP, in a batch
/// and from a client.
#[tokio::test]
async fn a_retried_publish_answers_the_first_offset_and_publishes_nothing() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe("inbox:7").await;
    let body = json!({"channel":"inbox:7","message_id":"m-1","data":{"n":1}});
    let first = post_ok(&server, "/v1/publish", body.clone()).await;
    assert!(first.get("duplicate").is_none());
    let again = post_ok(&server, "/v1/publish", body.clone()).await;
    assert_eq!(again, json!({"offset": first["offset"], "duplicate": true}));
    let (_, batch) = server
        .post("/v1/batch", json!({"commands":[{"publish": body}, {"publish": {"channel":"inbox:7","message_id":"m-2","data":2}}]}))
        .await;
    assert_eq!(
        batch["replies"][0],
        json!({"offset": first["offset"], "duplicate": true})
    );
    let mut client = server.client().await;
    client
        .send(
            json!({"type":"publish","id":4,"channel":"inbox:7","message_id":"m-1","data":{"n":1}}),
        )
        .await;
    let published = client.recv().await;
    assert_eq!(published["duplicate"], true, "{published}");
    assert_eq!(published["offset"], first["offset"]);
    let frames = frames_until_pong(&mut watcher).await;
    let ids: Vec<_> = frames
        .iter()
        .map(|frame| frame["message_id"].clone())
        .collect();
    assert_eq!(ids, [json!("m-1"), json!("m-2")], "{frames:?}");
    // The recorder is the process's: other tests' duplicates may count too.
    assert!(
        server
            .metric("switchboard_publishes_deduplicated_total")
            .await
            >= 3.0
    );
    server.stop().await;
}

/// Edits and deletes take offsets in the channel's order; a delete leaves a tombstone in
/// history that keeps its offset; what is not open refuses appends with `conflict`, an
/// unknown id answers `not_found`, and a second delete answers the first's offset.
#[tokio::test]
async fn edits_and_deletes_are_ordered_and_leave_a_tombstone() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe("room:e").await;
    let created = post_ok(
        &server,
        "/v1/publish",
        json!({"channel":"room:e","message_id":"x","data":{"v":1}}),
    )
    .await;
    let edited = post_ok(
        &server,
        "/v1/update",
        json!({"channel":"room:e","message_id":"x","data":{"v":2}}),
    )
    .await;
    let plain = server.publish("room:e", json!("between")).await;
    let deleted = post_ok(
        &server,
        "/v1/delete",
        json!({"channel":"room:e","message_id":"x"}),
    )
    .await;
    assert!(seq(&created["offset"]) < seq(&edited["offset"]));
    assert!(seq(&json!(plain)) < seq(&deleted["offset"]));
    let again = post_ok(
        &server,
        "/v1/delete",
        json!({"channel":"room:e","message_id":"x"}),
    )
    .await;
    assert_eq!(
        again,
        json!({"offset": deleted["offset"], "duplicate": true})
    );
    let kinds: Vec<_> = frames_until_pong(&mut watcher)
        .await
        .iter()
        .map(|frame| (frame["type"].clone(), frame["offset"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (json!("message"), created["offset"].clone()),
            (json!("update"), edited["offset"].clone()),
            (json!("message"), json!(plain)),
            (json!("delete"), deleted["offset"].clone()),
        ]
    );
    let (status, refused) = server
        .post(
            "/v1/update",
            json!({"channel":"room:e","message_id":"x","data":3}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (409, json!("conflict")),
        "{refused}"
    );
    let (status, refused) = server
        .post(
            "/v1/append",
            json!({"channel":"room:e","message_id":"nope","text":"t"}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (_, history) = server.get_json("/v1/channels/room:e/history").await;
    assert_eq!(
        history["messages"][0],
        json!({"offset": created["offset"], "message_id":"x", "status":"deleted", "updated": deleted["offset"]})
    );
    assert_eq!(history["messages"][1]["data"], "between");
    server.stop().await;
}

/// A reply at about 200 tokens/s reaches a viewer in at most one `append` frame per
/// `streams.coalesce` (here 200 ms, so that "at once" and "held" are far apart on a busy
/// machine) plus the first, with the text exact; the first append after a quiet interval
/// goes out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_close_together_reach_viewers_as_one_frame_per_interval() {
    const INTERVAL_MS: u64 = 200;
    let server = TestServer::builder()
        .configure(|c| c.streams.coalesce = Duration::from_millis(INTERVAL_MS))
        .start()
        .await;
    let mut viewer = server.client().await;
    viewer.subscribe("chat:c").await;
    post_ok(
        &server,
        "/v1/publish",
        json!({"channel":"chat:c","message_id":"a","stream":true,"data":null}),
    )
    .await;
    let started = tokio::time::Instant::now();
    let mut expected = String::new();
    for n in 0..200 {
        let token = format!("t{n} ");
        expected.push_str(&token);
        post_ok(
            &server,
            "/v1/append",
            json!({"channel":"chat:c","message_id":"a","text": token}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    // Let the last interval end, then close the stream.
    tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS)).await;
    post_ok(
        &server,
        "/v1/finish",
        json!({"channel":"chat:c","message_id":"a"}),
    )
    .await;
    let mut model = Model::default();
    let mut appends = 0;
    loop {
        let frame = viewer.recv().await;
        model.apply(&frame);
        if frame["type"] == "append" {
            appends += 1;
        }
        if frame["type"] == "finish" {
            break;
        }
    }
    assert_eq!(model.messages["a"].1.as_deref(), Some(expected.as_str()));
    let most = u32::try_from(elapsed.as_millis() / u128::from(INTERVAL_MS)).unwrap() + 3;
    assert!(
        (2..=most).contains(&appends),
        "{appends} append frames for 200 appends over {elapsed:?} (at most {most})"
    );
    // After a quiet interval the next append goes out at once, alone.
    tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS)).await;
    post_ok(
        &server,
        "/v1/publish",
        json!({"channel":"chat:c","message_id":"b","stream":true,"data":null}),
    )
    .await;
    viewer.recv_type("message").await;
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"chat:c","message_id":"b","text":"now"}),
    )
    .await;
    let append = viewer
        .recv_within(Duration::from_millis(INTERVAL_MS / 2))
        .await;
    assert_eq!(
        (append["type"].clone(), append["text"].clone()),
        (json!("append"), json!("now"))
    );
    server.stop().await;
}

/// A resume from before what history holds is `recovered:false`, and still brings the
/// channel's open streams whole: a client's stale copy of a stream is replaced, so the
/// appends that follow apply to the right text.
#[tokio::test]
async fn a_resume_that_cannot_be_recovered_still_brings_the_open_streams_whole() {
    let server = TestServer::builder()
        .configure(|c| c.history.size = 3)
        .start()
        .await;
    let mut client = server.client().await;
    client.subscribe("chat:u").await;
    post_ok(
        &server,
        "/v1/publish",
        json!({"channel":"chat:u","message_id":"m1","data":1}),
    )
    .await;
    server.publish("chat:u", json!("plain")).await;
    post_ok(
        &server,
        "/v1/publish",
        json!({"channel":"chat:u","message_id":"s","stream":true,"data":null}),
    )
    .await;
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"chat:u","message_id":"s","text":"A"}),
    )
    .await;
    let mut model = Model::default();
    for frame in frames_until_pong(&mut client).await {
        model.apply(&frame);
    }
    let position = model.position.clone().unwrap();
    drop(client);
    // Away: the stream grows, m1 is edited and then leaves history (size 3), with its
    // edit: what the client missed is no longer all there.
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"chat:u","message_id":"s","text":"B"}),
    )
    .await;
    post_ok(
        &server,
        "/v1/update",
        json!({"channel":"chat:u","message_id":"m1","data":2}),
    )
    .await;
    server.publish("chat:u", json!("plain 2")).await;
    server.publish("chat:u", json!("plain 3")).await;
    let mut back = server.client().await;
    let reply = back.subscribe_since("chat:u", &position).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    post_ok(
        &server,
        "/v1/append",
        json!({"channel":"chat:u","message_id":"s","text":"C"}),
    )
    .await;
    loop {
        let frame = back.recv().await;
        model.apply(&frame);
        if frame["type"] == "append" {
            break;
        }
    }
    assert_eq!(model.messages["s"].1.as_deref(), Some("ABC"));
    server.stop().await;
}
