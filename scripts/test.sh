#!/usr/bin/env bash
# The test command (README "Set-up"): everything that asserts behaviour.
#
#   1. cargo test --workspace: unit tests (sans-IO sessions and protocol on a
#      virtual clock, config, pub/sub layers) and the integration binary
#      tests/relay/ over real sockets;
#   2. scripts/test-sdk.sh: the official centrifuge-js client (npm, pinned)
#      under Node against the release binary;
#   3. scripts/test-interop.sh: real clients (Python websockets, Node ws,
#      headless Chromium) over ws:// and wss:// with permessage-deflate;
#   4. scripts/test-browser.sh: the demo chat page in headless Chromium.
#
# Needs cargo, Node (>= 20) with npm, python3 with venv, the openssl CLI and
# Debian's chromium; .ci/run installs what a fresh machine lacks. Exits
# non-zero on the first failing part.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "=== test: cargo test --workspace"
cargo test --workspace

echo "=== test: release build for the SDK and browser tests"
cargo build --release --bin wsrelay
bin="$(realpath -m -- "${CARGO_TARGET_DIR:-$PWD/target}")/release/wsrelay"

echo "=== test: centrifuge-js SDK (tests/sdk)"
WSRELAY_BIN="$bin" scripts/test-sdk.sh

echo "=== test: interop with real clients over ws:// and wss:// with deflate (tests/interop, tests/browser/wss-deflate.test.mjs)"
WSRELAY_BIN="$bin" scripts/test-interop.sh

echo "=== test: demo page in headless Chromium (tests/browser)"
RELAY="$bin" scripts/test-browser.sh --no-build

echo "=== test: all passed"
