#!/usr/bin/env bash
# Install the ORIGINAL Autobahn|Testsuite (autobahntestsuite, Python 2.7 only)
# without Docker and without changing the system, from apt and PyPI only:
#   - CPython 2.7 is unpacked (dpkg-deb -x, no install) from Debian 11 "bullseye"
#     packages into a private prefix, fetched with a private apt state directory;
#   - a Python 2.7 virtualenv gets the packages pinned in requirements-wstest.txt
#     (next to this script) from PyPI; Twisted 19.10.0 is built from source (gcc).
# Prints the path of a 'wstest' wrapper on success. Idempotent: a later run with
# the same pins prints the path at once.
#
#   env: AUTOBAHN_WSTEST_HOME    install directory
#                                (default ${XDG_CACHE_HOME:-$HOME/.cache}/wsrelay-autobahn/wstest-py27)
#        AUTOBAHN_DEBIAN_MIRROR  Debian mirror that serves bullseye (default: the first
#                                Debian mirror in this machine's apt sources)
# Needs: bash, apt-get, dpkg-deb, gcc, python3 (with venv). amd64 only. ~1-3 min once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
reqs="$here/requirements-wstest.txt"
home="${AUTOBAHN_WSTEST_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/wsrelay-autobahn/wstest-py27}"
# The mirror comes from the machine's own apt configuration, never hard-coded here.
default_mirror() {
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' || true; } \
    | grep -E '/debian/?$' | head -n 1 || true
}
mirror="${AUTOBAHN_DEBIAN_MIRROR:-$(default_mirror)}"
[[ -n "$mirror" ]] || { echo "setup-wstest.sh: no Debian mirror in apt sources; set AUTOBAHN_DEBIAN_MIRROR" >&2; exit 2; }
[[ -f "$reqs" ]] || { echo "setup-wstest.sh: $reqs is missing" >&2; exit 2; }
stamp="py27-bullseye $(sha256sum "$reqs" | cut -c1-16)"

if [[ -x "$home/wstest" && "$(cat "$home/.stamp" 2>/dev/null)" == "$stamp" ]]; then
  echo "$home/wstest"; exit 0
fi
for t in apt-get dpkg-deb gcc python3; do
  command -v "$t" >/dev/null || { echo "setup-wstest.sh: '$t' is required (Debian: apt-get install gcc python3-venv)" >&2; exit 2; }
done
[[ "$(dpkg --print-architecture)" == amd64 ]] || { echo "setup-wstest.sh: amd64 only" >&2; exit 2; }
ma=x86_64-linux-gnu

# stage N: the requirement lines under "# stage N" in requirements-wstest.txt.
stage() {
  awk -v want="# stage $1:" '
    /^# stage [0-9]+:/ { on = (index($0, want) == 1); next }
    /^#/ || /^[[:space:]]*$/ { next }
    on { print $1 }' "$reqs"
}

log="$home/setup.log"
if [[ -d "$home" && -n "$(ls -A "$home")" && ! -e "$home/setup.log" ]]; then
  echo "setup-wstest.sh: $home exists and is not ours; refusing to overwrite it" >&2; exit 2
fi
rm -rf "$home"; mkdir -p "$home/apt/lists/partial" "$home/apt/cache/archives/partial" "$home/debs" "$home/root"
: >"$log"
step() { echo "setup-wstest.sh: $*" >&2; }
fail() { echo "setup-wstest.sh: failed: $*; see $log" >&2; tail -n 15 "$log" >&2; exit 2; }

step "downloading CPython 2.7 from Debian 11 (bullseye) packages at $mirror"
echo "deb $mirror bullseye main" >"$home/apt/sources.list"
apt_opts=(-q -o "Dir::Etc::SourceList=$home/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$home/apt/lists" -o "Dir::Cache=$home/apt/cache" -o Debug::NoLocking=1
  -o Acquire::Languages=none -o APT::Sandbox::User="$(id -un)")
apt-get "${apt_opts[@]}" update >>"$log" 2>&1 || fail "apt-get update (bullseye at $mirror)"
(cd "$home/debs" && apt-get "${apt_opts[@]}" download python2.7 python2.7-minimal python2.7-dev \
  libpython2.7 libpython2.7-minimal libpython2.7-stdlib libpython2.7-dev libssl1.1 libffi7 >>"$log" 2>&1) \
  || fail "apt-get download"
for d in "$home"/debs/*.deb; do dpkg-deb -x "$d" "$home/root"; done
export LD_LIBRARY_PATH="$home/root/usr/lib/$ma:$home/root/lib/$ma${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
py2="$home/root/usr/bin/python2.7"
"$py2" -c 'import ssl, ctypes, zlib' >>"$log" 2>&1 || fail "unpacked python2.7 does not run"

step "creating the Python 2.7 virtualenv"
python3 -m venv "$home/tool" >>"$log" 2>&1 || fail "python3 -m venv (Debian: apt-get install python3-venv)"
mapfile -t s0 < <(stage 0)
PIP_DISABLE_PIP_VERSION_CHECK=1 "$home/tool/bin/pip" install -q "${s0[@]}" >>"$log" 2>&1 \
  || fail "pip install ${s0[*]}"
VIRTUALENV_OVERRIDE_APP_DATA="$home/appdata" "$home/tool/bin/virtualenv" -q -p "$py2" "$home/venv" >>"$log" 2>&1 \
  || fail "virtualenv -p python2.7"

step "installing the pinned autobahntestsuite and its dependencies (builds Twisted)"
pip2=("$home/venv/bin/python" -W ignore -m pip install -q --disable-pip-version-check --no-warn-script-location)
export CFLAGS="-I$home/root/usr/include${CFLAGS:+ $CFLAGS}"
mapfile -t s1 < <(stage 1)
mapfile -t s2 < <(stage 2)
mapfile -t s3 < <(stage 3)
"${pip2[@]}" "${s1[@]}" >>"$log" 2>&1 || fail "pip stage 1"
"${pip2[@]}" --no-build-isolation "${s2[@]}" >>"$log" 2>&1 || fail "pip stage 2 (Twisted)"
"${pip2[@]}" "${s3[@]}" >>"$log" 2>&1 || fail "pip stage 3"

cat >"$home/wstest" <<WRAP
#!/bin/sh
# original Autobahn|Testsuite wstest on CPython 2.7 (private prefix)
LD_LIBRARY_PATH="$home/root/usr/lib/$ma:$home/root/lib/$ma\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "$home/venv/bin/python" -W ignore "$home/venv/bin/wstest" "\$@"
WRAP
chmod +x "$home/wstest"
"$home/wstest" --help >>"$log" 2>&1 || fail "wstest --help"
rm -rf "$home/debs" "$home/apt" "$home/tool"
echo "$stamp" >"$home/.stamp"
echo "$home/wstest"
