//! What a generator counts, per second and in all, and its results at the end.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::{GLOBAL, ROOM, Shared};
use crate::{
    million::{
        BroadcastResult, BroadcastSeen, GenResult, GenSecond, Losses, Offset, RoomsResult, RunDir,
    },
    now_ns,
};

/// The second being counted.
pub(super) struct Second {
    pub(super) unix: u64,
    pub(super) connects: u64,
    pub(super) resumes: u64,
    pub(super) room_deliveries: u64,
    pub(super) room_latency: Histogram<u64>,
}

impl Second {
    pub(super) fn new(unix: u64) -> Self {
        Self {
            unix,
            connects: 0,
            resumes: 0,
            room_deliveries: 0,
            room_latency: crate::million::latency_histogram(),
        }
    }
}

pub(super) struct Stats {
    pub(super) losses: [Losses; 2],
    pub(super) delivered: [u64; 2],
    pub(super) joins: u64,
    pub(super) leaves: u64,
    pub(super) reconnect_frames: u64,
    pub(super) subscribed_now: u64,
    pub(super) ends: BTreeMap<String, u64>,
    pub(super) refused: BTreeMap<String, u64>,
    pub(super) connect_errors: BTreeMap<String, u64>,
    pub(super) subscribe_errors: BTreeMap<String, u64>,
    pub(super) gave_up: u64,
    pub(super) unparsed: u64,
    pub(super) resumed: u64,
    pub(super) first_subscribed: usize,
    pub(super) ramp_done_unix: f64,
    pub(super) last_room_delivery: Instant,
    pub(super) second: Second,
    pub(super) seconds: Vec<GenSecond>,
    pub(super) broadcasts: Vec<Option<(u64, Histogram<u64>)>>,
}

impl Stats {
    /// The current second's counters, after closing the seconds that ended.
    pub(super) fn second(&mut self) -> &mut Second {
        let unix = now_ns() / 1_000_000_000;
        if unix != self.second.unix {
            self.roll(unix);
        }
        &mut self.second
    }

    pub(super) fn roll(&mut self, unix: u64) {
        let ended = std::mem::replace(&mut self.second, Second::new(unix));
        let room_latency = if ended.room_latency.is_empty() {
            String::new()
        } else {
            crate::million::histogram_to_hex(&ended.room_latency).unwrap_or_default()
        };
        self.seconds.push(GenSecond {
            unix: ended.unix,
            connects: ended.connects,
            resumes: ended.resumes,
            subscribed: self.subscribed_now,
            room_deliveries: ended.room_deliveries,
            room_latency,
        });
    }

    pub(super) fn count(map: &mut BTreeMap<String, u64>, key: String) {
        *map.entry(key).or_default() += 1;
    }
}

/// The results, with every socket's tail checked against the publishers' last acknowledged
/// offsets.
pub(super) fn finish(
    shared: &Shared,
    dir: &RunDir,
    count: usize,
    ramp_started_unix: f64,
) -> anyhow::Result<GenResult> {
    let room_acks: Vec<Option<Offset>> =
        match crate::million::read_json::<RoomsResult>(&dir.rooms()) {
            Ok(rooms) => rooms.acks,
            Err(err) => {
                eprintln!("no room acknowledgements: {err:#}");
                Vec::new()
            }
        };
    let global_ack = crate::million::read_json::<BroadcastResult>(&dir.broadcasts())
        .ok()
        .and_then(|broadcasts| broadcasts.last_acked);
    let mut stats = shared.stats.borrow_mut();
    let positions = shared.positions.borrow();
    let nodes = shared.args.nodes.len();
    for (local, position) in positions.iter().enumerate().take(count) {
        let room = (shared.args.index + local * nodes) / shared.args.room_size.max(1);
        if let Some(Some(acked)) = room_acks.get(room) {
            position[ROOM].tail(*acked, &mut stats.losses[ROOM]);
        }
        if let Some(acked) = global_ack {
            position[GLOBAL].tail(acked, &mut stats.losses[GLOBAL]);
        }
    }
    let unix = now_ns() / 1_000_000_000 + 1;
    stats.roll(unix);
    let broadcasts = stats
        .broadcasts
        .iter()
        .enumerate()
        .filter_map(|(n, seen)| {
            let (deliveries, latency) = seen.as_ref()?;
            Some(BroadcastSeen {
                n: n as u64,
                deliveries: *deliveries,
                latency: crate::million::histogram_to_hex(latency).unwrap_or_default(),
            })
        })
        .collect();
    Ok(GenResult {
        index: shared.args.index,
        sockets: count,
        room: stats.losses[ROOM],
        global: stats.losses[GLOBAL],
        delivered_room: stats.delivered[ROOM],
        delivered_global: stats.delivered[GLOBAL],
        joins: stats.joins,
        leaves: stats.leaves,
        reconnect_frames: stats.reconnect_frames,
        ends: stats.ends.clone(),
        refused: stats.refused.clone(),
        connect_errors: stats.connect_errors.clone(),
        subscribe_errors: stats.subscribe_errors.clone(),
        gave_up: stats.gave_up,
        unparsed: stats.unparsed,
        resumed: stats.resumed,
        ramp_started_unix,
        ramp_done_unix: stats.ramp_done_unix,
        seconds: std::mem::take(&mut stats.seconds),
        broadcasts,
    })
}
