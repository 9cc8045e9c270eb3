//! `million generator`: one load generator, holding the sockets of one node's share.
//!
//! Socket `g` of the whole run (`g = index + k * nodes`) first connects to node `g % nodes`
//! (this generator's node) and belongs to room `g / room_size`, so the members of a room are
//! on `room_size` different nodes. It subscribes to its room and to the global channel and
//! checks every `message`, `reset` and resume reply against the last offset it holds
//! (`track`). On any close (a drain's 1012 after `reconnect`, or anything else) it waits the
//! `after_ms` it was given, connects to another node (its first node if it is elsewhere,
//! else a random one; a refused upgrade tries another) and resubscribes with `since`.
//!
//! Everything runs on one thread: the sockets share one read buffer, and their state is in
//! `RefCell`s borrowed between awaits only.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::Semaphore, time::Instant};

use super::{
    BroadcastResult, BroadcastSeen, GenResult, GenSecond, Losses, Offset, RoomsResult, RunDir,
    Status,
    track::Position,
    wire::{self, Event, Upgrade},
};
use crate::now_ns;

#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// The run directory (status and results are written there; `finish` ends the run).
    #[arg(long)]
    dir: PathBuf,
    /// This generator's number: it holds sockets `index`, `index + nodes`, ...
    #[arg(long)]
    index: usize,
    /// Every node's WebSocket address, in node order (the path is /ws).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    /// Sockets of the whole run.
    #[arg(long)]
    sockets: usize,
    /// This process's connects per second during the ramp (held flat: a tick per connect,
    /// none made up when late).
    #[arg(long, default_value_t = 100)]
    connect_rate: u64,
    /// Sockets of the ramp connecting at once at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// First source address 127.0.0.K.
    #[arg(long, default_value_t = 1)]
    source_first: u8,
    /// Source addresses 127.0.0.K .. 127.0.0.(K+N-1), round robin (at most about 12,000
    /// connections per source and server address: see `source`).
    #[arg(long, default_value_t = 2)]
    source_addrs: u8,
    /// The channel every socket follows.
    #[arg(long, default_value = "global")]
    global: String,
    /// Rooms are `PREFIX0`, `PREFIX1`, ...
    #[arg(long, default_value = "room:")]
    room_prefix: String,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Stop (and report) after this long even without `finish`.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

/// Failures in a row after which a socket stops trying.
const MAX_FAILURES: u32 = 100;
/// Subscribes answered with an error that are sent again, per session and channel.
const MAX_SUBSCRIBE_RETRIES: u32 = 20;
/// A session that has not got both channels by then ends (and the socket tries another
/// node), so that a stuck one cannot hold a ramp slot for ever.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Broadcast numbers tracked.
const MAX_BROADCASTS: usize = 1000;

const ROOM: usize = 0;
const GLOBAL: usize = 1;

/// The frames the server sends, as far as the run reads them.
#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    channel: Option<&'a str>,
    #[serde(default, borrow)]
    offset: Option<&'a str>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    after_ms: Option<u64>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// What the publishers put in `data`: the send time (CLOCK_REALTIME, ns) and, for
/// broadcasts, their number.
#[derive(Debug, Deserialize)]
struct Stamp {
    ts: u64,
    #[serde(default)]
    n: Option<u64>,
}

/// The second being counted.
struct Second {
    unix: u64,
    connects: u64,
    resumes: u64,
    room_deliveries: u64,
    room_latency: Histogram<u64>,
}

impl Second {
    fn new(unix: u64) -> Self {
        Self {
            unix,
            connects: 0,
            resumes: 0,
            room_deliveries: 0,
            room_latency: super::latency_histogram(),
        }
    }
}

struct Stats {
    losses: [Losses; 2],
    delivered: [u64; 2],
    joins: u64,
    leaves: u64,
    reconnect_frames: u64,
    subscribed_now: u64,
    ends: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    connect_errors: BTreeMap<String, u64>,
    subscribe_errors: BTreeMap<String, u64>,
    gave_up: u64,
    unparsed: u64,
    resumed: u64,
    first_subscribed: usize,
    ramp_done_unix: f64,
    last_room_delivery: Instant,
    second: Second,
    seconds: Vec<GenSecond>,
    broadcasts: Vec<Option<(u64, Histogram<u64>)>>,
}

