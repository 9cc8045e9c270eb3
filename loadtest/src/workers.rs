//! Worker processes: one process may open only 20,000 files here, so larger connection
//! counts are spread over several copies of this binary, each with its own share of the
//! connections and its own source addresses. The parent starts them, waits until each has
//! connected, measures the servers while they hold, and merges their results.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use crate::{
    args::{FanoutArgs, IdleArgs},
    proc_stat,
};

struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    json: std::path::PathBuf,
}

/// What every worker launch needs: this binary, a scratch directory for the workers' JSON,
/// and the servers as one flag value.
struct Launch {
    exe: std::path::PathBuf,
    dir: std::path::PathBuf,
    servers: String,
}

impl Launch {
    fn new(
        workers: usize,
        source_first: u8,
        source_addrs: u8,
        servers: &[std::net::SocketAddr],
    ) -> anyhow::Result<Self> {
        let last_source =
            usize::from(source_first) + workers * usize::from(source_addrs.max(1)) - 1;
        if last_source > 254 {
            bail!("{workers} workers x {source_addrs} source addresses run past 127.0.0.254");
        }
        let exe = std::env::current_exe().context("finding this binary to start workers")?;
        let dir = std::env::temp_dir().join(format!("switchboard-loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let servers = servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self { exe, dir, servers })
    }

    /// Starts worker `index` with `args`, its `--json` file in the scratch directory, its
    /// stdout read by the parent and, with `stdin`, a pipe the parent closes to end it.
    fn spawn(&self, index: usize, args: &[String], stdin: bool) -> anyhow::Result<Worker> {
        let json = self.dir.join(format!("worker-{index}.json"));
        let mut child = Command::new(&self.exe)
            .args(args)
            .arg("--json")
            .arg(&json)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdout = child.stdout.take().context("a worker's stdout")?;
        Ok(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
            json,
        })
    }
}

/// Worker `index`'s share of `total` over `workers`.
fn share(total: usize, workers: usize, index: usize) -> usize {
    total / workers + usize::from(index < total % workers)
}

/// Worker `index`'s first source address: each worker gets its own range.
fn worker_source(first: u8, addrs: u8, index: usize) -> String {
    (usize::from(first) + index * usize::from(addrs.max(1))).to_string()
}

/// Waits until every worker printed `ready N`; returns the sum of the Ns.
async fn wait_ready(children: &mut [Worker]) -> anyhow::Result<usize> {
    let mut ready = 0;
    for (index, worker) in children.iter_mut().enumerate() {
        loop {
            match worker.lines.next_line().await? {
                Some(line) => {
                    if let Some(count) = line.strip_prefix("ready ") {
                        ready += count.trim().parse::<usize>().unwrap_or(0);
                        eprintln!("worker {index} connected ({count})");
                        break;
                    }
                }
                None => bail!("worker {index} exited before it connected"),
            }
        }
    }
    Ok(ready)
}

/// Waits for a worker to end (draining its table, so that it never blocks on a full pipe)
/// and reads its JSON.
async fn collect(index: usize, mut worker: Worker) -> anyhow::Result<serde_json::Value> {
    while worker.lines.next_line().await?.is_some() {}
    let status = worker.child.wait().await?;
    if !status.success() {
        bail!("worker {index} failed: {status}");
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(
        &worker.json,
    )?)?)
}

fn merge_errors(into: &mut BTreeMap<String, u64>, results: &serde_json::Value) {
    if let Some(map) = results["errors"].as_object() {
        for (kind, count) in map {
            *into.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
        }
    }
}

