//! `million report`: merges a run directory into one JSON file (summary, parameters, the
//! series the plots draw) and prints the summary as one JSON line, last. With `--check` it
//! then fails unless every socket was subscribed and nothing was lost or duplicated.

use std::{collections::BTreeMap, path::PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{
    BroadcastResult, GenResult, Losses, Percentiles, RoomsResult, RunDir, histogram_from_hex,
    latency_histogram, read_json, sample::Sample,
};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run directory.
    #[arg(long)]
    dir: PathBuf,
    /// Where to write the full results.
    #[arg(long)]
    json: PathBuf,
    /// Fail unless connected == sockets, lost == 0 and duplicated == 0.
    #[arg(long)]
    check: bool,
}

/// The run's parameters, as the script wrote them (`run.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Params {
    sockets: u64,
    nodes: usize,
    rooms: u64,
    connect_rate: u64,
    room_rate_target: u64,
    steady_seconds: u64,
    drains: u64,
    drain_window_ms: u64,
    broadcasts: u64,
    broadcast_interval_ms: u64,
    redis_stop: String,
    appendfsync: String,
    command: String,
    date: String,
    commit: String,
    cpus: u64,
    mem_total_kib: u64,
    kernel: String,
}

/// One line of `rejected.jsonl`: a node's `switchboard_connections_rejected_total` by reason.
#[derive(Debug, serde::Deserialize)]
struct Rejected {
    reasons: BTreeMap<String, u64>,
}

/// One line of `events.jsonl`, written by the script.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    t: f64,
    event: String,
    #[serde(default)]
    node: Option<usize>,
}

/// The figures of issue 27, and how they were reached: the script's last line.
#[derive(Debug, Clone, Default, Serialize)]
struct Summary {
    sockets: u64,
    /// Peak of the sockets subscribed to both channels at once.
    connected: u64,
    lost: u64,
    duplicated: u64,
    /// The slowest broadcast's last delivery after its publish.
    broadcast_completion_ms: f64,
    /// Room messages acknowledged per second over the steady window.
    room_rate: f64,
    room_rate_target: u64,
    /// p99 of room deliveries (publish to arrival) over the steady window.
    room_p99_ms: f64,
    /// p99 through the drains and the Redis restart.
    room_p99_ms_faults: f64,
    machine_kib_per_socket: Option<f64>,
    node_rss_kib_per_socket: Option<f64>,
    /// The nodes' summed `RssAnon` per socket: their RSS without the mapped binary, which
    /// the page cache holds once for every node and each node's RSS counts again.
    node_anon_kib_per_socket: Option<f64>,
    nodes: usize,
    ramp_seconds: Option<f64>,
    connect_rate: Option<f64>,
    /// Per-second connects over the ramp's whole seconds: lowest, median, highest.
    connect_rate_min: u64,
    connect_rate_median: u64,
    connect_rate_max: u64,
    broadcasts_acked: u64,
    room_messages_acked: u64,
    room_deliveries: u64,
    resumes: u64,
    unrecovered: u64,
    resets: u64,
    gave_up: u64,
    missing_generators: usize,
    /// With every socket held and nothing published: Redis's script calls per second and
    /// its CPU (cores).
    redis_scripts_per_second_at_rest: Option<f64>,
    redis_cpu_at_rest: Option<f64>,
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let dir = RunDir(args.dir.clone());
    let params: Params = read_json(&args.dir.join("run.json"))?;
    let events = read_lines::<Event>(&dir.events());
    let samples = read_lines::<Sample>(&dir.memory());
    let mut gens = Vec::new();
    let mut missing = 0;
    for index in 0..params.nodes {
        match read_json::<GenResult>(&dir.gen_result(index)) {
            Ok(result) => gens.push(result),
            Err(err) => {
                eprintln!("generator {index}: {err:#}");
                missing += 1;
            }
        }
    }
    let broadcasts: BroadcastResult = read_json(&dir.broadcasts()).unwrap_or_default();
    let rooms: RoomsResult = read_json(&dir.rooms()).unwrap_or_default();
    let event_t = |name: &str| {
        events
            .iter()
            .find(|event| event.event == name)
            .map(|event| event.t)
    };
    let t0 = samples
        .first()
        .map(|sample| sample.unix)
        .or_else(|| events.first().map(|event| event.t))
        .unwrap_or(0.0);

