//! `million sample`: every second, one line of `memory.jsonl`: the machine's `MemAvailable`,
//! each node's RSS and its anonymous part, and the CPU (cores busy over the last second) of
//! the nodes, Redis and the generators. The processes are read from the `pids` file the script rewrites whenever one
//! changes (a node restarted after its drain, Redis restarted): lines `node K PID`,
//! `redis 0 PID`, `gen K PID`, `publisher 0 PID`.

use std::{collections::BTreeMap, io::Write as _, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::RunDir;
use crate::{now_ns, proc_stat};

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// The run directory (reads `pids`, appends to `memory.jsonl`).
    #[arg(long)]
    dir: PathBuf,
    /// Stop after this long in any case.
    #[arg(long, default_value_t = 7200)]
    max_seconds: u64,
}

/// One line of `memory.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub unix: f64,
    pub mem_available_kib: u64,
    /// By node index; 0 while a node is down.
    pub node_rss_kib: Vec<u64>,
    /// By node index, the anonymous part of its RSS (`RssAnon`): the node's own memory,
    /// without the mapped binary every node shares.
    #[serde(default)]
    pub node_anon_kib: Vec<u64>,
    pub redis_rss_kib: u64,
    pub gens_rss_kib: u64,
    /// Cores busy over the last second.
    pub nodes_cpu: f64,
    pub redis_cpu: f64,
    pub gens_cpu: f64,
    pub publisher_cpu: f64,
}

/// `MemAvailable` of /proc/meminfo, in KiB.
pub fn mem_available_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub async fn run(args: SampleArgs) -> anyhow::Result<()> {
    let dir = RunDir(args.dir);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.memory())?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    // Per process: its last CPU time, for the rate.
    let mut last_cpu: BTreeMap<u32, f64> = BTreeMap::new();
    let mut last_unix = now_ns() as f64 / 1e9;
    while started.elapsed() < Duration::from_secs(args.max_seconds) {
        ticker.tick().await;
        let unix = now_ns() as f64 / 1e9;
        let elapsed = (unix - last_unix).max(0.001);
        last_unix = unix;
        let mut sample = Sample {
            unix,
            mem_available_kib: mem_available_kib().unwrap_or(0),
            ..Sample::default()
        };
        let pids = std::fs::read_to_string(dir.pids()).unwrap_or_default();
        let mut cpu_now = BTreeMap::new();
        for line in pids.lines() {
            let mut fields = line.split_whitespace();
            let (Some(kind), Some(index), Some(pid)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(index), Ok(pid)) = (index.parse::<usize>(), pid.parse::<u32>()) else {
                continue;
            };
            let rss = proc_stat::rss_kib(pid).unwrap_or(0);
            let cpu = proc_stat::cpu_seconds(pid);
            // A process seen for the first time counts from the next sample on.
            let rate = match (cpu, last_cpu.get(&pid)) {
                (Some(now), Some(before)) => ((now - before) / elapsed).max(0.0),
                _ => 0.0,
            };
            if let Some(cpu) = cpu {
                cpu_now.insert(pid, cpu);
            }
            match kind {
                "node" => {
                    if sample.node_rss_kib.len() <= index {
                        sample.node_rss_kib.resize(index + 1, 0);
                    }
                    sample.node_rss_kib[index] = rss;
                    if sample.node_anon_kib.len() <= index {
                        sample.node_anon_kib.resize(index + 1, 0);
                    }
                    sample.node_anon_kib[index] = proc_stat::anon_kib(pid).unwrap_or(0);
                    sample.nodes_cpu += rate;
                }
                "redis" => {
                    sample.redis_rss_kib = rss;
                    sample.redis_cpu += rate;
                }
                "gen" => {
                    sample.gens_rss_kib += rss;
                    sample.gens_cpu += rate;
                }
                "publisher" => sample.publisher_cpu += rate,
                _ => {}
            }
        }
        last_cpu = cpu_now;
        let mut line = serde_json::to_vec(&sample)?;
        line.push(b'\n');
        out.write_all(&line)?;
    }
    Ok(())
}
