#!/usr/bin/env bash
# The message-stream figures of docs/performance.md ("Message streams"), each beside plain
# publishing in the same run, on one node (the embedded default) built in release mode:
#   1. R replies (default 1,000), each to its own channel with 2 viewers, 30 tokens/s: as
#      streaming ingest (one chunked request per reply) and as one POST /v1/publish per token;
#      and the ingest at 300 and 600 replies, where the machine is not yet saturated;
#   2. one reply at 50 tokens/s to 10,000 viewers (and to 2,000, where the machine is not
#      saturated): streaming (coalesced) and plain;
#   3. a 20,000-append reply resumed from its start and its middle.
# Writes DIR/streams.json and draws DIR/streams.png (loadtest/streams-plot.py, with the
# Python in $PYTHON, default python3, which needs matplotlib).
#
#   loadtest/streams.sh [DIR]            # default docs/
#   loadtest/streams.sh --redis [DIR]    # the node clustered through a local redis-server
#
# With --redis every scenario's node is clustered through one redis-server (flushed between
# scenarios), the replies run at 300 and the viewers at 2,000 (Redis shares the two cores),
# and each scenario's JSON gains Redis's CPU seconds; writes DIR/streams-redis.json, no plot.
#
# Bounded: every scenario stops by itself (each reply lasts 10 s); every process it starts
# is stopped by PID when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
redis=0
if [ "${1:-}" = --redis ]; then
  redis=1
  shift
fi
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

cluster=()
if ((redis)); then
  free_port
  redis_port=$PORT
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    >"$work/redis.log" 2>&1 &
  redis_pid=$!
  disown "$redis_pid" # killed by PID at the end, without the shell reporting it
  pids+=("$redis_pid")
  for _ in $(seq 1 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  cluster=("SWITCHBOARD_CLUSTER__REDIS=redis://127.0.0.1:$redis_port")
fi

# Redis's CPU time so far, in seconds (utime + stime from /proc).
redis_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$redis_pid/stat"
}

# One fresh node per scenario, so that none inherits another's channels or history.
run() {
  local name="$1"
  shift
  free_port
  local ws=$PORT
  free_port
  local control=$PORT
  local redis_before=0
  if ((redis)); then
    redis-cli -p "$redis_port" flushall >/dev/null
    redis_before=$(redis_cpu)
  fi
  env "${cluster[@]}" SWITCHBOARD_SERVER__LISTEN="127.0.0.1:$ws" \
    SWITCHBOARD_CONTROL__LISTEN="127.0.0.1:$control" "$bin/switchboard" >"$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$control/readyz" >/dev/null && break
    sleep 0.1
  done
  local cpu=()
  [ "$1" = streams ] && cpu=(--server-pid "$pid")
  "$bin/switchboard-loadtest" "$@" "${cpu[@]}" --ws "ws://127.0.0.1:$ws/ws" \
    --control "127.0.0.1:$control" --json "$work/$name.json" >"$work/$name.out" 2>&1 || {
    cat "$work/$name.out" >&2
    exit 1
  }
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null || true
  if ((redis)); then
    echo "$redis_before $(redis_cpu)" >"$work/$name.redis"
  fi
  echo "streams.sh: $name done" >&2
}

if ((redis)); then
  for mode in stream plain; do
    run "replies-$mode" streams --mode "$mode" --replies 300 --viewers 2 --rate 30 --tokens 300
    run "viewers2k-$mode" streams --mode "$mode" --replies 1 --viewers 2000 --rate 50 \
      --tokens 500 --spread-ms 0
  done
  run resume streams-resume --appends 20000 --append-bytes 5
  python3 - "$work" "$out/streams-redis.json" <<'PY'
import json, os, platform, sys, time
work, target = sys.argv[1], sys.argv[2]
names = ["replies-stream", "replies-plain", "viewers2k-stream", "viewers2k-plain", "resume"]
result = {}
for name in names:
    result[name] = json.load(open(f"{work}/{name}.json"))
    before, after = map(float, open(f"{work}/{name}.redis").read().split())
    result[name]["redis_cpu_seconds"] = round(after - before, 2)
result["machine"] = {
    "cores": os.cpu_count(),
    "kernel": platform.release(),
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "command": "loadtest/streams.sh --redis",
}
json.dump(result, open(target, "w"), indent=1, sort_keys=True)
PY
  echo "streams.sh: wrote $out/streams-redis.json" >&2
  exit 0
fi

for mode in stream plain; do
  run "replies-$mode" streams --mode "$mode" --replies 1000 --viewers 2 --rate 30 --tokens 300
done
for replies in 300 600; do
  run "replies-stream-$replies" streams --replies "$replies" --viewers 2 --rate 30 --tokens 300
done
for mode in stream plain; do
  run "viewers-$mode" streams --mode "$mode" --replies 1 --viewers 10000 --rate 50 --tokens 500 \
    --spread-ms 0
  # The same reply to 2,000 viewers, where the two cores are not saturated.
  run "viewers2k-$mode" streams --mode "$mode" --replies 1 --viewers 2000 --rate 50 --tokens 500 \
    --spread-ms 0
done
run resume streams-resume --appends 20000 --append-bytes 5

python3 - "$work" "$out/streams.json" <<'PY'
import json, platform, sys, time
work, target = sys.argv[1], sys.argv[2]
names = ["replies-stream", "replies-plain", "replies-stream-300", "replies-stream-600",
         "viewers-stream", "viewers-plain", "viewers2k-stream", "viewers2k-plain", "resume"]
result = {name: json.load(open(f"{work}/{name}.json")) for name in names}
result["machine"] = {
    "cores": __import__("os").cpu_count(),
    "kernel": platform.release(),
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "command": "loadtest/streams.sh",
}
json.dump(result, open(target, "w"), indent=1, sort_keys=True)
PY
"${PYTHON:-python3}" loadtest/streams-plot.py "$out/streams.json" "$out/streams.png"
echo "streams.sh: wrote $out/streams.json and $out/streams.png" >&2