    // Losses, summed over the generators.
    let (mut room, mut global) = (Losses::default(), Losses::default());
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut subscribe_errors: BTreeMap<String, u64> = BTreeMap::new();
    for result in &gens {
        room.add(&result.room);
        global.add(&result.global);
        for (into, from) in [
            (&mut ends, &result.ends),
            (&mut refused, &result.refused),
            (&mut connect_errors, &result.connect_errors),
            (&mut subscribe_errors, &result.subscribe_errors),
        ] {
            for (key, count) in from {
                *into.entry(key.clone()).or_default() += count;
            }
        }
    }

    // What the nodes refused or closed before answering an upgrade, by reason: each node
    // process scraped once, at the end of its life (million.sh, `rejected.jsonl`).
    let mut node_rejected: BTreeMap<String, u64> = BTreeMap::new();
    for scrape in read_lines::<Rejected>(&args.dir.join("rejected.jsonl")) {
        for (reason, count) in scrape.reasons {
            *node_rejected.entry(reason).or_default() += count;
        }
    }

    // Per second: connects, resumes, subscribed (each generator's last count carried
    // forward over seconds it did not write), room deliveries and latency.
    let first = gens
        .iter()
        .filter_map(|result| result.seconds.first().map(|second| second.unix))
        .min()
        .unwrap_or(0);
    let last = gens
        .iter()
        .filter_map(|result| result.seconds.last().map(|second| second.unix))
        .max()
        .unwrap_or(0);
    let span = usize::try_from(last.saturating_sub(first)).unwrap_or(0) + 1;
    let mut connects = vec![0_u64; span];
    let mut resumes = vec![0_u64; span];
    let mut subscribed = vec![0_u64; span];
    let mut deliveries = vec![0_u64; span];
    let mut latency: Vec<Histogram<u64>> = (0..span).map(|_| latency_histogram()).collect();
    for result in &gens {
        let mut held = 0;
        let mut seconds = result.seconds.iter().peekable();
        for (slot, unix) in (first..=last).enumerate() {
            while let Some(second) = seconds.next_if(|second| second.unix <= unix) {
                connects[slot] += second.connects;
                resumes[slot] += second.resumes;
                deliveries[slot] += second.room_deliveries;
                held = second.subscribed;
                if !second.room_latency.is_empty() {
                    latency[slot].add(histogram_from_hex(&second.room_latency)?)?;
                }
            }
            subscribed[slot] += held;
        }
    }
    let connected = subscribed.iter().copied().max().unwrap_or(0);

    // The ramp: from the first generator's start to the last socket's first subscribe.
    let ramp_started = gens
        .iter()
        .map(|result| result.ramp_started_unix)
        .fold(f64::INFINITY, f64::min);
    let ramp_done = gens
        .iter()
        .map(|result| result.ramp_done_unix)
        .fold(0.0, f64::max);
    let all_ramped = !gens.is_empty() && gens.iter().all(|result| result.ramp_done_unix > 0.0);
    let ramp_seconds = all_ramped.then(|| round(ramp_done - ramp_started, 1));
    let ramp_slots = |from: f64, to: f64| {
        let from = (from.ceil() as u64).max(first);
        let to = (to.floor() as u64).min(last + 1);
        (from..to).map(move |unix| usize::try_from(unix - first).unwrap_or(0))
    };
    let mut ramp_rates: Vec<u64> = if all_ramped {
        ramp_slots(ramp_started, ramp_done)
            .map(|slot| connects[slot])
            .collect()
    } else {
        Vec::new()
    };
    ramp_rates.sort_unstable();

    // Room latency over the steady window and through the faults.
    let window = |from: Option<f64>, to: Option<f64>| -> anyhow::Result<Histogram<u64>> {
        let mut merged = latency_histogram();
        if let (Some(from), Some(to)) = (from, to) {
            for slot in ramp_slots(from, to) {
                merged.add(&latency[slot])?;
            }
        }
        Ok(merged)
    };
    let rooms_start = event_t("rooms_start");
    let steady_end = event_t("steady_end");
    let rooms_stop = event_t("rooms_stop");
    let steady = window(rooms_start, steady_end)?;
    let faults = window(steady_end, rooms_stop)?;
    let steady_acked: u64 = match (rooms_start, steady_end) {
        (Some(from), Some(to)) => rooms
            .seconds
            .iter()
            .filter(|second| second.unix as f64 >= from.ceil() && (second.unix as f64) < to.floor())
            .map(|second| second.acked)
            .sum(),
        _ => 0,
    };
    let steady_seconds = match (rooms_start, steady_end) {
        (Some(from), Some(to)) => (to.floor() - from.ceil()).max(1.0),
        _ => 1.0,
    };

