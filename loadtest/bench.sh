#!/usr/bin/env bash
# Fixed scenario set, run against wsrelay and the reference peers in one go, so
# every figure has its peers measured in the same run beside it.
#
#   loadtest/bench.sh                                   # default: every server, every scenario, 3 runs
#   loadtest/bench.sh --server wsrelay --server tt-peer-readbuf4096 --scenarios echo,fanout-1k
#   loadtest/bench.sh --server 'mine=/path/to/server --port {port}' --runs 1 --duration 3
#
# Servers (named, or NAME=CMD / CMD with {port} for anything else):
#   wsrelay              target/release/wsrelay --workers 1, pinned to core 0
#   wsrelay-w2           target/release/wsrelay --workers 2, NOT pinned (both cores); the generator
#                        is not pinned either (--threads 2). Runs only the fan-out scenarios.
#   tt-peer              tokio-tungstenite peer, default 128 KiB read buffer
#   tt-peer-readbuf4096  the same with --read-buf 4096 (the fair, tuned setting)
#   node-ws              Node.js + ws 8
#   go-gorilla           gorilla/websocket chat-shaped peer: echo, idle and churn only (its rooms join
#                        queued messages into one frame, so fan-out deliveries are not comparable)
# Every server except wsrelay-w2 runs on core 0 (taskset -c 0), the generator on core 1.
#
# Scenarios: echo echo-large fanout-1k fanout-10k rooms-100x100 idle-echo idle-rooms churn
#            fanout-1k-8000 (wsrelay and wsrelay-w2 only, unless a custom server)
#            pub/sub (Centrifugo protocol, wsrelay and wsrelay-w2 only: the peers do not speak it):
#            pubsub-fanout-1k (as fanout-1k, channel without history), pubsub-fanout-1k-history
#            (channel with history: offsets, sequencing), idle-pubsub (10,000 connections x 10
#            subscriptions), pubsub-recover-1k (1,000 clients miss 100 publications, reconnect at once)
#            TLS and compression (wsrelay variants only; the peers are started without TLS or deflate):
#            echo-tls (echo over wss://), handshakes-tls (churn over wss://: full TLS handshakes/s),
#            handshakes-tls-resume (the same resuming sessions), idle-tls (idle-echo over wss://: RSS per
#            connection on top of plain), fanout-1k-json (fanout-1k with a 512-byte JSON payload, all
#            servers) and fanout-1k-deflate (the same with --deflate and the relay's compression on)
# wss:// scenarios use a throwaway test CA and a localhost certificate made with openssl at the
# start of the run in $OUT/tls (its private key deleted at exit; nothing secret is in the repository).
#
# Output (--out DIR, default target/bench/<date>): json/<scenario>__<server>__<run>.json (the generator's
# --json), runs.tsv (one line per run), summary.tsv and summary.json (medians), summary.md (the table).
# Each scenario is run --runs times (default 3); servers are interleaved within each run.
# While measuring, the lock file wsrelay-bench.lock exists in $WSRELAY_LOCK_DIR (default: the
# system's /tmp, shared by every user and checkout; loadtest/abuse.sh waits for it to disappear).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GEN=${WSRELAY_LOAD:-$ROOT/target/release/wsrelay-load}
RELAY=${WSRELAY_BIN:-$ROOT/target/release/wsrelay}
PEERS=${PEERS_DIR:-$ROOT/../peers-build}
LOCK=${WSRELAY_LOCK_DIR:-/tmp}/wsrelay-bench.lock

RUNS=3
DURATION=5            # seconds of measured load per run (after warm-up)
RATE_10K=100          # msgs/s for fanout-10k (x 10,000 subscribers = 1M deliveries/s)
RATE_ROOMS=2000       # total msgs/s for rooms-100x100 (x 99 other members = ~198k deliveries/s)
IDLE_CONNS=15000
JSON_SIZE=512         # bytes of the JSON payload of fanout-1k-json / fanout-1k-deflate
BASE_PORT=${BENCH_BASE_PORT:-24400}
OUT=""
SCENARIOS="echo,echo-large,fanout-1k,fanout-10k,rooms-100x100,idle-echo,idle-rooms,churn,fanout-1k-8000,pubsub-fanout-1k,pubsub-fanout-1k-history,idle-pubsub,pubsub-recover-1k,echo-tls,handshakes-tls,handshakes-tls-resume,idle-tls,fanout-1k-json,fanout-1k-deflate"
SERVERS=()
BUILD=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; cat <<EOF

