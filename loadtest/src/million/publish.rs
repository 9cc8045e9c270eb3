//! `million publish`: the backends of the run, over the control API.
//!
//! `broadcast`: one message to the global channel every `--interval-ms` through
//! `POST /v1/publish`, its number and send time in `data`. `rooms`: `POST /v1/batch` requests
//! of random rooms at a target rate, each to a random node, on a few keep-alive connections
//! (a request waits for the previous answer on its connection; when all are busy the rate
//! falls behind and the results say so). Every acknowledged offset moves its room's last
//! acknowledged offset, which the generators check their sockets' tails against. A request
//! that fails after it was sent (its node went away) may have published: its commands are
//! counted `unknown`, never acknowledged, never retried.

use std::{
    cell::RefCell, collections::BTreeMap, net::SocketAddr, path::PathBuf, rc::Rc, time::Duration,
};

use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::time::Instant;

use super::{BroadcastResult, BroadcastSent, Offset, Percentiles, PublishSecond, RoomsResult};
use crate::{http_publish::Connection, now_ns};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Broadcasts to the global channel, one at a time.
    Broadcast(BroadcastArgs),
    /// Room traffic in batches, until the stop file appears.
    Rooms(RoomsArgs),
}

#[derive(Debug, clap::Args)]
struct BroadcastArgs {
    /// The nodes' control listeners; broadcast n goes to node n mod their number.
    #[arg(long, value_delimiter = ',')]
    controls: Vec<SocketAddr>,
    #[arg(long, default_value = "global")]
    channel: String,
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Time between two broadcasts' sends.
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    /// Bytes of `data`, about.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    #[arg(long)]
    json: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RoomsArgs {
    /// The nodes' control listeners; each request goes to a random one.
    #[arg(long, value_delimiter = ',')]
    controls: Vec<SocketAddr>,
    /// Rooms `PREFIX0` .. `PREFIX(N-1)`.
    #[arg(long)]
    rooms: usize,
    #[arg(long, default_value = "room:")]
    room_prefix: String,
    /// Messages per second, all requests together.
    #[arg(long)]
    rate: u64,
    /// Messages per request; 0 picks about 50 requests a second (1 to 1000 messages each).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Requests in flight at most (each on its own keep-alive connection per node).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Bytes of `data`, about.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Stop once this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// Stop after this long in any case.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    #[arg(long)]
    json: PathBuf,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    match args.mode {
        Mode::Broadcast(args) => broadcast(args).await,
        Mode::Rooms(args) => rooms(args).await,
    }
}

fn pad(payload: usize) -> String {
    "x".repeat(payload.saturating_sub(40))
}

fn head(path: &str, control: SocketAddr) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: {control}\r\ncontent-type: application/json\r\n")
}

#[derive(Deserialize)]
struct PublishAnswer<'a> {
    #[serde(borrow)]
    offset: &'a str,
}

async fn broadcast(args: BroadcastArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.controls.is_empty(), "--controls lists no node");
    let pad = pad(args.payload);
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    let mut result = BroadcastResult {
        channel: args.channel.clone(),
        ..BroadcastResult::default()
    };
    for n in 0..args.count {
        ticker.tick().await;
        let control = args.controls[usize::try_from(n)? % args.controls.len()];
        let sent_ns = now_ns();
        let body = format!(
            r#"{{"channel":"{}","data":{{"ts":{sent_ns},"n":{n},"pad":"{pad}"}}}}"#,
            args.channel
        );
        let began = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let mut connection = Connection::open(control).await?;
            connection
                .request(&head("/v1/publish", control), &body)
                .await
        })
        .await;
        let (status, offset) = match answer {
            Ok(Ok(answer)) => {
                let offset = serde_json::from_slice::<PublishAnswer<'_>>(&answer.body)
                    .ok()
                    .and_then(|answer| Offset::parse(answer.offset));
                (answer.status, offset)
            }
            Ok(Err(err)) => {
                eprintln!("broadcast {n}: {err:#}");
                (0, None)
            }
            Err(_) => {
                eprintln!("broadcast {n}: no answer within 10 s");
                (0, None)
            }
        };
        if offset.is_some() {
            result.last_acked = offset;
        }
        eprintln!("broadcast {n}: {status} {offset:?}");
        result.sent.push(BroadcastSent {
            n,
            sent_unix: sent_ns as f64 / 1e9,
            status,
            offset,
            request_ms: began.elapsed().as_secs_f64() * 1000.0,
        });
    }
    super::write_json(&args.json, &result)
}

#[derive(Deserialize)]
struct BatchAnswer<'a> {
    #[serde(borrow)]
    replies: Vec<Reply<'a>>,
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(default, borrow)]
    offset: Option<&'a str>,
    #[serde(default, borrow)]
    error: Option<ReplyError<'a>>,
}

