#!/usr/bin/env python3
"""Records what the shipped alert rules see in real faults and writes a promtool test from
those series (deploy/prometheus/alerts_recorded_test.yml; tests/it/deploy.rs runs it).

    python3 loadtest/fault-series.py [--out PATH]

Two release nodes (n1, n2) clustered through one redis-server, a real Prometheus
(Debian's `prometheus`) scraping both every 5 s, a backend publishing 20 messages/s over
HTTP to each node, and 10 presence members (`join_leave`) on each node. The fault: Redis
killed (SIGKILL) for 30 s, then started again empty on its port (every node's link is
down, publishes get 503), 45 s before and after.

The series are then queried from Prometheus at the rules' 15 s step and written as
promtool `input_series`: `switchboard_redis_up` (what the Redis alerts read) and the publish
answers by status. SwitchboardRedisDown (`for: 15s`) is expected on each node from the
first evaluation where the recorded gauge was 0 at two evaluations in a row, and
SwitchboardRedisDownEverywhere where that holds for both; quiet before and after. The
script fails when the outage would not fire them at all. (The synthetic cases in
alerts_test.yml cover the other alerts, whose summaries print extrapolated values.)
Release binaries from $SWITCHBOARD_BIN_DIR (default ~/.cache/switchboard-target/release).
Needs redis-server, prometheus and the `websockets` package. Every process it starts is
stopped by PID; every loop is bounded (about 4 minutes in all).
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import websockets

BIN_DIR = os.environ.get(
    "SWITCHBOARD_BIN_DIR", os.path.expanduser("~/.cache/switchboard-target/release")
)
SERVER = os.path.join(BIN_DIR, "switchboard")
STEP = 15
STARTED = []

# What each recorded alert reads, and how its condition is judged on the step samples.
SERIES = [
    "switchboard_redis_up",
    'switchboard_http_requests_total{route="publish"}',
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args, **kwargs):
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )
    STARTED.append(process)
    return process


def stop(process, sig=signal.SIGTERM):
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(url, what, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not come up")


def node_config(redis_port):
    handle = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    handle.write(
        f"""
