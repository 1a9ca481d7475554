#!/usr/bin/env python3
"""Abusive WebSocket/HTTP clients for loadtest/abuse.sh (Python 3, stdlib only).

Every mode is bounded in count and time, stops by itself, talks to loopback
only, and writes its figures as JSON (--json FILE). Modes:

  slowloris  N connections trickling one request-head byte per second
  rawchurn   N raw TCP connect + close cycles (alternately FIN and RST)
  oversized  N requests with a head over 8 KiB or more than 64 headers
  garbage    N upgrades on the steady rooms, then random bytes
  slow       N room members that stop reading (slow consumers)
  vanish     N upgrades on the steady rooms, then the socket just goes
             (alternately RST via SO_LINGER 0 and a FIN without close frame)
  summary    reads every JSON file and metrics snapshot of a run, prints the
             table and the checks, exits 1 if a check failed
"""

import argparse
import base64
import codecs
import concurrent.futures as cf
import errno
import hashlib
import heapq
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VALID_CLOSE = lambda c: 1000 <= c <= 1003 or 1007 <= c <= 1014 or 3000 <= c <= 4999


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def loopback(host):
    if not host.startswith("127."):
        sys.exit(f"refusing non-loopback address {host}")
    return host


def pctl(values, p):
    if not values:
        return None
    v = sorted(values)
    i = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[i]


def dist(values):
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "p50": pctl(values, 50),
        "p99": pctl(values, 99),
        "max": max(values),
    }


def ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def upgrade_request(host, port, path, key, extra=""):
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


def mask_frame(opcode, payload, fin=True, key=None):
    key = key if key is not None else os.urandom(4)
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n <= 0xFFFF:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return head + key + xor(payload, key)


def xor(data, key):
    if not data:
        return b""
    k = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


