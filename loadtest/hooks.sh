#!/usr/bin/env bash
# The hook figures of docs/performance.md ("Hooks"), on this machine, release builds:
#   1. connects/s with a JWT (HS256) beside connects/s with a connect hook answering at
#      once (the load generator's `hook-backend`, a minimal keep-alive HTTP/1.1 server), in
#      the same run: 10,000 connections each, at up to 20,000/s, 256 handshakes in flight;
#      with the node's CPU per connect;
#   2. a reconnect storm: 20,000 clients on two nodes (10,000 each: one process may open
#      only 20,000 files here) all at once, against connect hooks answering in 20 ms, with
#      hooks.max_in_flight 256: how long until all are connected, how many were refused, and
#      the most requests each backend had in flight;
#   3. the publish hook's cost: a client publishing 2,000 messages/s to 100 subscribers over
#      its WebSocket, with `publish = "anonymous"` and with `publish = "hook"` (a backend
#      answering at once): server CPU per message, delivery latency.
# Writes DIR/hooks.json (default docs/). Bounded: every process stops by itself or is
# killed by PID at the end.
#
#   loadtest/hooks.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs}"
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchboard-target}"
cargo build --release -q -p switchboard -p switchboard-loadtest
bin="$CARGO_TARGET_DIR/release"
ulimit -n 20000
work="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

# CPU seconds (user + system) of a process so far.
cpu() { awk -v tck="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / tck }' "/proc/$1/stat"; }

# Starts a node with $CONFIG (default loadtest/switchboard-auth.toml) and the environment
# given; sets NODE_PID and NODE_PORT.
node() {
  free_port; local ws=$PORT
  free_port; local control=$PORT
  env "$@" "$bin/switchboard" --config "${CONFIG:-loadtest/switchboard-auth.toml}" \
    --listen "127.0.0.1:$ws" --control "127.0.0.1:$control" --log-level warn \
    >"$work/node-$ws.log" 2>&1 &
  NODE_PID=$!
  pids+=("$NODE_PID")
  NODE_PORT=$ws
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$control/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node on $ws not ready" >&2
  return 1
}

# Starts a hook backend answering after $1 ms for $2 s; sets BACKEND_PID and BACKEND_PORT.
backend() {
  free_port
  BACKEND_PORT=$PORT
  "$bin/switchboard-loadtest" hook-backend --listen "127.0.0.1:$PORT" --delay-ms "$1" \
    --seconds "$2" --json "$work/backend-$PORT.json" >/dev/null &
  BACKEND_PID=$!
  pids+=("$BACKEND_PID")
  sleep 0.3
}

hook_env() { echo "SWITCHBOARD_HOOKS__CONNECT_URL=http://127.0.0.1:$1/connect"; }

# 1. JWT beside the connect hook.
connects=10000
echo "== JWT (HS256): $connects connects" >&2
node
before=$(cpu "$NODE_PID")
"$bin/switchboard-loadtest" connect --server "127.0.0.1:$NODE_PORT" --connections "$connects" \
  --rate 20000 --concurrency 256 --source-addrs 8 --token-alg HS256 \
  --token-key loadtest-secret-loadtest-secret-loadtest --token-kid hs \
  --json "$work/jwt.json" >/dev/null
jwt_cpu=$(awk -v a="$(cpu "$NODE_PID")" -v b="$before" 'BEGIN { print a - b }')
kill -KILL "$NODE_PID"

echo "== connect hook answering at once: $connects connects" >&2
backend 0 60
node "$(hook_env "$BACKEND_PORT")"
before=$(cpu "$NODE_PID")
"$bin/switchboard-loadtest" connect --server "127.0.0.1:$NODE_PORT" --connections "$connects" \
  --rate 20000 --concurrency 256 --source-addrs 8 --hook-user \
  --json "$work/hook.json" >/dev/null
hook_cpu=$(awk -v a="$(cpu "$NODE_PID")" -v b="$before" 'BEGIN { print a - b }')
kill -KILL "$NODE_PID" "$BACKEND_PID"

# 2. The storm: two nodes, a 20 ms backend each, 10,000 clients each at once.
echo "== storm: 2 x 10000 clients against connect hooks answering in 20 ms" >&2
backend 20 40; backend_a=$BACKEND_PID; port_a=$BACKEND_PORT
backend 20 40; backend_b=$BACKEND_PID; port_b=$BACKEND_PORT
node "$(hook_env "$port_a")"; node_a=$NODE_PORT
node "$(hook_env "$port_b")"; node_b=$NODE_PORT
"$bin/switchboard-loadtest" connect --server "127.0.0.1:$node_a" --connections 10000 \
  --rate 100000 --concurrency 10000 --source-addrs 16 --source-first 1 --hook-user \
  --json "$work/storm-a.json" >/dev/null &
load_a=$!
pids+=("$load_a")
"$bin/switchboard-loadtest" connect --server "127.0.0.1:$node_b" --connections 10000 \
  --rate 100000 --concurrency 10000 --source-addrs 16 --source-first 17 --hook-user \
  --json "$work/storm-b.json" >/dev/null &
load_b=$!
pids+=("$load_b")
wait "$load_a" "$load_b"
# The backends print their counts when their time is up.
wait "$backend_a" "$backend_b" 2>/dev/null || true

# 3. The publish hook's cost per message.
publish_run() {
  local name=$1
  shift
  node "$@"
  "$bin/switchboard-loadtest" fanout --server "127.0.0.1:$NODE_PORT" --subscribers 100 \
    --rate 2000 --duration 10 --server-pid "$NODE_PID" --json "$work/$name.json" >/dev/null
  kill -KILL "$NODE_PID"
}
echo "== publish: 2000 messages/s from one client to 100 subscribers, no hook" >&2
CONFIG=loadtest/switchboard.toml publish_run publish-plain
echo "== publish: the same through a publish hook answering at once" >&2
backend 0 40
CONFIG=loadtest/switchboard-publish-hook.toml publish_run publish-hook \
  "SWITCHBOARD_HOOKS__PUBLISH_URL=http://127.0.0.1:$BACKEND_PORT/publish"
kill -KILL "$BACKEND_PID"

python3 - "$work" "$out/hooks.json" "$jwt_cpu" "$hook_cpu" "$connects" <<'PY'
import json, sys, datetime, pathlib, os
work, target, jwt_cpu, hook_cpu, connects = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
load = lambda name: json.loads((pathlib.Path(work) / name).read_text())
backends = sorted(pathlib.Path(work).glob("backend-*.json"))
result = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "machine": f"{os.cpu_count()} cores",
    "jwt": {**load("jwt.json"), "node_cpu_us_per_connect": round(jwt_cpu / connects * 1e6, 1)},
    "hook": {**load("hook.json"), "node_cpu_us_per_connect": round(hook_cpu / connects * 1e6, 1)},
    "publish_plain": load("publish-plain.json"),
    "publish_hook": load("publish-hook.json"),
    "storm": {
        "nodes": [load("storm-a.json"), load("storm-b.json")],
        "backends": [json.loads(path.read_text()) for path in backends],
    },
}
for run in [result["jwt"], result["hook"], *result["storm"]["nodes"]]:
    run.pop("connects_each_second", None)
pathlib.Path(target).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PY
