#!/usr/bin/env bash
# What Prometheus scrapes cost the publishers: POST /v1/publish latency on a node holding N
# idle subscribed connections, first alone, then while 4 clients scrape /metrics in a loop.
# Starts the node and the load generator, prints one Markdown row per phase, and stops what
# it started (by PID). Every loop is bounded by --publishes or by 120 s.
#
#   loadtest/scrape.sh                  # 15,000 connections, 200,000 publishes per phase
#   BIN=target/release loadtest/scrape.sh 5000
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
CONNECTIONS=${1:-15000}
REQUESTS=${2:-200000}
out=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$out"; }
trap cleanup EXIT
# An empty configuration: the built-in defaults of whichever build BIN holds.
: >"$out/empty.toml"
"$BIN/switchboard" --config "$out/empty.toml" --listen 127.0.0.1:18080 \
  --control 127.0.0.1:19090 --log-level warn &
node=$!
pids+=("$node")
sleep 0.5
"$BIN/switchboard-loadtest" idle --server 127.0.0.1:18080 --connections "$CONNECTIONS" \
  --source-addrs 2 --hold 600 --report-every 600 >/dev/null 2>&1 &
pids+=("$!")
# Wait for the connections to be open.
for _ in $(seq 1 120); do
  open=$(curl -s 127.0.0.1:19090/metrics | awk '$1 == "switchboard_connections" { print $2 }')
  [ "${open:-0}" -ge "$CONNECTIONS" ] && break
  sleep 0.5
done
# One scrape's cost: the mean of 500 back to back on one keep-alive connection.
python3 - "$CONNECTIONS" <<'PY'
import http.client, sys, time
conn = http.client.HTTPConnection("127.0.0.1", 19090)
start = time.perf_counter()
for _ in range(500):
    conn.request("GET", "/metrics")
    conn.getresponse().read()
print(f"one scrape at {int(sys.argv[1]):,} connections: {(time.perf_counter() - start) * 2:.2f} ms")
PY
echo "| build | connections | scrapers | publishes/s | p50 | p99 | p99.9 | scrapes |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for scrapers in 0 4; do
  scraper_pids=()
  for n in $(seq 1 "$scrapers"); do
    # One keep-alive connection each, scraping back to back for at most 120 s (a process
    # per scrape would cost the machine more than the scrape costs the node).
    python3 - <<'PY' &
import http.client, time
conn = http.client.HTTPConnection("127.0.0.1", 19090)
end = time.monotonic() + 120
while time.monotonic() < end:
    conn.request("GET", "/metrics")
    conn.getresponse().read()
PY
    scraper_pids+=("$!")
    pids+=("$!")
  done
  before=$(curl -s 127.0.0.1:19090/metrics | awk '$1 ~ /^switchboard_http_requests_total/ && /route="metrics"/ { n += $2 } END { print n + 0 }')
  "$BIN/switchboard-loadtest" http-publish --control 127.0.0.1:19090 --publishes "$REQUESTS" \
    --payload 256 --json "$out/p.json" >/dev/null 2>&1
  after=$(curl -s 127.0.0.1:19090/metrics | awk '$1 ~ /^switchboard_http_requests_total/ && /route="metrics"/ { n += $2 } END { print n + 0 }')
  for pid in "${scraper_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  python3 - "$out/p.json" "$CONNECTIONS" "$scrapers" "$((after - before - 1))" "$("$BIN/switchboard" --version)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["request_latency_us"]
ms = lambda us: f"{us / 1000:.2f} ms"
print(f"| {sys.argv[5]} | {int(sys.argv[2]):,} | {sys.argv[3]} | {r['publishes_per_second']:,.0f} | "
      f"{ms(lat['p50'])} | {ms(lat['p99'])} | {ms(lat['p999'])} | {max(0, int(sys.argv[4])):,} |")
PY
done
