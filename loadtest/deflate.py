"""permessage-deflate beside uncompressed, in one run (issue 32; docs/performance.md,
"Compression"):

1. bytes on the wire per delivery (WebSocket header included) of the demo's chat and ticker
   messages and of a 2 KiB assistant reply, to a subscriber that negotiated
   permessage-deflate and to one that did not, with the shipped `compression.min_bytes`
   (256) and with 0;
2. server CPU per delivery at a 5,000-subscriber fan-out (HTTP publishing, 50 messages a
   second of 2 KiB of words, 10 s), every subscriber with compression or none, alternated
   ROUNDS times. 50, not 100: at 500,000 deliveries a second the two load-generator
   processes, inflating every message's head, took both cores and fell seconds behind
   (the server's CPU per delivery was the same);
3. the server's resident memory per idle subscribed connection at 19,000 connections, with
   compression negotiated and without.

usage: python3 loadtest/deflate.py [OUT.json [PLOT_DIR]]   (from the repository root;
binaries from $SWITCHBOARD_BIN_DIR, default target/release; ROUNDS=3)
Prints one JSON object last; with PLOT_DIR, draws PLOT_DIR/compression.png (matplotlib).
Every process it starts is stopped by PID; every run is bounded in time.
"""
import json, os, socket, struct, subprocess, sys, time, urllib.request, zlib

BIN = os.environ.get("SWITCHBOARD_BIN_DIR", "target/release")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
WS, CONTROL = ("127.0.0.1", 18080), ("127.0.0.1", 19090)
OFFER = "permessage-deflate; client_max_window_bits"


