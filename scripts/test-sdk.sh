#!/usr/bin/env bash
# Integration tests: the official centrifuge-js client (npm `centrifuge`, pinned in
# tests/sdk/package.json + package-lock.json) under Node >= 20 against the relay binary.
#
#   scripts/test-sdk.sh                      # all tests
#   scripts/test-sdk.sh tests/sdk/08-recovery.test.js   # some files
#   WSRELAY_BIN=/path/to/wsrelay scripts/test-sdk.sh     # another binary (no cargo build)
#
# Installs the pinned packages with `npm ci` when node_modules is missing or older than
# the lockfile, builds the relay with `cargo build --release` unless WSRELAY_BIN is set,
# and exits non-zero if any test fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SDK="$ROOT/tests/sdk"

command -v node >/dev/null || { echo "test-sdk: node not found (Node >= 20 needed)" >&2; exit 2; }
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
    echo "test-sdk: Node >= 20 needed, found $(node --version)" >&2
    exit 2
fi

# npm ci writes node_modules/.package-lock.json; a lockfile newer than it (or a
# missing one) means the installed tree may not match.
STAMP="$SDK/node_modules/.package-lock.json"
if [ ! -f "$STAMP" ] || [ "$SDK/package-lock.json" -nt "$STAMP" ] || [ "$SDK/package.json" -nt "$STAMP" ]; then
    echo "test-sdk: npm ci in tests/sdk" >&2
    (cd "$SDK" && npm ci --no-audit --no-fund)
fi

if [ -n "${WSRELAY_BIN:-}" ]; then
    [ -x "$WSRELAY_BIN" ] || { echo "test-sdk: WSRELAY_BIN=$WSRELAY_BIN is not an executable" >&2; exit 2; }
    WSRELAY_BIN="$(cd "$(dirname "$WSRELAY_BIN")" && pwd)/$(basename "$WSRELAY_BIN")"
else
    echo "test-sdk: cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --bin wsrelay)
    WSRELAY_BIN="$ROOT/target/release/wsrelay"
fi
export WSRELAY_BIN

if [ "$#" -eq 0 ]; then
    set -- "$SDK"/*.test.js
fi
# One file at a time: each starts its own relay, and the machine may have few cores.
exec node --test --test-concurrency=1 --test-timeout=120000 "$@"
