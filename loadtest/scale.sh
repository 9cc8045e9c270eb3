#!/usr/bin/env bash
# Scale run: N node processes sharing one Redis, SUBS subscribers per node (one load-generator
# process per node, each under the 20,000-open-files limit, each from its own source
# address), then one publisher broadcasting on node 1. Every subscriber must get every
# message. Bounded in count and time; stops everything it started, by PID.
#
#   loadtest/scale.sh [NODES=6] [SUBS=16700] [MESSAGES=10]
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-6}
SUBS=${2:-16700}
MESSAGES=${3:-10}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchboard-target}"
cargo build --release --quiet -p switchboard -p switchboard-loadtest
BIN="$CARGO_TARGET_DIR/release"
ulimit -n "$(ulimit -Hn)"
out=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

redis_port=16399
redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
pids+=($!)
sleep 0.5
for n in $(seq 1 "$NODES"); do
  "$BIN/switchboard" --config "$(dirname "$0")/switchboard.toml" --listen "127.0.0.1:$((18100 + n))" --control "127.0.0.1:$((19100 + n))" \
    --redis "redis://127.0.0.1:$redis_port" --node-id "node-$n" --log-level warn \
    >"$out/node-$n.log" 2>&1 &
  pids+=($!)
done
for n in $(seq 1 "$NODES"); do
  for _ in $(seq 1 100); do
    curl -sf "127.0.0.1:$((19100 + n))/readyz" >/dev/null && break
    sleep 0.1
  done
done
# Subscribers: hold long enough for every process to connect and the publisher to finish.
hold=$((SUBS / 500 + MESSAGES + 30))
sub_pids=()
for n in $(seq 1 "$NODES"); do
  "$BIN/switchboard-loadtest" fanout --server "127.0.0.1:$((18100 + n))" --subscribers "$SUBS" \
    --rate 0 --duration "$hold" --channel scale --source-addrs 2 --source-first $((10 + 2 * n)) \
    --json "$out/subs-$n.json" >/dev/null 2>"$out/subs-$n.err" &
  sub_pids+=($!)
  pids+=($!)
done
# Wait until every node holds its subscribers.
for _ in $(seq 1 600); do
  total=$(curl -s "127.0.0.1:19101/v1/stats?scope=cluster" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])')
  [ "$total" -ge $((NODES * SUBS)) ] && break
  sleep 0.5
done
echo "connections across $NODES nodes: $total"
for n in $(seq 1 "$NODES"); do
  echo "node-$n RSS: $(grep VmRSS /proc/"${pids[$n]}"/status | awk '{print $2}') KiB"
done
"$BIN/switchboard-loadtest" fanout --server 127.0.0.1:18101 --subscribers 0 --rate 1 \
  --duration "$MESSAGES" --channel scale --json "$out/publisher.json" >/dev/null 2>&1
for pid in "${sub_pids[@]}"; do wait "$pid" || true; done
python3 - "$out" "$NODES" "$SUBS" <<'PY'
import json, sys, pathlib
out, nodes, subs = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
published = json.loads((out / "publisher.json").read_text())["published"]
delivered = 0
worst = 0
for n in range(1, nodes + 1):
    r = json.loads((out / f"subs-{n}.json").read_text())
    delivered += r["delivered"]
    worst = max(worst, r["broadcast_completion_us"]["max"])
expected = published * nodes * subs
print(json.dumps({"nodes": nodes, "subscribers": nodes * subs, "published": published,
                  "expected": expected, "delivered": delivered, "loss": expected - delivered,
                  "slowest_broadcast_completion_ms": worst / 1000}, indent=2))
PY
