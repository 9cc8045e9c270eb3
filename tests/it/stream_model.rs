//! What tests of message streams share: a client's model of a channel's messages, built from
//! frames the way docs/protocol.md tells a client to, and small helpers.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::harness::{TestClient, TestServer, seq};

/// A client's view of a channel's messages with ids, built from the frames it receives the
/// way a client is told to (docs/protocol.md): what every test compares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// By message id: status, text (streams), data.
    pub messages: BTreeMap<String, (String, Option<String>, Value)>,
    /// The offset of the last frame seen.
    pub position: Option<String>,
}

impl Model {
    /// Applies one frame of the channel.
    pub fn apply(&mut self, frame: &Value) {
        let kind = frame["type"].as_str().unwrap_or("");
        if !matches!(
            kind,
            "message" | "append" | "finish" | "update" | "delete" | "abandon"
        ) {
            return;
        }
        self.position = frame["offset"].as_str().map(str::to_owned);
        let Some(id) = frame["message_id"].as_str() else {
            return;
        };
        let id = id.to_owned();
        match kind {
            "message" => {
                let status = match (frame.get("status"), frame.get("stream")) {
                    (Some(status), _) => status.as_str().unwrap().to_owned(),
                    (None, Some(stream)) => stream.as_str().unwrap().to_owned(),
                    (None, None) => "finished".to_owned(),
                };
                let text = match frame.get("text") {
                    Some(text) => Some(text.as_str().unwrap().to_owned()),
                    None if status == "open" => Some(String::new()),
                    None => None,
                };
                let data = frame.get("data").cloned().unwrap_or(Value::Null);
                self.messages.insert(id, (status, text, data));
            }
            "append" => {
                let message = self
                    .messages
                    .get_mut(&id)
                    .expect("append to a known message");
                message
                    .1
                    .get_or_insert_default()
                    .push_str(frame["text"].as_str().unwrap());
            }
            "finish" => {
                let message = self
                    .messages
                    .get_mut(&id)
                    .expect("finish of a known message");
                message.0 = "finished".to_owned();
                if let Some(data) = frame.get("data") {
                    message.2 = data.clone();
                }
            }
            "update" => {
                let message = self
                    .messages
                    .get_mut(&id)
                    .expect("update of a known message");
                if let Some(data) = frame.get("data") {
                    message.2 = data.clone();
                }
                if let Some(text) = frame.get("text") {
                    message.1 = Some(text.as_str().unwrap().to_owned());
                }
            }
            "delete" => {
                self.messages
                    .insert(id, ("deleted".to_owned(), None, Value::Null));
            }
            _ => {
                if let Some(message) = self.messages.get_mut(&id) {
                    message.0 = "abandoned".to_owned();
                }
            }
        }
    }

    /// The model without its position, for comparing contents.
    pub fn contents(&self) -> &BTreeMap<String, (String, Option<String>, Value)> {
        &self.messages
    }
}

/// Reads a subscriber's frames up to the answer to a ping sent now: everything enqueued
/// before it (a replay, live frames).
pub async fn frames_until_pong(client: &mut TestClient) -> Vec<Value> {
    client.send(json!({"type":"ping","id":99})).await;
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        if frame["type"] == "pong" && frame["id"] == 99 {
            return frames;
        }
        frames.push(frame);
    }
}

pub async fn post_ok(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, answer) = server.post(path, body.clone()).await;
    assert_eq!(status, 200, "{path} {body}: {answer}");
    answer
}

/// Resumes `channel` on `resumer` from each `(offset, model as it stood there)` of `states`
/// and checks the replay brings that model to `end`: recovered, one frame per message,
/// exactly `end`'s messages. Unsubscribes after each.
pub async fn check_resumes(
    resumer: &mut TestClient,
    channel: &str,
    states: &[(String, Model)],
    end: &Model,
) {
    for (since, before) in states {
        let reply = resumer.subscribe_since(channel, since).await;
        assert_eq!(reply["recovered"], true, "from {since}: {reply}");
        let mut resumed = before.clone();
        let replay = frames_until_pong(resumer).await;
        let mut ids = std::collections::HashSet::new();
        for frame in &replay {
            assert!(
                ids.insert(frame["message_id"].to_string()),
                "from {since}: one frame per message: {replay:?}"
            );
            resumed.apply(frame);
        }
        assert_eq!(resumed.contents(), end.contents(), "from {since}");
        assert_eq!(
            replay.last().map(|frame| frame["offset"].clone()),
            (seq(&json!(since)) < seq(&json!(end.position.clone().unwrap())))
                .then(|| json!(end.position.clone().unwrap())),
            "the last frame brings the resumer to the channel's position"
        );
        resumer
            .send(json!({"type":"unsubscribe","id":2,"channel": channel}))
            .await;
        assert_eq!(resumer.recv().await["type"], "unsubscribed");
    }
}
