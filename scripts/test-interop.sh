#!/usr/bin/env bash
# Interop tests with real clients over ws:// and wss:// with permessage-deflate
# (docs/protocol.md, "Interop tests"):
#
#   1. Python `websockets` (tests/interop/python, pytest, in a venv at
#      tests/interop/.venv from the pinned tests/interop/python/requirements.txt);
#   2. Node `ws` (tests/interop/node, pinned in tests/interop/package.json and
#      its lockfile);
#   3. headless Chromium (tests/browser/wss-deflate.test.mjs, puppeteer-core
#      pinned in tests/browser, Debian's chromium).
#
# Each suite starts the relay binary itself with a plain and a TLS listener and
# `compression = true`, with a test CA and server certificate made at run time
# (trustme for Python, the openssl CLI for Node and Chromium): nothing secret
# in the repository.
#
#   scripts/test-interop.sh [--no-build] [--install-only] [--only python|node|browser]
#
# Options:
#   --no-build      do not run cargo; use WSRELAY_BIN or target/release/wsrelay
#   --install-only  set up the venv and node_modules, run nothing (.ci/run's
#                   prerequisites step)
#   --only SUITE    run one suite (repeatable)
#
# Environment:
#   WSRELAY_BIN   relay binary (no cargo build when set)
#   CHROMIUM      browser binary (default /usr/bin/chromium)
#   PYTHON        interpreter for the venv (default python3, >= 3.9)
#
# Installs what is missing or stale (venv when requirements.txt changed, npm ci
# when a lockfile is newer than node_modules), builds the relay with
# `cargo build --release` unless WSRELAY_BIN is set or --no-build, runs every
# selected suite even after a failure, prints a summary and exits 1 if any
# suite failed (2 on a setup error).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTEROP="$ROOT/tests/interop"
BROWSER="$ROOT/tests/browser"
me="test-interop"
say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 2; }

build=1
install_only=0
only=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) build=0; shift ;;
    --install-only) install_only=1; shift ;;
    --only) [[ $# -ge 2 ]] || die "--only needs a suite name"; only+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
suites=(python node browser)
if ((${#only[@]})); then
  for s in "${only[@]}"; do
    [[ " ${suites[*]} " == *" $s "* ]] || die "unknown suite '$s' (python, node, browser)"
  done
  suites=("${only[@]}")
fi
wants() { [[ " ${suites[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- prerequisites

command -v node >/dev/null || die "node not found (Node >= 20 needed)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[[ "$node_major" -ge 20 ]] || die "Node >= 20 needed, found $(node --version)"
command -v openssl >/dev/null || die "the openssl CLI is needed (apt-get install openssl): the Node and Chromium suites make their test certificates with it"

if wants python; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || die "$python not found"
  venv="$INTEROP/.venv"
  req="$INTEROP/python/requirements.txt"
  # The venv records the requirements it was made from: a change rebuilds it.
  if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$req" "$venv/requirements.txt"; then
    say "python venv in tests/interop/.venv (pip install -r python/requirements.txt)"
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" || die "pip install failed"
    cp "$req" "$venv/requirements.txt"
  fi
fi

# npm ci writes node_modules/.package-lock.json; a lockfile or package.json
# newer than it (or none) means the installed tree may not match.
npm_ci_if_stale() {
  local dir="$1"
  local stamp="$dir/node_modules/.package-lock.json"
  if [[ ! -f "$stamp" || "$dir/package-lock.json" -nt "$stamp" || "$dir/package.json" -nt "$stamp" ]]; then
    say "npm ci in ${dir#"$ROOT"/}"
    (cd "$dir" && npm ci --no-audit --no-fund) || die "npm ci failed in $dir"
  fi
}
wants node && npm_ci_if_stale "$INTEROP"
if wants browser; then
  npm_ci_if_stale "$BROWSER"
  chromium="${CHROMIUM:-/usr/bin/chromium}"
  [[ -x "$chromium" ]] || die "no Chromium at $chromium: apt-get install chromium, or set CHROMIUM"
fi

if ((install_only)); then
  say "dependencies installed (--install-only)"
  exit 0
fi

if [[ -n "${WSRELAY_BIN:-}" ]]; then
  relay="$WSRELAY_BIN"
else
  relay="$(cd "$ROOT" && realpath -m -- "${CARGO_TARGET_DIR:-target}")/release/wsrelay"
  if ((build)); then
    say "cargo build --release --bin wsrelay"
    (cd "$ROOT" && cargo build --release --bin wsrelay) || die "cargo build failed"
  fi
fi
[[ -x "$relay" ]] || die "no relay binary at $relay (build it or set WSRELAY_BIN)"
WSRELAY_BIN="$(realpath "$relay")"
export WSRELAY_BIN
say "relay $WSRELAY_BIN"

# ---------------------------------------------------------------- suites

results=()
failed=0
run_suite() {
  local name="$1"
  shift
  echo
  echo "=== interop: $name"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  local t=$((SECONDS - start))
  if ((rc == 0)); then
    results+=("$(printf 'passed  %4ds  %s' "$t" "$name")")
  else
    results+=("$(printf 'FAILED  %4ds  %s (exit %d)' "$t" "$name" "$rc")")
    failed=$((failed + 1))
  fi
}

suite_python() { (cd "$INTEROP" && "$venv/bin/python" -m pytest -q python); }
suite_node() {
  (cd "$INTEROP" && node --test --test-reporter=spec --test-concurrency=1 --test-timeout=300000 node/)
}
suite_browser() {
  (cd "$BROWSER" && CHROMIUM="$chromium" node --test --test-reporter=spec --test-timeout=300000 wss-deflate.test.mjs)
}
wants python && run_suite "python websockets (tests/interop/python)" suite_python
wants node && run_suite "node ws (tests/interop/node)" suite_node
wants browser && run_suite "chromium wss + deflate (tests/browser/wss-deflate.test.mjs)" suite_browser

echo
echo "=== interop summary"
printf '%s\n' "${results[@]}"
echo "interop suites: $((${#results[@]} - failed)) passed, $failed failed"
((failed == 0))