#[derive(Deserialize)]
struct ReplyError<'a> {
    #[serde(borrow)]
    code: &'a str,
}

const UNANSWERED: u8 = 1;
const REFUSED: u8 = 2;

/// What the room publishers share (one thread).
struct Rooms {
    args: RoomsArgs,
    pad: String,
    acks: Vec<Option<Offset>>,
    /// Per room, the acknowledgements counted.
    acked_per_room: Vec<u32>,
    /// Per room: a request with it got no answer (`UNANSWERED`), a command refused
    /// (`REFUSED`).
    troubles: Vec<u8>,
    acked: u64,
    refused: BTreeMap<String, u64>,
    unknown: u64,
    unknown_requests: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    connect_failures: u64,
    epoch_changes: u64,
    latency: Histogram<u64>,
    seconds: BTreeMap<u64, PublishSecond>,
    rng: u64,
}

impl Rooms {
    fn below(&mut self, bound: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        usize::try_from(self.rng % bound.max(1) as u64).unwrap_or(0)
    }

    fn second(&mut self) -> &mut PublishSecond {
        let unix = now_ns() / 1_000_000_000;
        self.seconds.entry(unix).or_insert_with(|| PublishSecond {
            unix,
            ..PublishSecond::default()
        })
    }

    fn ack(&mut self, room: usize, offset: Offset) {
        let Some(slot) = self.acks.get_mut(room) else {
            return;
        };
        match slot {
            Some(held) if held.epoch == offset.epoch => held.seq = held.seq.max(offset.seq),
            Some(held) => {
                self.epoch_changes += 1;
                *held = offset;
            }
            None => *slot = Some(offset),
        }
        self.acked_per_room[room] += 1;
        self.acked += 1;
        self.second().acked += 1;
    }
}

