#!/usr/bin/env bash
# What sockets cost while nobody publishes (docs/scale.md, "A socket at rest"): one
# redis-server, NODES Switchboard nodes (loadtest/million.toml), one million-run generator
# per node holding PER sockets, each in its room (presence, join/leave) and on the global
# channel. Once every socket is subscribed and the ramp's own writes are done, the CPU time
# of the nodes, the generators, Redis and the whole machine is read over REST seconds
# (/proc), and the nodes' memory once at rest. The last line of output is one JSON object.
# Bounded; stops what it started.
#
#   loadtest/rest.sh [--nodes N] [--per-node S] [--rest SECONDS] [--heaptrack FILE]
#
# --heaptrack FILE: node 1 runs under heaptrack (writing FILE.zst) and is killed with
# SIGKILL once the sockets are at rest, so that `heaptrack_print -f FILE.zst --print-leaks 1`
# lists everything it held then, by where it was allocated (docs/scale.md, "Memory per
# socket"); no CPU is measured in that mode.
#
# The nodes take their configuration from the environment too, e.g.
# SWITCHBOARD_SESSION__HEARTBEAT=300s SWITCHBOARD_SESSION__IDLE_TIMEOUT=900s for no pings
# within the measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=2
PER=17000
REST=50
HEAP=""
while (($#)); do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --per-node) PER=$2; shift 2 ;;
    --rest) REST=$2; shift 2 ;;
    --heaptrack) HEAP=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "rest.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
((PER <= 17500)) || { echo "rest.sh: at most 17,500 sockets a node (loadtest/million.toml)" >&2; exit 64; }
SOCKETS=$((NODES * PER))
if [ -n "$HEAP" ] && ! command -v heaptrack >/dev/null; then
  echo "rest.sh: --heaptrack needs heaptrack (apt-get install heaptrack)" >&2
  exit 69
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchboard-target}"
cargo build --release --quiet -p switchboard -p switchboard-loadtest
BIN="$CARGO_TARGET_DIR/release"
LT="$BIN/switchboard-loadtest"
ulimit -n "$(ulimit -Hn)"
out=$(mktemp -d "${TMPDIR:-/tmp}/rest.XXXXXX")
echo "rest.sh: $SOCKETS sockets on $NODES nodes; run directory $out" >&2

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$out/redis"
}
trap cleanup EXIT

# free_port: a loopback port for a node (sets PORT).
# shellcheck source=loadtest/lib.sh
source loadtest/lib.sh

free_port
redis_port=$PORT
mkdir -p "$out/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$out/redis" --save "" \
  >"$out/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done

ws_list="" ctl_list="" node_pids=() ctl_ports=()
for ((k = 0; k < NODES; k++)); do
  free_port
  ws=$PORT
  free_port
  ctl=$PORT
  wrap=()
  if ((k == 0)) && [ -n "$HEAP" ]; then wrap=(heaptrack -o "$HEAP"); fi
  "${wrap[@]}" "$BIN/switchboard" --config loadtest/million.toml --listen "127.0.0.1:$ws" \
    --control "127.0.0.1:$ctl" --redis "redis://127.0.0.1:$redis_port" \
    --node-id "node-$((k + 1))" --log-level warn >"$out/node-$k.log" 2>&1 &
  pids+=($!)
  node_pids+=($!)
  ctl_ports+=("$ctl")
  ws_list+="${ws_list:+,}127.0.0.1:$ws"
  ctl_list+="${ctl_list:+,}127.0.0.1:$ctl"
done
for ctl in "${ctl_ports[@]}"; do
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "127.0.0.1:$ctl/readyz" && break
    sleep 0.1
  done
done

gen_pids=()
for ((k = 0; k < NODES; k++)); do
  nice -n -5 "$LT" million generator --dir "$out" --index "$k" --nodes "$ws_list" \
    --controls "$ctl_list" --sockets "$SOCKETS" --connect-rate 2000 \
    --source-first $((10 + 2 * k)) --source-addrs 2 --max-seconds $((REST + 600)) \
    >"$out/gen-$k.log" 2>&1 &
  pids+=($!)
  gen_pids+=($!)
