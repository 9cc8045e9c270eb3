#!/usr/bin/env python3
"""Presence figures (docs/performance.md, "Presence"): what presence costs and how fast it
answers, beside the same runs without it.

    python3 loadtest/presence.py [connect] [latency] [reconnect]   (default: all three)

- connect:   19,000 connections (100 rooms) at up to 20,000/s to one node, presence off,
             on, and on with join_leave, embedded and with Redis: connects/s and server
             CPU per connection (handshake + subscribe + presence).
- latency:   19,000 members of one room, on 1 node (embedded, and with Redis) and spread
             over 3 nodes (Redis): presence_stats and presence (1,000 members) latency over
             the control API and as WebSocket frames; Redis calls/s per node at rest, also
             with the members spread over 1,000 rooms.
- reconnect: 5,000 members of one room with join_leave drop at once (SIGKILL of the load
             generator) and come back: the event deliveries and server CPU that costs with
             presence.coalesce = 200ms and 0s (every event its own frame).

Release binaries from $SWITCHBOARD_BIN_DIR (default ~/.cache/switchboard-target/release;
`cargo build --release --workspace --bins`). Needs redis-server and the `websockets`
package. Every process it starts is stopped by PID; every loop is bounded.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

BIN_DIR = os.environ.get(
    "SWITCHBOARD_BIN_DIR", os.path.expanduser("~/.cache/switchboard-target/release")
)
SERVER = os.path.join(BIN_DIR, "switchboard")
LOADGEN = os.path.join(BIN_DIR, "switchboard-loadtest")
STARTED = []


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(presence, join_leave, coalesce="200ms"):
    rule = "anonymous" if presence else "none"
    text = f"""
