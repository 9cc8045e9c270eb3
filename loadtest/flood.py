#!/usr/bin/env python3
"""Hostile-client floods against a running Switchboard node, with the node's cost.

Each mode is one thing an anonymous client can try (docs/security.md lists them). The
script reads the node's resident memory and CPU time from /proc before and after, so run
it on the node's machine and give the node's PID. Standard library only; loopback only;
every loop is bounded in time.

  loadtest/flood.py --pid PID --mode ping          # 125-byte pings, never reading
  loadtest/flood.py --pid PID --mode continuation  # empty continuation frames
  loadtest/flood.py --pid PID --mode silent --count 5000   # TCP sockets that never upgrade
  loadtest/flood.py --pid PID --mode trickle --count 300   # control API bodies, 1 byte/s
  loadtest/flood.py --pid PID --mode channels --count 20000  # one publish per new channel

Options: --ws HOST:PORT (default 127.0.0.1:8080), --control HOST:PORT (127.0.0.1:9090),
--seconds N (default 4).
"""

import argparse
import os
import socket
import struct
import time

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: flood\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
MASK = b"\x37\xfa\x21\x3d"


def frame(first, payload):
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    else:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def node_cost(pid):
    """(resident KiB, CPU seconds) of the node."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def upgraded(ws):
    sock = socket.create_connection(ws)
    sock.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("the node closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        status_line = head.split(b"\r\n")[0]
        raise SystemExit(f"upgrade refused: {status_line!r}")
    return sock


def flood(sock, data, seconds):
    """Writes `data` until `seconds` pass; how many copies were written whole."""
    batch = data * 64
    sock.settimeout(0.2)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(batch)
            sent += 64
        except OSError:
            # A timeout means the node stopped reading (and may have taken part of the batch,
            # so framing would break if we went on); anything else, that it closed.
            break
    return sent


def close_code(sock, seconds=5):
    """Reads until a close frame (returns its code) or the end of the stream (None)."""
    sock.settimeout(seconds)
    buf = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
            while len(buf) >= 2:
                length = buf[1] & 0x7F
                header = 2
                if length == 126:
                    if len(buf) < 4:
                        break
                    length, header = struct.unpack(">H", buf[2:4])[0], 4
                elif length == 127:
                    if len(buf) < 10:
                        break
                    length, header = struct.unpack(">Q", buf[2:10])[0], 10
                if len(buf) < header + length:
                    break
                if buf[0] & 0x0F == 0x8:
                    return struct.unpack(">H", buf[header:header + 2])[0] if length >= 2 else None
                buf = buf[header + length:]
    except OSError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--mode", required=True,
                        choices=["ping", "continuation", "silent", "trickle", "channels"])
    parser.add_argument("--ws", type=addr, default=("127.0.0.1", 8080))
    parser.add_argument("--control", type=addr, default=("127.0.0.1", 9090))
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()

    rss_before, cpu_before = node_cost(args.pid)
    started = time.monotonic()
    result = ""
    if args.mode == "ping":
        sock = upgraded(args.ws)
        sent = flood(sock, frame(0x89, b"p" * 125), args.seconds)
        result = f"pings written={sent}"
    elif args.mode == "continuation":
        sock = upgraded(args.ws)
        sock.sendall(frame(0x01, b"{"))
        sent = flood(sock, frame(0x00, b""), args.seconds)
        result = f"continuations written={sent} close={close_code(sock)}"
    elif args.mode == "silent":
        held, refused = [], 0
        for _ in range(args.count):
            try:
                held.append(socket.create_connection(args.ws))
            except OSError:
                refused += 1
        time.sleep(args.seconds)
        rss_mid, _ = node_cost(args.pid)
        # A real client from another address (the per-address cap is not what is measured).
        probe = socket.create_connection(args.ws, source_address=("127.0.0.2", 0))
        probe.sendall(UPGRADE)
        status = probe.recv(64).split(b"\r\n")[0].decode(errors="replace")
        result = (f"held={len(held)} refused_at_connect={refused} "
                  f"rss_while_held_kib={rss_mid - rss_before} real_client_got='{status}'")
    elif args.mode == "trickle":
        held = []
        for _ in range(args.count):
            sock = socket.create_connection(args.control)
            sock.sendall(b"POST /v1/publish HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            sock.setblocking(False)
            held.append(sock)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            for sock in held:
                try:
                    sock.send(b" ")
                except OSError:
                    pass
            time.sleep(1)
        open_count = 0
        for sock in held:
            try:
                data = sock.recv(4096)
                if not data:
                    continue
                if b" 408 " in data.split(b"\r\n")[0]:
                    continue
                open_count += 1
            except BlockingIOError:
                open_count += 1
            except OSError:
                pass
        result = f"bodies={len(held)} still_open_after={args.seconds}s: {open_count}"
    elif args.mode == "channels":
        sock = upgraded(args.ws)
        sock.settimeout(5)
        batch = b"".join(
            frame(0x81, f'{{"type":"publish","channel":"c{n}","data":1}}'.encode())
            for n in range(args.count)
        )
        sock.sendall(batch)
        # Wait for the replies (a `published` or an `error` per frame).
        received = b""
        deadline = time.monotonic() + 30
        while received.count(b'"type":') < args.count and time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                break
            if not chunk:
                break
            received += chunk
        published = received.count(b'"type":"published"')
        rss_after, _ = node_cost(args.pid)
        result = (f"channels published={published} rss_per_channel_bytes="
                  f"{(rss_after - rss_before) * 1024 / max(published, 1):.0f}")
    rss_after, cpu_after = node_cost(args.pid)
    print(f"mode={args.mode} {result} elapsed={time.monotonic() - started:.1f}s "
          f"node_rss_kib {rss_before}->{rss_after} (+{rss_after - rss_before}) "
          f"node_cpu_s +{cpu_after - cpu_before:.2f}")


if __name__ == "__main__":
    main()
