# Opens N WebSocket connections to a running Switchboard, subscribes each to one channel,
# and reports the server's RSS growth per connection (from /proc/PID/status).
import asyncio, json, sys, websockets

async def hold(url, channel, ready, done):
    async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": channel}))
        await ws.recv()
        ready.release()
        await done.wait()

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def main(pid, n, url):
    before = rss_kib(pid)
    ready, done = asyncio.Semaphore(0), asyncio.Event()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(hold(url, f"room-{i % 100}", ready, done)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    for _ in range(n):
        await ready.acquire()
    await asyncio.sleep(2)
    after = rss_kib(pid)
    print(f"connections={n} rss_before_kib={before} rss_after_kib={after} "
          f"per_connection_kib={(after - before) / n:.2f}")
    done.set()
    await asyncio.gather(*tasks)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
