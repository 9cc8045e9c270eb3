#!/usr/bin/env python3
"""What a clustered node keeps in Redis per channel and per message.

Starts its own redis-server and one switchboard node (on free loopback ports, with
`history.size` set per run through SWITCHBOARD_HISTORY__SIZE), publishes through the node's
HTTP API (`POST /v1/publish`) `history.size` messages to each of `--channels` channels per
payload size, round robin, and reads Redis's own accounting: `MEMORY USAGE` of each
channel's `meta` hash and `hist` stream and of the bus partition streams (`SAMPLES 0`: every
element), and `INFO memory`'s `used_memory` before and after (which also counts the keys'
expiry entries and the bus). Then, with `history.ttl = 5s`, it publishes one message to each
of 1,000 channels and reports what Redis keeps per channel once every `hist` key has
expired (the `meta` hashes stay for `channel_state_ttl`): `used_memory` with them, less
`used_memory` once they are deleted. Prints one JSON document. Bounded by `--max-seconds`;
stops only the two processes it started, by PID. Needs redis-server and redis-cli on the PATH
and a built binary:

    cargo build --bin switchboard
    loadtest/redis-memory.py --binary "$CARGO_TARGET_DIR/debug/switchboard"
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--binary",
    default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "switchboard"),
    help="the switchboard binary",
)
parser.add_argument("--channels", type=int, default=100, help="channels per payload size")
parser.add_argument("--payloads", default="16,256,4096", help="bytes of data per message")
parser.add_argument("--history-sizes", default="1,10,100", help="history.size of each run")
parser.add_argument("--max-seconds", type=float, default=900, help="give up after this")
args = parser.parse_args()
DEADLINE = time.monotonic() + args.max_seconds


def left():
    remaining = DEADLINE - time.monotonic()
    if remaining <= 0:
        sys.exit("redis-memory: --max-seconds passed")
    return remaining


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Redis:
    def __init__(self, workdir):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        while self.cli("PING") != "PONG":
            left()
            time.sleep(0.05)

    def cli(self, *command):
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *command],
            capture_output=True, text=True, timeout=min(30, left()),
        )
        return result.stdout.strip()

    def integer(self, *command):
        reply = self.cli(*command)
        try:
            return int(reply)
        except ValueError:
            sys.exit(f"redis-memory: {command}: {reply!r}")

    def used_memory(self):
        info = self.cli("INFO", "memory")
        return int(next(line.split(":")[1] for line in info.splitlines()
                        if line.startswith("used_memory:")))

    def version(self):
        info = self.cli("INFO", "server")
        return next(line.split(":")[1] for line in info.splitlines()
                    if line.startswith("redis_version:"))


class Node:
    def __init__(self, redis_url, history_size, workdir, history_ttl="5m"):
        self.control = free_port()
        env = dict(os.environ, SWITCHBOARD_HISTORY__SIZE=str(history_size),
                   SWITCHBOARD_HISTORY__TTL=history_ttl)
        self.log = open(os.path.join(workdir, f"node-{history_size}.log"), "w")
        self.process = subprocess.Popen(
            [args.binary, "--listen", f"127.0.0.1:{free_port()}",
             "--control", f"127.0.0.1:{self.control}", "--redis", redis_url,
             "--log-level", "warn"],
            cwd=workdir, env=env, stdout=self.log, stderr=self.log,
        )
        self.http = None
        while not self.ready():
            if self.process.poll() is not None:
                sys.exit(f"redis-memory: the node exited with {self.process.returncode}")
            left()
            time.sleep(0.1)
        self.http = http.client.HTTPConnection("127.0.0.1", self.control, timeout=10)

    def ready(self):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.control, timeout=2)
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def publish(self, channel, data):
        body = json.dumps({"channel": channel, "data": data})
        self.http.request("POST", "/v1/publish", body, {"content-type": "application/json"})
        response = self.http.getresponse()
        answer = response.read()
        if response.status != 200:
            sys.exit(f"redis-memory: publish answered {response.status}: {answer!r}")


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bus_bytes(redis, partitions=16):
    total = 0
    for partition in range(partitions):
        key = f"sb:{{sb:{partition}}}:bus"
        if redis.integer("EXISTS", key):
            total += redis.integer("MEMORY", "USAGE", key, "SAMPLES", "0")
    return total


def bus_entries(redis, partitions=16):
    return sum(redis.integer("XLEN", f"sb:{{sb:{p}}}:bus") for p in range(partitions))


def channel_keys(channel, partitions=16):
    """The channel's meta and hist keys: its partition is FNV-1a of the name, as the node's."""
    hash_ = 0x811C9DC5
    for byte in channel.encode():
        hash_ = ((hash_ ^ byte) * 0x01000193) & 0xFFFFFFFF
    partition = hash_ % partitions
    return f"sb:{{sb:{partition}}}:meta:{channel}", f"sb:{{sb:{partition}}}:hist:{channel}"


def measure(redis, node, history_size, payload):
    names = [f"m{payload}-{n}" for n in range(args.channels)]
    data = "x" * payload
    before_used = redis.used_memory()
    before_bus, before_entries = bus_bytes(redis), bus_entries(redis)
    for _ in range(history_size):
        for name in names:
            left()
            node.publish(name, data)
    after_used = redis.used_memory()
    after_bus, after_entries = bus_bytes(redis), bus_entries(redis)
    meta_bytes = hist_bytes = 0
    key_lengths = 0
    for name in names:
        meta, hist = channel_keys(name)
        meta_bytes += redis.integer("MEMORY", "USAGE", meta)
        hist_bytes += redis.integer("MEMORY", "USAGE", hist, "SAMPLES", "0")
        key_lengths += len(meta)
    messages = history_size * len(names)
    new_entries = after_entries - before_entries
    return {
        "history_size": history_size,
        "payload_bytes": payload,
        "channels": len(names),
        "messages": messages,
        "meta_key_chars": round(key_lengths / len(names), 1),
        "meta_bytes_per_channel": round(meta_bytes / len(names)),
        "hist_bytes_per_channel": round(hist_bytes / len(names)),
        "hist_bytes_per_message": round(hist_bytes / messages, 1),
        "bus_entries_added": new_entries,
        "bus_bytes_per_entry": round((after_bus - before_bus) / new_entries, 1),
        "used_memory_per_channel": round((after_used - before_used) / len(names)),
        "used_memory_per_message": round((after_used - before_used) / messages, 1),
    }


def after_expiry(workdir, channels=1000, payload=256, ttl_seconds=5):
    """Per channel, what stays once history.ttl has passed: the meta hash alone."""
    redis = Redis(workdir)
    node = None
    try:
        node = Node(f"redis://127.0.0.1:{redis.port}", 100, workdir, f"{ttl_seconds}s")
        for n in range(64):
            node.publish(f"warm-{n}", "x")
        names = [f"e{payload}-{n}" for n in range(channels)]
        for name in names:
            node.publish(name, "x" * payload)
        for name in names:
            _, hist = channel_keys(name)
            while redis.integer("EXISTS", hist):
                left()
                time.sleep(0.2)
        metas = [channel_keys(name)[0] for name in names]
        left_after_ttl = sum(redis.integer("EXISTS", meta) for meta in metas)
        # What the meta hashes take, expiry entries included: used_memory with them, then
        # without them (DEL frees at once), on an otherwise unchanged Redis.
        with_metas = redis.used_memory()
        for start in range(0, len(metas), 100):
            redis.cli("DEL", *metas[start:start + 100])
        without_metas = redis.used_memory()
        return {
            "channels": channels,
            "payload_bytes": payload,
            "history_ttl_seconds": ttl_seconds,
            "hist_keys_left": sum(redis.integer("EXISTS", channel_keys(n)[1]) for n in names),
            "meta_hashes_left": left_after_ttl,
            "used_memory_per_meta_hash": round((with_metas - without_metas) / channels, 1),
        }
    finally:
        if node is not None:
            stop(node.process)
            node.log.close()
        stop(redis.process)


def main():
    payloads = [int(p) for p in args.payloads.split(",")]
    history_sizes = [int(h) for h in args.history_sizes.split(",")]
    results = []
    version = None
    with tempfile.TemporaryDirectory(prefix="sb-redis-memory-") as workdir:
        for history_size in history_sizes:
            redis = Redis(workdir)
            node = None
            try:
                version = redis.version()
                node = Node(f"redis://127.0.0.1:{redis.port}", history_size, workdir)
                # Creates every bus partition stream and loads the script first, so that
                # the first measurement does not count them.
                for n in range(64):
                    node.publish(f"warm-{n}", "x")
                time.sleep(2)
                for payload in payloads:
                    results.append(measure(redis, node, history_size, payload))
            finally:
                if node is not None:
                    stop(node.process)
                    node.log.close()
                stop(redis.process)
        expiry = after_expiry(workdir)
    print(json.dumps({
        "redis_version": version,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["loadtest/redis-memory.py", *sys.argv[1:]]),
        "results": results,
        "after_history_ttl": expiry,
    }, indent=2))


main()