impl Stats {
    /// The current second's counters, after closing the seconds that ended.
    fn second(&mut self) -> &mut Second {
        let unix = now_ns() / 1_000_000_000;
        if unix != self.second.unix {
            self.roll(unix);
        }
        &mut self.second
    }

    fn roll(&mut self, unix: u64) {
        let ended = std::mem::replace(&mut self.second, Second::new(unix));
        let room_latency = if ended.room_latency.is_empty() {
            String::new()
        } else {
            super::histogram_to_hex(&ended.room_latency).unwrap_or_default()
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

    fn count(map: &mut BTreeMap<String, u64>, key: String) {
        *map.entry(key).or_default() += 1;
    }
}

struct Shared {
    args: GenArgs,
    scratch: RefCell<Vec<u8>>,
    /// Per socket of this process: its room's and the global channel's position.
    positions: RefCell<Vec<[Position; 2]>>,
    stats: RefCell<Stats>,
    stopping: Cell<bool>,
    rng: Cell<u64>,
}

impl Shared {
    /// A xorshift draw below `bound`.
    fn below(&self, bound: usize) -> usize {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        usize::try_from(x % bound.max(1) as u64).unwrap_or(0)
    }

    /// Where a socket goes after leaving `current`: its first node when it is elsewhere
    /// (a drain's clients go home once their node is back), else a random other one.
    fn next_node(&self, current: usize, home: usize, failures: u32) -> usize {
        let nodes = self.args.nodes.len();
        if nodes == 1 {
            return 0;
        }
        if failures == 0 && home != current {
            return home;
        }
        let pick = self.below(nodes - 1);
        if pick >= current { pick + 1 } else { pick }
    }
}

/// How a session ended.
enum End {
    Closed(u16),
    Eof,
    Refused(u16),
    Failed(String),
}

/// One session's progress.
#[derive(Default)]
struct Session {
    /// The socket was never subscribed before: this is its ramp connect, not a resume.
    first: bool,
    /// Channels subscribed in this session.
    subscribed: [bool; 2],
    /// Subscribes to send (again).
    to_send: [bool; 2],
    retries: [u32; 2],
    /// A subscribe to retry after a pause (answered with an error).
    retry_at: Option<Instant>,
    after_ms: Option<u64>,
    closed: Option<u16>,
}

pub async fn run(args: GenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.nodes.is_empty(), "--nodes lists no node");
    let nodes = args.nodes.len();
    let count = if args.index < args.sockets {
        (args.sockets - args.index).div_ceil(nodes)
    } else {
        0
    };
    crate::source::warn_if_crowded(count, 1, usize::from(args.source_addrs));
    let dir = RunDir(args.dir.clone());
    let shared = Rc::new(Shared {
        scratch: RefCell::new(Vec::new()),
        positions: RefCell::new(vec![[Position::default(); 2]; count]),
        stats: RefCell::new(Stats {
            losses: [Losses::default(); 2],
            delivered: [0; 2],
            joins: 0,
            leaves: 0,
            reconnect_frames: 0,
            subscribed_now: 0,
            ends: BTreeMap::new(),
            refused: BTreeMap::new(),
            connect_errors: BTreeMap::new(),
            subscribe_errors: BTreeMap::new(),
            gave_up: 0,
            unparsed: 0,
            resumed: 0,
            first_subscribed: 0,
            ramp_done_unix: 0.0,
            last_room_delivery: Instant::now(),
            second: Second::new(now_ns() / 1_000_000_000),
            seconds: Vec::new(),
            broadcasts: Vec::new(),
        }),
        stopping: Cell::new(false),
        rng: Cell::new(now_ns() | 1),
        args,
    });
    let started = Instant::now();
    let ramp_started_unix = unix_now();
    tokio::task::spawn_local(report_status(
        Rc::clone(&shared),
        dir.status(shared.args.index),
        count,
    ));
    tokio::task::spawn_local(ramp(Rc::clone(&shared), count));

    // The end: the script's `finish`, or the time limit.
    let deadline = started + Duration::from_secs(shared.args.max_seconds);
    while !dir.finish().exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shared.stopping.set(true);
    // Let what was published arrive: until no room message came for 2 s and every socket
    // is subscribed (or gave up), 30 s at most.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(30) {
        let (quiet, settled) = {
            let stats = shared.stats.borrow();
            (
                stats.last_room_delivery.elapsed() >= Duration::from_secs(2),
                stats.subscribed_now + stats.gave_up >= count as u64,
            )
        };
        if quiet && settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = finish(&shared, &dir, count, ramp_started_unix)?;
    super::write_json(&dir.gen_result(shared.args.index), &result)?;
    // The sockets are dropped with the process.
    std::process::exit(0);
}

fn unix_now() -> f64 {
    now_ns() as f64 / 1e9
}

/// Opens the sockets at the connect rate, at most `concurrency` upgrading at once.
async fn ramp(shared: Rc<Shared>, count: usize) {
    let semaphore = Arc::new(Semaphore::new(shared.args.concurrency.max(1)));
    let mut ticker = tokio::time::interval(Duration::from_nanos(
        1_000_000_000 / shared.args.connect_rate.max(1),
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for local in 0..count {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&semaphore).acquire_owned().await else {
            return;
        };
        if shared.stopping.get() {
            return;
        }
        tokio::task::spawn_local(socket(Rc::clone(&shared), local, permit));
    }
}

/// Writes the status file every second (and closes the per-second counters).
async fn report_status(shared: Rc<Shared>, path: PathBuf, count: usize) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let global_min_seq = {
            let positions = shared.positions.borrow();
            positions
                .iter()
                .filter_map(|position| position[GLOBAL].get())
                .map(|offset| offset.seq)
                .min()
                .unwrap_or(0)
        };
        let status = {
            let mut stats = shared.stats.borrow_mut();
            stats.second();
            Status {
                index: shared.args.index,
                sockets: count,
                subscribed: stats.subscribed_now,
                global_min_seq,
            }
        };
        if let Err(err) = super::write_json(&path, &status) {
            eprintln!("writing the status: {err:#}");
        }
    }
}