def start_server(env=None):
    full = dict(os.environ, **(env or {}))
    proc = subprocess.Popen(
        [f"{BIN}/switchboard", "--config", "loadtest/switchboard.toml", "--listen",
         f"{WS[0]}:{WS[1]}", "--control", f"{CONTROL[0]}:{CONTROL[1]}", "--log-level", "error"],
        env=full)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{CONTROL[0]}:{CONTROL[1]}/readyz", timeout=1)
            return proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Subscriber:
    """A raw client that reads whole frames, so that their size on the wire is known."""

    def __init__(self, channel, deflate):
        self.sock = socket.create_connection(WS, timeout=5)
        ext = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if deflate else ""
        self.sock.sendall(
            ("GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             f"{ext}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        self.negotiated = b"permessage-deflate" in head.lower()
        assert self.negotiated == deflate, head
        self.buf = b""
        self.frame()  # welcome
        payload = json.dumps({"type": "subscribe", "channel": channel, "id": 1}).encode()
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        self.frame()  # subscribed

    def frame(self):
        """(bytes on the wire, compressed, JSON) of the next frame."""
        while True:
            if len(self.buf) >= 2:
                length, header = self.buf[1] & 0x7F, 2
                if length == 126 and len(self.buf) >= 4:
                    length, header = struct.unpack(">H", self.buf[2:4])[0], 4
                elif length == 127 and len(self.buf) >= 10:
                    length, header = struct.unpack(">Q", self.buf[2:10])[0], 10
                if length < 126 or header > 2:
                    if len(self.buf) >= header + length:
                        first, body = self.buf[0], self.buf[header:header + length]
                        self.buf = self.buf[header + length:]
                        compressed = bool(first & 0x40)
                        if compressed:
                            body = zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")
                        return header + length, compressed, json.loads(body)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed a subscriber")
            self.buf += chunk


def publish(channel, data):
    body = json.dumps({"channel": channel, "data": data}).encode()
    request = urllib.request.Request(f"http://{CONTROL[0]}:{CONTROL[1]}/v1/publish", data=body,
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()


def payloads():
    reply = open("src/demo/assistant.txt", encoding="utf-8").read()
    text = reply[:2048]
    while len(text.encode()) > 2048:
        text = text[:-1]
    return {
        # What the demo page publishes to demo:chat, and what the node's ticker sends.
        "demo chat": {"name": "guest", "text": "Has anyone tried the assistant in this room? It streams its answer to every tab."},
        "demo ticker": {"n": 18233, "node": "node-4f1c2a9e", "time": int(time.time() * 1000)},
        "assistant reply (2 KiB)": {"role": "assistant", "prompt": "How do I resume after a reconnect?", "text": text},
    }


def wire_bytes(min_bytes):
    server = start_server({"SWITCHBOARD_COMPRESSION__MIN_BYTES": str(min_bytes)})
    try:
        channel = f"bytes-{min_bytes}"
        plain, deflate = Subscriber(channel, False), Subscriber(channel, True)
        rows = {}
        for name, data in payloads().items():
            publish(channel, data)
            plain_len, _, plain_json = plain.frame()
            deflate_len, compressed, deflate_json = deflate.frame()
            assert plain_json == deflate_json and plain_json["data"] == data
            rows[name] = {"plain": plain_len, "deflate": deflate_len, "compressed": compressed,
                          "ratio": round(deflate_len / plain_len, 3)}
        return rows
    finally:
        stop(server)


def fanout(deflate, source_first):
    server = start_server()
    out = "/tmp/deflate-fanout.json"
    try:
        cmd = [f"{BIN}/switchboard-loadtest", "fanout", "--server", f"{WS[0]}:{WS[1]}",
               "--control", f"{CONTROL[0]}:{CONTROL[1]}", "--server-pid", str(server.pid),
               "--subscribers", "5000", "--rate", "50", "--duration", "10", "--payload", "2048",
               "--words", "--publish-via", "http", "--source-addrs", "2", "--workers", "2",
               "--source-first", str(source_first), "--json", out]
        if deflate:
            cmd.append("--deflate")
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=240,
                       check=True)
        metrics = urllib.request.urlopen(f"http://{CONTROL[0]}:{CONTROL[1]}/metrics").read().decode()
        sample = lambda name: sum(float(line.split()[-1]) for line in metrics.splitlines()
                                  if line.startswith(name))
        result = json.load(open(out))
        delivered = sample("switchboard_messages_delivered_total")
        return {"deflate": deflate, "deliveries_per_second": result["deliveries_per_second"],
                "cpu_us_per_delivery": round(result["server_cpu_us_per_delivery"], 3),
                "loss": result["loss"], "p99_ms": round(result["latency_us"]["p99"] / 1000, 1),
                "bytes_per_delivery": round(sample("switchboard_bytes_sent_total") / delivered, 1)}
    finally:
        stop(server)
        if os.path.exists(out):
            os.remove(out)


def idle(deflate, source_first):
    server = start_server()
    out = "/tmp/deflate-idle.json"
    try:
        cmd = [f"{BIN}/switchboard-loadtest", "idle", "--server", f"{WS[0]}:{WS[1]}",
               "--server-pid", str(server.pid), "--connections", "19000", "--rate", "20000",
               "--concurrency", "512", "--source-addrs", "2", "--source-first", str(source_first),
               "--hold", "20", "--json", out]
        if deflate:
            cmd.append("--deflate")
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                       check=True)
        result = json.load(open(out))
        return {"deflate": deflate, "opened": result["opened"],
                "kib_per_connection": round(result["server_rss_kib_per_connection_at_end"], 2)}
    finally:
        stop(server)
        if os.path.exists(out):
            os.remove(out)


def plot(results, directory):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    rows = results["wire_bytes"]["min_bytes_256"]
    names = list(rows)
    xs = range(len(names))
    axes[0].bar([x - 0.2 for x in xs], [rows[n]["plain"] for n in names], 0.4, label="uncompressed")
    axes[0].bar([x + 0.2 for x in xs], [rows[n]["deflate"] for n in names], 0.4, label="permessage-deflate")
    axes[0].set_xticks(list(xs), [n.replace(" (", "\n(") for n in names])
    axes[0].set_ylabel("bytes on the wire per delivery")
    axes[0].set_title("Bytes per delivery (min_bytes 256)")
    axes[0].legend()
    for label, key, axis, unit in (("CPU", "cpu_us_per_delivery", axes[1], "server CPU µs per delivery"),):
        for deflate, colour in ((False, "C0"), (True, "C1")):
            runs = [r[key] for r in results["fanout"] if r["deflate"] == deflate]
            axis.scatter([int(deflate)] * len(runs), runs, color=colour, s=40)
        axis.set_xticks([0, 1], ["uncompressed", "permessage-deflate"])
        axis.set_ylim(bottom=0)
        axis.set_ylabel(unit)
        axis.set_title("5,000 subscribers, 50 msg/s of 2 KiB (3 runs each)")
    idle_runs = results["idle"]
    axes[2].bar(["uncompressed", "permessage-deflate"],
                [next(r["kib_per_connection"] for r in idle_runs if r["deflate"] == d) for d in (False, True)],
                color=["C0", "C1"])
    axes[2].set_ylabel("server RSS KiB per idle connection")
    axes[2].set_title("19,000 idle subscribed connections")
    fig.suptitle(f"Compression beside none, {results['date']}, {results['build']}")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "compression.png"), dpi=100)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "compression.json"
    build = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "build": build,
               "machine": f"{os.cpu_count()} cores",
               "wire_bytes": {"min_bytes_256": wire_bytes(256), "min_bytes_0": wire_bytes(0)},
               "fanout": [], "idle": []}
    source = 21
    for _ in range(ROUNDS):
        for deflate in (False, True):
            results["fanout"].append(fanout(deflate, source))
            source += 4
            print(json.dumps(results["fanout"][-1]), file=sys.stderr, flush=True)
    for deflate in (False, True):
        results["idle"].append(idle(deflate, source))
        source += 4
        print(json.dumps(results["idle"][-1]), file=sys.stderr, flush=True)
    cpu = lambda d: sorted(r["cpu_us_per_delivery"] for r in results["fanout"] if r["deflate"] == d)
    results["cpu_ratio_median"] = round(cpu(True)[len(cpu(True)) // 2] / cpu(False)[len(cpu(False)) // 2], 3)
    json.dump(results, open(out, "w"), indent=1)
    if len(sys.argv) > 2:
        plot(results, sys.argv[2])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
