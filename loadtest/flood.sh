#!/usr/bin/env bash
# Flood check: one client pipelining HTTP requests without reading, then one
# flooding pings without reading, each for --secs (default 10 s), while a probe
# asks /healthz every 200 ms and the relay's RSS is sampled every 100 ms.
# PASS when RSS growth stays within --max-growth-mib (default 8) and every
# /healthz probe answered within 1 s. About 30 s with the defaults.
#
#   cargo build --release        # first: this script builds nothing
#   loadtest/flood.sh [--secs N] [--port N] [--relay-cmd CMD] [--max-growth-mib N]
#
#   --secs N             length of each flood phase (default 10)
#   --port N             relay port (default: a free one)
#   --relay-cmd CMD      relay binary (and leading arguments) to start instead of
#                        target/release/wsrelay, e.g. a build of an older commit
#   --workers N          relay workers (default 1)
#   --relay-arg ARG      one more relay flag (repeatable), e.g. --relay-arg=--max-outbound-bytes=1MiB
#   --max-growth-mib N   PASS bound on RSS growth per phase (default 8)
#   --abort-growth-mib N stop a phase early past this RSS growth (default 2048)
#   --phases LIST        http,ping (default both)
#   --json FILE          results as JSON
#   --no-pin             do not pin (default: relay on core 0, clients on core 1,
#                        with taskset, when there are two cores or more)
#
# Starts the relay itself (--listen 127.0.0.1:PORT --workers 1 --stats-interval 0)
# and always stops it on exit. Loopback only; bounded; python3 standard library
# only. Exit status: 0 PASS, 1 FAIL, 2 set-up error.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RELAY_CMD=""
PORT=""
SECS=10
WORKERS=1
MAX_GROWTH=8
ABORT_GROWTH=2048
PHASES=http,ping
JSON=""
PIN=1
EXTRA=()

while [ $# -gt 0 ]; do
    case "$1" in
        --secs) SECS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --relay-cmd) RELAY_CMD=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --relay-arg) EXTRA+=("$2"); shift 2 ;;
        --relay-arg=*) EXTRA+=("${1#--relay-arg=}"); shift ;;
        --max-growth-mib) MAX_GROWTH=$2; shift 2 ;;
        --abort-growth-mib) ABORT_GROWTH=$2; shift 2 ;;
        --phases) PHASES=$2; shift 2 ;;
        --json) JSON=$2; shift 2 ;;
        --no-pin) PIN=0; shift ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v python3 >/dev/null || { echo "needs python3" >&2; exit 2; }
if [ -n "$RELAY_CMD" ]; then
    read -r -a RELAY <<<"$RELAY_CMD"
else
    RELAY=("$ROOT/target/release/wsrelay")
fi
[ -x "${RELAY[0]}" ] || command -v "${RELAY[0]}" >/dev/null ||
    { echo "missing ${RELAY[0]}: run cargo build --release first" >&2; exit 2; }

if [ -z "$PORT" ]; then
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
        { echo "could not pick a free port" >&2; exit 2; }
fi

RELAY_PIN=() CLIENT_PIN=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    RELAY_PIN=(taskset -c 0) CLIENT_PIN=(taskset -c 1)
fi

RELAY_PID=""
LOG=$(mktemp "${TMPDIR:-/tmp}/wsrelay-flood.XXXXXX.log") || exit 2
cleanup() {
    if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -TERM "$RELAY_PID" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$RELAY_PID" 2>/dev/null
    fi
    wait 2>/dev/null
    rm -f "$LOG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ARGS=(--listen "127.0.0.1:$PORT" --workers "$WORKERS" --stats-interval 0 ${EXTRA[@]+"${EXTRA[@]}"})
echo "relay: ${RELAY_PIN[*]} ${RELAY[*]} ${ARGS[*]}"
# taskset execs the relay, so $! is the relay's own pid (its /proc/PID/status).
${RELAY_PIN[@]+"${RELAY_PIN[@]}"} "${RELAY[@]}" "${ARGS[@]}" >"$LOG" 2>&1 &
RELAY_PID=$!

PY=(python3 "$ROOT/loadtest/flood.py" --port "$PORT" --pid "$RELAY_PID" --secs "$SECS"
    --max-growth-mib "$MAX_GROWTH" --abort-growth-mib "$ABORT_GROWTH" --phases "$PHASES"
    --label "relay: ${RELAY[*]#"$ROOT/"} ($("${RELAY[@]}" --version 2>/dev/null || echo 'version unknown'))")
[ -n "$JSON" ] && PY+=(--json "$JSON")
# Hard bound on the whole client run: every phase plus settling and slack.
BOUND=$(python3 -c "import sys; print(int(float(sys.argv[1]) * 2 + 60))" "$SECS") || exit 2
timeout -k 5 "$BOUND" ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} "${PY[@]}"
rc=$?
if ! kill -0 "$RELAY_PID" 2>/dev/null; then
    echo "the relay exited during the run; its log:" >&2
    sed 's/^/  /' "$LOG" >&2
    [ $rc = 0 ] && rc=1
fi
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "flood.py did not finish within $BOUND s" >&2
    rc=2
fi
if [ $rc = 2 ]; then
    echo "relay log:" >&2
    sed 's/^/  /' "$LOG" >&2
fi
exit $rc
