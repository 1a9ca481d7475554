#!/usr/bin/env python3
"""Runs the pinned kosoku CLI with one fix to its vendored cases 12.*/13.*.

kosoku 0.1.0 (the only release) hands messages to the cases as str, but
the permessage-deflate echo cases (case12_x_x.py, py2-era code) hash the
received message with hashlib, which needs bytes: every 12.*/13.* case whose
server answers ends "ERROR: Strings must be encoded before hashing". The fix
turns the message back into the bytes on the wire before the case sees it
(text: UTF-8; binary, which kosoku hands over one char per byte: latin-1),
which is what the py2 original received (str == bytes there); the case then
decodes text again for its length check, so its own checks run unchanged.

Usage: kosoku-run.py ARGS...   (the arguments of the kosoku command)
"""

import sys

from kosoku import _caseindex
from kosoku._cli import main

_caseindex.initialize_shims()
import case12_x_x  # noqa: E402  (on sys.path once the shims are set up)


def _bytes_in(on_message):
    def onMessage(self, msg, binary):  # noqa: N802 (the case API's name)
        if isinstance(msg, str):
            # Binary messages arrive as py2-style byte strings (one char per
            # byte), text as decoded text.
            msg = msg.encode("latin-1" if binary else "utf-8")
        return on_message(self, msg, binary)

    return onMessage


for _cls in case12_x_x.Case12_X_X + case12_x_x.Case13_X_X:
    _cls.onMessage = _bytes_in(_cls.onMessage)

if __name__ == "__main__":
    sys.exit(main())