Options:
  --server S         named server or 'NAME=CMD {port}' / 'CMD {port}' (repeatable; default: all named)
  --servers a,b,c    named list
  --scenarios a,b,c  subset of scenarios (default: all)
  --runs N           runs per scenario (default $RUNS)
  --duration SECS    measured seconds per run (default $DURATION)
  --rate-10k R       fanout-10k rate (default $RATE_10K msgs/s)
  --rate-rooms R     rooms-100x100 total rate (default $RATE_ROOMS msgs/s)
  --idle N           idle connections (default $IDLE_CONNS; idle-tls uses the same)
  --json-size B      JSON payload of fanout-1k-json/-deflate (default $JSON_SIZE bytes)
  --out DIR          output directory
  --no-build         do not run cargo build --release first
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --server) SERVERS+=("$2"); shift 2 ;;
        --servers) IFS=, read -r -a more <<<"$2"; SERVERS+=("${more[@]}"); shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=${2%s}; shift 2 ;;
        --rate-10k) RATE_10K=$2; shift 2 ;;
        --rate-rooms) RATE_ROOMS=$2; shift 2 ;;
        --idle) IDLE_CONNS=$2; shift 2 ;;
        --json-size) JSON_SIZE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ ${#SERVERS[@]} -eq 0 ]] && SERVERS=(wsrelay tt-peer-readbuf4096 tt-peer node-ws go-gorilla wsrelay-w2)
OUT=${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/json" "$OUT/log"
IFS=, read -r -a SCEN_LIST <<<"$SCENARIOS"

if [[ $BUILD -eq 1 ]]; then
    (cd "$ROOT" && cargo build --release -p wsrelay -p wsrelay-load 2>&1 | tail -1)
fi

# The relay's configuration for the pub/sub scenarios (no effect on the raw ones: channels
# without a namespace keep the defaults). `bench`: no history; `hist`: history and recovery.
RELAY_CONF=$OUT/wsrelay-bench.toml
cat >"$RELAY_CONF" <<'TOML'
allow_anonymous_connect_without_token = true

[[namespaces]]
name = "bench"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_anonymous = true

[[namespaces]]
name = "hist"
history_size = 1000
history_ttl = "300s"
force_recovery = true
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_anonymous = true
TOML

# ---- TLS: a throwaway CA and a certificate for localhost / 127.0.0.1 ------------------------------
TLS_DIR=$OUT/tls
make_test_pki() { # dir: CA and leaf (ECDSA P-256), valid two days; keys are deleted at exit
    local d=$1
    mkdir -p "$d"
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key"
    openssl req -x509 -new -key "$d/ca.key" -days 2 -subj "/CN=wsrelay bench test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        -out "$d/ca.pem"
    openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$d/key.pem"
    openssl req -new -key "$d/key.pem" -subj "/CN=localhost" -out "$d/leaf.csr"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/leaf.ext"
    openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/leaf.ext" -out "$d/leaf.pem"
    cat "$d/leaf.pem" "$d/ca.pem" >"$d/chain.pem"
    rm -f "$d/ca.key" "$d/leaf.csr" "$d/leaf.ext" "$d/ca.srl"
}
is_tls() { [[ $1 == *-tls || $1 == *-tls-* ]]; }
NEED_TLS=0
for sc in "${SCEN_LIST[@]}"; do is_tls "$sc" && NEED_TLS=1; done
if [[ $NEED_TLS -eq 1 ]]; then
    command -v openssl >/dev/null || { echo "the wss:// scenarios need openssl (apt-get install openssl)" >&2; exit 2; }
    make_test_pki "$TLS_DIR" 2>"$OUT/log/openssl.log" || { echo "making the test certificate failed: see $OUT/log/openssl.log" >&2; exit 2; }
fi

# ---- servers -----------------------------------------------------------------------------------
declare -A CMD PIN
CUSTOM_N=0
SERVER_NAMES=()
for s in "${SERVERS[@]}"; do
    case "$s" in
        wsrelay) CMD[$s]="$RELAY --config $RELAY_CONF --listen 127.0.0.1:{port} --workers 1 --stats-interval 0 --log-level warn"; PIN[$s]=1 ;;
        wsrelay-w2) CMD[$s]="$RELAY --config $RELAY_CONF --listen 127.0.0.1:{port} --workers 2 --stats-interval 0 --log-level warn"; PIN[$s]=0 ;;
        tt-peer) CMD[$s]="$PEERS/tokio-tungstenite/target/release/tt-peer --port {port}"; PIN[$s]=1 ;;
        tt-peer-readbuf4096) CMD[$s]="$PEERS/tokio-tungstenite/target/release/tt-peer --port {port} --read-buf 4096"; PIN[$s]=1 ;;
        node-ws) CMD[$s]="node $PEERS/node-ws/server.js --port {port}"; PIN[$s]=1 ;;
        go-gorilla) CMD[$s]="$PEERS/bin/go-gorilla-peer -port {port}"; PIN[$s]=1 ;;
        *=*) n=${s%%=*}; CMD[$n]=${s#*=}; PIN[$n]=1; s=$n ;;
        *'{port}'*) CUSTOM_N=$((CUSTOM_N + 1)); n=custom$CUSTOM_N; CMD[$n]=$s; PIN[$n]=1; s=$n ;;
        *) echo "unknown server '$s' (named: wsrelay wsrelay-w2 tt-peer tt-peer-readbuf4096 node-ws go-gorilla, or a command with {port})" >&2; exit 2 ;;
    esac
    SERVER_NAMES+=("$s")
