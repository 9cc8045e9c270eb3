//! The live demo (`demo.enabled`, off by default): a page on the WebSocket listener at
//! `/demo` with a ticker this node publishes to `demo:ticker` every second, a chat on
//! `demo:chat` and an assistant pane whose replies this node streams to `demo:assistant`
//! (`assistant`), all through the JavaScript client (`clients/js`), showing the
//! connection's state, each channel's offset and whether a resume recovered everything.
//!
//! `switchboard.js` is `clients/js`'s build output, kept here so that the binary builds
//! without Node; `tests/it/js_client.rs` fails when it differs from a fresh build.

mod assistant;

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{cluster::Bus, hub::HubHandle, protocol::ChannelName};

pub use self::assistant::assistant;

/// A static file of the demo.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub content_type: &'static str,
    pub body: &'static str,
}

const INDEX: Page = Page {
    content_type: "text/html; charset=utf-8",
    body: include_str!("index.html"),
};
const APP: Page = Page {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("app.js"),
};
const CLIENT: Page = Page {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("switchboard.js"),
};

/// The demo's file at `path`, if it is one.
#[must_use]
pub fn page(path: &str) -> Option<&'static Page> {
    match path {
        "/demo" | "/demo/" => Some(&INDEX),
        "/demo/app.js" => Some(&APP),
        "/demo/switchboard.js" => Some(&CLIENT),
        _ => None,
    }
}

/// Publishes `{"n":..,"node":..,"time":..}` to `demo:ticker` every second until `stop`.
pub async fn ticker(bus: Arc<dyn Bus>, hub: HubHandle, node: Arc<str>, stop: CancellationToken) {
    let channel = ChannelName::parse("demo:ticker", 128).expect("a valid channel name");
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0_u64.. {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let time = crate::clock::unix_ms();
        let node_json = serde_json::to_string(&*node).unwrap_or_else(|_| "\"?\"".to_owned());
        let data = format!(r#"{{"n":{n},"node":{node_json},"time":{time}}}"#);
        let mut writes = hub.write_batch();
        if let Err(err) = bus.publish(&channel, &data, &mut writes).await {
            tracing::debug!(error = %err, "Demo ticker publish failed");
        }
    }
}
