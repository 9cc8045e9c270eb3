#!/usr/bin/env bash
# Fan-out against the baseline broadcaster, one row pair per (subscribers, rate): starts a
# baseline and a Switchboard node for each pair, runs `fanout` against each for 10 s, prints
# Markdown table rows (as in docs/performance-history.md, "Fan-out against the baseline broadcaster") and stops what it started.
#
#   loadtest/fanout-table.sh                     # that section's pairs
#   loadtest/fanout-table.sh "5000 20" "10000 10"
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
pairs=("$@")
if [ ${#pairs[@]} -eq 0 ]; then
  pairs=("5000 20" "5000 60" "5000 120" "5000 180" "5000 240" "5000 480" "10000 10" "10000 30" "10000 60")
fi
out=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$out"; }
trap cleanup EXIT
echo "| subscribers | publishes/s | target | deliveries/s | ratio | loss | CPU per delivery | CPU ratio | p50 | p99 |"
echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for pair in "${pairs[@]}"; do
  read -r subs rate <<<"$pair"
  "$BIN/switchboard-loadtest" baseline --listen 127.0.0.1:8090 >/dev/null 2>&1 &
  baseline=$!
  "$BIN/switchboard" --config "$(dirname "$0")/switchboard.toml" --listen 127.0.0.1:18080 \
    --control 127.0.0.1:19090 --log-level warn &
  node=$!
  pids=("$baseline" "$node")
  sleep 0.5
  "$BIN/switchboard-loadtest" fanout --server 127.0.0.1:8090 --baseline --server-pid "$baseline" \
    --subscribers "$subs" --rate "$rate" --duration 10 --source-addrs 2 --json "$out/b.json" >/dev/null 2>&1
  "$BIN/switchboard-loadtest" fanout --server 127.0.0.1:18080 --server-pid "$node" \
    --subscribers "$subs" --rate "$rate" --duration 10 --source-addrs 2 --json "$out/s.json" >/dev/null 2>&1
  python3 - "$out/b.json" "$out/s.json" <<'PY'
import json, sys
b, s = (json.load(open(path)) for path in sys.argv[1:3])
def count(n): return f"{n:,.0f}"
def ms(us): return f"{us / 1000:,.0f} ms" if us >= 10000 else f"{us / 1000:.1f} ms"
for name, r in (("baseline", b), ("Switchboard", s)):
    cpu = r["server_cpu_us_per_delivery"] or 0
    ratio = "" if r is b else f"{r['deliveries_per_second'] / b['deliveries_per_second']:.2f}"
    cpu_ratio = "" if r is b else f"{cpu / (b['server_cpu_us_per_delivery'] or 1):.2f}x"
    errors = r.get("errors", {})
    loss = count(r["loss"]) + (" (" + ", ".join(f"{k} {v}" for k, v in errors.items()) + ")" if errors else "")
    print(f"| {count(r['subscribers'])} | {r['rate']} | {name} | {count(r['deliveries_per_second'])} | {ratio} "
          f"| {loss} | {cpu:.2f} µs | {cpu_ratio} | {ms(r['latency_us']['p50'])} | {ms(r['latency_us']['p99'])} |")
PY
  kill "$baseline" "$node"; wait "$baseline" "$node" 2>/dev/null || true
  pids=()
done
