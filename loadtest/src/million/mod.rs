//! `million`: the parts of `loadtest/million.sh`, the run of issue 27 (a million subscribed
//! sockets on one machine, rooms of 10 with presence, broadcasts, room traffic through a
//! rolling drain and a Redis restart, every message checked). The script starts the
//! processes; these subcommands are what it starts:
//!
//! - `generator`: one load generator per node. It holds its share of the sockets, each subscribed
//!   to its room and to the global channel, checks every offset (`track`), resumes on another
//!   node after any close, and reports per second (connects, subscribed sockets, room
//!   latency) and per broadcast (deliveries, latency).
//! - `publish broadcast` / `publish rooms`: the backends. Broadcasts through
//!   `POST /v1/publish`; room traffic through `POST /v1/batch` to random nodes at a target
//!   rate, recording the last acknowledged offset of every room, so a subscriber's missing
//!   tail can be told from the normal end of a room's traffic.
//! - `sample`: the machine's `MemAvailable`, each node's RSS and CPU time, every second.
//! - `wait`: until the generators report every socket subscribed, or every broadcast in.
//! - `report`: merges everything into one JSON file and prints the summary line.
//!
//! The processes talk through files in one run directory (`--dir`): each writes its own, the
//! script writes `events.jsonl`, `pids` and the `finish` marker.

mod generator;
mod publish;
mod report;
mod sample;
mod track;
mod wire;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use track::{Losses, Offset};

#[derive(Debug, clap::Args)]
pub struct MillionArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Hold one node's share of the sockets and check every message they get.
    Generator(generator::GenArgs),
    /// Publish broadcasts (`/v1/publish`) or room traffic (`/v1/batch`).
    Publish(publish::PublishArgs),
    /// Sample machine memory and the processes' RSS and CPU every second.
    Sample(sample::SampleArgs),
    /// Wait until the generators report every socket subscribed or every broadcast in.
    Wait(WaitArgs),
    /// Merge the run directory into one JSON file and print the summary.
    Report(report::ReportArgs),
}

/// Runs a `million` subcommand on a runtime of one thread: the run has dozens of these
/// processes on two cores, and one thread lets a generator's sockets share one read buffer.
pub fn main(args: MillionArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        match args.command {
            Command::Generator(args) => generator::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Sample(args) => sample::run(args).await,
            Command::Wait(args) => wait(args).await,
            Command::Report(args) => report::run(&args),
        }
    })
}

/// What a generator says about itself every second (`gen-K.status.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub index: usize,
    /// Sockets it holds in all.
    pub sockets: usize,
    /// Sockets subscribed to both channels now.
    pub subscribed: u64,
    /// The lowest global-channel seq its subscribed sockets hold (0 before any broadcast).
    pub global_min_seq: u64,
}

/// A generator's results (`gen-K.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenResult {
    pub index: usize,
    pub sockets: usize,
    pub room: Losses,
    pub global: Losses,
    pub delivered_room: u64,
    pub delivered_global: u64,
    pub joins: u64,
    pub leaves: u64,
    /// `reconnect` frames (drains) received.
    pub reconnect_frames: u64,
    /// Sessions that ended, by close code (`closed_1012`) or how (`eof`, `io_...`).
    pub ends: std::collections::BTreeMap<String, u64>,
    /// Upgrades answered with another status than 101, by status.
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Connects that failed before an answer, by error.
    pub connect_errors: std::collections::BTreeMap<String, u64>,
    /// `error` replies to subscribes, by code.
    pub subscribe_errors: std::collections::BTreeMap<String, u64>,
    /// Sockets that stopped trying after too many failures in a row.
    pub gave_up: u64,
    /// Frames that were not JSON of a known shape.
    pub unparsed: u64,
    /// Resumes on another node that got both channels back.
    pub resumed: u64,
    pub ramp_started_unix: f64,
    /// When the last of its sockets first got both channels (0 if one never did).
    pub ramp_done_unix: f64,
    pub seconds: Vec<GenSecond>,
    pub broadcasts: Vec<BroadcastSeen>,
}

/// One second of a generator (by Unix second of the events).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenSecond {
    pub unix: u64,
    /// Sockets that got both channels for the first time.
    pub connects: u64,
    /// Sockets that got both channels back on another node.
    pub resumes: u64,
    /// Subscribed sockets at the end of the second.
    pub subscribed: u64,
    pub room_deliveries: u64,
    /// Room message latency (µs, publish to arrival) of the second: an HDR histogram, V2
    /// serialized, hex.
    pub room_latency: String,
}

/// One broadcast as a generator saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BroadcastSeen {
    pub n: u64,
    pub deliveries: u64,
    /// Latency (µs) of its deliveries, HDR V2, hex.
    pub latency: String,
}

/// `publish broadcast`'s results (`pub-broadcast.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BroadcastResult {
    pub channel: String,
    pub sent: Vec<BroadcastSent>,
    /// The last acknowledged offset: what every subscriber must reach.
    pub last_acked: Option<Offset>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BroadcastSent {
    pub n: u64,
    pub sent_unix: f64,
    pub status: u16,
    pub offset: Option<Offset>,
    pub request_ms: f64,
}

