#!/usr/bin/env python3
"""Draws the plots of docs/scale.md from the full results of `loadtest/million.sh` (its
--json file):

    scale-ramp.png       sockets subscribed and connects per second during the ramp
    scale-memory.png     machine memory in use, each node's RSS, CPU, over the whole run
    scale-broadcast.png  each broadcast's deliveries over time after its publish
    scale-rooms.png      room-traffic latency (p50, p99) and acknowledged rate, with the
                         drains and the Redis restart marked

    python3 loadtest/million-plot.py RESULTS.json OUTDIR [PREFIX]
        (OUTDIR: docs/ for the real run; PREFIX instead of "scale" in the names)

A run that stopped before a step (a ramp that never completed, results made with
`switchboard-loadtest million report` after the generators were told to finish) gets the
plots of the steps it reached.

Needs matplotlib.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def events_named(results, name):
    return [event for event in results["events"] if event["event"] == name]


def event_time(results, name):
    found = events_named(results, name)
    return found[0]["t"] if found else None


def title(results, what):
    params, summary = results["params"], results["summary"]
    return (f"{what}: {summary['sockets']:,} sockets, {summary['nodes']} nodes, "
            f"{params['cpus']} cores ({params['date'][:10]})")


def mark_faults(axis, results, label=True):
    """Shades each drain (start to its node's exit) and marks the Redis restart."""
    starts = events_named(results, "drain_start")
    exits = events_named(results, "node_exit")
    for index, (start, end) in enumerate(zip(starts, exits)):
        axis.axvspan(start["t"], end["t"], color="tab:orange", alpha=0.15,
                     label="drain of one node" if label and index == 0 else None)
        axis.text(start["t"], 1.0, f" node {start['node'] + 1}", transform=axis.get_xaxis_transform(),
                  fontsize=7, va="top", color="tab:orange")
    stop, ready = event_time(results, "redis_stop"), event_time(results, "redis_ready")
    if stop is not None:
        axis.axvspan(stop, ready if ready is not None else stop + 0.5, color="tab:red", alpha=0.25,
                     label="Redis restart" if label else None)


def ramp(results, target):
    seconds = results["seconds"]
    start, done = event_time(results, "ramp_start"), event_time(results, "ramp_done")
    if done is None:
        done = seconds[-1]["t"] if seconds else start
    shown = [s for s in seconds if start - 2 <= s["t"] <= done + 3]
    fig, axis = plt.subplots(figsize=(9, 4.2))
    axis.plot([s["t"] - start for s in shown], [s["subscribed"] for s in shown], "-",
              color="tab:blue", label="sockets subscribed to both channels")
    axis.set_xlabel("seconds since the ramp began")
    axis.set_ylabel("sockets")
    rate = axis.twinx()
    rate.step([s["t"] - start for s in shown], [s["connects"] for s in shown], where="post",
              color="tab:green", label="connects per second")
    rate.set_ylabel("connects per second")
    rate.set_ylim(bottom=0)
    axis.set_ylim(bottom=0)
    lines = axis.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    summary = results["summary"]
    if summary["ramp_seconds"] is None:
        how = f"not completed: {summary['connected']:,} subscribed at most"
    else:
        how = f"{summary['ramp_seconds']} s"
    axis.set_title(title(results, "Ramp") + f"\n{how}, target "
                   f"{results['params']['connect_rate']:,}/s")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def memory(results, target):
    samples = results["memory"]["samples"]
    before = results["memory"]["mem_available_kib_before"] or samples[0]["mem_available_kib"]
    gib = 1024 * 1024
    times = [s["t"] for s in samples]
    fig, (used, nodes, cpu) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    used.plot(times, [(before - s["mem_available_kib"]) / gib for s in samples],
              label="machine: MemAvailable before the run less now")
    used.plot(times, [sum(s["node_rss_kib"]) / gib for s in samples], label="nodes' RSS, summed")
    if any(s.get("node_anon_kib") for s in samples):
        used.plot(times, [sum(s.get("node_anon_kib") or []) / gib for s in samples],
                  label="nodes' anonymous RSS (without the shared binary), summed")
    used.plot(times, [s["gens_rss_kib"] / gib for s in samples], label="load generators' RSS, summed")
    used.plot(times, [s["redis_rss_kib"] / gib for s in samples], label="Redis RSS")
    used.set_ylabel("GiB")
    used.legend(loc="upper left", fontsize=8)
    used.set_title(title(results, "Memory and CPU"))
    count = max((len(s["node_rss_kib"]) for s in samples), default=0)
    for node in range(count):
        nodes.plot(times, [s["node_rss_kib"][node] / 1024 if node < len(s["node_rss_kib"]) else 0
                           for s in samples], linewidth=0.6)
    nodes.set_ylabel("RSS of each node, MiB")
    for series, name in (("nodes_cpu", "nodes"), ("gens_cpu", "load generators"),
                         ("redis_cpu", "Redis"), ("publisher_cpu", "room publisher")):
        cpu.plot(times, [s[series] for s in samples], label=name, linewidth=0.9)
    cpu.set_ylabel("cores busy")
    # The machine cannot be busier than its cores: a sample above that is the sampler's (a
    # process replaced between two reads), not work done.
    cpu.set_ylim(0, results["params"]["cpus"] * 1.05)
    cpu.set_xlabel("seconds since the run began")
    for axis in (used, nodes, cpu):
        mark_faults(axis, results, label=axis is cpu)
        for name, color in (("ramp_done", "tab:blue"), ("broadcasts_start", "tab:purple"),
                            ("rooms_start", "tab:green")):
            at = event_time(results, name)
            if at is not None:
                axis.axvline(at, color=color, linewidth=0.8, linestyle=":",
                             label=name.replace("_", " ") if axis is cpu else None)
    cpu.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def broadcast(results, target):
    delivered = results["broadcasts"]["delivered"]
    fig, axis = plt.subplots(figsize=(9, 4.2))
    for entry in delivered:
        cdf = entry["cdf_ms"]
        axis.plot(cdf, [percent / 100 for percent in range(len(cdf))], linewidth=1,
                  label=f"#{entry['n'] + 1}: last {entry['latency_ms']['max']:.0f} ms")
    axis.set_xlabel("ms after the publish")
    axis.set_ylabel("fraction of sockets that have it")
    axis.set_ylim(0, 1.01)
    axis.set_xlim(left=0)
    axis.legend(fontsize=7, ncol=2, loc="lower right")
    summary = results["summary"]
    axis.set_title(title(results, "Broadcasts") +
                   f"\nslowest completion {summary['broadcast_completion_ms']:.0f} ms")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def rooms(results, target):
    seconds = [s for s in results["seconds"] if s["room_p99_ms"] is not None]
    fig, (latency, rate) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                        gridspec_kw={"height_ratios": [2, 1]})
    times = [s["t"] for s in seconds]
    latency.plot(times, [s["room_p50_ms"] for s in seconds], label="p50")
    latency.plot(times, [s["room_p99_ms"] for s in seconds], label="p99")
    latency.plot(times, [s["room_max_ms"] for s in seconds], label="max", linewidth=0.6, alpha=0.7)
    latency.set_yscale("log")
    latency.set_ylabel("publish to delivery, ms\n(by second of arrival)")
    mark_faults(latency, results)
    latency.legend(loc="upper left", fontsize=8)
    summary = results["summary"]
    latency.set_title(title(results, "Room traffic") +
                      f"\n{summary['room_rate']:,.0f} messages/s held, p99 {summary['room_p99_ms']} ms "
                      f"steady, {summary['room_p99_ms_faults']} ms through drains and restart")
    published = results["rooms"]["seconds"]
    rate.step([s["t"] for s in published], [s["acked"] for s in published], where="post",
              label="acknowledged")
    rate.step([s["t"] for s in published], [s["refused"] + s["unknown"] for s in published],
              where="post", label="refused or unanswered")
    rate.set_ylabel("messages per second")
    rate.set_xlabel("seconds since the run began")
    mark_faults(rate, results, label=False)
    rate.legend(loc="upper left", fontsize=8)
    start, stop = event_time(results, "rooms_start"), event_time(results, "rooms_stop")
    if start is not None and stop is not None:
        rate.set_xlim(start - 2, stop + 4)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    results = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    prefix = sys.argv[3] if len(sys.argv) == 4 else "scale"
    os.makedirs(out, exist_ok=True)
    plots = (("ramp", ramp, "ramp_start"), ("memory", memory, "ramp_start"),
             ("broadcast", broadcast, "broadcasts_start"), ("rooms", rooms, "rooms_start"))
    for name, draw, step in plots:
        if event_time(results, step) is None:
            print(f"{name}: the run did not reach it", file=sys.stderr)
            continue
        target = os.path.join(out, f"{prefix}-{name}.png")
        draw(results, target)
        print(target)


if __name__ == "__main__":
    main()
