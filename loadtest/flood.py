#!/usr/bin/env python3
"""Flood a running relay with clients that send and never read; watch its RSS
and /healthz. Usually started by loadtest/flood.sh, which starts the relay.

Phases, each --secs long (default 10 s):

  http  one TCP connection pipelines `GET /metrics` requests back to back as
        fast as the socket takes them and never reads an answer;
  ping  one connection upgrades on /echo, then sends masked 8-byte pings as
        fast as the socket takes them and never reads again.

Meanwhile a probe opens a fresh connection every 200 ms and asks
`GET /healthz` (Connection: close), timing the whole answer (it gives up
after 5 s; a late probe's missed slots are skipped). The relay's
VmRSS (/proc/PID/status) is sampled every 100 ms: baseline after a 1 s settle
before the phase, peak from the start of the flood to the end of the 2 s
settle after the flooding connection closed, and the figure after it.

PASS when every phase's growth (peak - baseline) is within --max-growth-mib
and every probe answered 200 within 1 s. A phase whose growth passes
--abort-growth-mib is stopped early (and fails): the flooding connection is
closed at once, but a relay that queues answers keeps growing a while on the
requests already in its socket buffer, so the peak can pass the limit.
Exit status: 0 PASS,
1 FAIL, 2 set-up error. Loopback only, standard library only.
"""

import argparse
import base64
import errno
import hashlib
import json
import os
import select
import socket
import sys
import threading
import time

from procstat import rss_kib  # loadtest/procstat.py, beside this script

HOST = "127.0.0.1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROBE_EVERY_S = 0.2
PROBE_TIMEOUT_S = 5.0
PROBE_LIMIT_S = 1.0
RSS_EVERY_S = 0.1
SETTLE_BEFORE_S = 1.0
SETTLE_AFTER_S = 2.0
HTTP_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
PING_PAYLOAD = b"floodpng"  # 8 bytes


class SetupError(Exception):
    pass


def healthz_once(port, timeout=PROBE_TIMEOUT_S):
    """One GET /healthz on a fresh connection: (seconds, status or error)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                left = timeout - (time.monotonic() - t0)
                if left <= 0:
                    raise socket.timeout("probe timed out")
                s.settimeout(left)
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        dt = time.monotonic() - t0
        status = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        parts = status.split()
        if len(parts) >= 2 and parts[1] == "200":
            return dt, "200"
        return dt, f"bad answer: {status!r}"
    except (OSError, socket.timeout) as e:
        return time.monotonic() - t0, f"error: {e.__class__.__name__}: {e}"


def wait_ready(port, pid, limit_s=10.0):
    t_end = time.monotonic() + limit_s
    while time.monotonic() < t_end:
        if pid and rss_kib(pid) is None:
            raise SetupError(f"relay process {pid} is gone")
        _, st = healthz_once(port, timeout=1.0)
        if st == "200":
            return
        time.sleep(0.1)
    raise SetupError(f"relay on port {port} did not answer /healthz within {limit_s:.0f} s")


class Sampler(threading.Thread):
    """VmRSS every 100 ms into a list of (t, KiB); sets `abort` past a limit."""

    def __init__(self, pid, baseline, abort_kib):
        super().__init__(daemon=True)
        self.pid, self.baseline, self.abort_kib = pid, baseline, abort_kib
        self.samples = []
        self.stop_ev = threading.Event()
        self.abort = threading.Event()
        self.gone = False

    def run(self):
        while not self.stop_ev.is_set():
            v = rss_kib(self.pid)
            if v is None:
                self.gone = True
                self.abort.set()
                return
            self.samples.append((time.monotonic(), v))
            if v - self.baseline > self.abort_kib:
                self.abort.set()
            self.stop_ev.wait(RSS_EVERY_S)


class Prober(threading.Thread):
    """A fresh GET /healthz every 200 ms (from the schedule; a late one is not repeated)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.results = []  # (seconds, status)
        self.stop_ev = threading.Event()

    def run(self):
        t0 = time.monotonic()
        n = 0
        while not self.stop_ev.is_set():
            self.results.append(healthz_once(self.port))
            n += 1
            nxt = t0 + n * PROBE_EVERY_S
            now = time.monotonic()
            if nxt < now:  # the probe took longer than the period: next slot
                n = int((now - t0) / PROBE_EVERY_S) + 1
                nxt = t0 + n * PROBE_EVERY_S
            self.stop_ev.wait(nxt - now)


def masked_ping(payload):
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x89, 0x80 | len(payload)]) + key + masked