/// `idle` over `--workers` processes.
pub async fn idle(args: &IdleArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let workers = connect.workers;
    let launch = Launch::new(
        workers,
        connect.source_first,
        connect.source_addrs,
        &connect.server,
    )?;
    let rss_before = proc_stat::total_rss_kib(&connect.server_pid);
    let started = tokio::time::Instant::now();
    let mut children = Vec::with_capacity(workers);
    for index in 0..workers {
        // Workers hold a little longer than the parent's window, so every sample of the
        // parent sees all of them connected.
        let hold = (args.hold + 5).to_string();
        let mut worker_args = [
            "idle",
            "--worker",
            "--server",
            &launch.servers,
            "--connections",
            &share(connect.connections, workers, index).to_string(),
            "--rate",
            &(connect.rate / workers as u64).max(1).to_string(),
            "--concurrency",
            &(connect.concurrency / workers).max(1).to_string(),
            "--source-first",
            &worker_source(connect.source_first, connect.source_addrs, index),
            "--source-addrs",
            &connect.source_addrs.to_string(),
            "--hold",
            &hold,
            "--report-every",
            &hold,
        ]
        .map(str::to_owned)
        .to_vec();
        for (flag, value) in [
            ("--token-alg", &connect.token_alg),
            ("--token-key", &connect.token_key),
            ("--token-kid", &connect.token_kid),
        ] {
            if let Some(value) = value {
                worker_args.extend([flag.to_owned(), value.clone()]);
            }
        }
        worker_args.extend(["--channels".to_owned(), connect.channels.to_string()]);
        if let Some(ca) = &connect.tls_ca {
            worker_args.extend(["--tls-ca".to_owned(), ca.display().to_string()]);
        }
        if connect.deflate {
            worker_args.push("--deflate".to_owned());
        }
        children.push(launch.spawn(index, &worker_args, false)?);
    }
    let opened = wait_ready(&mut children).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = proc_stat::total_rss_kib(&connect.server_pid);
    let held = tokio::time::Instant::now();
    let mut samples = Vec::new();
    while held.elapsed() < Duration::from_secs(args.hold) {
        let left = Duration::from_secs(args.hold).saturating_sub(held.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(args.report_every.max(1)))).await;
        let sample = serde_json::json!({
            "t": held.elapsed().as_secs(),
            "server_rss_kib": proc_stat::total_rss_kib(&connect.server_pid),
        });
        eprintln!("idle {sample}");
        samples.push(sample);
    }
    let rss_end = proc_stat::total_rss_kib(&connect.server_pid);

    let mut closed = 0_u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (index, worker) in children.into_iter().enumerate() {
        let results = collect(index, worker).await?;
        closed += results["closed_during_hold"].as_u64().unwrap_or(0);
        merge_errors(&mut errors, &results);
    }
    let _ = std::fs::remove_dir_all(&launch.dir);
    let per_connection = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some(after.saturating_sub(before) as f64 / opened as f64)
        }
        _ => None,
    };
    let results = serde_json::json!({
        "scenario": "idle",
        "workers": workers,
        "servers": connect.server.len(),
        "connections": connect.connections,
        "opened": opened,
        "errors": errors,
        "connects_per_second": (opened as f64 / connect_secs).round(),
        "hold_seconds": args.hold,
        "closed_during_hold": closed,
        "server_rss_kib_per_connection_at_start": per_connection(rss_start),
        "server_rss_kib_per_connection_at_end": per_connection(rss_end),
        "intervals": samples,
    });
    crate::report(&results, connect.json.as_deref())
}

/// Fan-out subscribers held by worker processes while the parent publishes.
pub struct FanoutWorkers {
    children: Vec<Worker>,
    dir: std::path::PathBuf,
}

/// What the workers saw, merged.
pub struct FanoutMerged {
    pub delivered: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: hdrhistogram::Histogram<u64>,
    /// Per message number, the latest delivery's latency over all workers.
    pub completion: Vec<u64>,
}

/// Starts `args.workers` subscriber-only copies of this binary and waits until each has
/// connected its share.
pub async fn start_fanout(args: &FanoutArgs) -> anyhow::Result<FanoutWorkers> {
    let workers = args.workers;
    let launch = Launch::new(workers, args.source_first, args.source_addrs, &args.server)?;
    let slots = (args.rate * args.duration * 2).max(4096).to_string();
    let mut children = Vec::with_capacity(workers);
    let mut offset = 0;
    for index in 0..workers {
        let share = share(args.subscribers, workers, index);
        let mut worker_args = [
            "fanout",
            "--worker",
            "--rate",
            "0",
            "--server",
            &launch.servers,
            "--subscribers",
            &share.to_string(),
            "--subscriber-offset",
            &offset.to_string(),
            "--completion-slots",
            &slots,
            "--channel",
            &args.channel,
            "--channels",
            &args.channels.to_string(),
            "--payload",
            &args.payload.to_string(),
            "--source-first",
            &worker_source(args.source_first, args.source_addrs, index),
            "--source-addrs",
            &args.source_addrs.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        if args.baseline {
            worker_args.push("--baseline".to_owned());
        }
        if args.deflate {
            worker_args.push("--deflate".to_owned());
        }
        children.push(launch.spawn(index, &worker_args, true)?);
        offset += share;
    }
    wait_ready(&mut children).await?;
    Ok(FanoutWorkers {
        children,
        dir: launch.dir,
    })
}

impl FanoutWorkers {
    /// Tells the workers publishing is over (closes their stdin), waits for them and merges
    /// their results.
    pub async fn finish(self) -> anyhow::Result<FanoutMerged> {
        let mut merged = FanoutMerged {
            delivered: 0,
            errors: BTreeMap::new(),
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)?,
            completion: Vec::new(),
        };
        let mut children = self.children;
        for worker in &mut children {
            drop(worker.child.stdin.take());
        }
        for (index, worker) in children.into_iter().enumerate() {
            let results = collect(index, worker).await?;
            merged.delivered += results["delivered"].as_u64().unwrap_or(0);
            merge_errors(&mut merged.errors, &results);
            let bytes: Vec<u8> = serde_json::from_value(results["latency_v2"].clone())?;
            let latency: hdrhistogram::Histogram<u64> =
                hdrhistogram::serialization::Deserializer::new()
                    .deserialize(&mut bytes.as_slice())
                    .map_err(|err| anyhow::anyhow!("worker {index}'s histogram: {err:?}"))?;
            merged.latency.add(&latency)?;
            let completion: Vec<u64> = serde_json::from_value(results["completion_us"].clone())?;
            if merged.completion.len() < completion.len() {
                merged.completion.resize(completion.len(), 0);
            }
            for (slot, micros) in merged.completion.iter_mut().zip(completion) {
                *slot = (*slot).max(micros);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(merged)
    }
}
