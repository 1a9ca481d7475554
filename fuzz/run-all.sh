#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for SECONDS (default 600),
# one after another, then prints executions per target.
#
#   fuzz/run-all.sh [SECONDS]
#
# Works on the stable toolchain: cargo fuzz passes -Z flags (sanitizer,
# coverage instrumentation) that stable rustc accepts with RUSTC_BOOTSTRAP=1.
# Logs: fuzz/target/run-all/<target>.log. Corpora persist in fuzz/corpus/
# (seeded from fuzz/seeds/<target>/ where that exists), crashes land in
# fuzz/artifacts/<target>/. Exits 1 if any target crashed.
#
# FUZZ_IDLE=1 runs the fuzzers at idle CPU priority (chrt --idle 0), so they
# only use CPU that nothing else wants (e.g. beside benchmarks).
# FUZZ_TOOLCHAIN=nightly uses `cargo +nightly` instead of RUSTC_BOOTSTRAP=1.
#
# Targets (cargo fuzz list): handshake, frame_decoder, assembler,
# client_response, session, pubsub_command, proxy_header, deflate. The session target's seeds include the
# reproducers of its fixed findings (seeds/session/regression-*, see
# README.md).
set -uo pipefail

secs="${1:-600}"
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")"
cargo=(cargo)
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    cargo=(cargo "+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz..." >&2
    cargo install cargo-fuzz --locked || exit 1
fi

"${cargo[@]}" fuzz build || exit 1

prio=()
if [ "${FUZZ_IDLE:-0}" = 1 ]; then
    prio=(chrt --idle 0)
fi

logs=target/run-all
mkdir -p "$logs"
failed=0
summary=()
for t in $("${cargo[@]}" fuzz list); do
    echo "== $t: ${secs}s" >&2
    start=$(date +%s)
    # New inputs go to the first directory; seeds are only read.
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    if [ -d "seeds/$t" ]; then
        dirs+=("seeds/$t")
    fi
    if "${prio[@]}" "${cargo[@]}" fuzz run "$t" "${dirs[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$logs/$t.log" 2>&1; then
        status=ok
    else
        status="CRASH (see $logs/$t.log, fuzz/artifacts/$t/)"
        failed=1
    fi
    elapsed=$(($(date +%s) - start))
    execs=$(awk '/^stat::number_of_executed_units/ {print $2}' "$logs/$t.log" | tail -n1)
    if [ -z "$execs" ]; then
        # No final stats (crash): take the last "#N" status line.
        execs=$(grep -oE '^#[0-9]+' "$logs/$t.log" | tail -n1 | tr -d '#')
    fi
    rate=$(awk '/^stat::average_exec_per_sec/ {print $2}' "$logs/$t.log" | tail -n1)
    summary+=("$(printf '%-16s %12s execs %8s exec/s %6ss  %s' "$t" "${execs:-?}" "${rate:-?}" "$elapsed" "$status")")
done

echo
printf '%-16s %18s %15s %7s\n' target executions rate time
for line in "${summary[@]}"; do
    echo "$line"
done
exit "$failed"