/// `publish rooms`' results (`pub-rooms.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomsResult {
    pub target_rate: u64,
    pub batch: usize,
    pub started_unix: f64,
    pub stopped_unix: f64,
    /// Messages acknowledged with an offset.
    pub acked: u64,
    /// Commands answered with an error (`unavailable` while Redis restarts), by code.
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Commands of requests that failed after being sent (a node going away): maybe
    /// published, never acknowledged.
    pub unknown: u64,
    /// Those requests, by what happened (`kept`/`new` connection, then the error).
    pub unknown_requests: std::collections::BTreeMap<String, u64>,
    /// Requests answered with a status other than 200, by status.
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// Connects to a node that failed (it was restarting); the batch went to another.
    pub connect_failures: u64,
    /// A room whose acknowledged epoch changed (history lost in Redis).
    pub epoch_changes: u64,
    /// Seqs the rooms' last acknowledged offsets passed that no acknowledgement carried:
    /// messages published without the publisher being told. Counted for rooms that stayed
    /// in one epoch, by what else happened to the room: a request that got no answer
    /// (`unanswered`), a command refused (`refused`: a 503 after a timeout may still have
    /// been published), or neither (`unexplained`).
    pub seqs_without_ack: std::collections::BTreeMap<String, u64>,
    pub request_latency_ms: Percentiles,
    pub seconds: Vec<PublishSecond>,
    /// Per room, the last acknowledged offset (`null`: nothing acknowledged).
    pub acks: Vec<Option<Offset>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishSecond {
    pub unix: u64,
    pub acked: u64,
    pub refused: u64,
    pub unknown: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in microseconds, in milliseconds.
    pub fn ms(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| (micros as f64 / 100.0).round() / 10.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// A latency histogram in microseconds, up to 10 minutes, two significant digits (the
/// generators keep one per second and per broadcast).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("the bounds are valid")
}

pub fn histogram_to_hex(histogram: &Histogram<u64>) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut bytes = Vec::new();
    hdrhistogram::serialization::Serializer::serialize(
        &mut hdrhistogram::serialization::V2Serializer::new(),
        histogram,
        &mut bytes,
    )
    .map_err(|err| anyhow::anyhow!("serializing a histogram: {err:?}"))?;
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(hex, "{byte:02x}")?;
    }
    Ok(hex)
}

pub fn histogram_from_hex(hex: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .context("a histogram's hex")?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|err| anyhow::anyhow!("reading a histogram: {err:?}"))
}

/// Writes `value` as JSON to `path` through a temporary file, so a reader never sees half.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec(value)?)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The run directory's files.
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn status(&self, index: usize) -> PathBuf {
        self.0.join(format!("gen-{index}.status.json"))
    }
    pub fn gen_result(&self, index: usize) -> PathBuf {
        self.0.join(format!("gen-{index}.json"))
    }
    pub fn finish(&self) -> PathBuf {
        self.0.join("finish")
    }
    pub fn broadcasts(&self) -> PathBuf {
        self.0.join("pub-broadcast.json")
    }
    pub fn rooms(&self) -> PathBuf {
        self.0.join("pub-rooms.json")
    }
    pub fn memory(&self) -> PathBuf {
        self.0.join("memory.jsonl")
    }
    pub fn events(&self) -> PathBuf {
        self.0.join("events.jsonl")
    }
    pub fn pids(&self) -> PathBuf {
        self.0.join("pids")
    }
    /// The generators' status files.
    pub fn statuses(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.ends_with(".status.json"))
            })
            .collect();
        paths.sort();
        paths
    }
}

#[derive(Debug, clap::Args)]
struct WaitArgs {
    /// The run directory.
    #[arg(long)]
    dir: PathBuf,
    /// Wait until this many sockets are subscribed, summed over the generators.
    #[arg(long)]
    subscribed: Option<u64>,
    /// Wait until every subscribed socket holds at least this global-channel seq.
    #[arg(long)]
    global_seq: Option<u64>,
    /// Wait until every subscribed socket holds the last broadcast acknowledged in
    /// `pub-broadcast.json`.
    #[arg(long)]
    broadcasts_delivered: bool,
    /// Give up after this many seconds (exit status 1).
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// `wait`: polls the generators' status files twice a second.
async fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let dir = RunDir(args.dir);
    let mut global_seq = args.global_seq;
    if args.broadcasts_delivered {
        let broadcasts: BroadcastResult = read_json(&dir.broadcasts())?;
        global_seq = global_seq.max(broadcasts.last_acked.map(|offset| offset.seq));
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.timeout_secs);
    let mut last_print = tokio::time::Instant::now();
    loop {
        let statuses: Vec<Status> = dir
            .statuses()
            .iter()
            .filter_map(|path| read_json(path).ok())
            .collect();
        let subscribed: u64 = statuses.iter().map(|status| status.subscribed).sum();
        let global_min = statuses
            .iter()
            .map(|status| status.global_min_seq)
            .min()
            .unwrap_or(0);
        let subscribed_ok = args.subscribed.is_none_or(|want| subscribed >= want);
        let global_ok = global_seq.is_none_or(|want| global_min >= want);
        if subscribed_ok && global_ok {
            return Ok(());
        }
        if last_print.elapsed() >= std::time::Duration::from_secs(5) {
            last_print = tokio::time::Instant::now();
            eprintln!("waiting: {subscribed} subscribed, lowest global seq {global_min}");
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "gave up waiting after {} s: {subscribed} subscribed, lowest global seq {global_min}",
                args.timeout_secs
            );
            std::process::exit(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