def ws_upgrade(port):
    """Connect and upgrade on /echo; read exactly the 101 head, nothing more."""
    s = socket.create_connection((HOST, port), timeout=5)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        c = s.recv(1)  # one byte at a time: stop right at the end of the head
        if not c:
            raise SetupError("relay closed the connection during the upgrade")
        head += c
        if len(head) > 16384:
            raise SetupError("upgrade answer head too long")
    lines = head.decode("latin-1").split("\r\n")
    if len(lines[0].split()) < 2 or lines[0].split()[1] != "101":
        raise SetupError(f"upgrade refused: {lines[0]!r}")
    want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    accept = [l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("sec-websocket-accept:")]
    if accept != [want]:
        raise SetupError(f"bad Sec-WebSocket-Accept: {accept!r}, want {want!r}")
    return s


def flood(sock, chunk, t_end, abort):
    """Send `chunk` over and over until t_end (or abort), never reading.
    Returns (bytes sent, note, seconds until the socket last took bytes).
    The socket is non-blocking; select() waits for
    room in the send buffer (at most 50 ms at a time) so nothing spins."""
    sock.setblocking(False)
    sent = 0
    off = 0  # offset into chunk of the next byte to send
    note = ""
    t0 = time.monotonic()
    last = t0  # when the socket last took bytes
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        if abort.is_set():
            note = f"stopped early at {now - t0:.1f} s: RSS past the abort limit, or the relay is gone"
            break
        try:
            n = sock.send(chunk[off:] if off else chunk)
            sent += n
            off = (off + n) % len(chunk)
            if n:
                last = time.monotonic()
        except BlockingIOError:
            select.select([], [sock], [], min(0.05, max(0.0, t_end - now)))
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                note = f"relay closed the connection after {sent} bytes ({e.strerror})"
                break
            raise
    return sent, note, last - t0


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def run_phase(name, args, pid):
    time.sleep(SETTLE_BEFORE_S)
    base = rss_kib(pid)
    if base is None:
        raise SetupError("relay process is gone")
    abort_kib = int(args.abort_growth_mib * 1024)
    sampler = Sampler(pid, base, abort_kib)
    prober = Prober(args.port)

    if name == "http":
        sock = socket.create_connection((HOST, args.port), timeout=5)
        unit = len(HTTP_REQUEST)
        chunk = HTTP_REQUEST * (65536 // unit)
    else:
        sock = ws_upgrade(args.port)
        # A pool of frames, each with its own random mask key, sent in a cycle.
        frames = [masked_ping(PING_PAYLOAD) for _ in range(4096)]
        unit = len(frames[0])
        chunk = b"".join(frames)
    sampler.start()
    prober.start()
    t0 = time.monotonic()
    try:
        sent, note, last_s = flood(sock, chunk, t0 + args.secs, sampler.abort)
    finally:
        flood_s = time.monotonic() - t0
        sock.close()
        t_close = time.monotonic()
    prober.stop_ev.set()
    prober.join()  # a probe under way finishes (up to PROBE_TIMEOUT_S)
    # Settle with the flooding connection closed; the sampler keeps going.
    time.sleep(max(0.0, t_close + SETTLE_AFTER_S - time.monotonic()))
    sampler.stop_ev.set()
    sampler.join()
    after = rss_kib(pid)
    samples = [v for _, v in sampler.samples]
    during = [v for t, v in sampler.samples if t <= t_close]
    peak = max(samples + [base])
    lat = [dt for dt, _ in prober.results]  # a failed probe counts with its time to failure
    bad = [(dt, st) for dt, st in prober.results if st != "200" or dt > PROBE_LIMIT_S]
    if sampler.gone or after is None:
        note = (note + "; " if note else "") + "relay process died"
    return {
        "phase": name,
        "flood_s": round(flood_s, 2),
        "bytes_sent": sent,
        "units_sent": sent // unit,
        "unit_bytes": unit,
        "last_send_s": round(last_s, 2),
        "rss_baseline_kib": base,
        "rss_peak_kib": peak,
        "rss_peak_during_flood_kib": max(during + [base]),
        "rss_growth_kib": peak - base,
        "rss_after_kib": after,
        "probes": len(prober.results),
        "probe_p50_ms": round(pct(lat, 50) * 1000, 1) if lat else None,
        "probe_max_ms": round(max(lat) * 1000, 1) if lat else None,
        "probes_slow_or_failed": len(bad),
        "probe_failures": sorted({st for _, st in bad if st != "200"}),
        "stopped_early": note.startswith("stopped early"),
        "note": note,
        # (seconds from the start of the flood, VmRSS KiB), for the JSON only
        "rss_samples": [(round(t - t0, 2), v) for t, v in sampler.samples],
        "probe_samples": [(round(dt * 1000, 1), st) for dt, st in prober.results],
    }


def fmt_kib(v):
    return "-" if v is None else f"{v:,}"


def print_phase(r, max_growth_kib):
    what = "GET /metrics requests" if r["phase"] == "http" else "masked pings"
    title = {"http": "HTTP pipelining without reading", "ping": "ping flood without reading"}[r["phase"]]
    print(f"\n== phase {r['phase']}: {title} ({r['flood_s']:.1f} s) ==")
    rows = [
        ("sent", f"{r['units_sent']:,} {what} ({r['bytes_sent']:,} bytes); "
                 f"the socket last took bytes at {r['last_send_s']:.1f} s"),
        ("RSS baseline", f"{fmt_kib(r['rss_baseline_kib'])} KiB"),
        ("RSS peak", f"{fmt_kib(r['rss_peak_kib'])} KiB (during the flood: {fmt_kib(r['rss_peak_during_flood_kib'])} KiB)"),
        ("RSS growth", f"{fmt_kib(r['rss_growth_kib'])} KiB (limit {max_growth_kib:,} KiB)"),
        ("RSS after", f"{fmt_kib(r['rss_after_kib'])} KiB (2 s after the close)"),
        ("/healthz", f"{r['probes']} probes, p50 {r['probe_p50_ms']} ms, max {r['probe_max_ms']} ms, "
                     f"over 1 s or failed: {r['probes_slow_or_failed']}"),
    ]
    if r["probe_failures"]:
        rows.append(("probe errors", "; ".join(r["probe_failures"])))
    if r["note"]:
        rows.append(("note", r["note"]))
    for k, v in rows:
        print(f"  {k:<13} {v}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="relay process, for /proc/PID/status")
    ap.add_argument("--secs", type=float, default=10.0, help="length of each flood phase (default 10)")
    ap.add_argument("--max-growth-mib", type=float, default=8.0, help="PASS bound on RSS growth (default 8)")
    ap.add_argument("--abort-growth-mib", type=float, default=2048.0,
                    help="stop a phase early past this RSS growth (default 2048)")
    ap.add_argument("--phases", default="http,ping", help="comma-separated: http, ping (default both)")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--label", default="", help="free text printed with the results (e.g. the build)")
    args = ap.parse_args()
    if not (0 < args.secs <= 600):
        print("--secs must be in (0, 600]", file=sys.stderr)
        return 2
    phases = [p for p in args.phases.split(",") if p]
    if not phases or any(p not in ("http", "ping") for p in phases):
        print("--phases takes http and/or ping", file=sys.stderr)
        return 2
    max_growth_kib = int(args.max_growth_mib * 1024)

    try:
        wait_ready(args.port, args.pid)
        results = []
        for p in phases:
            results.append(run_phase(p, args, args.pid))
            print_phase(results[-1], max_growth_kib)
            if results[-1]["rss_after_kib"] is None:
                break
    except SetupError as e:
        print(f"set-up error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"set-up error: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 2

    # Markdown summary, ready for the docs.
    print(f"\n{args.label}" if args.label else "")
    print("| phase | sent | socket last took bytes | RSS baseline | peak | growth | after "
          "| /healthz p50 / max | over 1 s or failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        sent = f"{r['units_sent']:,} {'requests' if r['phase'] == 'http' else 'pings'}"
        if r["stopped_early"]:
            sent += f" (stopped at {r['flood_s']:.1f} s)"
        print(f"| {r['phase']} | {sent} | at {r['last_send_s']:.1f} s | {fmt_kib(r['rss_baseline_kib'])} KiB | {fmt_kib(r['rss_peak_kib'])} KiB "
              f"| {fmt_kib(r['rss_growth_kib'])} KiB | {fmt_kib(r['rss_after_kib'])} KiB "
              f"| {r['probe_p50_ms']} / {r['probe_max_ms']} ms | {r['probes_slow_or_failed']} of {r['probes']} |")

    failures = []
    for r in results:
        if r["rss_growth_kib"] > max_growth_kib:
            failures.append(f"{r['phase']}: RSS grew {r['rss_growth_kib']:,} KiB > {max_growth_kib:,} KiB")
        if r["stopped_early"]:
            failures.append(f"{r['phase']}: {r['note']}")
        if r["probes_slow_or_failed"]:
            failures.append(f"{r['phase']}: {r['probes_slow_or_failed']} /healthz probes over 1 s or failed")
        if r["rss_after_kib"] is None:
            failures.append(f"{r['phase']}: relay died")
    if len(results) < len(phases):
        failures.append("not every phase ran")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"label": args.label, "secs": args.secs, "max_growth_mib": args.max_growth_mib,
                       "results": results, "failures": failures}, f, indent=2)
    if failures:
        print("\nFAIL: " + "; ".join(failures))
        return 1
    print(f"\nPASS: RSS growth within {args.max_growth_mib:g} MiB and every /healthz answered within 1 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
