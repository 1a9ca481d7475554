#!/usr/bin/env bash
# Exercises the deployment material in deploy/ (see docs/deployment.md):
#   1. systemd: `systemd-analyze verify` of deploy/systemd/wsrelay.service (any warning
#      fails), its sandbox exposure score, TimeoutStopSec > shutdown_timeout +
#      close_timeout of deploy/wsrelay.toml, and a graceful stop: the unit's ExecStart
#      with that configuration, a client in a room, SIGTERM -> close 1001 -> exit 0
#      within TimeoutStopSec.
#   2. nginx (deploy/nginx/wsrelay.conf, Debian's nginx): wss with a throw-away CA,
#      clients join /rooms/x and receive a POST /publish/x; with trusted_proxies =
#      ["127.0.0.1/32"] and max_connections_per_ip = 1 the relay counts the client's
#      address from X-Forwarded-For (a second client from the same address: 429; a
#      client from another address, even forging X-Forwarded-For: accepted), and
#      ignores X-Forwarded-For from an untrusted peer.
#   3. HAProxy with send-proxy-v2 (deploy/haproxy/wsrelay.cfg, Debian's haproxy) to a
#      relay with proxy_protocol = true: the same checks, and a raw TCP client that
#      skips the proxy is refused.
# nginx, haproxy and systemd-analyze are installed with apt-get when missing. They run
# as the current user on free high ports with configurations derived from the
# committed files in a temporary directory (certificates included: nothing secret
# is committed); no system service is touched. The clients (tests/deploy/) run in a
# virtualenv with the pinned `websockets` from PyPI (target/deploy-venv).
# Nothing is skipped: a missing tool that cannot be installed fails the script.
#
#   scripts/test-deploy.sh            # all three
#   scripts/test-deploy.sh nginx      # a subset: systemd, nginx, haproxy
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PARTS=("$@")
[[ ${#PARTS[@]} -gt 0 ]] || PARTS=(systemd nginx haproxy)
for p in "${PARTS[@]}"; do
    case "$p" in systemd|nginx|haproxy) ;; *) echo "test-deploy: unknown part '$p' (systemd, nginx, haproxy)" >&2; exit 2 ;; esac
done
want() { local p; for p in "${PARTS[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

TOKEN=deploy-test-token
failures=()
fail() { echo "test-deploy: FAILED: $*" >&2; failures+=("$*"); }

# ---- tools --------------------------------------------------------------------------------------
sudo_cmd=()
[[ $(id -u) == 0 ]] || sudo_cmd=(sudo -n)
apt_updated=0
apt_install() {
    echo "test-deploy: installing $* with apt-get"
    if ((!apt_updated)); then "${sudo_cmd[@]}" apt-get update -qq; apt_updated=1; fi
    # Debian's postinst would start the services; policy-rc.d normally forbids that in
    # containers, and we stop nothing we did not start: RUNLEVEL=1 keeps invoke-rc.d quiet.
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
need=()
want systemd && ! command -v systemd-analyze >/dev/null && need+=(systemd)
want nginx && ! [[ -x /usr/sbin/nginx ]] && need+=(nginx)
want haproxy && ! [[ -x /usr/sbin/haproxy ]] && need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
((${#need[@]} == 0)) || apt_install "${need[@]}"

VENV=$ROOT/target/deploy-venv
if ! "$VENV/bin/python" -c 'import websockets' 2>/dev/null \
    || ! cmp -s tests/deploy/requirements.txt "$VENV/requirements.txt"; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/deploy/requirements.txt
    cp tests/deploy/requirements.txt "$VENV/requirements.txt"
fi
PY=("$VENV/bin/python" tests/deploy/deploy_test.py)

RELAY=${WSRELAY_BIN:-$ROOT/target/release/wsrelay}
if [[ -z ${WSRELAY_BIN:-} ]]; then
    cargo build --release -q -p wsrelay
fi
[[ -x $RELAY ]] || { echo "test-deploy: no relay binary at $RELAY" >&2; exit 1; }

# ---- scratch directory, processes ---------------------------------------------------------------
T=$(mktemp -d "${TMPDIR:-/tmp}/wsrelay-deploy.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port pid log
    local _
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { echo "--- $3:"; cat "$3"; return 1; }
        sleep 0.1
    done
    echo "--- $3 (nothing listens on $1 after 10s):"; cat "$3"; return 1
}
# derive FILE 'sed-expression' 'what must match': the committed file with one
# substitution applied; fails when the pattern no longer matches (the committed file
# changed shape), instead of testing a configuration that silently lost the edit.
derive() {
    local file=$1 expr=$2 pattern=$3
    grep -Eq -- "$pattern" "$file" || { echo "test-deploy: $file no longer matches /$pattern/" >&2; return 1; }
    sed -E -i -- "$expr" "$file"
}
start_relay() { # name port extra-toml -> relay pid in RELAY_PID
    local name=$1 port=$2 conf=$T/$1.toml
    { printf 'listen = "127.0.0.1:%s"\nworkers = 1\nstats_interval = "0"\npublish_token = "%s"\n' "$port" "$TOKEN"
      printf '%s\n' "$3"; } >"$conf"
    "$RELAY" --config "$conf" >"$T/$name.log" 2>&1 &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    wait_port "$port" "$RELAY_PID" "$T/$name.log"
}

# Throw-away CA and a server certificate for 127.0.0.1 / localhost.
tls_setup() {
    [[ -f $T/ca.pem ]] && return 0
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=wsrelay test CA" \
        -keyout "$T/ca.key" -out "$T/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$T/server.key" -out "$T/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$T/ext.cnf"
    openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial \
        -days 1 -extfile "$T/ext.cnf" -out "$T/server.pem" 2>/dev/null
    cat "$T/server.pem" "$T/server.key" >"$T/server-combined.pem"
}

# seconds of a systemd / wsrelay duration ("15s", "1min 30s", "5s", "500ms", "2m")
secs() {
    python3 - "$1" <<'PY'
import re, sys
units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
total = 0.0
for n, u in re.findall(r"([0-9.]+)\s*([a-z]*)", sys.argv[1]):
    total += float(n) * units.get(u or "s", 1)
print(total)
PY
}

# ---- 1. systemd -----------------------------------------------------------------------------------
test_systemd() {
    echo "=== systemd: deploy/systemd/wsrelay.service"
    local unit=$T/wsrelay.service out
    # verify resolves ExecStart: point it at the binary built here.
    cp deploy/systemd/wsrelay.service "$unit"
    derive "$unit" "s|^ExecStart=/usr/local/bin/wsrelay |ExecStart=$RELAY |" '^ExecStart=/usr/local/bin/wsrelay '
    # It exits 0 on unknown keys and bad values (it only warns): any output fails.
    out=$(systemd-analyze verify "$unit" 2>&1) || { fail "systemd-analyze verify: $out"; return; }
    [[ -z $out ]] || { fail "systemd-analyze verify warns: $out"; return; }
    echo "  ok: systemd-analyze verify: no warnings"
    # --threshold is on the 0-100 scale of the 0.0-10.0 level it prints.
    if out=$(systemd-analyze security --offline=true --threshold=20 "$unit" 2>&1); then
        echo "  ok: $(grep -o 'Overall exposure level.*' <<<"$out")"
    else
        fail "systemd-analyze security: exposure above 2: $(tail -1 <<<"$out")"
    fi
    local key
    for key in 'LimitNOFILE=' 'DynamicUser=yes' 'ProtectSystem=strict' 'NoNewPrivileges=yes' \
        'Restart=on-failure' 'ExecStart=.*--config /etc/wsrelay/wsrelay.toml'; do
        grep -Eq "^$key" deploy/systemd/wsrelay.service || fail "unit lacks $key"
    done
    if grep -q '^AmbientCapabilities=.' deploy/systemd/wsrelay.service; then
        fail "unit grants AmbientCapabilities while deploy/wsrelay.toml listens on a port >= 1024"
    fi

    # TimeoutStopSec must leave the relay time to drain.
    local stop shutdown close conf=$T/systemd.toml port
    stop=$(secs "$(sed -n 's/^TimeoutStopSec=//p' deploy/systemd/wsrelay.service)")
    if ! out=$("$RELAY" --config deploy/wsrelay.toml --print-config 2>&1); then
        fail "the relay rejects deploy/wsrelay.toml: $out"; return
    fi
    echo "  ok: the relay accepts deploy/wsrelay.toml"
    shutdown=$(sed -n 's/^shutdown_timeout = "\(.*\)"/\1/p' <<<"$out")
    close=$(sed -n 's/^close_timeout = "\(.*\)"/\1/p' <<<"$out")
    if [[ -z $shutdown || -z $close ]]; then
        fail "cannot read shutdown_timeout/close_timeout of deploy/wsrelay.toml"; return
    fi
    if python3 -c "import sys; sys.exit(not $stop > $(secs "$shutdown") + $(secs "$close"))"; then
        echo "  ok: TimeoutStopSec ${stop}s > shutdown_timeout $shutdown + close_timeout $close"
    else
        fail "TimeoutStopSec ${stop}s <= shutdown_timeout $shutdown + close_timeout $close"
    fi

    # Graceful stop, run as the unit's ExecStart with deploy/wsrelay.toml on a free port.
    port=$(free_port)
    cp deploy/wsrelay.toml "$conf"
    derive "$conf" "s|^listen = .*|listen = \"127.0.0.1:$port\"|" '^listen = '
    local -a cmd
    read -r -a cmd <<<"$(sed -n 's/^ExecStart=//p' "$unit")"
    cmd=("${cmd[@]/#\/etc\/wsrelay\/wsrelay.toml/$conf}")
    "${PY[@]}" stop --url "ws://127.0.0.1:$port" --stop-timeout "$stop" -- "${cmd[@]}" \
        || fail "graceful stop under the unit's ExecStart"
}

# ---- 2. nginx -------------------------------------------------------------------------------------
test_nginx() {
    echo "=== nginx: deploy/nginx/wsrelay.conf (TLS, WebSocket proxy, X-Forwarded-For)"
    tls_setup
    local rport nport conf=$T/nginx-wsrelay.conf d=$T/nginx
    rport=$(free_port)
    start_relay relay-xff "$rport" 'trusted_proxies = ["127.0.0.1/32"]
max_connections_per_ip = 1' || { fail "relay for nginx did not start"; return; }

    # Idle limit vs heartbeats: proxy_read_timeout > ping_interval + pong_timeout.
    local rt
    rt=$(secs "$(sed -n 's/^ *proxy_read_timeout \([^;]*\);/\1/p' deploy/nginx/wsrelay.conf)")
    if python3 -c "import sys; sys.exit(not $rt > 30 + 10)"; then
        echo "  ok: proxy_read_timeout ${rt}s > ping_interval 30s + pong_timeout 10s (defaults)"
    else
        fail "proxy_read_timeout ${rt}s is not longer than ping_interval + pong_timeout (40s)"
    fi
    local h
    # shellcheck disable=SC2016 # nginx variables, matched literally
    for h in 'proxy_set_header Upgrade \$http_upgrade' 'proxy_set_header Connection \$connection_upgrade' \
        'proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for' 'proxy_buffering off' 'proxy_http_version 1.1'; do
        grep -Eq "^ *$h;" deploy/nginx/wsrelay.conf || fail "nginx config lacks '$h'"
    done

    nport=$(free_port)
    mkdir -p "$d/logs"
    cp deploy/nginx/wsrelay.conf "$conf"
    derive "$conf" "s|^( *)listen 443 ssl;|\1listen 127.0.0.1:$nport ssl;|" '^ *listen 443 ssl;'
    derive "$conf" "s|^( *)server 127.0.0.1:9001;|\1server 127.0.0.1:$rport;|" '^ *server 127.0.0.1:9001;'
    derive "$conf" "s|^( *ssl_certificate +).*|\1$T/server.pem;|" '^ *ssl_certificate '
    derive "$conf" "s|^( *ssl_certificate_key +).*|\1$T/server.key;|" '^ *ssl_certificate_key '
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log info;
events { worker_connections 256; }
http {
    access_log $d/logs/access.log;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    include $conf;
}
EOF
    /usr/sbin/nginx -t -q -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" \
        || { fail "nginx -t rejects the derived configuration"; cat "$d/logs/error.log"; return; }
    /usr/sbin/nginx -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf" >"$d/logs/stdout.log" 2>&1 &
    local npid=$!
    PIDS+=("$npid")
    wait_port "$nport" "$npid" "$d/logs/error.log" || { fail "nginx did not start"; return; }
    echo "  nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*nginx\///') on 127.0.0.1:$nport -> relay 127.0.0.1:$rport"
    "${PY[@]}" proxied --name nginx --proxy "wss://127.0.0.1:$nport" --ca "$T/ca.pem" --token "$TOKEN" \
        --forge --direct-xff "ws://127.0.0.1:$rport" \
        || { fail "clients through nginx"; echo "--- relay log:"; tail -20 "$T/relay-xff.log"; }
}

# ---- 3. HAProxy, PROXY protocol v2 ---------------------------------------------------------------
test_haproxy() {
    echo "=== haproxy: deploy/haproxy/wsrelay.cfg (TLS, PROXY protocol v2)"
    tls_setup
    local rport hport cfg=$T/haproxy.cfg
    rport=$(free_port)
    start_relay relay-pp "$rport" 'trusted_proxies = ["127.0.0.1/32"]
proxy_protocol = true
proxy_header_timeout = "3s"
max_connections_per_ip = 1' || { fail "relay with proxy_protocol did not start"; return; }
    local t
    t=$(secs "$(sed -n 's/^ *timeout tunnel \(.*\)/\1/p' deploy/haproxy/wsrelay.cfg)")
    if python3 -c "import sys; sys.exit(not $t > 30 + 10)"; then
        echo "  ok: timeout tunnel ${t}s > ping_interval 30s + pong_timeout 10s (defaults)"
    else
        fail "haproxy timeout tunnel ${t}s is not longer than ping_interval + pong_timeout (40s)"
    fi
    grep -Eq '^ *server .* send-proxy-v2' deploy/haproxy/wsrelay.cfg || fail "haproxy config lacks send-proxy-v2"

    hport=$(free_port)
    cp deploy/haproxy/wsrelay.cfg "$cfg"
    # As the current user: no user/group switch. maxconn 1M needs 2M file descriptors
    # (a client and a server side each), more than a test machine allows.
    derive "$cfg" 's/^( *)maxconn 1000000$/\1maxconn 1000/' '^ *maxconn 1000000$'
    derive "$cfg" '/^ *(user|group) haproxy$/d' '^ *user haproxy$'
    derive "$cfg" "s|^( *)bind :443 ssl crt .*|\1bind 127.0.0.1:$hport ssl crt $T/server-combined.pem|" '^ *bind :443 ssl crt '
    derive "$cfg" "s|^( *server relay1) 127.0.0.1:9001 |\1 127.0.0.1:$rport |" '^ *server relay1 127.0.0.1:9001 '
    /usr/sbin/haproxy -c -q -f "$cfg" || { fail "haproxy -c rejects the derived configuration"; return; }
    /usr/sbin/haproxy -db -f "$cfg" >"$T/haproxy.log" 2>&1 &
    local hpid=$!
    PIDS+=("$hpid")
    wait_port "$hport" "$hpid" "$T/haproxy.log" || { fail "haproxy did not start"; return; }
    echo "  haproxy $(/usr/sbin/haproxy -v | sed -n '1s/.*version \([^ ]*\).*/\1/p') on 127.0.0.1:$hport -> relay 127.0.0.1:$rport"
    "${PY[@]}" proxied --name haproxy --proxy "wss://127.0.0.1:$hport" --ca "$T/ca.pem" --token "$TOKEN" \
        --raw "127.0.0.1:$rport" \
        || { fail "clients through haproxy (PROXY protocol)"; echo "--- relay log:"; tail -20 "$T/relay-pp.log"; }
}

# Plain `if`s, not `want x && test_x`: bash ignores `set -e` inside a function called
# from an && list, and a failing step must not go unnoticed.
if want systemd; then test_systemd; fi
if want nginx; then test_nginx; fi
if want haproxy; then test_haproxy; fi

if ((${#failures[@]})); then
    echo "test-deploy: ${#failures[@]} failed:" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "test-deploy: all passed (${PARTS[*]})"
