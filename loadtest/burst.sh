#!/usr/bin/env bash
# Memory returned after connection bursts: loadtest/burst.py with the relay
# pinned to core 0 (burst.py starts it with taskset) and the burst clients on
# core 1. Loopback only, bounded (3 rounds of about 40 s by default).
#
#   cargo build --release
#   loadtest/burst.sh                          # default burst, PASS/FAIL line at the end
#   loadtest/burst.sh --stallers 600 --partials 0 --relay-arg=--max-outbound-bytes=1MiB
#   GLIBC_TUNABLES=glibc.malloc.tcache_count=0 loadtest/burst.sh   # the environment reaches the relay
#
# Every flag is burst.py's (--help). Exit status 0 on PASS, 1 on FAIL.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ ! -x target/release/wsrelay ]]; then
    echo "target/release/wsrelay is missing: run cargo build --release first" >&2
    exit 2
fi
exec taskset -c 1 python3 loadtest/burst.py "$@"