async fn rooms(args: RoomsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.controls.is_empty(), "--controls lists no node");
    anyhow::ensure!(
        args.rooms > 0 && args.rate > 0,
        "--rooms and --rate must be above 0"
    );
    let batch = if args.batch == 0 {
        usize::try_from(args.rate / 50)
            .unwrap_or(1000)
            .clamp(1, 1000)
    } else {
        args.batch.min(1000)
    };
    let connections = args.connections.max(1);
    let json = args.json.clone();
    let stop_file = args.stop_file.clone();
    let max = Duration::from_secs(args.max_seconds);
    let target_rate = args.rate;
    let state = Rc::new(RefCell::new(Rooms {
        pad: pad(args.payload),
        acks: vec![None; args.rooms],
        acked_per_room: vec![0; args.rooms],
        troubles: vec![0; args.rooms],
        acked: 0,
        refused: BTreeMap::new(),
        unknown: 0,
        unknown_requests: BTreeMap::new(),
        statuses: BTreeMap::new(),
        connect_failures: 0,
        epoch_changes: 0,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        seconds: BTreeMap::new(),
        rng: now_ns() | 1,
        args,
    }));
    let (batch_tx, batch_rx) = flume::bounded::<Vec<usize>>(connections);
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::task::spawn_local(worker(Rc::clone(&state), batch_rx.clone())))
        .collect();
    drop(batch_rx);
    let started = Instant::now();
    let started_unix = now_ns() as f64 / 1e9;
    let mut ticker = tokio::time::interval(Duration::from_nanos(
        1_000_000_000 * batch as u64 / target_rate,
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();
    while started.elapsed() < max && !stop_file.exists() {
        ticker.tick().await;
        let rooms: Vec<usize> = {
            let mut state = state.borrow_mut();
            let count = state.args.rooms;
            (0..batch).map(|_| state.below(count)).collect()
        };
        // Waits while every connection is busy: the rate falls behind, and the results
        // show it.
        if batch_tx.send_async(rooms).await.is_err() {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let state = state.borrow();
            eprintln!(
                "rooms: {:.0} s, {} acknowledged, {} refused, {} unknown",
                started.elapsed().as_secs_f64(),
                state.acked,
                state.refused.values().sum::<u64>(),
                state.unknown
            );
        }
    }
    let stopped_unix = now_ns() as f64 / 1e9;
    drop(batch_tx);
    for worker in workers {
        worker.await?;
    }
    let state = Rc::try_unwrap(state)
        .map_err(|_| anyhow::anyhow!("a room publisher still runs"))?
        .into_inner();
    let mut seqs_without_ack = BTreeMap::new();
    if state.epoch_changes == 0 {
        for ((last, &count), &trouble) in state
            .acks
            .iter()
            .zip(&state.acked_per_room)
            .zip(&state.troubles)
        {
            let missing = last.map_or(0, |last| last.seq.saturating_sub(u64::from(count)));
            if missing > 0 {
                let why = if trouble & UNANSWERED != 0 {
                    "unanswered"
                } else if trouble & REFUSED != 0 {
                    "refused"
                } else {
                    "unexplained"
                };
                *seqs_without_ack.entry(why.to_owned()).or_default() += missing;
            }
        }
    }
    let result = RoomsResult {
        target_rate,
        batch,
        started_unix,
        stopped_unix,
        acked: state.acked,
        refused: state.refused,
        unknown: state.unknown,
        unknown_requests: state.unknown_requests,
        statuses: state.statuses,
        connect_failures: state.connect_failures,
        epoch_changes: state.epoch_changes,
        seqs_without_ack,
        request_latency_ms: Percentiles::ms(&state.latency),
        seconds: state.seconds.into_values().collect(),
        acks: state.acks,
    };
    super::write_json(&json, &result)
}

/// Sends the batches it is given, each to a random node, keeping a connection per node.
async fn worker(state: Rc<RefCell<Rooms>>, batches: flume::Receiver<Vec<usize>>) {
    let mut open: BTreeMap<usize, Connection> = BTreeMap::new();
    while let Ok(rooms) = batches.recv_async().await {
        let nodes = state.borrow().args.controls.len();
        // A node that refuses connections is restarting: try the others.
        let mut sent = false;
        let first = state.borrow_mut().below(nodes);
        for attempt in 0..nodes {
            let node = (first + attempt) % nodes;
            let control = state.borrow().args.controls[node];
            // A kept connection the node closed meanwhile (it exited) is dropped before use,
            // so that a request is never sent into a socket nobody reads.
            let mut kept = open.remove(&node);
            if let Some(connection) = &mut kept
                && connection.closed_by_peer().await
            {
                kept = None;
            }
            let reused = kept.is_some();
            let mut connection = match kept {
                Some(connection) => connection,
                None => {
                    match tokio::time::timeout(Duration::from_secs(2), Connection::open(control))
                        .await
                    {
                        Ok(Ok(connection)) => connection,
                        _ => {
                            state.borrow_mut().connect_failures += 1;
                            continue;
                        }
                    }
                }
            };
            let body = {
                let state = state.borrow();
                let ts = now_ns();
                let commands: Vec<String> = rooms
                    .iter()
                    .map(|room| {
                        format!(
                            r#"{{"publish":{{"channel":"{}{room}","data":{{"ts":{ts},"pad":"{}"}}}}}}"#,
                            state.args.room_prefix, state.pad
                        )
                    })
                    .collect();
                format!(r#"{{"commands":[{}]}}"#, commands.join(","))
            };
            let began = Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                connection.request(&head("/v1/batch", control), &body),
            )
            .await;
            let mut state = state.borrow_mut();
            let _ = state.latency.record(
                u64::try_from(began.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
            match answer {
                Ok(Ok(answer)) => {
                    if !answer.close {
                        open.insert(node, connection);
                    }
                    record(&mut state, &rooms, &answer);
                }
                // Sent, and no answer: maybe published, never acknowledged.
                Ok(Err(_)) | Err(_) => {
                    let how = match &answer {
                        Ok(Err(err)) => format!("{err:#}"),
                        _ => "no answer within 10 s".to_owned(),
                    };
                    let connection = if reused { "kept" } else { "new" };
                    *state
                        .unknown_requests
                        .entry(format!("{connection} connection: {how}"))
                        .or_default() += 1;
                    state.unknown += rooms.len() as u64;
                    for &room in &rooms {
                        state.troubles[room] |= UNANSWERED;
                    }
                    state.second().unknown += rooms.len() as u64;
                }
            }
            sent = true;
            break;
        }
        if !sent {
            let mut state = state.borrow_mut();
            *state.refused.entry("no_node".to_owned()).or_default() += rooms.len() as u64;
        }
    }
}

/// Takes a batch's answer: an offset or an error per command.
fn record(state: &mut Rooms, rooms: &[usize], answer: &crate::http_publish::Answer) {
    let parsed = (answer.status == 200)
        .then(|| serde_json::from_slice::<BatchAnswer<'_>>(&answer.body).ok())
        .flatten();
    let Some(parsed) = parsed else {
        *state.statuses.entry(answer.status.to_string()).or_default() += 1;
        *state
            .refused
            .entry(format!("http_{}", answer.status))
            .or_default() += rooms.len() as u64;
        for &room in rooms {
            state.troubles[room] |= REFUSED;
        }
        state.second().refused += rooms.len() as u64;
        return;
    };
    for (room, reply) in rooms.iter().zip(&parsed.replies) {
        match (reply.offset.and_then(Offset::parse), &reply.error) {
            (Some(offset), _) => state.ack(*room, offset),
            (None, error) => {
                let code = error.as_ref().map_or("unreadable", |error| error.code);
                state.troubles[*room] |= REFUSED;
                *state.refused.entry(code.to_owned()).or_default() += 1;
                state.second().refused += 1;
            }
        }
    }
}
