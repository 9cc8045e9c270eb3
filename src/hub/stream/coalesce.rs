//! Coalescing appends (`streams.coalesce`): the first append after a quiet interval goes
//! out at once; later ones within the interval are held, per channel, and go out together
//! when it ends, consecutive appends to one message merged into one `append` frame with
//! the concatenated text and the last offset. A channel's held appends go out before
//! anything else of the channel is enqueued (another operation, a plain publish, an event),
//! so frames leave in offset order; a subscribe seals what is held, so that a merged frame
//! never carries text from before the subscriber's position (its replay holds that).

use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

use super::message::Held;
use crate::{
    hub::{
        FramedText, Hub, channel::Channel, channel::Queued, fanout::start_round, lane::Workers,
        lock,
    },
    protocol::{self, ChannelName, Offset},
};

/// Held appends wait for a fan-out behind its sockets at most this many intervals.
const MAX_STRETCH: u32 = 4;

/// The channels whose held appends are due, and the wake-up of the task that sends them
/// ([`Hub::run_coalescer`]).
#[derive(Debug, Default)]
pub(in crate::hub) struct Coalescer {
    due: Mutex<Vec<(Instant, ChannelName)>>,
    wake: tokio::sync::Notify,
}

/// What [`Hub::coalesce_append`] did with an append.
pub(in crate::hub) enum Appended {
    /// Held: a later flush sends it.
    Held,
    /// Send it now (and remember when).
    Now,
}

impl Hub {
    /// Holds an append if the channel sent one less than `streams.coalesce` ago (or holds
    /// some already); else says to send it now.
    pub(in crate::hub) fn coalesce_append(
        &self,
        state: &mut Channel,
        channel: &ChannelName,
        message_id: &str,
        text: &str,
        offset: Offset,
        now: Instant,
    ) -> Appended {
        let interval = self.settings.streams.coalesce;
        if interval.is_zero() || state.subscribed == 0 {
            return Appended::Now;
        }
        let coalescing = state.coalescing.get_or_insert_default();
        let recent = coalescing
            .last_sent
            .is_some_and(|sent| now.duration_since(sent) < interval);
        if coalescing.held.is_empty() && !recent {
            coalescing.last_sent = Some(now);
            return Appended::Now;
        }
        match coalescing.held.last_mut() {
            Some(last) if !coalescing.sealed && *last.message_id == *message_id => {
                last.text.push_str(text);
                last.offset = offset;
            }
            _ => coalescing.held.push(Held {
                message_id: message_id.into(),
                text: text.to_owned(),
                offset,
                accepted: now,
            }),
        }
        coalescing.sealed = false;
        if !coalescing.scheduled {
            coalescing.scheduled = true;
            let due = coalescing.last_sent.map_or(now, |sent| sent + interval);
            lock(&self.coalescer.due).push((due, channel.clone()));
            self.coalescer.wake.notify_one();
        }
        Appended::Held
    }

    /// Puts the channel's held appends in its outbox, in order: `Some(subscribers)` when the
    /// caller must start a round (see [`Hub::enqueue_round`]).
    pub(in crate::hub) fn flush_held(state: &mut Channel, channel: &ChannelName) -> Option<usize> {
        let coalescing = state.coalescing.as_mut()?;
        if coalescing.held.is_empty() {
            return None;
        }
        let held = std::mem::take(&mut coalescing.held);
        coalescing.last_sent = Some(Instant::now());
        let mut round = None;
        for item in held {
            let text = protocol::encode_append(channel, item.offset, &item.message_id, &item.text);
            let frame = FramedText::from(text);
            round = round.or(Self::enqueue_round(
                state,
                Queued::message(item.offset, &frame, item.accepted),
            ));
        }
        round
    }

    /// A subscribe takes its position: what is held stays whole (the subscriber skips it),
    /// and what comes next starts a frame of its own.
    pub(in crate::hub) fn seal_held(state: &mut Channel) {
        if let Some(coalescing) = state.coalescing.as_mut()
            && !coalescing.held.is_empty()
        {
            coalescing.sealed = true;
        }
    }

    /// Sends held appends as they fall due, until `stop`; spawned by `app` on the sessions'
    /// runtime.
    pub async fn run_coalescer(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let now = Instant::now();
            let mut ready = Vec::new();
            let next = {
                let mut due = lock(&self.coalescer.due);
                due.retain(|(at, channel)| {
                    if *at <= now {
                        ready.push(channel.clone());
                        false
                    } else {
                        true
                    }
                });
                due.iter().map(|(at, _)| *at).min()
            };
            for channel in ready {
                self.flush_due(&channel);
            }
            let sleep = next.map_or(Duration::from_secs(3600), |at| at - now);
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.coalescer.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Sends a channel's held appends (its interval ended).
    fn flush_due(&self, channel: &ChannelName) {
        let Some(slot) = crate::hub::read(&self.shard(channel).channels)
            .get(channel)
            .cloned()
        else {
            return;
        };
        let round = {
            let mut state = lock(&slot.state);
            if state.removed {
                return;
            }
            let interval = self.settings.streams.coalesce;
            let waited = state
                .coalescing
                .as_ref()
                .and_then(|coalescing| coalescing.last_sent)
                .map_or(Duration::MAX, |sent| sent.elapsed());
            if waited < interval * MAX_STRETCH
                && self.workers.as_ref().is_some_and(Workers::writes_pending)
            {
                // The fan-out is behind its sockets (write jobs wait): another frame now
                // would be one more write per subscriber. Held a little longer, the appends
                // go out as one frame when the writes caught up, as plain messages batch
                // in rounds under load.
                drop(state);
                lock(&self.coalescer.due).push((Instant::now() + interval / 2, channel.clone()));
                self.coalescer.wake.notify_one();
                return;
            }
            if let Some(coalescing) = state.coalescing.as_mut() {
                coalescing.scheduled = false;
            }
            Self::flush_held(&mut state, channel).map(|subscribers| (subscribers, ()))
        };
        if let Some((subscribers, ())) = round {
            let mut writes = self.write_batch();
            start_round(&slot, subscribers, self.workers.as_ref(), &mut writes);
        }
    }
}
