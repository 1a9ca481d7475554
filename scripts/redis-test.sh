#!/usr/bin/env bash
# A private redis-server for tests and local runs: unix socket only (no TCP port), no
# persistence, daemonized, everything in one directory. Never the system service.
#
#   scripts/redis-test.sh start DIR   # prints the redis_url to use (unix://DIR/redis.sock)
#   scripts/redis-test.sh stop DIR    # SHUTDOWN NOSAVE, waits until it is gone
#   scripts/redis-test.sh restart DIR # stop, then start again empty (fault tests)
#
# DEBUG commands (DEBUG SLEEP for stall tests) are allowed from local connections.
set -euo pipefail

usage() { echo "usage: $0 start|stop|restart DIR" >&2; exit 2; }
(($# == 2)) || usage
cmd=$1
dir=$2
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
sock="$dir/redis.sock"

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  sock="$dir/redis.sock"
  rm -f "$sock"
  redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --daemonize yes \
    --save '' --appendonly no --enable-debug-command local \
    --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log"
  for _ in $(seq 1 250); do
    if [[ "$(redis-cli -s "$sock" PING 2>/dev/null)" == PONG ]]; then
      echo "unix://$sock"
      return 0
    fi
    sleep 0.02
  done
  echo "redis-server did not start; see $dir/redis.log" >&2
  exit 1
}

stop() {
  [[ -S "$sock" ]] || return 0
  redis-cli -s "$sock" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  for _ in $(seq 1 250); do
    [[ -S "$sock" ]] || return 0
    sleep 0.02
  done
  if [[ -f "$dir/redis.pid" ]]; then
    kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) usage ;;
esac
