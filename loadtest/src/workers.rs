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

use crate::{connect::IdleArgs, proc_stat};

struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    json: std::path::PathBuf,
}

/// `idle` over `--workers` processes.
pub async fn idle(args: &IdleArgs) -> anyhow::Result<()> {
    let connect = &args.connect;
    let workers = connect.workers;
    let last_source =
        usize::from(connect.source_first) + workers * usize::from(connect.source_addrs.max(1)) - 1;
    if last_source > 254 {
        bail!(
            "{workers} workers x {} source addresses run past 127.0.0.254",
            connect.source_addrs
        );
    }
    let exe = std::env::current_exe().context("finding this binary to start workers")?;
    let dir = std::env::temp_dir().join(format!("switchboard-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let servers = connect
        .server
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let rss_before = proc_stat::total_rss_kib(&connect.server_pid);
    let started = tokio::time::Instant::now();
    let mut children = Vec::with_capacity(workers);
    for index in 0..workers {
        let share =
            connect.connections / workers + usize::from(index < connect.connections % workers);
        let source_first =
            usize::from(connect.source_first) + index * usize::from(connect.source_addrs.max(1));
        let json = dir.join(format!("worker-{index}.json"));
        // Workers hold a little longer than the parent's window, so every sample of the
        // parent sees all of them connected.
        let hold = (args.hold + 5).to_string();
        let mut child = Command::new(&exe)
            .args(["idle", "--worker", "--server", &servers])
            .args(["--connections", &share.to_string()])
            .args([
                "--rate",
                &(connect.rate / workers as u64).max(1).to_string(),
            ])
            .args([
                "--concurrency",
                &(connect.concurrency / workers).max(1).to_string(),
            ])
            .args(["--source-first", &source_first.to_string()])
            .args(["--source-addrs", &connect.source_addrs.to_string()])
            .args(["--hold", &hold, "--report-every", &hold])
            .arg("--json")
            .arg(&json)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdout = child.stdout.take().context("a worker's stdout")?;
        children.push(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
            json,
        });
    }
    let mut opened = 0_usize;
    for (index, worker) in children.iter_mut().enumerate() {
        loop {
            match worker.lines.next_line().await? {
                Some(line) => {
                    if let Some(count) = line.strip_prefix("ready ") {
                        opened += count.trim().parse::<usize>().unwrap_or(0);
                        eprintln!("worker {index} connected ({count})");
                        break;
                    }
                }
                None => bail!("worker {index} exited before it connected"),
            }
        }
    }
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
    for (index, mut worker) in children.into_iter().enumerate() {
        // Drain its table so that it never blocks on a full pipe, then collect its JSON.
        while worker.lines.next_line().await?.is_some() {}
        let status = worker.child.wait().await?;
        if !status.success() {
            bail!("worker {index} failed: {status}");
        }
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&worker.json)?)?;
        closed += results["closed_during_hold"].as_u64().unwrap_or(0);
        if let Some(map) = results["errors"].as_object() {
            for (kind, count) in map {
                *errors.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
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
pub async fn start_fanout(args: &crate::fanout::FanoutArgs) -> anyhow::Result<FanoutWorkers> {
    let workers = args.workers;
    let last_source =
        usize::from(args.source_first) + workers * usize::from(args.source_addrs.max(1)) - 1;
    if last_source > 254 {
        bail!(
            "{workers} workers x {} source addresses run past 127.0.0.254",
            args.source_addrs
        );
    }
    let exe = std::env::current_exe().context("finding this binary to start workers")?;
    let dir = std::env::temp_dir().join(format!("switchboard-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let servers = args
        .server
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let slots = (args.rate * args.duration * 2).max(4096).to_string();
    let mut children = Vec::with_capacity(workers);
    let mut offset = 0;
    for index in 0..workers {
        let share = args.subscribers / workers + usize::from(index < args.subscribers % workers);
        let source_first =
            usize::from(args.source_first) + index * usize::from(args.source_addrs.max(1));
        let json = dir.join(format!("worker-{index}.json"));
        let mut command = Command::new(&exe);
        command
            .args(["fanout", "--worker", "--rate", "0", "--server", &servers])
            .args(["--subscribers", &share.to_string()])
            .args(["--subscriber-offset", &offset.to_string()])
            .args(["--completion-slots", &slots])
            .args([
                "--channel",
                &args.channel,
                "--channels",
                &args.channels.to_string(),
            ])
            .args(["--payload", &args.payload.to_string()])
            .args(["--source-first", &source_first.to_string()])
            .args(["--source-addrs", &args.source_addrs.to_string()])
            .arg("--json")
            .arg(&json);
        if args.baseline {
            command.arg("--baseline");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdout = child.stdout.take().context("a worker's stdout")?;
        children.push(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
            json,
        });
        offset += share;
    }
    for (index, worker) in children.iter_mut().enumerate() {
        loop {
            match worker.lines.next_line().await? {
                Some(line) if line.starts_with("ready ") => {
                    eprintln!("worker {index} connected ({})", &line[6..]);
                    break;
                }
                Some(_) => {}
                None => bail!("worker {index} exited before it connected"),
            }
        }
    }
    Ok(FanoutWorkers { children, dir })
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
        for (index, mut worker) in children.into_iter().enumerate() {
            while worker.lines.next_line().await?.is_some() {}
            let status = worker.child.wait().await?;
            if !status.success() {
                bail!("worker {index} failed: {status}");
            }
            let results: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&worker.json)?)?;
            merged.delivered += results["delivered"].as_u64().unwrap_or(0);
            if let Some(map) = results["errors"].as_object() {
                for (kind, count) in map {
                    *merged.errors.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
                }
            }
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
