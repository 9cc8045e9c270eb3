//! The demo's assistant: every 15 s this node streams a scripted reply (`assistant.txt`) to
//! `demo:assistant`, a token at a time at about 30 tokens/s, the way a backend would: through
//! [`Bus::apply`] as [`Editor::Backend`], a stream opened with a fresh `message_id`, its
//! appends, then a finish (see `docs/streams.md`). A page loaded mid-reply gets the reply
//! whole, then its appends.
//!
//! With `cluster.redis` the bus does not carry streams yet: the assistant says so once and
//! stops; the ticker and the chat go on.

use std::{sync::Arc, time::Duration};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::{ApplyError, Bus},
    hub::{Applied, Editor, HubHandle, Op},
    protocol::{ChannelName, ErrorCode},
};

/// From the start of one reply to the start of the next (or the end of a longer one).
const EVERY: Duration = Duration::from_secs(15);
/// One token per interval: about 30 tokens/s.
const TOKEN_INTERVAL: Duration = Duration::from_millis(33);
/// The longest token, in characters: longer words go out in pieces, as a model's would.
const MAX_TOKEN_CHARS: usize = 6;

/// Prompts and their replies: `> prompt` on the first line, parts separated by `---`.
const SCRIPT: &str = include_str!("assistant.txt");

/// One scripted exchange.
struct Reply {
    prompt: &'static str,
    text: &'static str,
}

fn replies() -> Vec<Reply> {
    SCRIPT
        .split("\n---\n")
        .filter_map(|part| {
            let (first, text) = part.split_once('\n')?;
            Some(Reply {
                prompt: first.strip_prefix("> ")?.trim(),
                text: text.trim_end(),
            })
        })
        .collect()
}

/// `text` as tokens: the whitespace before a word and up to [`MAX_TOKEN_CHARS`] of it.
fn tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let word = rest
            .find(|ch: char| !ch.is_whitespace())
            .unwrap_or(rest.len());
        let mut end = rest.len();
        for (taken, (at, ch)) in rest[word..].char_indices().enumerate() {
            if ch.is_whitespace() || taken == MAX_TOKEN_CHARS {
                end = word + at;
                break;
            }
        }
        tokens.push(&rest[..end]);
        rest = &rest[end..];
    }
    tokens
}

/// Streams a reply to `demo:assistant` every 15 s until `stop`.
pub async fn assistant(bus: Arc<dyn Bus>, hub: HubHandle, node: Arc<str>, stop: CancellationToken) {
    let channel = ChannelName::parse("demo:assistant", 128).expect("a valid channel name");
    let replies = replies();
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for n in 0_u64.. {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let reply = &replies[usize::try_from(n).unwrap_or(0) % replies.len()];
        let streaming = Streaming {
            bus: &*bus,
            hub: &hub,
            channel: &channel,
        };
        match streaming.reply(n, reply, &node, &stop).await {
            Ok(()) => {}
            Err(err) => tracing::debug!(error = %err, "Demo assistant reply failed"),
        }
    }
}

/// Where a reply goes.
struct Streaming<'a> {
    bus: &'a dyn Bus,
    hub: &'a HubHandle,
    channel: &'a ChannelName,
}

impl Streaming<'_> {
    /// Opens reply `n` as a stream, appends its tokens and finishes it; returns early when
    /// `stop` is cancelled.
    async fn reply(
        &self,
        n: u64,
        reply: &Reply,
        node: &str,
        stop: &CancellationToken,
    ) -> Result<(), ApplyError> {
        let started = crate::clock::unix_ms();
        // Fresh per reply, also across restarts of the node and beside the other nodes'
        // assistants of a cluster, which stream to the same channel.
        let message_id = format!("reply-{node}-{started}-{n}");
        let metadata = |tokens: Option<usize>| {
            let mut data = serde_json::json!({
                "role": "assistant",
                "prompt": reply.prompt,
                "node": node,
                "n": n,
            });
            if let Some(tokens) = tokens {
                data["tokens"] = tokens.into();
            }
            data.to_string()
        };
        let opened = metadata(None);
        self.apply(Op::Publish {
            data: &opened,
            message_id: Some(&message_id),
            stream: true,
        })
        .await?;
        let tokens = tokens(reply.text);
        let mut pace = tokio::time::interval(TOKEN_INTERVAL);
        pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for token in &tokens {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    _ = pace.tick() => {}
                }
                let append = Op::Append {
                    message_id: &message_id,
                    text: token,
                };
                match self.apply(append).await {
                    Ok(_) => break,
                    // The channel's fan-out is behind: the same token at the next tick.
                    Err(err) if err.code() == ErrorCode::Unavailable => {}
                    Err(err) => return Err(err),
                }
            }
        }
        let finished = metadata(Some(tokens.len()));
        self.apply(Op::Finish {
            message_id: &message_id,
            data: Some(&finished),
        })
        .await?;
        Ok(())
    }

    async fn apply(&self, op: Op<'_>) -> Result<Applied, ApplyError> {
        let mut writes = self.hub.write_batch();
        self.bus
            .apply(self.channel, op, &Editor::Backend, &mut writes)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_is_a_few_hundred_tokens_that_add_up_to_its_text() {
        let replies = replies();
        assert_eq!(replies.len(), 3);
        for reply in &replies {
            assert!(!reply.prompt.is_empty());
            let tokens = tokens(reply.text);
            assert_eq!(tokens.concat(), reply.text);
            assert!(
                (200..=400).contains(&tokens.len()),
                "{} tokens",
                tokens.len()
            );
            // At 30 tokens/s a reply ends well before the next one starts.
            assert!(TOKEN_INTERVAL * u32::try_from(tokens.len()).unwrap() < EVERY);
            for token in tokens {
                assert!(
                    token.trim_start().chars().count() <= MAX_TOKEN_CHARS,
                    "{token:?}"
                );
                assert!(!token.is_empty());
            }
        }
    }

    #[test]
    fn long_words_are_cut_and_whitespace_leads() {
        assert_eq!(
            tokens("Hi there, streaming\n\nworld"),
            ["Hi", " there,", " stream", "ing", "\n\nworld"]
        );
    }
}
