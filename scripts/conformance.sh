#!/usr/bin/env bash
# Autobahn|Testsuite (RFC 6455) conformance run for wsrelay.
#
#   scripts/conformance.sh [--wstest] [--quick|--full|--compression] [--cases LIST] [--allow FILE]
#                          [--no-build] [OUTDIR]
#
# Builds the relay (cargo build --release), starts it on a free loopback port with
# limits large enough for the 16 MiB messages of cases 9.*, and runs the Autobahn
# harness scripts/autobahn/autobahn.sh against it. The harness installs the runner
# pinned in scripts/autobahn/requirements-*.txt on first use (kosoku from PyPI by
# default; --wstest: the original Python 2.7 autobahntestsuite, set up from Debian
# packages and PyPI by scripts/autobahn/setup-wstest.sh) and prints a summary whose
# last line is "N passed, M failed". The relay is always stopped on exit.
# Nothing outside the repository is needed besides python3 (and, for --wstest,
# apt-get, dpkg-deb and gcc); see scripts/autobahn/README.md.
#
# Options:
#   --full         cases 1.*-10.* (default; no 12.*/13.* permessage-deflate)
#   --quick        cases 1.*-8.*, 10.* (skips the 9.* limits/performance cases)
#   --compression  cases 12.*, 13.* (permessage-deflate), relay run with compression on;
#                  scripts/autobahn/allow-compression.txt (the offers we decline, and
#                  why) is the allow list unless --allow is given
#   --cases LIST   exactly these case ids/globs, comma separated ("6.4.*,7.1.5")
#   --allow FILE   case ids/globs allowed to fail (passed to the harness)
#   --wstest       original Python 2 autobahntestsuite instead of kosoku
#   --no-build     do not run cargo build (use the existing target/release/wsrelay)
#   OUTDIR         report directory (default target/autobahn, or
#                  target/autobahn-wstest with --wstest); server.log is written there
#
# Environment:
#   WSRELAY_CONFORMANCE_SERVER_CMD  replaces the server command (run with bash -c;
#       every "{port}" is replaced by the chosen port); no cargo build is done then.
#       Example, against a reference peer built as in docs/peers.md:
#         WSRELAY_CONFORMANCE_SERVER_CMD='PEER_DIR/tokio-tungstenite/target/release/tt-peer --port {port}'
#   WSRELAY_CONFORMANCE_PATH     URL path under test (default /echo)
#   WSRELAY_CONFORMANCE_START_TIMEOUT  seconds to wait for the port to accept (default 30)
#   WSRELAY_SHARED_DIR           if set, use the harness in $WSRELAY_SHARED_DIR/conformance/
#       (an external copy of the same harness) instead of scripts/autobahn/
#   AUTOBAHN_TIMEOUT             runner time limit in seconds (default here 900)
#   AUTOBAHN_VENV, AUTOBAHN_PARALLEL, ...  passed through to the harness (see its README)
#
# Exit status: 0 no case failed, 1 some case failed, 2 setup/usage error
# (harness codes), 3 the server did not start.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
me="conformance.sh"
say() { echo "$me: $*" >&2; }
die() { local code="$1"; shift; say "$*"; exit "$code"; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

profile="--full"
wstest=0
build=1
harness_args=()
outdir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick|--full|--compression) profile="$1"; shift ;;
    --wstest) wstest=1; shift ;;
    --no-build) build=0; shift ;;
    --cases) harness_args+=(--cases "${2:?--cases needs a value}"); shift 2 ;;
    --cases=*) harness_args+=(--cases "${1#*=}"); shift ;;
    --allow) harness_args+=(--allow "$(realpath -m -- "${2:?--allow needs a file}")"); shift 2 ;;
    --allow=*) harness_args+=(--allow "$(realpath -m -- "${1#*=}")"); shift ;;
    -h|--help) usage; exit 0 ;;
    -*) say "unknown option $1"; usage >&2; exit 2 ;;
    *) [[ -z "$outdir" ]] || die 2 "only one OUTDIR may be given"
       outdir="$(realpath -m -- "$1")"; shift ;;
  esac
done
if [[ -z "$outdir" ]]; then
  if ((wstest)); then outdir="$root/target/autobahn-wstest"; else outdir="$root/target/autobahn"; fi
fi
((wstest)) && harness_args+=(--wstest)

harness="$root/scripts/autobahn/autobahn.sh"
if [[ -n "${WSRELAY_SHARED_DIR:-}" ]]; then
  harness="$WSRELAY_SHARED_DIR/conformance/autobahn.sh"
  say "using the harness from WSRELAY_SHARED_DIR: $harness"