done
"$LT" million wait --dir "$out" --subscribed "$SOCKETS" --timeout-secs 300 >&2
# Past the ramp's presence writes and a whole heartbeat period (25 s by default).
sleep 40

# The nodes' memory at rest: RSS, and its anonymous part (without the binary they all map).
status_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
node_rss=0 node_anon=0
for pid in "${node_pids[@]}"; do
  # Under heaptrack, node 1's process is the wrapper's child.
  app=$(pgrep -P "$pid" -x switchboard || echo "$pid")
  node_rss=$((node_rss + $(status_kib "$app" VmRSS)))
  node_anon=$((node_anon + $(status_kib "$app" RssAnon)))
done
per_socket() { awk -v k="$1" -v n="$SOCKETS" 'BEGIN {printf "%.2f", k / n}'; }

if [ -n "$HEAP" ]; then
  app=$(pgrep -P "${node_pids[0]}" -x switchboard)
  kill -KILL "$app"
  # heaptrack writes the file once its process is gone.
  wait "${node_pids[0]}" || true
  printf '{"sockets":%d,"nodes":%d,"heaptrack":"%s.zst","commit":"%s","date":"%s"}\n' \
    "$SOCKETS" "$NODES" "$HEAP" "$(git rev-parse --short HEAD)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  exit 0
fi

# CPU time (utime + stime, clock ticks) of a process, and of the machine (all but idle).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
machine() { awk '/^cpu / {print $2 + $3 + $4 + $6 + $7 + $8}' /proc/stat; }
sum() {
  local total=0 pid
  for pid in "$@"; do total=$((total + $(ticks "$pid"))); done
  echo "$total"
}
n0=$(sum "${node_pids[@]}") g0=$(sum "${gen_pids[@]}") r0=$(ticks "$redis_pid") m0=$(machine)
sleep "$REST"
n1=$(sum "${node_pids[@]}") g1=$(sum "${gen_pids[@]}") r1=$(ticks "$redis_pid") m1=$(machine)
hz=$(getconf CLK_TCK)
heartbeat=${SWITCHBOARD_SESSION__HEARTBEAT:-25s}
# Cores busy per million sockets, from ticks over REST seconds for SOCKETS sockets.
per_million() { awk -v t="$1" -v hz="$hz" -v s="$REST" -v n="$SOCKETS" 'BEGIN {printf "%.3f", t / hz / s * 1000000 / n}'; }
printf '{"sockets":%d,"nodes":%d,"rest_seconds":%d,"heartbeat":"%s","commit":"%s","date":"%s","cpus":%d,' \
  "$SOCKETS" "$NODES" "$REST" "$heartbeat" "$(git rev-parse --short HEAD)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)"
printf '"cpu_seconds":{"nodes":%s,"generators":%s,"redis":%s,"machine":%s},' \
  "$(awk -v t=$((n1 - n0)) -v hz="$hz" 'BEGIN {print t / hz}')" \
  "$(awk -v t=$((g1 - g0)) -v hz="$hz" 'BEGIN {print t / hz}')" \
  "$(awk -v t=$((r1 - r0)) -v hz="$hz" 'BEGIN {print t / hz}')" \
  "$(awk -v t=$((m1 - m0)) -v hz="$hz" 'BEGIN {print t / hz}')"
printf '"node_rss_kib_per_socket":%s,"node_anon_kib_per_socket":%s,' \
  "$(per_socket "$node_rss")" "$(per_socket "$node_anon")"
printf '"cores_per_million_sockets":{"nodes":%s,"generators":%s,"redis":%s,"machine":%s}}\n' \
  "$(per_million $((n1 - n0)))" "$(per_million $((g1 - g0)))" "$(per_million $((r1 - r0)))" \
  "$(per_million $((m1 - m0)))"
