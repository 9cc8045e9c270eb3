#!/usr/bin/env bash
# What one message costs Redis and the nodes when nobody subscribes to it, by node count.
# With ROUTING=log every node follows every partition's log, so each idle node reads, parses
# and drops every message; with ROUTING=inbox (the default, cluster.bus_routing) a message
# goes only to the inboxes of nodes that follow its channel (docs/cluster.md, "Following
# the bus"). Issue 27 asks that Redis's work per message not grow with the idle nodes.
#
#   [ROUTING=inbox|log] loadtest/bus-cost.sh [NODES=2] [PUBLISHES=100000]
#
# One redis-server, NODES release nodes (16 partitions), then `switchboard-loadtest
# http-publish` sends PUBLISHES messages of 256 bytes in `POST /v1/batch` requests of 100 to
# 10,000 channels nobody subscribes to, through node 1. Measured from /proc (CPU time of
# redis-server, of node 1 and of the other nodes) and Redis's INFO (bytes it sent). The last
# line of output is one JSON object. Bounded; stops everything it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-2}
PUBLISHES=${2:-100000}
ROUTING=${ROUTING:-inbox}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchboard-target}"
cargo build --release --quiet -p switchboard -p switchboard-loadtest
BIN="$CARGO_TARGET_DIR/release"
out=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  sleep 0.5
  kill -9 "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

redis_port=16398
redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
redis_pid=$!
pids+=($redis_pid)
sleep 0.5
node_pids=()
for n in $(seq 1 "$NODES"); do
  SWITCHBOARD_SHUTDOWN__DRAIN_DELAY=0s SWITCHBOARD_SHUTDOWN__DRAIN_WINDOW=1s \
    SWITCHBOARD_CLUSTER__BUS_ROUTING="$ROUTING" \
    "$BIN/switchboard" --listen "127.0.0.1:$((18200 + n))" --control "127.0.0.1:$((19200 + n))" \
    --redis "redis://127.0.0.1:$redis_port" --node-id "node-$n" --log-level warn \
    >"$out/node-$n.log" 2>&1 &
  node_pids+=($!)
  pids+=($!)
done
for n in $(seq 1 "$NODES"); do
  for _ in $(seq 1 300); do
    curl -sf "127.0.0.1:$((19200 + n))/readyz" >/dev/null && break
    sleep 0.1
  done
done
sleep 2

# CPU seconds (user + system) of a process, from /proc/PID/stat.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
others_cpu() {
  local total=0
  for pid in "${node_pids[@]:1}"; do total=$(echo "$total + $(cpu "$pid")" | bc -l); done
  echo "$total"
}
redis_out() { redis-cli -p $redis_port INFO stats | tr -d '\r' | awk -F: '/^total_net_output_bytes/ {print $2}'; }

redis_cpu0=$(cpu "$redis_pid"); first_cpu0=$(cpu "${node_pids[0]}"); others0=$(others_cpu)
out0=$(redis_out)
started=$(date +%s.%N)
"$BIN/switchboard-loadtest" http-publish --control "127.0.0.1:19201" --publishes "$PUBLISHES" \
  --publishers 2 --batch 100 --channels 10000 --payload 256 --json "$out/publish.json" >/dev/null
# Let every node's readers finish the stream.
sleep 3
redis_cpu1=$(cpu "$redis_pid"); first_cpu1=$(cpu "${node_pids[0]}"); others1=$(others_cpu)
out1=$(redis_out)
ended=$(date +%s.%N)

python3 - "$NODES" "$PUBLISHES" "$out/publish.json" "$ROUTING" <<PY
import json, sys
nodes, publishes, routing = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
publish = json.load(open(sys.argv[3]))
us = lambda seconds: round(seconds * 1e6 / publishes, 1)
others = $others1 - $others0
print(json.dumps({
    "routing": routing,
    "nodes": nodes,
    "publishes": publishes,
    "publishes_per_second": publish.get("publishes_per_second"),
    "redis_cpu_us_per_message": us($redis_cpu1 - $redis_cpu0),
    "redis_bytes_out_per_message": round(($out1 - $out0) / publishes),
    "publishing_node_cpu_us_per_message": us($first_cpu1 - $first_cpu0),
    "idle_nodes_cpu_us_per_message": us(others),
    "per_idle_node_cpu_us_per_message": us(others / max(nodes - 1, 1)),
    "seconds": round($ended - $started, 1),
}))
PY