done

# Which server runs which scenario; anything else is recorded as skipped with the reason.
skip_reason() { # server scenario -> prints a reason, or nothing
    local s=$1 sc=$2
    case "$s" in
        wsrelay-w2) case "$sc" in
                fanout-1k|fanout-1k-8000|pubsub-fanout-1k|pubsub-fanout-1k-history|fanout-1k-json|fanout-1k-deflate) ;;
                *) echo "two-worker comparison runs fan-out only" ;;
            esac ;;
        go-gorilla) case "$sc" in
                fanout*|rooms*) echo "coalesces queued room messages into one frame: deliveries not comparable" ;;
            esac ;;
        wsrelay) ;;
        tt-peer|tt-peer-readbuf4096|node-ws) [[ $sc == fanout-1k-8000 ]] && echo "two-worker comparison is wsrelay only" ;;
    esac
    case "$s" in
        wsrelay|wsrelay-w2) ;;
        *) if is_tls "$sc"; then
               echo "started without TLS: bench.sh gives a certificate to wsrelay only"
           elif [[ $sc == fanout-1k-deflate ]]; then
               echo "started without permessage-deflate: the compression comparison is wsrelay's own (fanout-1k-json is the uncompressed run)"
           fi ;;
    esac
    case "$s:$sc" in
        wsrelay:*pubsub*|wsrelay-w2:*pubsub*) ;;
        *:*pubsub*) echo "does not speak the pub/sub protocol" ;;
    esac
    return 0
}

# ---- scenarios: generator arguments ------------------------------------------------------------
scenario_args() { # scenario -> generator subcommand arguments
    local d=${DURATION}s
    case "$1" in
        echo) echo "echo -c 64 --in-flight 8 --size 32 --duration $d --warmup 1s" ;;
        echo-large) echo "echo -c 16 --in-flight 1 --size 65536 --duration $d --warmup 1s" ;;
        fanout-1k) echo "fanout --subscribers 1000 --publishers 1 --rate 2000 --size 64 --duration $d --warmup 1s --drain 2s" ;;
        fanout-1k-8000) echo "fanout --subscribers 1000 --publishers 1 --rate 8000 --size 64 --duration $d --warmup 1s --drain 2s" ;;
        fanout-10k) echo "fanout --subscribers 10000 --publishers 1 --rate $RATE_10K --size 64 --duration $d --warmup 1s --drain 3s --connect-rate 5000" ;;
        rooms-100x100) echo "fanout --all-publish --subscribers 10000 --rooms 100 --rate $RATE_ROOMS --size 64 --duration $d --warmup 1s --drain 3s --connect-rate 5000" ;;
        idle-echo) echo "connect -c $IDLE_CONNS --path /echo --duration 3s --connect-rate 5000" ;;
        idle-rooms) echo "connect -c $IDLE_CONNS --path /rooms/idle --duration 3s --connect-rate 5000" ;;
        churn) echo "churn -c 20 --duration $d" ;;
        pubsub-fanout-1k) echo "pubsub --conns 1000 --subs 1 --channels 1 --publishers 1 --rate 2000 --size 64 --namespace bench --duration $d --warmup 1s --drain 2s" ;;
        pubsub-fanout-1k-history) echo "pubsub --conns 1000 --subs 1 --channels 1 --publishers 1 --rate 2000 --size 64 --namespace hist --duration $d --warmup 1s --drain 2s" ;;
        idle-pubsub) echo "pubsub --conns 10000 --subs 10 --channels 1000 --publishers 1 --rate 1 --namespace bench --duration 3s --connect-rate 5000" ;;
        pubsub-recover-1k) echo "pubsub --conns 1000 --subs 1 --channels 1 --publishers 1 --rate 2000 --namespace hist --recover-burst 100 --duration 10s" ;;
        echo-tls) scenario_args echo ;;
        handshakes-tls) scenario_args churn ;;
        handshakes-tls-resume) echo "$(scenario_args churn) --tls-resume" ;;
        idle-tls) scenario_args idle-echo ;;
        fanout-1k-json) echo "fanout --subscribers 1000 --publishers 1 --rate 2000 --size $JSON_SIZE --payload json --duration $d --warmup 1s --drain 2s" ;;
        fanout-1k-deflate) echo "$(scenario_args fanout-1k-json) --deflate" ;;
        *) echo "unknown scenario '$1'" >&2; exit 2 ;;
    esac
}

