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
