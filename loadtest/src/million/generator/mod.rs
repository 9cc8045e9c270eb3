//! `million generator`: one load generator, holding the sockets of one node's share.
//!
//! Socket `g` of the whole run (`g = index + k * nodes`) first connects to node `g % nodes`
//! (this generator's node) and belongs to room `g / room_size`, so the members of a room are
//! on `room_size` different nodes. It subscribes to its room and to the global channel and
//! checks every `message`, `reset` and resume reply against the last offset it holds
//! (`track`). On any close (a drain's 1012 after `reconnect`, or anything else) it waits the
//! `after_ms` it was given, connects to another node (its first node if it is elsewhere,
//! else the least loaded other, as a least-connections balancer would; a refused upgrade
//! tries again) and resubscribes with `since`.
//!
//! Everything runs on one thread: the sockets share one read buffer, and their state is in
//! `RefCell`s borrowed between awaits only. Files: this one (the ramp and each socket's
//! sessions one after another), `session` (one session: subscribes, frames, checks),
//! `stats` (what is counted and the results).

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use std::sync::Arc;
use tokio::{net::TcpStream, sync::Semaphore, time::Instant};

use super::{
    Losses, RunDir, Status,
    track::Position,
    wire::{self, Upgrade},
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
    /// Control API addresses to read `/v1/nodes` from (each node's connections, from the
    /// registry), one after another every second: where a socket goes after a close. Without
    /// them, a random node.
    #[arg(long, value_delimiter = ',')]
    controls: Vec<SocketAddr>,
    /// Sockets of the whole run.
    #[arg(long)]
    sockets: usize,
    /// This process's connects per second during the ramp (held flat: a tick per connect,
    /// none made up when late).
    #[arg(long, default_value_t = 100)]
    connect_rate: u64,
    /// Sockets upgrading at once at most: in the ramp from connect to subscribed, in a
    /// reconnect from connect to the upgrade's answer. A drain hands one generator a node's
    /// sockets at once, and connects opened faster than this process can write their upgrade
    /// requests would look like silent clients to the nodes (closed after
    /// `session.first_byte_timeout`). A million devices each write theirs at once; one
    /// process standing in for 19,000 of them queues instead.
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
/// The longest wait between tries after failures (full jitter below it, as the JS client).
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait a server's `reconnect.after_ms` is followed for.
const MAX_ADVISED: Duration = Duration::from_secs(60);

mod session;
mod stats;

use self::{
    session::{End, Session, run_session},
    stats::{Second, Stats, finish},
};

const ROOM: usize = 0;
const GLOBAL: usize = 1;

struct Shared {
    args: GenArgs,
    scratch: RefCell<Vec<u8>>,
    /// Per socket of this process: its room's and the global channel's position.
    positions: RefCell<Vec<[Position; 2]>>,
    stats: RefCell<Stats>,
    /// The run is ending: no new sockets; those of the run keep coming back until the
    /// results are written.
    stopping: Cell<bool>,
    rng: Cell<u64>,
    /// Sockets between connect and subscribed (`GenArgs::concurrency`).
    upgrading: Arc<Semaphore>,
    /// Per node (in `GenArgs::nodes` order), its connections as `/v1/nodes` last said, plus
    /// the sockets this process sent it since; `u64::MAX` when not listed, draining, or
    /// it refused an upgrade since.
    loads: RefCell<Vec<u64>>,
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
    /// (a drain's clients go home once their node is back), else the least loaded other
    /// node, as a least-connections balancer would send it (ties broken at random). The
    /// loads are a second or two old: each socket sent adds one at once, so this process
    /// does not pile its sockets on one node meanwhile; with no loads, a random node.
    fn next_node(&self, current: usize, home: usize, failures: u32) -> usize {
        let nodes = self.args.nodes.len();
        if nodes == 1 {
            return 0;
        }
        if failures == 0 && home != current {
            return home;
        }
        let start = self.below(nodes);
        let mut loads = self.loads.borrow_mut();
        let pick = (0..nodes)
            .map(|step| (start + step) % nodes)
            .filter(|&node| node != current)
            .min_by_key(|&node| loads[node])
            .unwrap_or(current);
        loads[pick] = loads[pick].saturating_add(1);
        pick
    }
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
        upgrading: Arc::new(Semaphore::new(args.concurrency.max(1))),
        loads: RefCell::new(vec![0; args.nodes.len()]),
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
    if !shared.args.controls.is_empty() {
        tokio::task::spawn_local(read_loads(Rc::clone(&shared)));
    }

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
    let mut ticker = tokio::time::interval(Duration::from_nanos(
        1_000_000_000 / shared.args.connect_rate.max(1),
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for local in 0..count {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&shared.upgrading).acquire_owned().await else {
            return;
        };
        if shared.stopping.get() {
            return;
        }
        tokio::task::spawn_local(socket(Rc::clone(&shared), local, permit));
    }
}

/// Every second, each node's connections from `/v1/nodes` (the controls in turn).
async fn read_loads(shared: Rc<Shared>) {
    #[derive(serde::Deserialize)]
    struct Nodes {
        nodes: Vec<Listed>,
    }
    #[derive(serde::Deserialize)]
    struct Listed {
        ws_addr: SocketAddr,
        connections: u64,
        #[serde(default)]
        draining: bool,
    }
    let controls = &shared.args.controls;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    for turn in 0.. {
        ticker.tick().await;
        let control = controls[turn % controls.len()];
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            let mut connection = crate::http_publish::Connection::open(control).await?;
            let head = format!("GET /v1/nodes HTTP/1.1\r\nhost: {control}\r\n");
            connection.request(&head, "").await
        })
        .await;
        let Ok(Ok(answer)) = answer else { continue };
        let Ok(listed) = serde_json::from_slice::<Nodes>(&answer.body) else {
            continue;
        };
        let mut loads = shared.loads.borrow_mut();
        loads.fill(u64::MAX);
        for node in listed.nodes {
            if let Some(index) = shared.args.nodes.iter().position(|at| *at == node.ws_addr) {
                loads[index] = if node.draining {
                    u64::MAX
                } else {
                    node.connections
                };
            }
        }
    }
}

