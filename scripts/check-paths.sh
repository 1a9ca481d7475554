#!/usr/bin/env bash
# Fails (exit 1) when a tracked file names an absolute path of one machine:
# a home or work directory (/home/..., /root/..., /Users/..., /work/...), a
# scratch file (/tmp/..., /var/tmp/...) or a mount (/mnt/...). Such paths make docs
# and scripts that only work, or only make sense, on the machine that wrote them.
# Use a path relative to the repository, $HOME, ${TMPDIR:-/tmp} in a script, or a
# placeholder (PEER_DIR, <dir>) in a doc.
#
#   scripts/check-paths.sh        prints every hit as FILE:LINE: TEXT
#
# A line that must keep such a path (a runtime file with a fixed, documented
# location) carries the marker "check-paths: allow" and says why on that line.
# Binary files are skipped. Run by .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# An absolute path starts at the beginning of a word: not after a letter, digit,
# '.', '~', '$', '}', '/', '-' or '_' (so URLs, relative paths and ${VAR}/tmp/ are
# not hits).
pattern='(?<![\w.~$}/-])/(work|home|root|tmp|var/tmp|Users|mnt)/'
self="scripts/check-paths.sh"

hits="$(git ls-files -z -- . ":(exclude)$self" \
  | xargs -0 grep -nIP -- "$pattern" 2>/dev/null \
  | grep -v 'check-paths: allow' || true)"
if [[ -n "$hits" ]]; then
  echo "check-paths: absolute machine paths in tracked files:" >&2
  printf '%s\n' "$hits" >&2
  echo "check-paths: $(printf '%s\n' "$hits" | wc -l) hit(s); use a relative path or a placeholder, or mark a deliberate one with 'check-paths: allow'" >&2
  exit 1
fi
echo "check-paths: no absolute machine paths in $(git ls-files | wc -l) tracked files"
