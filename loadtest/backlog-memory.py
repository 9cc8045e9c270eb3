#!/usr/bin/env python3
"""What a node keeps per connection after a deep outbound backlog has drained.

N clients with a 4 KiB receive buffer subscribe to one channel and stop reading; M messages
of S bytes are published over the HTTP API, so hundreds of them wait in each connection's
queue on the node; then every client reads all of them and stays connected. Prints the
node's RSS and its heap in use (glibc's malloc_stats, called through gdb; it writes to the
node's stderr, so the node's stderr must go to LOG) before, with the queues full, and after
they drained, per connection. Needs Python `websockets` and gdb (apt install gdb).

    SWITCHBOARD_LIMITS__OUTBOUND_QUEUE_BYTES=67108864 \\
        target/release/switchboard --listen 127.0.0.1:18080 --control 127.0.0.1:19090 2>node.err &
    loadtest/backlog-memory.py --pid $! --log node.err --clients 100 --messages 1000 --size 8000
"""
import argparse
import asyncio
import json
import re
import socket
import subprocess
import urllib.request

import websockets

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--server", default="127.0.0.1:18080", help="the node's WebSocket address")
parser.add_argument("--control", default="127.0.0.1:19090", help="the node's control API")
parser.add_argument("--pid", type=int, required=True, help="the node's process id")
parser.add_argument("--log", required=True, help="the file the node's stderr goes to")
parser.add_argument("--clients", type=int, default=100)
parser.add_argument("--messages", type=int, default=1000)
parser.add_argument("--size", type=int, default=8000, help="bytes of data per message")
args = parser.parse_args()


def rss_kib():
    with open(f"/proc/{args.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def heap_kib():
    """KiB the allocator has handed out and not had back (malloc_stats' total in use)."""
    subprocess.run(
        ["gdb", "-p", str(args.pid), "-batch", "-ex", "call (void)malloc_stats()"],
        capture_output=True, check=True,
    )
    with open(args.log) as log:
        return int(re.findall(r"in use bytes\s*=\s*(\d+)", log.read())[-1]) // 1024


def queued_messages():
    metrics = urllib.request.urlopen(f"http://{args.control}/metrics").read().decode()
    return re.search(r"^switchboard_outbound_queue_max_messages (\d+)", metrics, re.M).group(1)


def publish():
    body = json.dumps({"channel": "deep", "data": "x" * args.size}).encode()
    request = urllib.request.Request(
        f"http://{args.control}/v1/publish", data=body,
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(request).read()


async def client(subscribed, read, drained, leave):
    host, port = args.server.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    async with websockets.connect(f"ws://{args.server}/ws", sock=sock, max_queue=1, max_size=None) as ws:
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": "deep"}))
        await ws.recv()  # subscribed
        subscribed.set_result(None)
        await read.wait()
        received = 0
        while received < args.messages:
            if json.loads(await ws.recv()).get("type") == "message":
                received += 1
        drained.set_result(None)
        await leave.wait()


async def main():
    loop = asyncio.get_running_loop()
    read, leave = asyncio.Event(), asyncio.Event()
    subscribed = [loop.create_future() for _ in range(args.clients)]
    drained = [loop.create_future() for _ in range(args.clients)]
    clients = [
        asyncio.create_task(client(subscribed[i], read, drained[i], leave))
        for i in range(args.clients)
    ]
    await asyncio.gather(*subscribed)
    await asyncio.sleep(1)
    before = (rss_kib(), heap_kib())
    for _ in range(args.messages):
        await asyncio.to_thread(publish)
    await asyncio.sleep(1)
    deepest = queued_messages()
    full = (rss_kib(), heap_kib())
    read.set()
    await asyncio.gather(*drained)
    await asyncio.sleep(2)
    after = (rss_kib(), heap_kib())
    leave.set()
    await asyncio.gather(*clients)
    n = args.clients
    print(f"{n} clients, {args.messages} messages of {args.size} bytes, deepest queue {deepest}")
    for name, (rss, heap) in (("queues full", full), ("drained", after)):
        print(f"{name}: RSS +{(rss - before[0]) / n:.1f} KiB per connection, "
              f"heap in use +{(heap - before[1]) / n:.1f} KiB per connection")


asyncio.run(main())
