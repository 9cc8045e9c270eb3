#!/usr/bin/env python3
"""Memory per idle subscribed connection, plain ws:// against wss://, measured from the node's
/proc/PID/status. Standard library only; the client's own TLS limits the connect rate.

  loadtest/wss-idle.py N PORT NODE_PID plain|tls     # tls: trusts /tmp/tlsdemo/cert.pem

Start the node with [server.tls] for `tls` (a certificate for `localhost`, e.g. from
`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem
-out cert.pem -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost`).
"""
import asyncio, ssl, sys, time
N = int(sys.argv[1]); PORT = int(sys.argv[2]); PID = int(sys.argv[3]); TLS = sys.argv[4] == "tls"
UP = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
_SUB = b'{"type":"subscribe","id":1,"channel":"idle"}'
SUB = bytes([0x81, 0x80 | len(_SUB)]) + b"\0\0\0\0" + _SUB
def rss():
    with open(f"/proc/{PID}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
async def one(ctx, sem, held):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", PORT, ssl=ctx, server_hostname="localhost" if ctx else None)
        w.write(UP); await w.drain()
        buf = b""
        while b"welcome" not in buf:
            buf += await r.read(4096)
        w.write(SUB); await w.drain()
        buf = b""
        while b"subscribed" not in buf:
            buf += await r.read(4096)
        held.append((r, w))
async def main():
    ctx = None
    if TLS:
        ctx = ssl.create_default_context(cafile="/tmp/tlsdemo/cert.pem")
    before = rss(); held = []; sem = asyncio.Semaphore(200)
    t = time.perf_counter()
    await asyncio.gather(*(one(ctx, sem, held) for _ in range(N)))
    dt = time.perf_counter() - t
    await asyncio.sleep(3)
    after = rss()
    print(f"{'wss' if TLS else 'ws'}: {len(held)} connections in {dt:.1f}s ({len(held)/dt:.0f}/s), server RSS +{(after-before)/len(held):.2f} KiB per connection")
asyncio.run(main())
