#!/usr/bin/env python3
"""Draws docs/bus-cost.png from docs/bus-cost.json (the JSON lines `loadtest/bus-cost.sh`
printed, gathered into a list): what one message nobody subscribes to costs Redis and the
nodes, by the number of nodes.

    python3 loadtest/bus-cost-plot.py [docs/bus-cost.json] [docs/bus-cost.png]

Needs matplotlib.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "docs/bus-cost.json"
    target = sys.argv[2] if len(sys.argv) > 2 else "docs/bus-cost.png"
    runs = sorted(json.load(open(source)), key=lambda run: run["nodes"])
    nodes = [run["nodes"] for run in runs]
    fig, (cpu, out) = plt.subplots(1, 2, figsize=(11, 4.2))
    cpu.plot(nodes, [r["redis_cpu_us_per_message"] for r in runs], "o-", label="Redis")
    cpu.plot(nodes, [r["idle_nodes_cpu_us_per_message"] for r in runs], "s-",
             label="the nodes without a subscriber, together")
    cpu.plot(nodes, [r["publishing_node_cpu_us_per_message"] for r in runs], "^-",
             label="the publishing node")
    cpu.set_xlabel("nodes")
    cpu.set_ylabel("CPU µs per message")
    cpu.set_title("CPU per message nobody subscribes to")
    cpu.grid(alpha=0.3)
    cpu.legend()
    out.plot(nodes, [r["redis_bytes_out_per_message"] / 1024 for r in runs], "o-",
             color="tab:red")
    out.set_xlabel("nodes")
    out.set_ylabel("KiB Redis sends per message")
    out.set_title("Redis output per message")
    out.grid(alpha=0.3)
    for run in runs:
        out.annotate(f"{run['publishes_per_second']:.0f}/s", (run["nodes"],
                     run["redis_bytes_out_per_message"] / 1024),
                     textcoords="offset points", xytext=(4, -12), fontsize=8)
    fig.suptitle("Every node reads every bus partition (loadtest/bus-cost.sh, 2 cores, 2026-12-05)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(target)


if __name__ == "__main__":
    main()