[limits]
client_messages_per_second = 0
outbound_queue_messages = 65536
outbound_queue_bytes = 67108864
[presence]
coalesce = "{coalesce}"
max_listed = 1000
[[namespaces]]
pattern = "room-*"
subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
presence = "{rule}"
join_leave = {str(join_leave).lower()}
"""
    handle = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    handle.write(text)
    handle.close()
    return handle.name


def start(args):
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(process)
    return process


def stop(process, sig=signal.SIGTERM):
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Node:
    def __init__(self, config_path, redis_url=None):
        self.ws = f"127.0.0.1:{free_port()}"
        self.control = f"127.0.0.1:{free_port()}"
        args = [SERVER, "--config", config_path, "--listen", self.ws,
                "--control", self.control, "--log-level", "warn"]
        if redis_url:
            args += ["--redis", redis_url]
        self.process = start(args)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"http://{self.control}/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the node did not become ready")

    def get(self, path):
        with urllib.request.urlopen(f"http://{self.control}{path}", timeout=10) as response:
            return response.read()

    def metric(self, prefix):
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(prefix):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu(self):
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self, channel):
        return json.loads(self.get(f"/v1/channels/{channel}/presence-stats"))


def redis():
    port = free_port()
    process = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no"])
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"],
                          capture_output=True).stdout.strip() == b"PONG":
            return process, port
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def script_calls(port):
    stats = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"],
                           capture_output=True, text=True).stdout
    calls = 0
    for line in stats.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


def loadgen(kind, servers, connections, channels, rate, hold=None, json_path=None):
    args = [LOADGEN, kind, "--server", ",".join(node.ws for node in servers),
            "--connections", str(connections), "--channels", str(channels),
            "--rate", str(rate), "--concurrency", "256", "--source-addrs", "4"]
    if hold is not None:
        args += ["--hold", str(hold), "--report-every", "5"]
    if json_path:
        args += ["--json", json_path]
    return start(args)


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def percentiles(samples):
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    return {"p50_ms": round(pick(0.5), 2), "p99_ms": round(pick(0.99), 2), "n": len(samples)}


def http_latency(node, path, count):
    samples = []
    for _ in range(count):
        begun = time.perf_counter()
        node.get(path)
        samples.append((time.perf_counter() - begun) * 1000)
    return percentiles(samples)


async def ws_latency(node, kind, channel, count):
    samples = []
    async with websockets.connect(f"ws://{node.ws}/ws", max_size=None) as ws:
        await ws.recv()  # welcome
        for request_id in range(1, count + 1):
            begun = time.perf_counter()
            await ws.send(json.dumps({"type": kind, "id": request_id, "channel": channel}))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == request_id:
                    break
            samples.append((time.perf_counter() - begun) * 1000)
    return percentiles(samples)


def connect_rates():
    rows = []
    for clustered in (False, True):
        for presence, join_leave in ((False, False), (True, False), (True, True)):
            path = config(presence, join_leave)
            redis_process, port = redis() if clustered else (None, None)
            node = Node(path, f"redis://127.0.0.1:{port}" if clustered else None)
            out = tempfile.mktemp(suffix=".json")
            cpu_before = node.cpu()
            generator = loadgen("connect", [node], 19000, 100, 20000, json_path=out)
            generator.wait(timeout=120)
            time.sleep(2)
            cpu = node.cpu() - cpu_before
            with open(out) as handle:
                result = json.load(handle)
            row = {"redis": clustered, "presence": presence, "join_leave": join_leave,
                   "opened": result.get("opened"),
                   "connects_per_second": result.get("connects_per_second"),
                   "server_cpu_us_per_connection": round(cpu / 19000 * 1e6, 1)}
            print("connect", json.dumps(row), flush=True)
            rows.append(row)
            stop(node.process)
            if redis_process:
                stop(redis_process)
            os.unlink(path)
    return rows


def latencies():
    rows = []
    for nodes, clustered, channels in ((1, False, 1), (1, True, 1), (3, True, 1), (3, True, 1000)):
        path = config(True, False)
        redis_process, port = redis() if clustered else (None, None)
        url = f"redis://127.0.0.1:{port}" if clustered else None
        servers = [Node(path, url) for _ in range(nodes)]
        generator = loadgen("idle", servers, 19000, channels, 10000, hold=90)
        channel = "room-0"
        expected = 19000 // channels
        wait_for(lambda: servers[0].stats(channel)["connections"] >= expected, 60,
                 "every member listed")
        time.sleep(2)
        row = {"nodes": nodes, "redis": clustered, "rooms": channels,
               "members_per_room": servers[0].stats(channel)["connections"]}
        if clustered:
            before = script_calls(port)
            time.sleep(20)
            row["redis_script_calls_per_second_per_node"] = round(
                (script_calls(port) - before) / 20 / nodes, 1)
        if channels == 1:
            row["api_presence_stats"] = http_latency(servers[-1], f"/v1/channels/{channel}/presence-stats", 200)
            row["api_presence_1000"] = http_latency(servers[-1], f"/v1/channels/{channel}/presence?limit=1000", 50)
            row["ws_presence_stats"] = asyncio.run(ws_latency(servers[-1], "presence_stats", channel, 200))
            row["ws_presence_1000"] = asyncio.run(ws_latency(servers[-1], "presence", channel, 50))
        print("latency", json.dumps(row), flush=True)
        rows.append(row)
        stop(generator, signal.SIGKILL)
        for server in servers:
            stop(server.process)
        if redis_process:
            stop(redis_process)
        os.unlink(path)
    return rows


def quiet(node):
    """Waits until the node delivered nothing for a second."""
    last = [-1.0]

    def settled():
        now = node.metric("switchboard_messages_delivered_total")
        still = now == last[0]
        last[0] = now
        time.sleep(1)
        return still

    wait_for(settled, 120, "deliveries to end")


def reconnects():
    rows = []
    members = 5000
    for coalesce in ("200ms", "0s"):
        path = config(True, True, coalesce)
        node = Node(path)
        first = loadgen("idle", [node], members, 1, 5000, hold=120)
        wait_for(lambda: node.stats("room-0")["connections"] == members, 60, "members")
        quiet(node)
        before = (node.metric("switchboard_messages_delivered_total"), node.cpu(), node.metric("switchboard_bytes_sent_total"))
        begun = time.time()
        stop(first, signal.SIGKILL)
        second = loadgen("idle", [node], members, 1, 5000, hold=60)
        wait_for(lambda: node.stats("room-0")["connections"] == members, 60, "members back")
        quiet(node)
        row = {"members": members, "coalesce": coalesce,
               "event_deliveries": int(node.metric("switchboard_messages_delivered_total") - before[0]),
               "bytes_sent": int(node.metric("switchboard_bytes_sent_total") - before[2]),
               "server_cpu_s": round(node.cpu() - before[1], 2),
               "seconds_until_quiet": round(time.time() - begun - 2, 1),  # less the quiet second
               "slow_consumer_closes": int(node.metric("switchboard_slow_consumer_closes_total")),
               "presence_frames_sent": int(node.metric("switchboard_presence_events_total"))}
        print("reconnect", json.dumps(row), flush=True)
        rows.append(row)
        stop(second, signal.SIGKILL)
        stop(node.process)
        os.unlink(path)
    return rows


def main():
    wanted = sys.argv[1:] or ["connect", "latency", "reconnect"]
    results = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().release}
    try:
        if "connect" in wanted:
            results["connect"] = connect_rates()
        if "latency" in wanted:
            results["latency"] = latencies()
        if "reconnect" in wanted:
            results["reconnect"] = reconnects()
    finally:
        for process in STARTED:
            stop(process, signal.SIGKILL)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
