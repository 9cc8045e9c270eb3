#!/usr/bin/env bash
# Runs every fuzz target for a bounded time from the committed seed corpus; fails on a crash.
#
#   fuzz/run.sh          # each target for 40 s
#   fuzz/run.sh 300      # each for 5 minutes
#
# Needs the nightly toolchain (rustup) and cargo-fuzz, which this installs when missing.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-40}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/switchboard-fuzz-target}"
for target in ws_decoder client_frame session_read; do
  # New inputs go to a scratch directory; the committed corpus is only read.
  scratch="$(mktemp -d)"
  echo "== fuzz $target for ${seconds}s"
  cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 2>&1 | tail -n 12
  rm -rf "$scratch"
done
