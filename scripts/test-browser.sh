#!/usr/bin/env bash
# Headless-Chromium test of the demo chat page (GET /demo, `demo = true`).
#
#   scripts/test-browser.sh [--no-build] [--install]
#
# Installs the test's pinned npm packages (npm ci in tests/browser, when
# node_modules is missing or older than package-lock.json), builds the relay
# (cargo build --release; cargo does nothing if it is up to date), then runs
# tests/browser/chat.test.mjs with Node's test runner: it starts
# `wsrelay --demo --listen 127.0.0.1:0`, drives two pages (alice and bob)
# through puppeteer-core and Debian's Chromium, and stops everything at the end.
#
# Options:
#   --no-build   use the existing binary, do not run cargo
#   --install    if Chromium is missing, apt-get install it (needs root)
#
# Environment:
#   CHROMIUM     browser binary (default /usr/bin/chromium, Debian's package)
#   RELAY        relay binary (default target/release/wsrelay; no build is done
#                when RELAY is set)
#
# Exit status: the test runner's (0 all passed, 1 some failed), 2 setup error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
me="test-browser.sh"
say() { echo "$me: $*" >&2; }
die() { say "$*"; exit 2; }

build=1
install=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) build=0; shift ;;
    --install) install=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

command -v node >/dev/null || die "node not found (Node 18 or newer is needed)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[[ "$node_major" -ge 18 ]] || die "Node $node_major is too old (18 or newer is needed)"

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  if [[ "$install" -eq 1 && -z "${CHROMIUM:-}" ]]; then
    say "installing Debian's chromium package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || die "apt-get install chromium failed"
  fi
  [[ -x "$chromium" ]] || die "no Chromium at $chromium: apt-get install -y chromium, pass --install, or set CHROMIUM"
fi

tests="$root/tests/browser"
if [[ ! -d "$tests/node_modules/puppeteer-core" || "$tests/package-lock.json" -nt "$tests/node_modules/.package-lock.json" ]]; then
  say "npm ci in tests/browser"
  (cd "$tests" && npm ci --no-audit --no-fund) || die "npm ci failed"
fi

if [[ -n "${RELAY:-}" ]]; then
  relay="$RELAY"
else
  relay="$(cd "$root" && realpath -m -- "${CARGO_TARGET_DIR:-target}")/release/wsrelay"
  if [[ "$build" -eq 1 ]]; then
    say "cargo build --release"
    (cd "$root" && cargo build --release --bin wsrelay) || die "cargo build failed"
  fi
fi
[[ -x "$relay" ]] || die "no relay binary at $relay"
relay="$(realpath "$relay")"

say "relay $relay, browser $chromium"
cd "$tests"
RELAY="$relay" CHROMIUM="$chromium" node --test chat.test.mjs