    // Broadcasts: every generator's deliveries of each, merged.
    let mut per_broadcast: BTreeMap<u64, (u64, Histogram<u64>)> = BTreeMap::new();
    for result in &gens {
        for seen in &result.broadcasts {
            let entry = per_broadcast
                .entry(seen.n)
                .or_insert_with(|| (0, latency_histogram()));
            entry.0 += seen.deliveries;
            entry.1.add(histogram_from_hex(&seen.latency)?)?;
        }
    }
    let broadcast_completion_ms = per_broadcast
        .values()
        .map(|(_, histogram)| Percentiles::ms(histogram).max)
        .fold(0.0, f64::max);
    let broadcast_series: Vec<serde_json::Value> = per_broadcast
        .iter()
        .map(|(n, (count, histogram))| {
            // The delivery-time distribution, for the plot: ms at each percent.
            let cdf: Vec<f64> = (0..=100)
                .map(|percent| {
                    let quantile = f64::from(percent) / 100.0;
                    round(histogram.value_at_quantile(quantile) as f64 / 1000.0, 1)
                })
                .collect();
            serde_json::json!({
                "n": n,
                "deliveries": count,
                "latency_ms": Percentiles::ms(histogram),
                "cdf_ms": cdf,
            })
        })
        .collect();

    // Memory: before anything started, and once every socket was held (the last sample
    // before the broadcasts).
    let before = samples.first();
    let peak_at = event_t("broadcasts_start").or(event_t("ramp_done"));
    let at_peak = peak_at.and_then(|at| samples.iter().rev().find(|sample| sample.unix <= at));
    let per_socket = |kib: u64| (connected > 0).then(|| round(kib as f64 / connected as f64, 2));
    let machine_kib_per_socket = match (before, at_peak) {
        (Some(before), Some(peak)) => per_socket(
            before
                .mem_available_kib
                .saturating_sub(peak.mem_available_kib),
        ),
        _ => None,
    };
    let lowest_available = samples.iter().map(|sample| sample.mem_available_kib).min();
    let node_rss_at_peak = at_peak.map(|sample| sample.node_rss_kib.iter().sum::<u64>());
    let node_anon_at_peak = at_peak.map(|sample| sample.node_anon_kib.iter().sum::<u64>());
    // The nodes once started, before the first socket: what the sockets added.
    let at_start =
        event_t("ramp_start").and_then(|at| samples.iter().rev().find(|sample| sample.unix <= at));
    let node_rss_at_start = at_start.map(|sample| sample.node_rss_kib.iter().sum::<u64>());
    let node_anon_at_start = at_start.map(|sample| sample.node_anon_kib.iter().sum::<u64>());

    let redis_at_rest = redis_at_rest(
        &args.dir,
        &samples,
        event_t("rest_start"),
        event_t("rest_end"),
    );
    let lost = room.lost() + global.lost();
    let duplicated = room.duplicates + global.duplicates;
    let summary = Summary {
        sockets: params.sockets,
        connected,
        lost,
        duplicated,
        broadcast_completion_ms,
        room_rate: round(steady_acked as f64 / steady_seconds, 0),
        room_rate_target: params.room_rate_target,
        room_p99_ms: Percentiles::ms(&steady).p99,
        room_p99_ms_faults: Percentiles::ms(&faults).p99,
        machine_kib_per_socket,
        node_rss_kib_per_socket: node_rss_at_peak.and_then(per_socket),
        node_anon_kib_per_socket: node_anon_at_peak
            .filter(|&kib| kib > 0)
            .and_then(per_socket),
        nodes: params.nodes,
        ramp_seconds,
        connect_rate: ramp_seconds.map(|secs| round(params.sockets as f64 / secs.max(0.1), 0)),
        connect_rate_min: ramp_rates.first().copied().unwrap_or(0),
        connect_rate_median: ramp_rates.get(ramp_rates.len() / 2).copied().unwrap_or(0),
        connect_rate_max: ramp_rates.last().copied().unwrap_or(0),
        broadcasts_acked: broadcasts
            .sent
            .iter()
            .filter(|sent| sent.offset.is_some())
            .count() as u64,
        room_messages_acked: rooms.acked,
        room_deliveries: gens.iter().map(|result| result.delivered_room).sum(),
        resumes: gens.iter().map(|result| result.resumed).sum(),
        unrecovered: room.unrecovered + global.unrecovered,
        resets: room.resets + global.resets,
        gave_up: gens.iter().map(|result| result.gave_up).sum(),
        missing_generators: missing,
        redis_scripts_per_second_at_rest: redis_at_rest
            .as_ref()
            .map(|rest| rest.scripts_per_second),
        redis_cpu_at_rest: redis_at_rest.as_ref().map(|rest| rest.cpu_cores),
    };