def connect(host, port, src, timeout, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    try:
        s.connect((host, port))
    except Exception:
        s.close()
        raise
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_head(sock, deadline):
    """Reads an HTTP response head; returns (status, head_text, rest)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("response head")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("eof before response head")
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("response head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    text = head.decode("latin-1")
    status = int(text.split(" ", 2)[1])
    return status, text, rest


def linger_rst(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ServerFrames:
    """Incremental parser of (unmasked) server frames. With data=False the
    payloads of data frames are skipped, not copied (fast path for backlogs)."""

    def __init__(self, data=True):
        self.buf = b""
        self.data = data

    def feed(self, chunk):
        b = self.buf + chunk if self.buf else chunk
        out = []
        pos, end = 0, len(b)
        while end - pos >= 2:
            b0, b1 = b[pos], b[pos + 1]
            op, l7 = b0 & 0x0F, b1 & 0x7F
            if b1 & 0x80:
                raise ValueError("masked server frame")
            h = 2
            if l7 == 126:
                if end - pos < 4:
                    break
                n, h = (b[pos + 2] << 8) | b[pos + 3], 4
            elif l7 == 127:
                if end - pos < 10:
                    break
                n, h = int.from_bytes(b[pos + 2:pos + 10], "big"), 10
            else:
                n = l7
            if end - pos < h + n:
                break
            if self.data or op >= 8:
                out.append((bool(b0 & 0x80), op, b[pos + h:pos + h + n]))
            else:
                out.append((bool(b0 & 0x80), op, None))
            pos += h + n
        self.buf = b[pos:]
        return out


def http_get(host, port, path, timeout=3.0):
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    finally:
        s.close()
    return data.decode("latin-1")


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


# --------------------------------------------------------------------------
# slowloris


def mode_slowloris(a):
    raise_nofile()
    head = upgrade_request(a.host, a.port, "/rooms/" + a.rooms[0], ws_key())
    head = head[:-2] + b"X-Slow: " + b"a" * 4000  # never ends
    sel = selectors.DefaultSelector()
    conns = {}  # fd -> dict
    timers = []  # (t, fd, gen)
    res = {
        "planned": a.n, "connected": 0, "connect_failed": 0, "connect_errors": {},
        "closed_fin": 0, "closed_rst": 0, "got_data": 0, "survived": 0,
        "bytes_sent_max": 0, "close_after_s": [], "first_data": None,
    }
    started = 0
    t_start = time.monotonic()
    interval = 1.0 / a.rate
    deadline = None

    def finish(fd, how):
        c = conns.pop(fd)
        try:
            sel.unregister(c["sock"])
        except Exception:
            pass
        if how in ("fin", "rst"):
            res["closed_" + how] += 1
            res["close_after_s"].append(time.monotonic() - c["t"])
        c["sock"].close()
        res["bytes_sent_max"] = max(res["bytes_sent_max"], c["sent"])

    while True:
        now = time.monotonic()
        # open new connections at the configured rate
        while started < a.n and now >= t_start + started * interval:
            s = socket.socket()
            s.setblocking(False)
            s.bind((a.src, 0))
            err = s.connect_ex((a.host, a.port))
            started += 1
            if err not in (0, errno.EINPROGRESS):
                res["connect_failed"] += 1
                res["connect_errors"][errno.errorcode.get(err, str(err))] = res["connect_errors"].get(errno.errorcode.get(err, str(err)), 0) + 1
                s.close()
                continue
            # the clock starts at connect(): the relay accepts (and arms the
            # deadline) after that, so close_after >= the deadline always
            conns[s.fileno()] = {"sock": s, "t": now, "sent": 0, "connected": False, "gen": 0}
            sel.register(s, selectors.EVENT_WRITE, s.fileno())
        if started >= a.n and deadline is None:
            deadline = now + a.hold
        # send due bytes
        while timers and timers[0][0] <= now:
            _, fd, gen = heapq.heappop(timers)
            c = conns.get(fd)
            if c is None or c["gen"] != gen:
                continue
            try:
                c["sock"].send(head[c["sent"]:c["sent"] + 1])
                c["sent"] += 1
                heapq.heappush(timers, (now + 1.0, fd, gen))
            except BlockingIOError:
                heapq.heappush(timers, (now + 1.0, fd, gen))
            except OSError as e:
                finish(fd, "rst" if e.errno == errno.ECONNRESET else "fin")
        if deadline is not None and (not conns or now >= deadline):
            break
        wait = 0.05
        if timers:
            wait = min(wait, max(0.0, timers[0][0] - now))
        for key, ev in sel.select(wait):
            fd = key.data
            c = conns.get(fd)
            if c is None:
                continue
            s = c["sock"]
            if not c["connected"]:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    name = errno.errorcode.get(err, str(err))
                    res["connect_failed"] += 1
                    res["connect_errors"][name] = res["connect_errors"].get(name, 0) + 1
                    conns.pop(fd)
                    sel.unregister(s)
                    s.close()
                    continue
                c["connected"] = True
                res["connected"] += 1
                sel.modify(s, selectors.EVENT_READ, fd)
                c["gen"] = 1
                heapq.heappush(timers, (0.0, fd, 1))
                continue
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                finish(fd, "rst")
                continue
            except BlockingIOError:
                continue
            if not data:
                finish(fd, "fin")
            else:
                res["got_data"] += 1
                if res["first_data"] is None:
                    res["first_data"] = data[:64].decode("latin-1")
    res["survived"] = len(conns)
    for fd in list(conns):
        finish(fd, "ours")
    res["elapsed_s"] = time.monotonic() - t_start
    res["close_after"] = dist(res.pop("close_after_s"))
    write_json(a.json, res)
    print(f"slowloris: {res['connected']} connected, {res['closed_fin'] + res['closed_rst']} closed by the server, "
          f"{res['survived']} survived, close after {res['close_after']}")


# --------------------------------------------------------------------------
# raw connect/close churn


def mode_rawchurn(a):
    res = {"planned": a.n, "connected": 0, "failed": 0, "errors": {}, "fin": 0, "rst": 0}
    t0 = time.monotonic()

    def one(i):
        try:
            s = connect(a.host, a.port, a.src, 5.0)
        except OSError as e:
            return ("err", type(e).__name__)
        if i % 2:
            linger_rst(s)
        s.close()
        return ("ok", "rst" if i % 2 else "fin")

    with cf.ThreadPoolExecutor(a.concurrency) as ex:
        for kind, what in ex.map(one, range(a.n)):
            if kind == "ok":
                res["connected"] += 1
                res[what] += 1
            else:
                res["failed"] += 1
                res["errors"][what] = res["errors"].get(what, 0) + 1
    res["elapsed_s"] = time.monotonic() - t0
    write_json(a.json, res)
    print(f"rawchurn: {res['connected']}/{a.n} connect+close cycles in {res['elapsed_s']:.1f}s")


# --------------------------------------------------------------------------
# oversized heads

OVERSIZED_KINDS = ["upgrade_head_9k", "upgrade_70_headers", "get_head_9k", "get_70_headers"]


def oversized_request(kind, a, i):
    room = a.rooms[i % len(a.rooms)]
    if kind == "upgrade_head_9k":
        return upgrade_request(a.host, a.port, "/rooms/" + room, ws_key(), "X-Pad: " + "p" * 9000 + "\r\n")
    if kind == "upgrade_70_headers":
        extra = "".join(f"X-H-{j}: v{j}\r\n" for j in range(70))
        return upgrade_request(a.host, a.port, "/rooms/" + room, ws_key(), extra)
    if kind == "get_head_9k":
        return (f"GET /healthz HTTP/1.1\r\nHost: {a.host}\r\nX-Pad: " + "p" * 9000 + "\r\n\r\n").encode()
    extra = "".join(f"X-H-{j}: v{j}\r\n" for j in range(70))
    return f"GET /healthz HTTP/1.1\r\nHost: {a.host}\r\n{extra}\r\n".encode()


def mode_oversized(a):
    res = {"planned": a.n, "by_kind": {k: {} for k in OVERSIZED_KINDS}, "errors": {},
           "connection_closed_after": 0, "bodies": {}}
    t0 = time.monotonic()

    def one(i):
        kind = OVERSIZED_KINDS[i % len(OVERSIZED_KINDS)]
        req = oversized_request(kind, a, i)
        try:
            s = connect(a.host, a.port, a.src, 5.0)
        except OSError as e:
            return kind, "connect:" + type(e).__name__, None, False
        try:
            deadline = time.monotonic() + 10.0
            try:
                s.sendall(req)
            except OSError:
                pass  # the answer may already be on its way
            status, head, rest = read_head(s, deadline)
            body = rest
            closed = False
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                c = s.recv(65536)
                if not c:
                    closed = True
                    break
                body += c
            return kind, str(status), body.decode("latin-1").strip(), closed
        except (OSError, ValueError) as e:
            return kind, "error:" + type(e).__name__, None, False
        finally:
            s.close()

    with cf.ThreadPoolExecutor(a.concurrency) as ex:
        for kind, status, body, closed in ex.map(one, range(a.n)):
            d = res["by_kind"][kind]
            d[status] = d.get(status, 0) + 1
            if closed:
                res["connection_closed_after"] += 1
            if body is not None:
                res["bodies"][f"{kind} {status} {body}"] = res["bodies"].get(f"{kind} {status} {body}", 0) + 1
    res["elapsed_s"] = time.monotonic() - t0
    res["status_431"] = sum(d.get("431", 0) for d in res["by_kind"].values())
    write_json(a.json, res)
    print(f"oversized: {res['status_431']}/{a.n} answered 431, {res['connection_closed_after']} then closed; {res['by_kind']}")


# --------------------------------------------------------------------------
# garbage after a valid upgrade


def simulate(b, max_frame):
    """What the relay does with the client bytes `b` after the upgrade.

    Returns ("fail", code) / ("close", code; 1005 = empty close frame) for a
    decisive input, ("need", None) when the bytes end inside a frame, or
    ("relay", None) when the bytes hold a data message (or the start of a
    fragmented one) that would be relayed to the room: such garbage is
    re-rolled, so that the steady subscribers must never see any of it.
    Mirrors FrameDecoder::decode_header and MessageAssembler::on_frame.
    """
    pos = 0
    pings = 0
    while True:
        if len(b) - pos < 2:
            return ("need", None, pings)
        b0, b1 = b[pos], b[pos + 1]
        fin, rsv, op = b0 & 0x80, (b0 >> 4) & 7, b0 & 0x0F
        if op not in (0, 1, 2, 8, 9, 10):
            return ("fail", 1002, pings)
        if rsv:
            return ("fail", 1002, pings)
        if not b1 & 0x80:
            return ("fail", 1002, pings)
        l7 = b1 & 0x7F
        if op >= 8 and (not fin or l7 > 125):
            return ("fail", 1002, pings)
        if l7 == 126:
            if len(b) - pos < 4:
                return ("need", None, pings)
            n, hl = struct.unpack(">H", b[pos + 2:pos + 4])[0], 4
        elif l7 == 127:
            if len(b) - pos < 10:
                return ("need", None, pings)
            n, hl = struct.unpack(">Q", b[pos + 2:pos + 10])[0], 10
            if n >> 63:
                return ("fail", 1002, pings)
        else:
            n, hl = l7, 2
        if n > max_frame:
            return ("fail", 1009, pings)
        if len(b) - pos < hl + 4 + n:
            return ("need", None, pings)
        key = b[pos + hl:pos + hl + 4]
        payload = xor(b[pos + hl + 4:pos + hl + 4 + n], key)
        pos += hl + 4 + n
        if op == 9:
            pings += 1
            continue
        if op == 10:
            continue
        if op == 8:
            if n == 0:
                return ("close", 1005, pings)
            if n == 1:
                return ("fail", 1002, pings)
            code = struct.unpack(">H", payload[:2])[0]
            if not VALID_CLOSE(code):
                return ("fail", 1002, pings)
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return ("fail", 1007, pings)
            return ("close", code, pings)
        if op == 0:
            return ("fail", 1002, pings)  # no fragmented message in progress
        if op == 2:
            return ("relay", None, pings)
        # text
        try:
            if fin:
                payload.decode("utf-8")
            else:
                codecs.getincrementaldecoder("utf-8")().decode(payload, final=False)
        except UnicodeDecodeError:
            return ("fail", 1007, pings)
        return ("relay", None, pings)


GARBAGE_KINDS = ["random", "text_bad_utf8", "huge_length", "pings_then_random", "random_close"]


def make_garbage(kind, rng, max_frame):
    """Random bytes of the given kind, re-rolled until decisive and not relayable."""
    for _ in range(1000):
        if kind == "random":
            b = rng.randbytes(rng.randint(1, 4096))
        elif kind == "text_bad_utf8":
            n = rng.randint(200, 60000)
            b = mask_frame(1, rng.randbytes(n), fin=rng.random() < 0.5, key=rng.randbytes(4))
        elif kind == "huge_length":
            n = rng.randint(max_frame + 1, (1 << 64) - 1)
            b = bytes([rng.choice([0x81, 0x82, 0x01, 0x02]), 0x80 | 127]) + struct.pack(">Q", n) \
                + rng.randbytes(rng.randint(0, 1024))
        elif kind == "pings_then_random":
            b = b"".join(mask_frame(9, rng.randbytes(rng.randint(0, 125)), key=rng.randbytes(4))
                         for _ in range(rng.randint(1, 5)))
            b += rng.randbytes(rng.randint(1, 2048))
        else:  # random_close
            n = rng.randint(1, 125)
            payload = rng.randbytes(n)
            if n >= 2 and rng.random() < 0.5:
                code = rng.choice([1000, 1001, 1003, 1008, 1011, 3000, 4000, 4999])
                payload = struct.pack(">H", code) + payload[2:]
                if rng.random() < 0.5:
                    payload = payload[:2] + bytes(rng.choice(b"abcdefgh") for _ in range(n - 2))
            b = mask_frame(8, payload, key=rng.randbytes(4))
        while True:
            verdict, code, pings = simulate(b, max_frame)
            if verdict != "need" or len(b) > 70000:
                break
            b += rng.randbytes(64)
        if verdict in ("fail", "close"):
            return b, code, pings
    raise RuntimeError("could not make garbage of kind " + kind)


def mode_garbage(a):
    raise_nofile()
    res = {"planned": a.n, "upgraded": 0, "upgrade_failed": {}, "by_kind": {k: 0 for k in GARBAGE_KINDS},
           "same_write": 0, "garbage_bytes": 0, "predicted": {}, "observed": {}, "end": {},
           "match": 0, "mismatch": 0, "mismatches": [], "no_close_frame": 0, "pongs": 0,
           "pings_sent": 0, "room_frames_received": 0, "close_after_s": []}
    t0 = time.monotonic()

    def one(i):
        rng = random.Random(a.seed * 1_000_003 + i)
        kind = GARBAGE_KINDS[i % len(GARBAGE_KINDS)]
        same_write = (i // len(GARBAGE_KINDS)) % 2 == 1
        garbage, predicted, pings = make_garbage(kind, rng, a.max_frame)
        key = ws_key()
        req = upgrade_request(a.host, a.port, "/rooms/" + a.rooms[i % len(a.rooms)], key)
        out = {"kind": kind, "same_write": same_write, "bytes": len(garbage), "predicted": predicted,
               "pings": pings, "observed": None, "end": None, "pongs": 0, "room_frames": 0}
        try:
            s = connect(a.host, a.port, a.src, 10.0)
        except OSError as e:
            out["end"] = "connect:" + type(e).__name__
            return out
        try:
            deadline = time.monotonic() + 15.0
            if same_write:
                s.sendall(req + garbage)
            else:
                s.sendall(req)
            status, head, rest = read_head(s, deadline)
            if status != 101 or ws_accept(key) not in head:
                out["end"] = f"status:{status}"
                return out
            out["upgraded"] = True
            t_sent = time.monotonic()
            if not same_write:
                s.sendall(garbage)
            frames = ServerFrames()
            pending = rest
            while True:
                for fin, op, payload in frames.feed(pending):
                    if op == 8:
                        if out["observed"] is None:
                            out["observed"] = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                            out["close_after_s"] = time.monotonic() - t_sent
                    elif op == 10:
                        out["pongs"] += 1
                    elif op in (1, 2, 0):
                        out["room_frames"] += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    out["end"] = "timeout"
                    return out
                s.settimeout(left)
                try:
                    pending = s.recv(65536)
                except ConnectionResetError:
                    out["end"] = "rst"
                    return out
                except socket.timeout:
                    out["end"] = "timeout"
                    return out
                if not pending:
                    out["end"] = "eof"
                    return out
        except (OSError, ValueError, TimeoutError) as e:
            out["end"] = "error:" + type(e).__name__
            return out
        finally:
            s.close()

    with cf.ThreadPoolExecutor(a.concurrency) as ex:
        for out in ex.map(one, range(a.n)):
            res["by_kind"][out["kind"]] += 1
            res["same_write"] += out["same_write"]
            res["garbage_bytes"] += out["bytes"]
            if not out.get("upgraded"):
                res["upgrade_failed"][out["end"]] = res["upgrade_failed"].get(out["end"], 0) + 1
                continue
            res["upgraded"] += 1
            p, o = str(out["predicted"]), str(out["observed"])
            res["predicted"][p] = res["predicted"].get(p, 0) + 1
            res["observed"][o] = res["observed"].get(o, 0) + 1
            res["end"][out["end"]] = res["end"].get(out["end"], 0) + 1
            res["pongs"] += out["pongs"]
            res["pings_sent"] += out["pings"]
            res["room_frames_received"] += out["room_frames"]
            if out["observed"] is None:
                res["no_close_frame"] += 1
            elif out["observed"] == out["predicted"]:
                res["match"] += 1
                res["close_after_s"].append(out["close_after_s"])
            else:
                res["mismatch"] += 1
                res["close_after_s"].append(out["close_after_s"])
                if len(res["mismatches"]) < 20:
                    res["mismatches"].append({k: out[k] for k in ("kind", "same_write", "bytes", "predicted", "observed", "end")})
    res["elapsed_s"] = time.monotonic() - t0
    res["close_after"] = dist(res.pop("close_after_s"))
    write_json(a.json, res)
    print(f"garbage: {res['upgraded']}/{a.n} upgraded, observed close codes {res['observed']}, "
          f"end {res['end']}, {res['mismatch']} mismatches")


# --------------------------------------------------------------------------
# slow consumers


def mode_slow(a):
    raise_nofile()
    res = {"planned": a.n, "upgraded": 0, "upgrade_failed": {}, "observed": {}, "end": {},
           "read_started_after_s": None, "relay_closes_seen": 0, "first_relay_close_after_s": None,
           "all_relay_closes_after_s": None, "bytes_read_after_stall": 0, "pong_send_errors": 0}
    base = metric(http_get(a.host, a.port, "/metrics"), "wsrelay_slow_consumer_closes_total") or 0
    socks = []
    for i in range(a.n):
        key = ws_key()
        try:
            s = connect(a.host, a.port, a.src, 10.0, rcvbuf=a.rcvbuf)
            s.sendall(upgrade_request(a.host, a.port, "/rooms/" + a.rooms[i % len(a.rooms)], key))
            # read the response head byte-wise-ish: small reads, stop at the blank line
            buf = b""
            s.settimeout(10.0)
            while b"\r\n\r\n" not in buf:
                c = s.recv(1)
                if not c:
                    raise ConnectionError("eof")
                buf += c
            status = int(buf.split(b" ", 2)[1])
            if status != 101 or ws_accept(key).encode() not in buf:
                raise ConnectionError(f"status {status}")
        except (OSError, ValueError) as e:
            name = type(e).__name__
            res["upgrade_failed"][name] = res["upgrade_failed"].get(name, 0) + 1
            continue
        s.setblocking(False)
        socks.append({"sock": s, "frames": ServerFrames(data=False), "code": None, "end": None})
    res["upgraded"] = len(socks)
    t0 = time.monotonic()
    next_pong = t0 + a.pong_every
    first = None
    # stall: read nothing; keep the connection alive with unsolicited pongs
    while True:
        now = time.monotonic()
        if now >= next_pong:
            next_pong = now + a.pong_every
            for c in socks:
                try:
                    c["sock"].send(mask_frame(10, b"alive"))
                except OSError:
                    res["pong_send_errors"] += 1
        try:
            closes = metric(http_get(a.host, a.port, "/metrics"), "wsrelay_slow_consumer_closes_total") - base
        except OSError:
            closes = 0
        if closes > 0 and first is None:
            first = now
            res["first_relay_close_after_s"] = now - t0
        res["relay_closes_seen"] = closes
        if closes >= len(socks):
            res["all_relay_closes_after_s"] = now - t0
            break
        if now - t0 >= a.stall:
            break
        time.sleep(0.25)
    res["read_started_after_s"] = time.monotonic() - t0
    # now read everything: expect the rest of the backlog, close 1008, EOF
    sel = selectors.DefaultSelector()
    for idx, c in enumerate(socks):
        sel.register(c["sock"], selectors.EVENT_READ, idx)
    open_n = len(socks)
    deadline = time.monotonic() + 20.0
    while open_n and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            c = socks[key.data]
            s = c["sock"]
            try:
                data = s.recv(262144)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data, c["end"] = b"", "rst"
            if data:
                res["bytes_read_after_stall"] += len(data)
                for fin, op, payload in c["frames"].feed(data):
                    if op == 8 and c["code"] is None:
                        c["code"] = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                        try:
                            s.setblocking(True)
                            s.settimeout(1.0)
                            s.sendall(mask_frame(8, payload[:2]))
                            s.setblocking(False)
                        except OSError:
                            pass
                continue
            c["end"] = c["end"] or "eof"
            sel.unregister(s)
            open_n -= 1
    for c in socks:
        if c["end"] is None:
            c["end"] = "still_open"
        o = str(c["code"])
        res["observed"][o] = res["observed"].get(o, 0) + 1
        res["end"][c["end"]] = res["end"].get(c["end"], 0) + 1
        c["sock"].close()
    write_json(a.json, res)
    print(f"slow: {res['upgraded']}/{a.n} joined; relay slow-consumer closes {res['relay_closes_seen']:.0f} "
          f"(first after {res['first_relay_close_after_s']}s); close codes seen {res['observed']}; end {res['end']}")


# --------------------------------------------------------------------------
# vanishing clients


def mode_vanish(a):
    raise_nofile()
    res = {"planned": a.n, "upgraded": 0, "failed": {}, "rst": 0, "fin": 0}
    t0 = time.monotonic()

    def one(i):
        rng = random.Random(a.seed * 7919 + i)
        key = ws_key()
        try:
            s = connect(a.host, a.port, a.src, 10.0)
        except OSError as e:
            return "connect:" + type(e).__name__
        try:
            s.sendall(upgrade_request(a.host, a.port, "/rooms/" + a.rooms[i % len(a.rooms)], key))
            status, head, rest = read_head(s, time.monotonic() + 10.0)
            if status != 101:
                return f"status:{status}"
            time.sleep(rng.random() * a.linger_max)  # room traffic piles up unread
            if i % 2 == 0:
                linger_rst(s)
                return "rst"
            return "fin"
        except (OSError, ValueError, TimeoutError) as e:
            return "error:" + type(e).__name__
        finally:
            s.close()

    with cf.ThreadPoolExecutor(a.concurrency) as ex:
        for r in ex.map(one, range(a.n)):
            if r in ("rst", "fin"):
                res["upgraded"] += 1
                res[r] += 1
            else:
                res["failed"][r] = res["failed"].get(r, 0) + 1
    res["elapsed_s"] = time.monotonic() - t0
    write_json(a.json, res)
    print(f"vanish: {res['upgraded']}/{a.n} upgraded then vanished ({res['rst']} RST, {res['fin']} FIN without close frame)")


# --------------------------------------------------------------------------
# summary


def parse_metrics(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                name, val = line.rsplit(" ", 1)
                out[name] = float(val)
    except OSError:
        pass
    return out


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def smaps(path):
    """{start address: (description, size KiB, Rss KiB)} of /proc/PID/smaps."""
    out, cur = {}, None
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts and "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    name = parts[5] if len(parts) > 5 else "anon"
                    cur = lo
                    out[cur] = [f"{name} {parts[1]}", (hi - lo) // 1024, 0]
                elif parts and parts[0] == "Rss:" and cur is not None:
                    out[cur][2] = int(parts[1])
    except OSError:
        pass
    return out


def smaps_diff(a, b, top=6):
    rows = []
    for k in set(a) | set(b):
        ra, rb = (a.get(k) or [None, 0, 0])[2], (b.get(k) or [None, 0, 0])[2]
        if ra != rb:
            desc, size = (b.get(k) or a.get(k))[:2]
            rows.append((rb - ra, f"{desc} @{k:#x} ({size} KiB mapped): {ra} → {rb} KiB"))
    rows.sort(key=lambda r: -abs(r[0]))
    return [r[1] for r in rows[:top]], sum(r[0] for r in rows)


def mode_summary(a):
    d = a.dir
    env = {}
    with open(os.path.join(d, "run.env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    n = lambda k: int(env[k])
    rounds = n("ROUNDS")
    snaps = [parse_metrics(os.path.join(d, "metrics.pre.txt"))] + \
            [parse_metrics(os.path.join(d, f"metrics.r{r}.txt")) for r in range(1, rounds + 1)]
    steady = load(os.path.join(d, "steady.json"))
    checks = []
    rows = []

    def check(name, ok, detail):
        checks.append((name, bool(ok), detail))

    steady_conns = n("STEADY_CONNS")
    hs = float(env["HANDSHAKE_TIMEOUT_S"])

    # steady flow
    if steady:
        m, l, c = steady["messages"], steady["latency"], steady["connections"]
        errs = m["lost"] + m["duplicated"] + m["reordered"] + m["corrupted"] + m["misrouted"]
        rows.append(("steady fan-out (whole run)", f"{c['established']} conns; sent {m['sent']}, expected {m['expected']}, delivered {m['delivered_unique']}",
                     f"lost {m['lost']} dup {m['duplicated']} reord {m['reordered']} corrupt {m['corrupted']} misrouted {m['misrouted']}; "
                     f"p50 {l['p50_us']/1000:.2f} ms p99 {l['p99_us']/1000:.2f} ms p99.9 {l['p999_us']/1000:.2f} ms max {l['max_us']/1000:.1f} ms; "
                     f"{c['lost']} conns lost"))
        check("steady: no loss/dup/reorder/corruption/misrouting", errs == 0 and m["expected"] > 0 and m["delivered_unique"] == m["expected"],
              f"expected {m['expected']} delivered {m['delivered_unique']} errors {errs}")
        check("steady: every connection held, generator PASS", c["lost"] == 0 and c["failed"] == 0 and steady["pass"] and env.get("STEADY_RC") == "0",
              f"lost {c['lost']} failed {c['failed']} rc {env.get('STEADY_RC')} problems {steady.get('problems')}")
        ps = [p for p in steady.get("per_second", []) if not p.get("warmup")]
        for r in range(1, rounds + 1):
            a0, a1 = float(env[f"ROUND_{r}_START_S"]), float(env[f"ROUND_{r}_END_S"])
            win = [p for p in ps if a0 <= p["t_s"] <= a1 + 1]
            if win:
                worst = max(win, key=lambda p: p.get("p99_us", 0))
                rows.append((f"steady during round {r}", f"{len(win)} one-second intervals",
                             f"worst per-second p99 {worst.get('p99_us', 0)/1000:.2f} ms (t={worst['t_s']:.0f} s), "
                             f"worst max {max(p.get('max_us', 0) for p in win)/1000:.1f} ms, "
                             f"median per-second p99 {pctl([p.get('p99_us', 0) for p in win], 50)/1000:.2f} ms, "
                             f"received/s min {min(p.get('received', 0) / max(p.get('dur_s', 1), 1e-9) for p in win):.0f}"))
    else:
        check("steady: generator JSON present", False, "steady.json missing")

    for r in range(1, rounds + 1):
        rd = os.path.join(d, f"r{r}")
        pre, post = snaps[r - 1], snaps[r]
        delta = lambda k: post.get(k, 0) - pre.get(k, 0)
        J = {m: load(os.path.join(rd, m + ".json")) for m in ("slowloris", "rawchurn", "oversized", "garbage", "slow", "vanish", "churn")}
        R = f"r{r} "
        rows.append((f"--- round {r}", f"{float(env[f'ROUND_{r}_WALL_S']):.1f} s of abuse", ""))
        s = J["slowloris"]
        if s:
            closed = s["closed_fin"] + s["closed_rst"]
            ca = s["close_after"]
            rows.append((R + "1. slowloris", f"{s['planned']} planned, {s['connected']} connected, 1 byte/s",
                         f"{closed} closed by the server (FIN {s['closed_fin']}, RST {s['closed_rst']}), {s['survived']} survived, "
                         f"{s['got_data']} got data; closed after min {ca.get('min', 0):.2f} p50 {ca.get('p50', 0):.2f} "
                         f"p99 {ca.get('p99', 0):.2f} max {ca.get('max', 0):.2f} s; ≤{s['bytes_sent_max']} bytes sent each"))
            check(R + "slowloris: all connected and cut off by the handshake deadline",
                  s["connected"] == s["planned"] and closed == s["connected"] and s["survived"] == 0 and s["got_data"] == 0
                  and ca.get("min", 0) >= hs - 0.02 and ca.get("max", 99) <= hs + 3.0,
                  f"connected {s['connected']}/{s['planned']}, closed {closed}, survived {s['survived']}, data {s['got_data']}, "
                  f"close after {ca.get('min', 0):.2f}..{ca.get('max', 0):.2f} s (deadline {hs} s)")
        else:
            check(R + "slowloris: ran", False, "no JSON")
        rc = J["rawchurn"]
        if rc:
            rows.append((R + "2a. raw TCP connect+close", f"{rc['planned']} cycles",
                         f"{rc['connected']} connected ({rc['fin']} FIN, {rc['rst']} RST), {rc['failed']} failed {rc['errors']}"))
            check(R + "raw churn: every cycle connected", rc["connected"] == rc["planned"], f"{rc['connected']}/{rc['planned']}")
        else:
            check(R + "raw churn: ran", False, "no JSON")
        churn = J["churn"]
        if churn:
            ch, cc = churn.get("churn") or {}, churn["connections"]
            rows.append((R + "2b. WebSocket churn", f"{n('N_WSCHURN')} cycles (wsrelay-load churn -c 20)",
                         f"{ch.get('cycles')} cycles at {ch.get('cycles_per_s', 0):.0f}/s, {cc['failed']} failed, "
                         f"{cc['closes_clean']} clean closes, {cc['closes_unclean']} unclean"))
            check(R + "ws churn: all cycles completed, PASS", ch.get("cycles") == n("N_WSCHURN") and churn["pass"] and env.get(f"CHURN_RC_{r}") == "0",
                  f"cycles {ch.get('cycles')} rc {env.get(f'CHURN_RC_{r}')} problems {churn.get('problems')}")
        else:
            check(R + "ws churn: ran", False, "no JSON")
        o = J["oversized"]
        if o:
            htl = delta('wsrelay_handshake_rejections_total{reason="head_too_large",status="431"}')
            tmh = delta('wsrelay_handshake_rejections_total{reason="too_many_headers",status="431"}')
            rows.append((R + "3. oversized heads", f"{o['planned']} requests, 4 kinds",
                         f"{o['status_431']} × 431 then closed {o['connection_closed_after']}; relay: head_too_large +{htl:.0f}, "
                         f"too_many_headers +{tmh:.0f}; per kind {o['by_kind']}"))
            per = o["planned"] // len(OVERSIZED_KINDS)
            check(R + "oversized: every request answered 431 then closed, relay counters agree",
                  o["status_431"] == o["planned"] and o["connection_closed_after"] == o["planned"] and htl == 2 * per and tmh == 2 * per,
                  f"431 {o['status_431']}/{o['planned']}, closed {o['connection_closed_after']}, head_too_large +{htl:.0f}, too_many_headers +{tmh:.0f}")
        else:
            check(R + "oversized: ran", False, "no JSON")
        g = J["garbage"]
        if g:
            ends_ok = sum(v for k, v in g["end"].items() if k in ("eof", "rst"))
            rows.append((R + "4. garbage after upgrade", f"{g['planned']} conns on the steady rooms, {g['garbage_bytes']} bytes, "
                         f"{g['same_write']} in the upgrade's own write",
                         f"close codes seen {g['observed']} (predicted {g['predicted']}); {g['match']} as predicted, "
                         f"{g['mismatch']} not; TCP end {g['end']}; {g['pongs']} pongs for {g['pings_sent']} pings; "
                         f"close after p50 {g['close_after'].get('p50', 0)*1000:.1f} ms max {g['close_after'].get('max', 0)*1000:.1f} ms"))
            check(R + "garbage: every connection closed by the server, close code as predicted",
                  g["upgraded"] == g["planned"] and ends_ok == g["upgraded"] and g["mismatch"] == 0 and g["no_close_frame"] == 0,
                  f"upgraded {g['upgraded']}, ended by server {ends_ok}, mismatches {g['mismatch']} {g['mismatches'][:3]}, no close frame {g['no_close_frame']}")
        else:
            check(R + "garbage: ran", False, "no JSON")
        sl = J["slow"]
        if sl:
            scc = delta("wsrelay_slow_consumer_closes_total")
            # 1008 close frames sent, less the garbage clients' own 1008 closes echoed back
            c1008 = delta('wsrelay_close_codes_sent_total{code="1008"}') - (g["observed"].get("1008", 0) if g else 0)
            fa = sl["first_relay_close_after_s"]
            aa = sl["all_relay_closes_after_s"]
            rows.append((R + "5. slow consumers", f"{sl['planned']} members of the steady rooms that stop reading",
                         f"relay slow-consumer closes +{scc:.0f} (close 1008 sent for them +{c1008:.0f}); first after "
                         f"{fa if fa is None else round(fa, 1)} s, all after {aa if aa is None else round(aa, 1)} s; "
                         f"clients saw close codes {sl['observed']}, end {sl['end']}"))
            check(R + "slow consumers: each closed by the relay with 1008, none left open",
                  sl["upgraded"] == sl["planned"] and scc == sl["planned"] and c1008 == sl["planned"]
                  and set(sl["observed"]) <= {"1008", "None"} and sl["end"].get("still_open", 0) == 0,
                  f"upgraded {sl['upgraded']}, relay closes +{scc:.0f}, 1008 sent +{c1008:.0f}, seen {sl['observed']}, end {sl['end']}")
        else:
            check(R + "slow consumers: ran", False, "no JSON")
        v = J["vanish"]
        if v:
            rows.append((R + "6. vanishing clients", f"{v['planned']} upgrades on the steady rooms",
                         f"{v['upgraded']} upgraded then gone: {v['rst']} RST (SO_LINGER 0), {v['fin']} FIN without a close frame; failed {v['failed']}"))
            check(R + "vanish: all upgraded", v["upgraded"] == v["planned"], f"{v['upgraded']}/{v['planned']}")
        else:
            check(R + "vanish: ran", False, "no JSON")
        interesting = ["wsrelay_connections_accepted_total", "wsrelay_upgrades_total", "wsrelay_ping_timeouts_total",
                       "wsrelay_slow_consumer_closes_total", "wsrelay_dropped_messages_total", "wsrelay_fanout_backpressure_total"]
        lab = lambda pfx: {k.split('"')[1]: int(delta(k)) for k in post if k.startswith(pfx) and delta(k)}
        rows.append((R + "relay counters", "metrics after − before the round",
                     ", ".join(f"{k[7:]} +{delta(k):.0f}" for k in interesting)
                     + f"; close sent {json.dumps(lab('wsrelay_close_codes_sent_total'))}"
                     + f"; close received {json.dumps(lab('wsrelay_close_codes_received_total'))}"
                     + f"; rejections {json.dumps(lab('wsrelay_handshake_rejections_total'))}"))
        check(R + "relay alive after the round, /healthz 200", env.get(f"HEALTH_R{r}") == "200" and env.get(f"ALIVE_R{r}") == "1",
              f"alive {env.get(f'ALIVE_R{r}')} healthz {env.get(f'HEALTH_R{r}')}")
        check(R + "connections_open back to the steady set", float(env[f"GAUGE_R{r}"] or -1) == steady_conns and env.get(f"STEADY_RUNNING_R{r}") == "1",
              f"{env[f'GAUGE_R{r}']} (steady set {steady_conns}, steady still running: {env.get(f'STEADY_RUNNING_R{r}')})")

    # relay-side state
    rss_pre = n("RSS_PRE_KB")
    pct = lambda x: 100.0 * (x - rss_pre) / rss_pre
    rr = [n(f"RSS_R{r}_KB") for r in range(1, rounds + 1)]
    rows.append(("relay: connections_open", "before abuse / peak / after each round / after steady",
                 f"{env['GAUGE_PRE']} / {env['GAUGE_PEAK']} / {' / '.join(env[f'GAUGE_R{r}'] for r in range(1, rounds + 1))} / {env['GAUGE_END']}"))
    rows.append(("relay: RSS (KiB)", "idle / before abuse / peak / after each round / after steady",
                 f"{env['RSS_IDLE_KB']} / {rss_pre} / {env['RSS_PEAK_KB']} / "
                 + " / ".join(f"{x} ({pct(x):+.1f}%)" for x in rr) + f" / {n('RSS_END_KB')} ({pct(n('RSS_END_KB')):+.1f}%)"))
    diff, total = smaps_diff(smaps(os.path.join(d, "smaps.pre.txt")), smaps(os.path.join(d, f"smaps.r{rounds}.txt")))
    rows.append(("relay: RSS growth by mapping", f"before abuse → after round {rounds} ({total:+d} KiB)", "; ".join(diff)))
    rows.append(("relay: /healthz during abuse", "probed every second",
                 f"{env.get('HEALTH_OK')} × 200 of {env.get('HEALTH_TOTAL')}, slowest {env.get('HEALTH_MAX_S')} s"))
    check("/healthz answered 200 throughout the abuse", env.get("HEALTH_OK") == env.get("HEALTH_TOTAL") and int(env.get("HEALTH_TOTAL", 0)) > 0,
          f"{env.get('HEALTH_OK')}/{env.get('HEALTH_TOTAL')}")
    check("connections_open 0 after the steady generator ended", float(env["GAUGE_END"] or -1) == 0, env["GAUGE_END"])
    check("RSS after round 1 within 10% of before the abuse", rr[0] <= 1.10 * rss_pre, f"{rss_pre} → {rr[0]} KiB ({pct(rr[0]):+.1f}%)")
    if rounds > 1:
        check(f"RSS after round {rounds} within 10% of before the abuse", rr[-1] <= 1.10 * rss_pre, f"{rss_pre} → {rr[-1]} KiB ({pct(rr[-1]):+.1f}%)")
        ref = max(rr[:-1])
        check(f"no new RSS high in round {rounds} (leak test: ≤ highest earlier round + 2% of the pre-abuse figure)",
              rr[-1] - ref <= 0.02 * rss_pre, f"after rounds 1..{rounds}: {' → '.join(map(str, rr))} KiB; last vs earlier high {rr[-1] - ref:+d} KiB")
    check("RSS after the steady generator ended within 10% of before the abuse", n("RSS_END_KB") <= 1.10 * rss_pre,
          f"{rss_pre} → {n('RSS_END_KB')} KiB ({pct(n('RSS_END_KB')):+.1f}%)")
    check("relay exits 0 on SIGTERM", env.get("RELAY_EXIT") == "0", f"exit {env.get('RELAY_EXIT')}")

    w = max(len(r[0]) for r in rows)
    print("\n=== wsrelay abuse soak: summary ===")
    print(f"relay {env.get('RELAY_VERSION')} (built {env.get('RELAY_BUILT')}, HEAD {env.get('GIT_HEAD')}): {env.get('RELAY_ARGS')}")
    print(f"steady: {env.get('STEADY_CMD')}\n")
    for name, what, result in rows:
        print(f"{name:<{w}}  {what}" + (f"\n{'':<{w}}  → {result}" if result else ""))
    print("\n=== checks ===")
    failed = 0
    for name, ok, detail in checks:
        failed += not ok
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    print(f"\nresult: {'PASS' if not failed else f'FAIL ({failed} of {len(checks)} checks)'}")
    write_json(os.path.join(d, "summary.json"), {"rows": rows, "checks": checks, "pass": not failed})
    sys.exit(1 if failed else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp, n, conc=32):
        sp.add_argument("--host", default="127.0.0.1", type=loopback)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--src", default="127.0.0.1", type=loopback, help="source address to bind")
        sp.add_argument("-n", type=int, default=n)
        sp.add_argument("--concurrency", type=int, default=conc)
        sp.add_argument("--rooms", default="load-0,load-1,load-2,load-3", type=lambda s: s.split(","))
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--max-frame", type=int, default=1 << 20)
        sp.add_argument("--json", required=True)

    sp = sub.add_parser("slowloris"); common(sp, 2000)
    sp.add_argument("--rate", type=float, default=500.0, help="new connections per second")
    sp.add_argument("--hold", type=float, default=15.0, help="give up this long after the last connect")
    sp = sub.add_parser("rawchurn"); common(sp, 5000, 16)
    sp = sub.add_parser("oversized"); common(sp, 2000, 16)
    sp = sub.add_parser("garbage"); common(sp, 500, 16)
    sp = sub.add_parser("slow"); common(sp, 100)
    sp.add_argument("--rcvbuf", type=int, default=4096)
    sp.add_argument("--pong-every", type=float, default=5.0)
    sp.add_argument("--stall", type=float, default=75.0, help="longest time without reading")
    sp = sub.add_parser("vanish"); common(sp, 2000, 32)
    sp.add_argument("--linger-max", type=float, default=0.2)
    sp = sub.add_parser("summary")
    sp.add_argument("--dir", required=True)
    a = p.parse_args()
    globals()["mode_" + a.mode](a)


if __name__ == "__main__":
    main()