/// One socket for the whole run: sessions on one node after another.
async fn socket(shared: Rc<Shared>, local: usize, permit: tokio::sync::OwnedSemaphorePermit) {
    let args = &shared.args;
    let nodes = args.nodes.len();
    let global_index = args.index + local * nodes;
    let home = global_index % nodes;
    let room = format!(
        "{}{}",
        args.room_prefix,
        global_index / args.room_size.max(1)
    );
    let source = Ipv4Addr::new(
        127,
        0,
        0,
        args.source_first + (local % usize::from(args.source_addrs.max(1))) as u8,
    );
    let mut permit = Some(permit);
    let mut node = home;
    let mut failures = 0_u32;
    let mut ever_subscribed = false;
    loop {
        let mut session = Session {
            first: !ever_subscribed,
            ..Session::default()
        };
        let end =
            match tokio::time::timeout(Duration::from_secs(10), connect(args.nodes[node], source))
                .await
            {
                Err(_) => End::Failed("connect_timeout".to_owned()),
                Ok(Err(err)) => End::Failed(error_kind(&err)),
                Ok(Ok((_, Upgrade::Refused(status)))) => End::Refused(status),
                Ok(Ok((stream, Upgrade::Open(left)))) => {
                    run_session(
                        &shared,
                        local,
                        &room,
                        stream,
                        left,
                        &mut session,
                        &mut permit,
                    )
                    .await
                }
            };
        drop(permit.take());
        let was_subscribed = session.subscribed == [true, true];
        {
            let mut stats = shared.stats.borrow_mut();
            if was_subscribed {
                stats.subscribed_now -= 1;
            }
            match &end {
                End::Closed(code) => Stats::count(&mut stats.ends, format!("closed_{code}")),
                End::Eof => Stats::count(&mut stats.ends, "eof".to_owned()),
                End::Refused(status) => Stats::count(&mut stats.refused, status.to_string()),
                End::Failed(kind) => Stats::count(&mut stats.connect_errors, kind.clone()),
            }
        }
        if shared.stopping.get() {
            return;
        }
        if was_subscribed {
            ever_subscribed = true;
            failures = 0;
        } else {
            failures += 1;
            if failures >= MAX_FAILURES {
                shared.stats.borrow_mut().gave_up += 1;
                return;
            }
        }
        let pause = match (&end, session.after_ms) {
            (End::Closed(_), Some(after_ms)) => Duration::from_millis(after_ms.min(5_000)),
            _ if failures == 0 => Duration::from_millis(50 + shared.below(200) as u64),
            _ => Duration::from_millis(
                (100 * u64::from(failures)).min(2_000) + shared.below(200) as u64,
            ),
        };
        tokio::time::sleep(pause).await;
        node = shared.next_node(node, home, failures);
    }
}

