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
    runs = json.load(open(source))
    fig, (cpu, out) = plt.subplots(1, 2, figsize=(11, 4.4))
    styles = {"log": "--", "inbox": "-"}
    for routing in ("log", "inbox"):
        series = sorted((r for r in runs if r.get("routing", "log") == routing),
                        key=lambda run: run["nodes"])
        if not series:
            continue
        nodes = [run["nodes"] for run in series]
        line = styles[routing]
        cpu.plot(nodes, [r["redis_cpu_us_per_message"] for r in series], "o" + line,
                 color="tab:red", label=f"Redis ({routing})")
        cpu.plot(nodes, [r["idle_nodes_cpu_us_per_message"] for r in series], "s" + line,
                 color="tab:blue", label=f"idle nodes together ({routing})")
        cpu.plot(nodes, [r["publishing_node_cpu_us_per_message"] for r in series], "^" + line,
                 color="tab:green", label=f"publishing node ({routing})")
        out.plot(nodes, [r["redis_bytes_out_per_message"] / 1024 for r in series], "o" + line,
                 color="tab:red", label=routing)
        for run in series:
            out.annotate(f"{run['publishes_per_second']:.0f}/s", (run["nodes"],
                         run["redis_bytes_out_per_message"] / 1024),
                         textcoords="offset points", xytext=(4, -12), fontsize=8)
    cpu.set_xlabel("nodes")
    cpu.set_ylabel("CPU µs per message")
    cpu.set_title("CPU per message nobody subscribes to")
    cpu.set_yscale("log")
    cpu.grid(alpha=0.3)
    cpu.legend(fontsize=7)
    out.set_xlabel("nodes")
    out.set_ylabel("KiB Redis sends per message")
    out.set_title("Redis output per message (publishes/s reached)")
    out.set_yscale("log")
    out.grid(alpha=0.3)
    out.legend()
    fig.suptitle("Every node reads every log (dashed) vs. each its own inbox (solid): "
                 "loadtest/bus-cost.sh, 2 cores, 2026-12-05", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(target)


if __name__ == "__main__":
    main()
