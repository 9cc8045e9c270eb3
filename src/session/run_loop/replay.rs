//! A resume too large to replay at once: its oldest messages go ahead in pages of
//! `history_reply_bytes` (a quarter of the queue, at most 256 KiB), each sent once the client
//! has read the last, and the subscribe then replays only the rest. A replay larger than the
//! queue overflowed it, so every such resume ended in 4001 however fast the client read.
//!
//! From what the node holds (the frames in history, shared, not encoded again), or, when only the bus knows the
//! channel, from the bus's read made for the subscribe (under its pin): never an extra read.

use std::time::Duration;

use super::{Session, channels::fitting};
use crate::{
    hub::{FramedText, RemoteView},
    protocol::{self, ChannelName, CloseCode, Offset},
    telemetry,
};

impl Session {
    /// Before a resume from `since` this node can answer: sends pages while the rest would
    /// not fit one; returns where the subscribe's own replay starts. `None` when the
    /// connection is closing (or its client stopped reading: closed as a slow consumer).
    pub(super) async fn replay_ahead(
        &self,
        channel: &ChannelName,
        since: Offset,
    ) -> Option<Offset> {
        let budget = self.ctx.settings.history_reply_bytes;
        let mut since = since;
        while let Some(page) = self.ctx.hub.replay_page(channel, since, budget) {
            for (offset, frame) in &page {
                if self.outbound.try_enqueue(frame).is_err() {
                    return None;
                }
                since = *offset;
            }
            if !self.page_sent(budget).await {
                return None;
            }
        }
        Some(since)
    }

    /// [`Session::replay_ahead`] for a resume the bus answered: pages taken out of `view`.
    pub(super) async fn page_view(
        &self,
        channel: &ChannelName,
        since: Offset,
        view: &mut RemoteView,
    ) -> Option<Offset> {
        if !view.complete || view.absent {
            return Some(since);
        }
        let budget = self.ctx.settings.history_reply_bytes;
        let mut since = since;
        loop {
            let sizes = view.entries.iter().map(|(_, data)| data.len() + 48);
            let (n, more) = fitting(sizes, budget);
            if !more {
                return Some(since);
            }
            for (seq, data) in view.entries.drain(..n) {
                let offset = Offset {
                    epoch: view.epoch,
                    seq,
                };
                let frame = FramedText::from(protocol::encode_message(channel, offset, &data));
                if self.outbound.try_enqueue(&frame).is_err() {
                    return None;
                }
                since = offset;
            }
            if !self.page_sent(budget).await {
                return None;
            }
        }
    }

    /// A page was queued: counts it and waits until at most `budget` bytes wait in the
    /// queue. False when the connection closes first, or the client reads nothing for
    /// `session.idle_timeout` (then closed as a slow consumer).
    ///
    /// Polled: the queue has no "drained" signal, and a page waits a few milliseconds on a
    /// client that reads.
    async fn page_sent(&self, budget: usize) -> bool {
        const POLL: Duration = Duration::from_millis(5);
        telemetry::metrics().replay_pages.increment(1);
        let mut waited = Duration::ZERO;
        let mut last = self.outbound.queued_bytes();
        while last > budget {
            if self.outbound.is_closing() {
                return false;
            }
            tokio::time::sleep(POLL).await;
            let now = self.outbound.queued_bytes();
            waited = if now < last {
                Duration::ZERO
            } else {
                waited + POLL
            };
            if waited >= self.ctx.settings.idle_timeout {
                self.outbound.close(CloseCode::SlowConsumer);
                return false;
            }
            last = now;
        }
        !self.outbound.is_closing()
    }
}
