#!/usr/bin/env bash
# Abuse soak: a release relay under a steady, integrity-checked fan-out while
# abusive clients hit it (slowloris, connect/close churn, oversized heads,
# garbage after the upgrade, slow consumers, clients that vanish). Checks the
# steady flow loses nothing, every abuser gets the documented answer, and
# afterwards the relay is healthy, its connection gauge is back to the steady
# set and its RSS is within 10% of the pre-abuse figure.
#
#   loadtest/abuse.sh [--port N] [--out DIR] [--quick] [--no-lock] [--rounds N] [--steady-secs N]
#
#   --quick          small counts, for development (about 2.5 min)
#   --no-lock        do not wait for wsrelay-bench.lock or another soak, nor hold
#                    wsrelay-abuse.lock (both in $WSRELAY_LOCK_DIR, default the
#                    system's /tmp; see docs/reliability.md)
#   --rounds N       abuse rounds, one after the other (default 3)
#   --steady-secs N  duration of the steady fan-out (default 180, quick 120);
#                    it must outlast every round plus 12 s of settling
#   --relay-arg ARG  one more relay flag (repeatable), e.g. --relay-arg=--buffer-pool-size=0
#
# Needs target/release/{wsrelay,wsrelay-load} (cargo build --release
# --workspace), python3 (standard library only), curl. Loopback only;
# everything is bounded and stops by itself; all processes started here are
# stopped on exit. Exit status 0 when every check passed, 1 otherwise, 2 on
# a set-up error. Results: $OUT/ (summary.json, logs, JSON of every client).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RELAY=$ROOT/target/release/wsrelay
LOAD=$ROOT/target/release/wsrelay-load
CLIENTS=$ROOT/loadtest/abuse/clients.py
PORT=19400
OUT=""
QUICK=0
LOCK=1
STEADY_SECS=""
EXTRA=()
ROUNDS=3                   # the same abuse again and again: a new RSS high in the last round = leak
BENCH_LOCK=${WSRELAY_LOCK_DIR:-/tmp}/wsrelay-bench.lock
ABUSE_LOCK=${WSRELAY_LOCK_DIR:-/tmp}/wsrelay-abuse.lock

while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --no-lock) LOCK=0; shift ;;
        --steady-secs) STEADY_SECS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --relay-arg) EXTRA+=("$2"); shift 2 ;;
        --relay-arg=*) EXTRA+=("${1#--relay-arg=}"); shift ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

# ---- the run's parameters ---------------------------------------------------
HANDSHAKE_TIMEOUT_S=5
CLOSE_TIMEOUT_S=5          # relay default, not set on the command line
RELAY_ARGS=(--listen "127.0.0.1:$PORT" --workers 2 --handshake-timeout "${HANDSHAKE_TIMEOUT_S}s" --stats-interval 0 ${EXTRA[@]+"${EXTRA[@]}"})
STEADY_SUBS=200 STEADY_PUBS=4 STEADY_ROOMS=4 STEADY_RATE=1000 STEADY_SIZE=1024
STEADY_CONNS=$((STEADY_SUBS + STEADY_PUBS))
ROOMS=$(seq -s, -f 'load-%g' 0 $((STEADY_ROOMS - 1)))
if [ "$QUICK" = 1 ]; then
    N_SLOWLORIS=200 N_RAWCHURN=500 N_WSCHURN=500 N_OVERSIZED=200 N_GARBAGE=50 N_SLOW=20 N_VANISH=200
    : "${STEADY_SECS:=120}"
else
    N_SLOWLORIS=2000 N_RAWCHURN=5000 N_WSCHURN=5000 N_OVERSIZED=2000 N_GARBAGE=500 N_SLOW=100 N_VANISH=2000
    : "${STEADY_SECS:=180}"
fi
ABUSE_BOUND_S=110          # hard bound on each abuse process
SETTLE_S=$((HANDSHAKE_TIMEOUT_S + CLOSE_TIMEOUT_S + 2))
[ -n "$OUT" ] || OUT=$ROOT/target/abuse/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT" || exit 2

