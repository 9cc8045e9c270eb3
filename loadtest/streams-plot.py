#!/usr/bin/env python3
"""Draws loadtest/streams.sh's figures (streams.json) as one PNG: message streams beside
plain publishing. Usage: streams-plot.py streams.json streams.png"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    runs = json.load(open(source))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = {"stream": "#2a7ab9", "plain": "#b0b0b0"}

    # 1,000 replies x 2 viewers, 30 tokens/s each.
    ax = axes[0][0]
    metrics = [("server_cpu_us_per_append", "server CPU µs\nper token")]
    labels, stream, plain = [], [], []
    for key, label in metrics:
        labels.append(label)
        stream.append(runs["replies-stream"][key])
        plain.append(runs["replies-plain"][key])
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], stream, 0.4, label="streaming ingest", color=colors["stream"])
    ax.bar([i + 0.2 for i in x], plain, 0.4, label="POST /v1/publish per token", color=colors["plain"])
    ax.set_xticks(list(x), labels)
    ax.set_title("1,000 replies x 2 viewers, 30 tokens/s each")
    ax.legend(fontsize=8)

    # Token-to-viewer latency by load (stream), with plain at 1,000.
    ax = axes[0][1]
    loads = [("replies-stream-300", 300), ("replies-stream-600", 600), ("replies-stream", 1000)]
    for quantile, style in [("p50", "o-"), ("p99", "s-")]:
        ax.plot([n for _, n in loads],
                [runs[name]["token_to_viewer_us"][quantile] / 1000 for name, _ in loads],
                style, color=colors["stream"], label=f"streaming {quantile}")
        ax.plot([1000], [runs["replies-plain"]["token_to_viewer_us"][quantile] / 1000],
                style[0], color="#707070", label=f"plain {quantile} (1,000)")
    ax.axhline(100, color="#c0392b", linestyle=":", linewidth=1, label="target p99 100 ms")
    ax.set_xlabel("concurrent replies (2 viewers each, 30 tokens/s)")
    ax.set_ylabel("token to viewer, ms")
    ax.set_title("Latency (coalescing 40 ms included)")
    ax.legend(fontsize=7)

    # One reply at 50 tokens/s to 2,000 and to 10,000 viewers: server CPU per token and
    # viewer, frames per viewer.
    ax = axes[1][0]
    groups = [("viewers2k", "2,000 viewers"), ("viewers", "10,000 viewers")]
    x = range(len(groups))
    per = lambda run, viewers: run["server_cpu_us_per_append"] / viewers  # noqa: E731
    stream = [per(runs[f"{key}-stream"], 2000 if key == "viewers2k" else 10000) for key, _ in groups]
    plain = [per(runs[f"{key}-plain"], 2000 if key == "viewers2k" else 10000) for key, _ in groups]
    bars = ax.bar([i - 0.2 for i in x], stream, 0.4, label="streaming (coalesced)", color=colors["stream"])
    ax.bar([i + 0.2 for i in x], plain, 0.4, label="plain", color=colors["plain"])
    for bar, (key, _) in zip(bars, groups):
        frames = runs[f"{key}-stream"]["frames_per_viewer_per_second"]
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{frames:.0f} fr/s",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [label for _, label in groups])
    ax.set_ylabel("server CPU µs per token and viewer")
    ax.set_title("One reply, 50 tokens/s (10,000: machine saturated)")
    ax.legend(fontsize=8)

    # Resume of a 20,000-append reply.
    ax = axes[1][1]
    resume = runs["resume"]
    names = [("second_tab_while_open", "second tab\n(open)"), ("resume_from_start", "resume\nfrom start"),
             ("resume_from_middle", "resume\nfrom middle")]
    ax.bar(range(3), [resume[key]["bytes"] / 1024 for key, _ in names], color=colors["stream"])
    for i, (key, _) in enumerate(names):
        ax.text(i, resume[key]["bytes"] / 1024, f'{resume[key]["frames"]} frame\n{resume[key]["micros"] / 1000:.1f} ms',
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(3), [label for _, label in names])
    ax.set_ylabel("KiB sent")
    ax.set_title(f'A {resume["appends"]:,}-append reply ({resume["text_bytes"] // 1024} KiB of text)')
    ax.set_ylim(0, max(resume[key]["bytes"] for key, _ in names) / 1024 * 1.35)

    machine = runs.get("machine", {})
    fig.suptitle(f'Message streams beside plain publishing, one node, {machine.get("cores", "?")} cores, '
                 f'{machine.get("date", "")} ({machine.get("command", "")})', fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