fn error_kind(err: &anyhow::Error) -> String {
    match err.downcast_ref::<std::io::Error>() {
        Some(io) => format!("io_{:?}", io.kind()),
        None => err.to_string().chars().take(60).collect(),
    }
}

async fn connect(server: SocketAddr, source: Ipv4Addr) -> anyhow::Result<(TcpStream, Upgrade)> {
    let socket = crate::source::bound(source)?;
    let mut stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let upgrade = wire::upgrade(&mut stream, server).await?;
    Ok((stream, upgrade))
}

/// A session from `welcome` to its end: subscribes (with `since` when a position is held),
/// checks what arrives.
async fn run_session(
    shared: &Shared,
    local: usize,
    room: &str,
    mut stream: TcpStream,
    mut left: Vec<u8>,
    session: &mut Session,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> End {
    let mut replies = Vec::new();
    let subscribe_by = Instant::now() + SUBSCRIBE_TIMEOUT;
    // What the upgrade's read brought beyond the head.
    let used = wire::parse(&left, &mut replies, &mut |event| {
        on_event(shared, local, room, session, event);
    });
    left.drain(..used);
    loop {
        // Subscribes owed (after `welcome`, or a retry that is due).
        let due = session.retry_at.is_none_or(|at| Instant::now() >= at);
        if due && session.to_send.contains(&true) {
            session.retry_at = None;
            let positions = shared.positions.borrow()[local];
            for (which, channel) in [(ROOM, room), (GLOBAL, shared.args.global.as_str())] {
                if std::mem::take(&mut session.to_send[which]) {
                    let since = positions[which]
                        .get()
                        .map(|at| format!(r#","since":"{:016x}-{}""#, at.epoch, at.seq))
                        .unwrap_or_default();
                    let frame = format!(
                        r#"{{"type":"subscribe","id":{},"channel":"{channel}"{since}}}"#,
                        which + 1
                    );
                    wire::text(&frame, &mut replies);
                }
            }
        }
        if let Some(code) = session.closed {
            wire::close(code, &mut replies);
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&replies)).await;
            return End::Closed(code);
        }
        if !replies.is_empty() {
            if let Err(err) = stream.write_all(&replies).await {
                return End::Failed(format!("io_{:?}", err.kind()));
            }
            replies.clear();
        }
        if session.subscribed == [true, true] {
            // The ramp's next socket may start upgrading.
            drop(permit.take());
        }
        let subscribed = session.subscribed == [true, true];
        if !subscribed && Instant::now() >= subscribe_by {
            return End::Failed("subscribe_timeout".to_owned());
        }
        // Wake for a retry that is due, or to give up on a session that never subscribes.
        let wake = match (session.retry_at, subscribed) {
            (Some(retry), false) => Some(retry.min(subscribe_by)),
            (retry, true) => retry,
            (None, false) => Some(subscribe_by),
        };
        let read = {
            let mut on = |event: Event<'_>| on_event(shared, local, room, session, event);
            tokio::select! {
                read = wire::read(&stream, &shared.scratch, &mut left, &mut replies, &mut on) => Some(read),
                () = sleep_until_some(wake) => None,
            }
        };
        match read {
            None => {}
            Some(Ok(wire::Read::More)) => {}
            Some(Ok(wire::Read::Eof)) => return End::Eof,
            Some(Err(err)) => return End::Failed(format!("io_{:?}", err.kind())),
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One frame from the server.
fn on_event(shared: &Shared, local: usize, room: &str, session: &mut Session, event: Event<'_>) {
    let text = match event {
        Event::Close(code) => {
            session.closed = Some(code);
            return;
        }
        Event::Text(text) => text,
    };
    let Ok(frame) = serde_json::from_slice::<Frame<'_>>(text) else {
        shared.stats.borrow_mut().unparsed += 1;
        return;
    };
    let which = |channel: Option<&str>| match channel {
        Some(channel) if channel == room => Some(ROOM),
        Some(channel) if channel == shared.args.global => Some(GLOBAL),
        _ => None,
    };
    match frame.kind {
        "message" => {
            let (Some(which), Some(offset)) =
                (which(frame.channel), frame.offset.and_then(Offset::parse))
            else {
                shared.stats.borrow_mut().unparsed += 1;
                return;
            };
            let mut stats = shared.stats.borrow_mut();
            let fresh = shared.positions.borrow_mut()[local][which]
                .message(offset, &mut stats.losses[which]);
            if !fresh {
                return;
            }
            stats.delivered[which] += 1;
            let stamp = frame
                .data
                .and_then(|data| serde_json::from_str::<Stamp>(data.get()).ok());
            let Some(stamp) = stamp else {
                return;
            };
            let micros = (now_ns().saturating_sub(stamp.ts) / 1000).max(1);
            if which == ROOM {
                stats.last_room_delivery = Instant::now();
                let second = stats.second();
                second.room_deliveries += 1;
                let _ = second.room_latency.record(micros);
            } else if let Some(n) = stamp.n.and_then(|n| usize::try_from(n).ok()) {
                if n < MAX_BROADCASTS {
                    if stats.broadcasts.len() <= n {
                        stats.broadcasts.resize_with(n + 1, || None);
                    }
                    let (deliveries, latency) =
                        stats.broadcasts[n].get_or_insert_with(|| (0, super::latency_histogram()));
                    *deliveries += 1;
                    let _ = latency.record(micros);
                }
            }
        }
        "subscribed" => {
            let Some(which) = which(frame.channel) else {
                return;
            };
            let Some(offset) = frame.offset.and_then(Offset::parse) else {
                shared.stats.borrow_mut().unparsed += 1;
                return;
            };
            let mut stats = shared.stats.borrow_mut();
            shared.positions.borrow_mut()[local][which].subscribed(
                offset,
                frame.recovered,
                &mut stats.losses[which],
            );
            session.subscribed[which] = true;
            if session.subscribed == [true, true] {
                stats.subscribed_now += 1;
                let first = session.first;
                let second = stats.second();
                if first {
                    second.connects += 1;
                } else {
                    second.resumes += 1;
                }
                if !first {
                    stats.resumed += 1;
                } else {
                    stats.first_subscribed += 1;
                    if stats.first_subscribed == shared.positions.borrow().len() {
                        stats.ramp_done_unix = unix_now();
                    }
                }
            }
        }
        "reset" => {
            let (Some(which), Some(offset)) =
                (which(frame.channel), frame.offset.and_then(Offset::parse))
            else {
                return;
            };
            let mut stats = shared.stats.borrow_mut();
            shared.positions.borrow_mut()[local][which].reset(offset, &mut stats.losses[which]);
        }
        "welcome" => {
            session.to_send = [true, true];
        }
        "join" => shared.stats.borrow_mut().joins += 1,
        "leave" => shared.stats.borrow_mut().leaves += 1,
        "reconnect" => {
            session.after_ms = frame.after_ms;
            shared.stats.borrow_mut().reconnect_frames += 1;
        }
        "error" => {
            let Some(id) = frame.id.and_then(|id| usize::try_from(id).ok()) else {
                return;
            };
            let code = frame.code.unwrap_or("unknown").to_owned();
            Stats::count(&mut shared.stats.borrow_mut().subscribe_errors, code);
            if let Some(which) = id.checked_sub(1).filter(|&which| which < 2)
                && session.retries[which] < MAX_SUBSCRIBE_RETRIES
            {
                session.retries[which] += 1;
                session.to_send[which] = true;
                session.retry_at = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        _ => {}
    }
}

/// The results, with every socket's tail checked against the publishers' last acknowledged
/// offsets.
fn finish(
    shared: &Shared,
    dir: &RunDir,
    count: usize,
    ramp_started_unix: f64,
) -> anyhow::Result<GenResult> {
    let room_acks: Vec<Option<Offset>> = match super::read_json::<RoomsResult>(&dir.rooms()) {
        Ok(rooms) => rooms.acks,
        Err(err) => {
            eprintln!("no room acknowledgements: {err:#}");
            Vec::new()
        }
    };
    let global_ack = super::read_json::<BroadcastResult>(&dir.broadcasts())
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
                latency: super::histogram_to_hex(latency).unwrap_or_default(),
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