# ---- process helpers ---------------------------------------------------------------------------
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
wait_listen() { # port pid
    for _ in $(seq 1 100); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
SRV_PID=""
stop_server() {
    [[ -z $SRV_PID ]] && return 0
    kill -TERM "$SRV_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
}
cleanup() { stop_server; rm -f "$LOCK" "$TLS_DIR/key.pem"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- one run -----------------------------------------------------------------------------------
PORT=$BASE_PORT
TSV=$OUT/runs.tsv
printf 'scenario\tserver\trun\tstatus\tjson\trss_base_kb\trss_peak_kb\tsrv_cpu_pct\tnote\tsrv_cpu_s\n' >"$TSV"

run_one() { # scenario server run
    local sc=$1 s=$2 r=$3 why
    why=$(skip_reason "$s" "$sc")
    if [[ -n $why ]]; then
        printf '%s\t%s\t%s\tskipped\t\t\t\t\t%s\t\n' "$sc" "$s" "$r" "$why" >>"$TSV"
        return 0
    fi
    PORT=$((PORT + 1))
    while ss -Htan "sport = :$PORT" | grep -q .; do PORT=$((PORT + 1)); done
    local cmd=${CMD[$s]//\{port\}/$PORT} listen_port=$PORT scheme=ws tls_args=()
    if is_tls "$sc"; then
        # The TLS listener beside the plain one (wsrelay variants only: see skip_reason).
        local tport=$((PORT + 1))
        while ss -Htan "sport = :$tport" | grep -q .; do tport=$((tport + 1)); done
        PORT=$tport
        cmd+=" --tls-listen 127.0.0.1:$tport --tls-cert $TLS_DIR/chain.pem --tls-key $TLS_DIR/key.pem"
        listen_port=$tport scheme=wss tls_args=(--ca-file "$TLS_DIR/ca.pem")
    fi
    [[ $sc == fanout-1k-deflate ]] && cmd+=" --compression true"
    local json=$OUT/json/${sc}__${s}__${r}.json log=$OUT/log/${sc}__${s}__${r}
    rm -f "$json"
    # bench.sh's own WSRELAY_* variables are not relay config keys: the relay refuses
    # unknown WSRELAY_* variables, so they are kept from the server's environment.
    local clean_env=(env -u WSRELAY_LOCK_DIR -u WSRELAY_LOAD -u WSRELAY_BIN)
    if [[ ${PIN[$s]} == 1 ]]; then
        taskset -c 0 "${clean_env[@]}" bash -c "exec $cmd" >"$log.server" 2>&1 &
    else
        "${clean_env[@]}" bash -c "exec $cmd" >"$log.server" 2>&1 &
    fi
    SRV_PID=$!
    if ! wait_listen "$listen_port" "$SRV_PID"; then
        printf '%s\t%s\t%s\tserver-failed\t\t\t\t\t%s\t\n' "$sc" "$s" "$r" "did not listen on $listen_port" >>"$TSV"
        stop_server
        return 0
    fi
    sleep 0.2
    local base peak cur t0 t1 c0 c1 status=ok note="" gen
    base=$(rss_kb "$SRV_PID"); peak=$base
    c0=$(cpu_ticks "$SRV_PID"); t0=$(date +%s.%N)
    if [[ ${PIN[$s]} == 1 ]]; then
        gen=(taskset -c 1 "$GEN" --threads 1)
    else
        gen=("$GEN" --threads 2)
    fi
    local path=""
    [[ $sc == *pubsub* ]] && path=/connection/websocket
    local host=127.0.0.1
    [[ $scheme == wss ]] && host=localhost # SNI and the certificate's DNS name
    # (scenario_args is split into words on purpose.)
    # shellcheck disable=SC2046
    timeout 180 "${gen[@]}" --url "$scheme://$host:$listen_port$path" "${tls_args[@]}" -q --json "$json" \
        $(scenario_args "$sc") >"$log.gen" 2>&1 &
    local gpid=$!
    while kill -0 "$gpid" 2>/dev/null; do
        cur=$(rss_kb "$SRV_PID"); [[ ${cur:-0} -gt $peak ]] && peak=$cur
        sleep 0.2
    done
    wait "$gpid" || status="gen-exit-$?"
    t1=$(date +%s.%N); c1=$(cpu_ticks "$SRV_PID")
    kill -0 "$SRV_PID" 2>/dev/null || { status="server-died"; note="server exited during the run"; }
    local cpu cpu_s
    cpu=$(awk -v a="$c0" -v b="$c1" -v x="$t0" -v y="$t1" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.1f", (b - a) / hz / (y - x) * 100 }')
    cpu_s=$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", (b - a) / hz }')
    [[ -s $json ]] || { status="no-json"; json=""; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$s" "$r" "$status" "$json" "$base" "$peak" "$cpu" "$note" "$cpu_s" >>"$TSV"
    printf '  %-15s %-20s run %s: %s\n' "$sc" "$s" "$r" "$status" >&2
    stop_server
    sleep 0.5
}

# ---- main --------------------------------------------------------------------------------------
{
    echo "# wsrelay bench $(date -Is)"
    echo "# $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) cores, $(uname -sr)"
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# servers: ${SERVER_NAMES[*]}"
    for s in "${SERVER_NAMES[@]}"; do echo "#   $s: ${CMD[$s]} (pinned core 0: ${PIN[$s]})"; done
    echo "# scenarios (generator: taskset -c 1 wsrelay-load --threads 1 --url ws://127.0.0.1:PORT -q --json F ...):"
    for sc in "${SCEN_LIST[@]}"; do
        extra=""
        is_tls "$sc" && extra+=" [--url wss://localhost:TLS_PORT --ca-file $TLS_DIR/ca.pem; wsrelay: --tls-listen, --tls-cert, --tls-key]"
        [[ $sc == fanout-1k-deflate ]] && extra+=" [wsrelay: --compression true]"
        echo "#   $sc: $(scenario_args "$sc")$extra"
    done
} | tee "$OUT/header.txt" >&2

touch "$LOCK"
for sc in "${SCEN_LIST[@]}"; do
    scenario_args "$sc" >/dev/null
    for r in $(seq 1 "$RUNS"); do
        for s in "${SERVER_NAMES[@]}"; do run_one "$sc" "$s" "$r"; done
    done
done
rm -f "$LOCK"

# ---- summary: medians, ratios, markdown ---------------------------------------------------------
python3 - "$OUT" "${SERVER_NAMES[@]}" <<'PY'
import csv, json, statistics, sys
out, servers = sys.argv[1], sys.argv[2:]
rows = list(csv.DictReader(open(f"{out}/runs.tsv"), delimiter="\t"))

def metrics(sc, row):
    """Figures for one run: name -> value (None when not applicable)."""
    m = {}
    d = json.load(open(row["json"])) if row["json"] else None
    srv_cpu = float(row["srv_cpu_pct"]) if row["srv_cpu_pct"] else None
    if d is None:
        return m
    msg, lat, con, gen = d["messages"], d["latency"], d["connections"], d["generator"]
    if sc.startswith("idle"):
        est = con["established"]
        growth = (int(row["rss_peak_kb"]) - int(row["rss_base_kb"])) * 1024
        m["established"] = est
        m["RSS B/conn"] = growth / est if est else None
        m["dropped while idle"] = con["lost"]
        m["handshake p99 ms"] = con["handshake_latency"]["p99_us"] / 1000
    elif sc == "pubsub-recover-1k":
        rec = d["pubsub"]["recovery"]
        m["time to recover all ms"] = rec["time_to_recover_all_s"] * 1000
        m["recovered"] = rec["recovered_true"]
        m["not recovered"] = rec["recovered_false"]
        m["publications recovered"] = rec["recovered_publications"]
        m["gaps"] = d["pubsub"]["offset_gaps"]
        m["duplicates"] = d["pubsub"]["duplicated"]
        m["resubscribe p99 ms"] = rec["resubscribe_latency"]["p99_us"] / 1000
    elif sc == "churn" or sc.startswith("handshakes"):
        m["handshakes/s"] = d["churn"]["cycles_per_s"]
        m["cycle p99 ms"] = d["churn"]["cycle_latency"]["p99_us"] / 1000
        m["failed"] = con["failed"]
        if d.get("tls"):
            m["TLS resumed %"] = 100.0 * d["tls"]["handshakes_resumed"] / max(
                1, d["tls"]["handshakes_full"] + d["tls"]["handshakes_resumed"])
            m["TLS handshake p99 ms"] = d["tls"]["handshake_latency"]["p99_us"] / 1000
    else:
        key = "msgs/s" if sc.startswith("echo") else "deliveries/s"
        m[key] = msg["received_per_s"]
        if not sc.startswith("echo"):
            m["sent/s"] = msg["sent_per_s"]
            m["loss %"] = 100.0 * msg["lost"] / msg["expected"] if msg["expected"] else None
            m["send lag p99 ms"] = d["send_lag"]["p99_us"] / 1000
        m["p50 ms"] = lat["p50_us"] / 1000
        m["p99 ms"] = lat["p99_us"] / 1000
        m["p99.9 ms"] = lat["p999_us"] / 1000
        m["conns lost"] = con["lost"] + con["failed"]
        if sc in ("fanout-1k-json", "fanout-1k-deflate"):
            bw = d["bandwidth"]
            cpu_s = float(row["srv_cpu_s"]) if row.get("srv_cpu_s") else None
            # Server CPU over the whole generator run ÷ every delivery of the run.
            m["srv CPU µs/delivery"] = cpu_s * 1e6 / msg["received"] if cpu_s is not None and msg["received"] else None
            m["wire B/delivery"] = bw["wire_in_bytes"] / bw["messages_in"] if bw["messages_in"] else None
            m["wire/payload %"] = 100.0 * bw["wire_per_payload_in"]
            m["deflate conns"] = bw["deflate_negotiated"]
    m["gen cpu %"] = gen["cpu_percent_of_one_core"]
    m["srv cpu %"] = srv_cpu
    return m

HIGHER = {"msgs/s", "deliveries/s", "handshakes/s", "sent/s", "established"}
LOWER = {"p50 ms", "p99 ms", "p99.9 ms", "RSS B/conn", "cycle p99 ms", "srv CPU µs/delivery", "wire B/delivery"}

results = {}  # (sc, server) -> {"status": [...], "metrics": {name: [values]}, "note": str}
scen_order = []
for row in rows:
    sc, s = row["scenario"], row["server"]
    if sc not in scen_order:
        scen_order.append(sc)
    e = results.setdefault((sc, s), {"status": [], "metrics": {}, "note": ""})
    e["status"].append(row["status"])
    if row["note"]:
        e["note"] = row["note"]
    if row["status"] == "skipped":
        continue
    try:
        for k, v in metrics(sc, row).items():
            if v is not None:
                e["metrics"].setdefault(k, []).append(v)
    except (OSError, KeyError, ValueError) as err:
        e["note"] = f"unreadable result: {err}"

summary = []
for (sc, s), e in results.items():
    med = {k: statistics.median(v) for k, v in e["metrics"].items()}
    summary.append({"scenario": sc, "server": s, "status": e["status"], "note": e["note"],
                    "runs": {k: v for k, v in e["metrics"].items()}, "median": med})
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)

def fmt(k, v):
    if v is None:
        return "–"
    if k.endswith("/s"):
        return f"{v/1e6:.2f}M" if v >= 1e6 else (f"{v/1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")
    if k.endswith("ms"):
        return f"{v:.2f}" if v < 10 else f"{v:.0f}" if v >= 100 else f"{v:.1f}"
    if k.endswith("%"):
        return f"{v:.3g}" if k in ("loss %", "wire/payload %") else f"{v:.0f}"
    if k.endswith("/delivery"):
        return f"{v:.3g}"
    return f"{v:.0f}"

with open(f"{out}/summary.tsv", "w") as f:
    f.write("scenario\tserver\tmetric\tmedian\truns\tstatus\n")
    for e in summary:
        for k, v in e["median"].items():
            f.write(f'{e["scenario"]}\t{e["server"]}\t{k}\t{v:.6g}\t{",".join(f"{x:.6g}" for x in e["runs"][k])}\t{",".join(e["status"])}\n')

md = ["| scenario | metric | " + " | ".join(servers) + " |",
      "|---|---|" + "---|" * len(servers)]
for sc in scen_order:
    names = []
    for s in servers:
        for k in results.get((sc, s), {"metrics": {}})["metrics"]:
            if k not in names:
                names.append(k)
    base = results.get((sc, "wsrelay"), {"metrics": {}})["metrics"]
    for k in names:
        cells = []
        for s in servers:
            e = results.get((sc, s))
            if e is None:
                cells.append("")
                continue
            if all(x == "skipped" for x in e["status"]):
                cells.append("n/a" if k != names[0] else f"n/a ({e['note']})")
                continue
            vals = e["metrics"].get(k)
            bad = [x for x in e["status"] if x not in ("ok", "skipped")]
            if not vals:
                cells.append("failed" + (f" ({','.join(bad)})" if bad else ""))
                continue
            v = statistics.median(vals)
            cell = fmt(k, v)
            if s != "wsrelay" and k in (HIGHER | LOWER) and base.get(k):
                b = statistics.median(base[k])
                if v > 0:
                    ratio = b / v if k in HIGHER else v / b
                    cell += f" (×{ratio:.2f})"
            if bad:
                cell += f" [{len(bad)}/{len(e['status'])} runs: {','.join(sorted(set(bad)))}]"
            cells.append(cell)
        md.append(f"| {sc} | {k} | " + " | ".join(cells) + " |")
md.append("")
md.append("Medians of the runs. (×N) = how many times better wsrelay is than that server on the metric "
          "(>1: wsrelay better; throughput: wsrelay ÷ server; latency and RSS: server ÷ wsrelay). "
          "gen cpu = the generator's CPU in the measured window (% of one core); srv cpu = the server's "
          "over the whole generator run, connect and close included.")
# TLS and compression against their plain counterparts, per server, same run.
PAIRS = [("echo-tls", "echo", "msgs/s", "TLS echo ÷ plain echo (msgs/s)", "ratio"),
         ("handshakes-tls", "churn", "handshakes/s", "TLS handshakes/s ÷ plain handshakes/s", "ratio"),
         ("handshakes-tls-resume", "handshakes-tls", "handshakes/s", "resumed ÷ full TLS handshakes/s", "ratio"),
         ("idle-tls", "idle-echo", "RSS B/conn", "bytes per idle TLS connection on top of plain", "diff"),
         ("fanout-1k-deflate", "fanout-1k-json", "deliveries/s", "deflate ÷ uncompressed deliveries/s", "ratio"),
         ("fanout-1k-deflate", "fanout-1k-json", "srv CPU µs/delivery", "deflate ÷ uncompressed server CPU per delivery", "ratio"),
         ("fanout-1k-deflate", "fanout-1k-json", "wire B/delivery", "deflate ÷ uncompressed wire bytes per delivery", "ratio")]
pair_lines = []
for a, b, k, label, how in PAIRS:
    for s in servers:
        va = results.get((a, s), {"metrics": {}})["metrics"].get(k)
        vb = results.get((b, s), {"metrics": {}})["metrics"].get(k)
        if not va or not vb:
            continue
        ma, mb = statistics.median(va), statistics.median(vb)
        val = f"{ma - mb:+.0f}" if how == "diff" else (f"{ma / mb:.3f}" if mb else "–")
        pair_lines.append(f"| {label} | {s} | {val} | {fmt(k, ma)} vs {fmt(k, mb)} |")
if pair_lines:
    md += ["", "| TLS and compression | server | value | medians |", "|---|---|---|---|"] + pair_lines
open(f"{out}/summary.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
echo "results in $OUT" >&2
