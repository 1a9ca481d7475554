#!/usr/bin/env bash
# Run the Autobahn|Testsuite WebSocket (RFC 6455) fuzzingclient against a
# server that the caller has already started, then summarize the results.
#
#   autobahn.sh [--quick|--full|--compression] [--cases LIST] [--allow FILE] [--wstest]
#               ws://127.0.0.1:PORT[/path] [OUTDIR]
#
# scripts/conformance.sh starts the relay and calls this; see scripts/autobahn/README.md.
# The runners are pinned in the requirements files next to this script and
# installed on first use: kosoku (default, Python 3) into a private virtualenv,
# the original wstest (--wstest, Python 2.7) by setup-wstest.sh. Needs bash,
# python3 (>= 3.10, with the venv module) and access to PyPI on first use.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Pinned runner: kosoku drives the Autobahn|Testsuite case files on Python 3
# (the autobahntestsuite package itself is Python 2 only).
KOSOKU_REQS="$HERE/requirements-kosoku.txt"
[[ -f "$KOSOKU_REQS" ]] || { echo "autobahn.sh: $KOSOKU_REQS is missing" >&2; exit 2; }
KOSOKU_PIN="$(grep -E '^kosoku==' "$KOSOKU_REQS" | head -n 1)"
KOSOKU_STAMP="$KOSOKU_PIN $(sha256sum "$KOSOKU_REQS" | cut -c1-16)"

usage() {
  cat <<'EOF'
usage: autobahn.sh [--quick|--full|--compression] [--cases LIST] [--allow FILE] [--wstest]
                   ws://127.0.0.1:PORT[/path] [OUTDIR]

profiles (default --full):
  --quick        cases 1.*-8.*, 10.*   (no 9.* limits/performance, no compression)  247 cases
  --full         cases 1.*-10.*        (no 12.*/13.* permessage-deflate)            301 cases
  --compression  cases 12.*, 13.*      (permessage-deflate only)                    216 cases
  --cases LIST   run exactly these case ids/globs instead, comma separated: "6.4.*,7.1.5"
  --allow FILE   case ids/globs (one per line, # comments) allowed to fail
  --wstest       run the original Python 2 autobahntestsuite instead of kosoku
                 (installed on first use by setup-wstest.sh next to this script)

OUTDIR defaults to ./target/autobahn. The server must already be listening.
env: AUTOBAHN_VENV      venv to create/reuse
                        (default ${XDG_CACHE_HOME:-$HOME/.cache}/wsrelay-autobahn/kosoku-venv)
     AUTOBAHN_PYTHON    python used to create the venv (default python3)
     AUTOBAHN_PARALLEL  cases run concurrently (default 1)
     AUTOBAHN_TIMEOUT   overall time limit in seconds (default 1800)
     AUTOBAHN_WSTEST    path to an existing original 'wstest' executable (implies --wstest)
Exit status: 0 if no case failed, 1 if some failed, 2 on usage/setup errors.
EOF
}

profile=full
cases_arg=""
allow=""
use_wstest="${AUTOBAHN_WSTEST:+1}"
pos=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick|--full|--compression) profile="${1#--}"; shift ;;
    --cases) cases_arg="${2:?--cases needs a value}"; shift 2 ;;
    --cases=*) cases_arg="${1#*=}"; shift ;;
    --allow) allow="${2:?--allow needs a file}"; shift 2 ;;
    --allow=*) allow="${1#*=}"; shift ;;
    --wstest) use_wstest=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; pos+=("$@"); break ;;
    -*) echo "autobahn.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) pos+=("$1"); shift ;;
  esac