[cluster]
redis = "redis://127.0.0.1:{redis_port}"
partitions = 4
[presence]
ttl = "30s"
[[namespaces]]
pattern = "room:*"
subscribe = "anonymous"
publish = "none"
history = "none"
presence = "anonymous"
join_leave = true
[[namespaces]]
pattern = "*"
subscribe = "anonymous"
publish = "anonymous"
history = "none"
presence = "none"
join_leave = false
"""
    )
    handle.close()
    return handle.name


def start_redis(port, workdir):
    return start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir]
    )


def start_node(node_id, config, ws, control):
    process = start(
        [SERVER, "--config", config, "--listen", f"127.0.0.1:{ws}",
         "--control", f"127.0.0.1:{control}", "--node-id", node_id, "--log-level", "warn"]
    )
    wait_for(f"http://127.0.0.1:{control}/readyz", f"node {node_id}")
    return process


def publisher(control, stop_flag, counts):
    """20 publishes a second over HTTP until `stop_flag` is set; counts answers by status."""
    url = f"http://127.0.0.1:{control}/v1/publish"
    body = json.dumps({"channel": "ticker", "data": 1}).encode()
    while not stop_flag.is_set():
        request = urllib.request.Request(
            url, data=body, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except (urllib.error.URLError, ConnectionError, OSError):
            status = 0
        counts[status] = counts.get(status, 0) + 1
        time.sleep(0.05)


async def members(ws_port, count, hold):
    """`count` members of room:1 held open for `hold` seconds (or until their node dies)."""
    sockets = []
    for _ in range(count):
        ws = await websockets.connect(f"ws://127.0.0.1:{ws_port}/ws")
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": "room:1"}))
        sockets.append(ws)

    async def drain(ws):
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass

    readers = [asyncio.create_task(drain(ws)) for ws in sockets]
    await asyncio.wait(readers, timeout=hold)
    for ws in sockets:
        await ws.close()


def query_range(prometheus, expr, start, end):
    params = urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": f"{STEP}s"}
    )
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}") as response:
        answer = json.load(response)
    return answer["data"]["result"]


def promtool_values(samples, start, steps):
    """Prometheus's (time, value) pairs as promtool's space-separated values, `_` where a
    step has no sample."""
    by_step = {round((float(t) - start) / STEP): value for t, value in samples}
    out = []
    for step in range(steps):
        value = by_step.get(step)
        out.append("_" if value is None else str(int(float(value))))
    return " ".join(out)


def first_hold(values, holds):
    """The first step index where `holds(step)` is true on this step and the one before."""
    for step in range(1, len(values)):
        if holds(step) and holds(step - 1):
            return step
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="deploy/prometheus/alerts_recorded_test.yml")
    args = parser.parse_args()
    for tool in ["redis-server", "prometheus", SERVER]:
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"{tool} is needed (apt-get install redis-server prometheus; cargo build --release)")

    workdir = tempfile.mkdtemp(prefix="sb-faults-")
    redis_port = free_port()
    redis = start_redis(redis_port, workdir)
    time.sleep(0.5)
    config = node_config(redis_port)
    ports = {name: (free_port(), free_port()) for name in ["n1", "n2"]}
    nodes = {name: start_node(name, config, *ports[name]) for name in ports}

    prom_port = free_port()
    prom_config = os.path.join(workdir, "prometheus.yml")
    with open(prom_config, "w") as handle:
        targets = ", ".join(f'"127.0.0.1:{ports[n][1]}"' for n in ports)
        handle.write(
            "global: {scrape_interval: 5s}\n"
            "scrape_configs:\n"
            "  - job_name: switchboard\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n"
        )
    prometheus = start(
        ["prometheus", f"--config.file={prom_config}",
         f"--storage.tsdb.path={workdir}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}"]
    )
    prom_url = f"http://127.0.0.1:{prom_port}"
    wait_for(f"{prom_url}/-/ready", "prometheus", 30)
    instance = {name: f"127.0.0.1:{ports[name][1]}" for name in ports}

    stop_flag = threading.Event()
    counts = {name: {} for name in ports}
    threads = [
        threading.Thread(target=publisher, args=(ports[name][1], stop_flag, counts[name]))
        for name in ports
    ]
    for thread in threads:
        thread.start()

    async def run():
        holders = [
            asyncio.create_task(members(ports[name][0], 10, 300)) for name in ports
        ]
        start_time = time.time()
        await asyncio.sleep(45)
        t_kill = time.time()
        stop(redis, signal.SIGKILL)
        await asyncio.sleep(30)
        new_redis = start_redis(redis_port, workdir)
        t_back = time.time()
        await asyncio.sleep(45)
        end_time = time.time()
        for task in holders:
            task.cancel()
        return start_time, t_kill, t_back, end_time, new_redis

    try:
        start_time, t_kill, t_back, end_time, new_redis = asyncio.run(run())
        stop_flag.set()
        for thread in threads:
            thread.join()
        time.sleep(6)  # the last scrape
        start_step = int(start_time // STEP) * STEP
        steps = int((end_time - start_step) // STEP) + 1
        series = []
        for expr in SERIES:
            for result in query_range(prom_url, expr, start_step, start_step + (steps - 1) * STEP):
                labels = {k: v for k, v in result["metric"].items()}
                name = labels.pop("__name__", expr)
                node = next((n for n in ports if instance[n] == labels.get("instance")), None)
                if node is None:
                    continue
                labels["instance"] = node
                text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                values = promtool_values(result["values"], start_step, steps)
                series.append((name, labels, f"{name}{{{text}}}", values))
        stop(prometheus)
        stop(new_redis)
        for process in nodes.values():
            stop(process)
    finally:
        stop_flag.set()
        for process in STARTED:
            stop(process, signal.SIGKILL)

    def values_of(name, node, **match):
        for series_name, labels, _, values in series:
            if series_name == name and labels.get("instance") == node and all(
                labels.get(k) == v for k, v in match.items()
            ):
                return values.split()
        return None

    at = lambda t: round((t - start_step) / STEP)  # noqa: E731
    tests = []
    # RedisDown (for: 15s): fires where switchboard_redis_up was 0 at two evaluations in a row.
    redis_down = {}
    for node in ports:
        up = values_of("switchboard_redis_up", node)
        step = first_hold(up, lambda s: up[s] == "0") if up else None
        if step is None:
            sys.exit(f"the 30 s Redis outage did not hold switchboard_redis_up at 0 for two steps on {node}: {up}")
        redis_down[node] = step
    lines = [
        "# promtool test rules alerts_recorded_test.yml",
        "#",
        "# Written by `python3 loadtest/fault-series.py` from series a real Prometheus scraped",
        f"# (every 5 s, read back at the rules' {STEP} s step) from two release nodes and one",
        "# redis-server, Redis killed (SIGKILL) for 30 s and started again empty. Do not edit;",
        f"# run the script again. Recorded {time.strftime('%Y-%m-%d', time.gmtime(start_time))}.",
        f"# Publishes answered, by status: n1 {counts['n1']}, n2 {counts['n2']}.",
        "rule_files:",
        "  - alerts.yml",
        f"evaluation_interval: {STEP}s",
        "tests:",
        f"  - interval: {STEP}s",
        "    input_series:",
    ]
    for _, _, selector, values in series:
        lines.append(f"      - series: '{selector}'")
        lines.append(f"        values: '{values}'")
    lines.append("    alert_rule_test:")

    def expect(alertname, step, alerts):
        lines.append(f"      - eval_time: {step * STEP}s")
        lines.append(f"        alertname: {alertname}")
        if not alerts:
            lines.append("        exp_alerts: []")
            return
        lines.append("        exp_alerts:")
        for labels, summary, runbook in alerts:
            text = ", ".join(f"{k}: {v}" for k, v in labels.items())
            lines.append(f"          - exp_labels: {{{text}}}")
            lines.append("            exp_annotations:")
            lines.append(f'              summary: "{summary}"')
            lines.append(f'              runbook: "docs/operations.md#{runbook}"')

    # Quiet before the outage, firing at the step the samples make it hold.
    expect("SwitchboardRedisDown", at(t_kill) - 1, [])
    for step in sorted(set(redis_down.values())):
        firing = [
            (
                {"severity": "page", "instance": n, "job": "switchboard"},
                f"{n} cannot reach Redis",
                "switchboardredisdown",
            )
            for n, s in sorted(redis_down.items())
            if s <= step and values_of("switchboard_redis_up", n)[step] == "0"
        ]
        expect("SwitchboardRedisDown", step, firing)
    both = max(redis_down.values())
    if all(values_of("switchboard_redis_up", n)[both] == "0" and values_of("switchboard_redis_up", n)[both - 1] == "0" for n in ports):
        expect(
            "SwitchboardRedisDownEverywhere",
            both,
            [(
                {"severity": "page", "job": "switchboard"},
                "No Switchboard node of switchboard can reach Redis",
                "switchboardredisdowneverywhere",
            )],
        )
    else:
        sys.exit(f"no evaluation saw every node's link down twice in a row: {redis_down}")
    expect("SwitchboardRedisDown", at(t_back) + 2, [])
    expect("SwitchboardRedisDownEverywhere", at(t_back) + 2, [])
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(json.dumps({
        "out": args.out,
        "redis_down_fires_at_s_after_kill": {n: s * STEP - (t_kill - start_step) for n, s in redis_down.items()},
        "publishes": counts,
    }, indent=1))


if __name__ == "__main__":
    main()