/// Writes the status file every second (and closes the per-second counters).
///
/// The file is written by a thread of its own: with 59 generators renaming their status
/// files in one directory every second on a starved machine, `open` and `rename` waited
/// seconds on the directory's lock (half the generators in D state at 480,000 sockets), and
/// on this thread every socket of the generator would wait with them. A status the writer
/// has not taken yet is replaced by the next.
async fn report_status(shared: Rc<Shared>, path: PathBuf, count: usize) {
    let (to_writer, statuses) = std::sync::mpsc::sync_channel::<Status>(1);
    let spawned = std::thread::Builder::new()
        .name("status-writer".to_owned())
        .spawn(move || {
            for status in statuses {
                if let Err(err) = super::write_json(&path, &status) {
                    eprintln!("writing the status: {err:#}");
                }
            }
        });
    if let Err(err) = spawned {
        eprintln!("starting the status writer: {err}");
        return;
    }
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
        // Full: the writer is still busy with the last one; this one is dropped.
        let _ = to_writer.try_send(status);
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
        if permit.is_none() {
            let Ok(taken) = Arc::clone(&shared.upgrading).acquire_owned().await else {
                return;
            };
            permit = Some(taken);
        }
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
                    // A resume holds its place among the upgrading until its upgrade is
                    // answered (a node's clients come back together after a drain); the
                    // ramp's sockets until they are subscribed (the ramp's pace).
                    if ever_subscribed {
                        drop(permit.take());
                    }
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
                End::Refused(status) => {
                    Stats::count(&mut stats.refused, status.to_string());
                    shared.loads.borrow_mut()[node] = u64::MAX;
                }
                End::Failed(kind) => Stats::count(&mut stats.connect_errors, kind.clone()),
            }
        }
        // A socket that ends while the run settles still comes back (its client would):
        // the end of the run is no reason to leave a room, and a socket that had not
        // resubscribed by then would be counted as missing the room's last messages.
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
            (End::Closed(_), Some(after_ms)) => Duration::from_millis(after_ms).min(MAX_ADVISED),
            _ if failures == 0 => Duration::from_millis(50 + shared.below(200) as u64),
            // Full jitter: a node's refused sockets do not all come back together.
            _ => {
                let cap = Duration::from_millis(100 << failures.min(5)).min(MAX_BACKOFF);
                Duration::from_millis(shared.below(cap.as_millis() as usize + 1) as u64)
            }
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