done
if [[ ${#pos[@]} -lt 1 || ${#pos[@]} -gt 2 ]]; then usage >&2; exit 2; fi
url="${pos[0]}"
outdir="${pos[1]:-./target/autobahn}"
if [[ -n "$allow" && ! -f "$allow" ]]; then echo "autobahn.sh: allow file not found: $allow" >&2; exit 2; fi
[[ -n "$allow" ]] && allow="$(cd "$(dirname "$allow")" && pwd)/$(basename "$allow")"

# --- target: loopback only (the fuzzer sends deliberately malformed traffic)
if [[ ! "$url" =~ ^ws://([^/:?#]+):([0-9]+)([/?].*)?$ ]]; then
  echo "autobahn.sh: URL must look like ws://127.0.0.1:PORT[/path], got: $url" >&2; exit 2
fi
host="${BASH_REMATCH[1]}"; port="${BASH_REMATCH[2]}"
if [[ ! "$host" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ && "$host" != "localhost" ]]; then
  echo "autobahn.sh: only IPv4 loopback targets (127.x.x.x, localhost) are accepted, got: $host" >&2; exit 2
fi

# --- case selection
case "$profile" in
  quick)       include=("*");            exclude=("9.*" "12.*" "13.*") ;;
  full)        include=("*");            exclude=("12.*" "13.*") ;;
  compression) include=("12.*" "13.*");  exclude=() ;;
esac
if [[ -n "$cases_arg" ]]; then
  IFS=',' read -r -a include <<<"${cases_arg// /}"; exclude=(); profile="custom"
fi

# --- venv with the pinned runner (idempotent, quiet)
venv="${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wsrelay-autobahn/kosoku-venv}"
py="${AUTOBAHN_PYTHON:-python3}"
wstest=""
if [[ -n "$use_wstest" ]]; then
  wstest="${AUTOBAHN_WSTEST:-}"
  if [[ -z "$wstest" ]]; then wstest="$("$HERE/setup-wstest.sh")" || exit 2; fi
  [[ -x "$wstest" ]] || { echo "autobahn.sh: not executable: $wstest" >&2; exit 2; }
else
  if [[ ! -x "$venv/bin/python" ]]; then
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || {
      echo "autobahn.sh: $py must be Python >= 3.10 (set AUTOBAHN_PYTHON)" >&2; exit 2; }
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv" || {
      echo "autobahn.sh: '$py -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 2; }
  fi
  if [[ "$(cat "$venv/.autobahn-pins" 2>/dev/null)" != "$KOSOKU_STAMP" || ! -x "$venv/bin/kosoku" ]]; then
    echo "autobahn.sh: installing $KOSOKU_PIN (requirements-kosoku.txt) into $venv" >&2
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q -r "$KOSOKU_REQS" >&2 || {
      echo "autobahn.sh: pip install -r $KOSOKU_REQS failed" >&2; exit 2; }
    echo "$KOSOKU_STAMP" >"$venv/.autobahn-pins"
  fi
fi

# --- wait (briefly) for the server to listen
wait_s="${AUTOBAHN_WAIT:-15}"
for ((i = 0; ; i++)); do
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then break; fi
  if ((i >= wait_s * 4)); then
    echo "autobahn.sh: nothing is listening on $host:$port (waited ${wait_s}s); start the server first" >&2; exit 2
  fi
  sleep 0.25
done

# --- spec (Autobahn fuzzingclient format; also documents the selection)
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
reports="$outdir/reports"
rm -rf "$reports"
mkdir -p "$reports"
spec="$outdir/fuzzingclient.json"
json_list() { local s="" x; for x in "$@"; do s+="${s:+, }\"$x\""; done; printf '[%s]' "$s"; }
cat >"$spec" <<EOF
{
  "options": {"failByDrop": false},
  "outdir": "$reports",
  "servers": [{"agent": "server-under-test", "url": "$url"}],
  "cases": $(json_list "${include[@]}"),
  "exclude-cases": $(json_list ${exclude[@]+"${exclude[@]}"}),
  "exclude-agent-cases": {}
}
EOF

# --- run
limit="${AUTOBAHN_TIMEOUT:-1800}"
start=$(date +%s)
echo "autobahn.sh: profile $profile, runner $([[ -n "$wstest" ]] && echo "original wstest" || echo "$KOSOKU_PIN"), target $url, output $outdir" >&2
set +e
if [[ -n "$wstest" ]]; then
  (cd "$outdir" && timeout "$limit" "$wstest" -m fuzzingclient -s "$spec") >"$outdir/run.log" 2>&1
else
  args=(-m fuzzingclient -o "$reports" -p "${AUTOBAHN_PARALLEL:-1}")
  for c in "${include[@]}"; do [[ "$c" == "*" ]] || args+=(-i "$c"); done
  for c in ${exclude[@]+"${exclude[@]}"}; do args+=(-x "$c"); done
  # kosoku-run.py: the kosoku CLI with its 12.*/13.* echo cases fixed for Python 3
  # (see the script; without it every compression case ends ERROR).
  timeout "$limit" "$venv/bin/python" "$HERE/kosoku-run.py" "${args[@]}" "$url" >"$outdir/run.log" 2>&1
fi
rc=$?
set -e
echo "autobahn.sh: runner finished in $(( $(date +%s) - start ))s (log: $outdir/run.log)" >&2
if [[ $rc -eq 124 ]]; then
  echo "autobahn.sh: timed out after ${limit}s; try --quick or --cases, or raise AUTOBAHN_TIMEOUT" >&2
  exit 2
fi
if [[ ! -s "$reports/index.json" ]]; then
  echo "autobahn.sh: runner exited $rc without a report; last lines of $outdir/run.log:" >&2
  tail -n 20 "$outdir/run.log" >&2
  exit 2
fi

# --- summary (its exit status is ours)
sum_args=("$outdir")
[[ -n "$allow" ]] && sum_args+=(--allow "$allow")
summ_py="$venv/bin/python"; [[ -x "$summ_py" ]] || summ_py="$py"
exec "$summ_py" "$HERE/summarize.py" "${sum_args[@]}"