fi
[[ -x "$harness" ]] || die 2 "$harness is missing or not executable"
command -v python3 >/dev/null || die 2 "python3 is required (free port selection and the Autobahn runner)"

cd "$root"

# --- server command
override="${WSRELAY_CONFORMANCE_SERVER_CMD:-}"
bin="${CARGO_TARGET_DIR:-$root/target}/release/wsrelay"
if [[ -n "$override" ]]; then
  say "server command overridden by WSRELAY_CONFORMANCE_SERVER_CMD (no cargo build)"
else
  if ((build)); then
    say "cargo build --release"
    cargo build --release
  fi
  [[ -x "$bin" ]] || die 2 "$bin not found (build failed or --no-build without a build)"
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

mkdir -p "$outdir"
server_log="$outdir/server.log"
server_pid=""

stop_server() {
  [[ -n "$server_pid" ]] || return 0
  local pid="$server_pid"
  server_pid=""
  # The server runs in its own process group (set -m below): signal the group so a
  # wrapper shell from WSRELAY_CONFORMANCE_SERVER_CMD takes its children with it.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "server did not exit within 5 s of SIGTERM; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
harness_pid=""
# descendants PID: PID and all its descendants, parents first.
descendants() {
  local c
  echo "$1"
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do descendants "$c"; done
}
stop_harness() {
  [[ -n "$harness_pid" ]] || return 0
  # timeout(1) puts the runner in a process group of its own: signal the whole tree.
  kill -TERM $(descendants "$harness_pid") 2>/dev/null || true
  wait "$harness_pid" 2>/dev/null || true
  harness_pid=""
}
trap 'stop_harness; stop_server' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

compression_flag=""
if [[ "$profile" == "--compression" ]]; then
  compression_flag="--compression=on"
  # The offers the relay declines on purpose (listed there with the reason) may
  # end UNIMPLEMENTED; any FAILED case still fails the run.
  if [[ " ${harness_args[*]-} " != *" --allow "* ]]; then
    harness_args+=(--allow "$root/scripts/autobahn/allow-compression.txt")
  fi
fi

# start_server PORT: starts the server in the background, sets server_pid.
start_server() {
  local port="$1"
  set -m # own process group, so stop_server can signal every process of it
  if [[ -n "$override" ]]; then
    bash -c "${override//\{port\}/$port}" >"$server_log" 2>&1 </dev/null &
  else
    "$bin" --listen "127.0.0.1:$port" \
      --max-frame-bytes 16MiB --max-message-bytes 16MiB \
      --workers 1 --stats-interval 0 $compression_flag >"$server_log" 2>&1 </dev/null &
  fi
  server_pid=$!
  set +m
}

# wait_ready PORT: 0 when the port accepts, 1 if the server exited, 2 on timeout.
wait_ready() {
  local port="$1" limit="${WSRELAY_CONFORMANCE_START_TIMEOUT:-30}" i
  for ((i = 0; i < limit * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 2
}

port=""
for attempt in 1 2 3; do
  p="$(free_port)"
  start_server "$p"
  rc=0; wait_ready "$p" || rc=$?
  if ((rc == 0)); then port="$p"; break; fi
  if ((rc == 2)); then
    say "server did not accept on 127.0.0.1:$p within ${WSRELAY_CONFORMANCE_START_TIMEOUT:-30}s; last lines of $server_log:"
    tail -n 20 "$server_log" >&2
    exit 3
  fi
  # Exited: maybe the port was taken between selection and bind; try another one.
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  say "server exited before accepting on port $p (attempt $attempt); last lines of $server_log:"
  tail -n 20 "$server_log" >&2
done
[[ -n "$port" ]] || die 3 "server failed to start 3 times"

path="${WSRELAY_CONFORMANCE_PATH:-/echo}"
url="ws://127.0.0.1:$port$path"
say "server pid $server_pid on $url (log: $server_log)"

# The harness runs the runner under AUTOBAHN_TIMEOUT; the outer timeout also covers
# the first-use install (pip, or setup-wstest.sh ~30 s) and the summary.
# It runs in the background so that a signal to this script is handled at once (bash
# defers traps while a foreground command runs); stop_harness ends its process tree.
export AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-900}"
timeout --kill-after=10 "$((AUTOBAHN_TIMEOUT + 600))" \
  "$harness" "$profile" ${harness_args[@]+"${harness_args[@]}"} "$url" "$outdir" &
harness_pid=$!
rc=0
wait "$harness_pid" || rc=$?
harness_pid=""
if ((rc == 124 || rc == 137)); then
  say "the Autobahn harness timed out"
  rc=2
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
  say "the server under test died during the run; last lines of $server_log:"
  tail -n 20 "$server_log" >&2
  ((rc != 0)) || rc=1
fi
exit "$rc"