    let seconds: Vec<serde_json::Value> = (0..span)
        .map(|slot| {
            let histogram = &latency[slot];
            serde_json::json!({
                "t": round((first + slot as u64) as f64 - t0, 0),
                "connects": connects[slot],
                "resumes": resumes[slot],
                "subscribed": subscribed[slot],
                "room_deliveries": deliveries[slot],
                "room_p50_ms": (!histogram.is_empty()).then(|| Percentiles::ms(histogram).p50),
                "room_p99_ms": (!histogram.is_empty()).then(|| Percentiles::ms(histogram).p99),
                "room_max_ms": (!histogram.is_empty()).then(|| Percentiles::ms(histogram).max),
            })
        })
        .collect();
    let full = serde_json::json!({
        "summary": summary,
        "params": params,
        "t0_unix": t0,
        "losses": {"room": room, "global": global},
        "sessions": {
            "ends": ends,
            "refused_upgrades": refused,
            "connect_errors": connect_errors,
            "subscribe_errors": subscribe_errors,
            "node_rejected_upgrades": node_rejected,
            "reconnect_frames": gens.iter().map(|result| result.reconnect_frames).sum::<u64>(),
            "joins": gens.iter().map(|result| result.joins).sum::<u64>(),
            "leaves": gens.iter().map(|result| result.leaves).sum::<u64>(),
            "unparsed": gens.iter().map(|result| result.unparsed).sum::<u64>(),
        },
        "broadcasts": {
            "published": broadcasts.sent,
            "delivered": broadcast_series,
        },
        "rooms": {
            "target_rate": rooms.target_rate,
            "batch": rooms.batch,
            "acked": rooms.acked,
            "rate_overall": round(rooms.acked as f64 / (rooms.stopped_unix - rooms.started_unix).max(1.0), 0),
            "refused": rooms.refused,
            "unknown": rooms.unknown,
            "unknown_requests": rooms.unknown_requests,
            "statuses": rooms.statuses,
            "connect_failures": rooms.connect_failures,
            "epoch_changes": rooms.epoch_changes,
            "seqs_without_ack": rooms.seqs_without_ack,
            "request_latency_ms": rooms.request_latency_ms,
            "latency_steady_ms": Percentiles::ms(&steady),
            "latency_faults_ms": Percentiles::ms(&faults),
            "seconds": rooms.seconds.iter().map(|second| serde_json::json!({
                "t": round(second.unix as f64 - t0, 0),
                "acked": second.acked,
                "refused": second.refused,
                "unknown": second.unknown,
            })).collect::<Vec<_>>(),
        },
        "memory": {
            "mem_available_kib_before": before.map(|sample| sample.mem_available_kib),
            "mem_available_kib_at_peak": at_peak.map(|sample| sample.mem_available_kib),
            "mem_available_kib_lowest": lowest_available,
            "machine_kib_per_socket_lowest": match (before, lowest_available) {
                (Some(before), Some(lowest)) => per_socket(before.mem_available_kib.saturating_sub(lowest)),
                _ => None,
            },
            "node_rss_kib_at_peak": at_peak.map(|sample| sample.node_rss_kib.clone()),
            "node_rss_kib_before_ramp": node_rss_at_start,
            "node_anon_kib_at_peak": at_peak.map(|sample| sample.node_anon_kib.clone()),
            "node_anon_growth_kib_per_socket": match (node_anon_at_start, node_anon_at_peak) {
                (Some(start), Some(peak)) if peak > 0 => per_socket(peak.saturating_sub(start)),
                _ => None,
            },
            "node_rss_growth_kib_per_socket": match (node_rss_at_start, node_rss_at_peak) {
                (Some(start), Some(peak)) => per_socket(peak.saturating_sub(start)),
                _ => None,
            },
            "redis_rss_kib_at_peak": at_peak.map(|sample| sample.redis_rss_kib),
            "gens_rss_kib_per_socket": at_peak.and_then(|sample| per_socket(sample.gens_rss_kib)),
            "samples": samples.iter().map(|sample| serde_json::json!({
                "t": round(sample.unix - t0, 1),
                "mem_available_kib": sample.mem_available_kib,
                "node_rss_kib": sample.node_rss_kib,
                "node_anon_kib": sample.node_anon_kib,
                "redis_rss_kib": sample.redis_rss_kib,
                "gens_rss_kib": sample.gens_rss_kib,
                "nodes_cpu": round(sample.nodes_cpu, 2),
                "redis_cpu": round(sample.redis_cpu, 2),
                "gens_cpu": round(sample.gens_cpu, 2),
                "publisher_cpu": round(sample.publisher_cpu, 2),
            })).collect::<Vec<_>>(),
        },
        "events": events.iter().map(|event| serde_json::json!({
            "t": round(event.t - t0, 2),
            "event": event.event,
            "node": event.node,
        })).collect::<Vec<_>>(),
        "redis_at_rest": redis_at_rest,
        "seconds": seconds,
    });
    super::write_json(&args.json, &full)?;
    println!("{}", serde_json::to_string(&summary)?);
    if args.check {
        let mut failures = Vec::new();
        if summary.connected != summary.sockets || missing > 0 {
            failures.push(format!(
                "{} of {} sockets subscribed ({missing} generators reported nothing)",
                summary.connected, summary.sockets
            ));
        }
        if lost > 0 || duplicated > 0 {
            failures.push(format!(
                "{lost} messages lost, {duplicated} duplicated: room {room:?}, global {global:?}"
            ));
        }
        if !failures.is_empty() {
            eprintln!("million report --check failed: {}", failures.join("; "));
            std::process::exit(1);
        }
    }
    Ok(())
}