for f in "$RELAY" "$LOAD"; do
    [ -x "$f" ] || { echo "missing $f: run cargo build --release --workspace" >&2; exit 2; }
done
command -v python3 >/dev/null && command -v curl >/dev/null || { echo "needs python3 and curl" >&2; exit 2; }

# ---- clean-up: every process started here, and our lock -----------------------
PIDS=()
RELAY_PID=""
MON_PID=""
HOLD_LOCK=0
cleanup() {
    local p
    for p in "${PIDS[@]}" $MON_PID; do
        kill "$p" 2>/dev/null
    done
    if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -TERM "$RELAY_PID" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$RELAY_PID" 2>/dev/null
    fi
    wait 2>/dev/null
    if [ "$HOLD_LOCK" = 1 ] && [ "$(cat "$ABUSE_LOCK" 2>/dev/null)" = "$$" ]; then
        rm -f "$ABUSE_LOCK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

# ---- CPU etiquette: do not measure while a benchmark holds its lock ------------
if [ "$LOCK" = 1 ]; then
    waited=0
    while [ -e "$BENCH_LOCK" ]; do
        [ $waited -ge 2400 ] && { echo "$BENCH_LOCK still held after 40 min; giving up" >&2; exit 2; }
        [ $waited = 0 ] && log "waiting for $BENCH_LOCK to go (polling every 15 s, up to 40 min)"
        sleep 15; waited=$((waited + 15))
    done
    # Another soak on the same machine would share the port (SO_REUSEPORT
    # is per user, the relay refuses a port in use) and skew the RSS: wait.
    waited=0
    while [ -e "$ABUSE_LOCK" ] && kill -0 "$(cat "$ABUSE_LOCK" 2>/dev/null)" 2>/dev/null; do
        [ $waited -ge 2400 ] && { echo "$ABUSE_LOCK still held after 40 min; giving up" >&2; exit 2; }
        [ $waited = 0 ] && log "waiting for the soak holding $ABUSE_LOCK to finish"
        sleep 15; waited=$((waited + 15))
    done
    echo $$ > "$ABUSE_LOCK" && HOLD_LOCK=1
fi

metrics() { curl -s --max-time 5 "http://127.0.0.1:$PORT/metrics"; }
gauge() { metrics | awk '$1 == "wsrelay_connections_open" { print $2 }'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$RELAY_PID/status" 2>/dev/null || echo 0; }
healthz() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$PORT/healthz"; }
now_s() { date +%s.%N; }

# ---- relay -----------------------------------------------------------------------
log "relay: $RELAY ${RELAY_ARGS[*]}"
RELAY_VERSION=$("$RELAY" --version)
RELAY_BUILT=$(date -r "$RELAY" '+%F %T')
GIT_HEAD=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)
"$RELAY" "${RELAY_ARGS[@]}" >"$OUT/relay.log" 2>&1 &
RELAY_PID=$!
for _ in $(seq 1 50); do [ "$(healthz)" = 200 ] && break; sleep 0.1; done
[ "$(healthz)" = 200 ] || { echo "relay did not come up (see $OUT/relay.log)" >&2; exit 2; }
RSS_IDLE_KB=$(rss_kb)

# ---- steady fan-out ------------------------------------------------------------------
STEADY_CMD=("$LOAD" --url "ws://127.0.0.1:$PORT" fanout --subscribers $STEADY_SUBS --publishers $STEADY_PUBS
    --rooms $STEADY_ROOMS --rate $STEADY_RATE --size $STEADY_SIZE --duration "${STEADY_SECS}s" --drain 2s
    --max-loss 0 --json "$OUT/steady.json")
log "steady: ${STEADY_CMD[*]}"
STEADY_T0=$(now_s)
"${STEADY_CMD[@]}" >"$OUT/steady.txt" 2>"$OUT/steady.err" &
STEADY_PID=$!
PIDS+=("$STEADY_PID")
for _ in $(seq 1 200); do [ "$(gauge)" = "$STEADY_CONNS" ] && break; sleep 0.1; done
sleep 3   # let the flow (and the relay's buffers) settle before the baseline
metrics >"$OUT/metrics.pre.txt"
cp "/proc/$RELAY_PID/smaps" "$OUT/smaps.pre.txt" 2>/dev/null
GAUGE_PRE=$(gauge)
RSS_PRE_KB=$(rss_kb)
log "before abuse: connections_open $GAUGE_PRE, RSS $RSS_PRE_KB KiB (idle relay: $RSS_IDLE_KB KiB)"

# ---- monitor: RSS, gauge, /healthz every second ----------------------------------------------
(
    while kill -0 "$RELAY_PID" 2>/dev/null; do
        t=$(now_s)
        h=$(curl -s -o /dev/null --max-time 5 -w '%{http_code} %{time_total}' "http://127.0.0.1:$PORT/healthz")
        echo "$t $(rss_kb) $(gauge) $h"
        sleep 1
    done
) >"$OUT/monitor.tsv" 2>/dev/null &
MON_PID=$!

# ---- abuse rounds: everything at once, each abuser from its own source address ---------
b() { timeout -k 5 "$ABUSE_BOUND_S" "$@"; }
C=(--port "$PORT" --rooms "$ROOMS")
ROUND_ENV=""
abuse_round() {
    local r=$1 d=$OUT/r$1 p rc t0 t1
    mkdir -p "$d"
    log "round $r: $N_SLOWLORIS slowloris, $N_RAWCHURN raw + $N_WSCHURN WebSocket connect/close, $N_OVERSIZED oversized heads, $N_GARBAGE garbage, $N_SLOW slow consumers, $N_VANISH vanishing"
    t0=$(now_s)
    local pids=()
    b python3 "$CLIENTS" slowloris "${C[@]}" --src 127.0.0.2 -n "$N_SLOWLORIS" --json "$d/slowloris.json" >"$d/slowloris.log" 2>&1 &
    pids+=($!)
    b python3 "$CLIENTS" rawchurn "${C[@]}" --src 127.0.0.3 -n "$N_RAWCHURN" --json "$d/rawchurn.json" >"$d/rawchurn.log" 2>&1 &
    pids+=($!)
    b "$LOAD" --url "ws://127.0.0.1:$PORT" --source 127.0.0.4 churn -c 20 --max-messages "$N_WSCHURN" --duration 60s -q \
        --json "$d/churn.json" >"$d/churn.txt" 2>&1 &
    local p_churn=$!
    pids+=($!)
    b python3 "$CLIENTS" oversized "${C[@]}" --src 127.0.0.5 -n "$N_OVERSIZED" --json "$d/oversized.json" >"$d/oversized.log" 2>&1 &
    pids+=($!)
    b python3 "$CLIENTS" garbage "${C[@]}" --src 127.0.0.6 -n "$N_GARBAGE" --seed "$r" --json "$d/garbage.json" >"$d/garbage.log" 2>&1 &
    pids+=($!)
    b python3 "$CLIENTS" slow "${C[@]}" --src 127.0.0.7 -n "$N_SLOW" --json "$d/slow.json" >"$d/slow.log" 2>&1 &
    pids+=($!)
    b python3 "$CLIENTS" vanish "${C[@]}" --src 127.0.0.8 -n "$N_VANISH" --seed "$r" --json "$d/vanish.json" >"$d/vanish.log" 2>&1 &
    pids+=($!)
    PIDS+=("${pids[@]}")
    for p in "${pids[@]}"; do
        wait "$p"; rc=$?
        [ "$p" = "$p_churn" ] && echo "CHURN_RC_$r=$rc" >>"$OUT/round.env"
    done
    t1=$(now_s)
    for f in slowloris rawchurn oversized garbage slow vanish; do sed 's/^/  /' "$d/$f.log"; done
    log "round $r: abuse done in $(echo "$t1 - $t0" | bc) s; settling ${SETTLE_S} s (handshake + close timeouts)"
    sleep "$SETTLE_S"
    local alive=0; kill -0 "$RELAY_PID" 2>/dev/null && alive=1
    local health; health=$(healthz)
    metrics >"$OUT/metrics.r$r.txt"
    local g; g=$(gauge)
    local rss; rss=$(rss_kb)
    cp "/proc/$RELAY_PID/smaps" "$OUT/smaps.r$r.txt" 2>/dev/null
    local steady=0; kill -0 "$STEADY_PID" 2>/dev/null && steady=1
    log "after round $r: alive $alive, /healthz $health, connections_open $g, RSS $rss KiB (steady running: $steady)"
    cat >>"$OUT/round.env" <<EOT
ROUND_${r}_START_S=$(echo "$t0 - $STEADY_T0" | bc)
ROUND_${r}_END_S=$(echo "$t1 - $STEADY_T0" | bc)
ROUND_${r}_WALL_S=$(echo "$t1 - $t0" | bc)
ALIVE_R$r=$alive
HEALTH_R$r=$health
GAUGE_R$r=$g
RSS_R${r}_KB=$rss
STEADY_RUNNING_R$r=$steady
EOT
}
: >"$OUT/round.env"
ABUSE_T0=$(now_s)
for r in $(seq 1 "$ROUNDS"); do abuse_round "$r"; done
ABUSE_T1=$(now_s)
kill "$MON_PID" 2>/dev/null; wait "$MON_PID" 2>/dev/null; MON_PID=""

log "waiting for the steady fan-out to finish"
wait "$STEADY_PID"; STEADY_RC=$?
sleep 2
GAUGE_END=$(gauge)
RSS_END_KB=$(rss_kb)
metrics >"$OUT/metrics.end.txt"
cp "/proc/$RELAY_PID/smaps" "$OUT/smaps.end.txt" 2>/dev/null
log "after the steady fan-out: connections_open $GAUGE_END, RSS $RSS_END_KB KiB"

kill -TERM "$RELAY_PID"
RELAY_EXIT=timeout
for _ in $(seq 1 50); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.2; done
if ! kill -0 "$RELAY_PID" 2>/dev/null; then wait "$RELAY_PID"; RELAY_EXIT=$?; RELAY_PID=""; fi

# ---- summary ----------------------------------------------------------------------------------------
read -r HEALTH_TOTAL HEALTH_OK HEALTH_MAX_S RSS_PEAK_KB GAUGE_PEAK < <(awk -v a="$ABUSE_T0" -v b="$ABUSE_T1" '
    $1 >= a && $1 <= b + 1 { n++; if ($4 == 200) ok++; if ($5 > mx) mx = $5 }
    { if ($2 > rss) rss = $2; if ($3 > g) g = $3 }
    END { printf "%d %d %.3f %d %d\n", n, ok, mx, rss, g }' "$OUT/monitor.tsv")
cat >"$OUT/run.env" <<EOF
GIT_HEAD=$GIT_HEAD
RELAY_VERSION=$RELAY_VERSION
RELAY_BUILT=$RELAY_BUILT
RELAY_ARGS=${RELAY_ARGS[*]}
STEADY_CMD=${STEADY_CMD[*]}
STEADY_CONNS=$STEADY_CONNS
STEADY_RC=$STEADY_RC
ROUNDS=$ROUNDS
N_WSCHURN=$N_WSCHURN
HANDSHAKE_TIMEOUT_S=$HANDSHAKE_TIMEOUT_S
ABUSE_WALL_S=$(echo "$ABUSE_T1 - $ABUSE_T0" | bc)
GAUGE_PRE=$GAUGE_PRE
GAUGE_PEAK=$GAUGE_PEAK
GAUGE_END=$GAUGE_END
RSS_IDLE_KB=$RSS_IDLE_KB
RSS_PRE_KB=$RSS_PRE_KB
RSS_PEAK_KB=$RSS_PEAK_KB
RSS_END_KB=$RSS_END_KB
HEALTH_TOTAL=$HEALTH_TOTAL
HEALTH_OK=$HEALTH_OK
HEALTH_MAX_S=$HEALTH_MAX_S
RELAY_EXIT=$RELAY_EXIT
EOF
cat "$OUT/round.env" >>"$OUT/run.env"
sed -n '/^wsrelay-load/,$p' "$OUT/steady.txt" | sed 's/^/  steady | /'
python3 "$CLIENTS" summary --dir "$OUT" | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