/// What Redis did while every socket was held and nothing was published: its CPU from the
/// sampler, and its commands from the two `INFO commandstats` the script saved.
fn redis_at_rest(
    dir: &std::path::Path,
    samples: &[Sample],
    from: Option<f64>,
    to: Option<f64>,
) -> Option<RedisAtRest> {
    let (Some(from), Some(to)) = (from, to) else {
        return None;
    };
    let read =
        |name: &str| commandstats(&std::fs::read_to_string(dir.join(name)).unwrap_or_default());
    let (start, end) = (read("redis-rest-start.txt"), read("redis-rest-end.txt"));
    let seconds = (to - from).max(0.1);
    let mut calls = BTreeMap::new();
    let (mut scripts, mut script_usec) = (0, 0);
    for (command, &(calls_end, usec_end)) in &end {
        let (calls_start, usec_start) = start.get(command).copied().unwrap_or((0, 0));
        let count = calls_end.saturating_sub(calls_start);
        if count > 0 {
            calls.insert(command.clone(), round(count as f64 / seconds, 0));
        }
        if matches!(
            command.as_str(),
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall"
        ) {
            scripts += count;
            script_usec += usec_end.saturating_sub(usec_start);
        }
    }
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.unix > from && sample.unix <= to)
        .collect();
    let cpu =
        window.iter().map(|sample| sample.redis_cpu).sum::<f64>() / window.len().max(1) as f64;
    Some(RedisAtRest {
        seconds: round(seconds, 1),
        cpu_cores: round(cpu, 3),
        scripts_per_second: round(scripts as f64 / seconds, 0),
        script_us_each: (scripts > 0).then(|| round(script_usec as f64 / scripts as f64, 1)),
        calls_per_second: calls,
    })
}

/// What Redis did per second with every socket held and nothing published.
#[derive(Debug, Clone, Serialize)]
struct RedisAtRest {
    seconds: f64,
    /// Redis's CPU (cores busy, from /proc) over the window.
    cpu_cores: f64,
    /// Script calls (presence refreshes, registry heartbeats) per second.
    scripts_per_second: f64,
    /// Redis's time per script call, the commands it ran included.
    script_us_each: Option<f64>,
    /// Calls per second by command; commands a script ran count here too.
    calls_per_second: BTreeMap<String, f64>,
}

/// `cmdstat_evalsha:calls=12,usec=340,...` lines: command -> (calls, usec).
fn commandstats(text: &str) -> BTreeMap<String, (u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let (command, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |name: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
                    .parse::<u64>()
                    .ok()
            };
            Some((command.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10_f64.powi(digits);
    (value * scale).round() / scale
}

/// A JSON-lines file; lines that do not parse are skipped (a line being written).
fn read_lines<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
