#!/usr/bin/env python3
"""Memory returned after connection bursts (Python 3, standard library only).

Starts the relay itself (loopback only), runs --rounds bursts, and samples
the relay's VmRSS from /proc/PID/status twice a second. One burst:

  stallers  N connections on /echo that send --stall-bytes of binary
            messages and never read: the relay's outbound queue for each
            fills to max_outbound_bytes (the relay runs with
            slow_consumer = "drop", so the queues stay full until the
            connections go).
  partials  N connections that each send a frame header announcing
            --announce-bytes, then --partial-bytes of payload, and idle.

When every byte is sent, the burst is held for --hold seconds, then every
connection is closed at once (the burst's end). RSS is followed for
--settle seconds (30 by default). Per round it prints the baseline (RSS
before the round), the peak, RSS --settle seconds after the end, and the
share of the growth returned, counted against the first round's baseline
so that a ratchet from round to round counts against the later rounds.

Criterion (PASS/FAIL line): every round grows RSS by at least --min-growth
MiB over the first baseline, and --settle seconds after its end at least
--return-pct % of that growth is back with the system.

Bounded: every wait has a deadline, the relay is stopped at the end (and on
any error), and the only address used is 127.0.0.1.
"""

import argparse
import base64
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

from procstat import rss_kib  # loadtest/procstat.py, beside this script

MiB = 1024 * 1024


def parse_size(text):
    t = text.strip().lower()
    for suffix, mult in (("mib", MiB), ("kib", 1024), ("m", MiB), ("k", 1024), ("b", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def client_frame(opcode, payload, fin=True, announce=None):
    """A masked client frame header + payload. The mask key is zero, which
    RFC 6455 allows (the key must be unpredictable to intermediaries, not
    non-zero); it keeps the payload as is, so Python need not XOR
    hundreds of MiB."""
    n = len(payload) if announce is None else announce
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def handshake(sock, path, deadline):
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    sock.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during handshake")
        buf += chunk
    if not buf.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(buf.split(b"\r\n", 1)[0].decode(errors="replace"))


def open_conns(port, path, count, rcvbuf, deadline):
    conns = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so the advertised window stays small: a
            # staller's unread echoes wait in the relay's queue, not here.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(max(0.1, deadline - time.monotonic()))
        s.connect(("127.0.0.1", port))
        handshake(s, path, deadline)
        s.setblocking(False)
        conns.append(s)
    return conns


def push_all(jobs, deadline, sample):
    """Sends each (socket, bytes) completely, non-blocking, until the
    deadline. Returns the number of bytes left unsent."""
    sel = selectors.DefaultSelector()
    left = 0
    for s, data in jobs:
        sel.register(s, selectors.EVENT_WRITE, [memoryview(data), 0])
    active = len(jobs)
    while active and time.monotonic() < deadline:
        sample()
        for key, _ in sel.select(timeout=0.2):
            view, off = key.data
            try:
                n = key.fileobj.send(view[off : off + (1 << 20)])
            except (BlockingIOError, InterruptedError):
                continue
            key.data[1] = off + n
            if key.data[1] >= len(view):
                sel.unregister(key.fileobj)
                active -= 1
    for key in list(sel.get_map().values()):
        left += len(key.data[0]) - key.data[1]
    sel.close()
    return left


class Sampler:
    def __init__(self, pid, interval=0.5):
        self.pid = pid
        self.interval = interval
        self.next = 0.0
        self.samples = []  # (monotonic, kib)

    def __call__(self, force=False):
        now = time.monotonic()
        if force or now >= self.next:
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((now, kib))
            self.next = now + self.interval
            return kib
        return None

    def sleep(self, secs):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            self(force=True)
            time.sleep(min(self.interval, max(0.0, end - time.monotonic())))


def run_round(args, port, sampler, base1):
    deadline = time.monotonic() + args.burst_timeout
    sampler.sleep(1.0)
    baseline = sampler(force=True)
    t0 = time.monotonic()
    stallers = open_conns(port, "/echo", args.stallers, 4096, deadline)
    partials = open_conns(port, "/echo", args.partials, 0, deadline)
    msg = client_frame(0x2, os.urandom(args.msg_bytes))
    per_staller = msg * max(1, args.stall_bytes // len(msg))
    partial = client_frame(
        0x2, os.urandom(args.partial_bytes), announce=args.announce_bytes
    )
    jobs = [(s, per_staller) for s in stallers] + [(s, partial) for s in partials]
    unsent = push_all(jobs, deadline, sampler)
    sent_at = time.monotonic()
    sampler.sleep(args.hold)
    burst = [k for t, k in sampler.samples if t >= t0]
    peak = max(burst)
    for s in stallers + partials:
        s.close()
    end = time.monotonic()
    settle_deadline = end + args.settle
    back_at = None
    growth = peak - base1
    while True:
        kib = sampler(force=True)
        now = time.monotonic()
        if back_at is None and kib is not None and kib - base1 <= growth * (1 - args.return_pct / 100):
            back_at = now - end
        if now >= settle_deadline:
            after = kib
            break
        time.sleep(min(0.5, max(0.0, settle_deadline - now)))
    returned = 100.0 * (peak - after) / growth if growth > 0 else 0.0
    return {
        "baseline_kib": baseline,
        "peak_kib": peak,
        "after_kib": after,
        "growth_kib": growth,
        "returned_pct": returned,
        "back_within_s": back_at,
        "send_s": sent_at - t0,
        "unsent_bytes": unsent,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relay", default="target/release/wsrelay")
    p.add_argument("--relay-cpu", default="0", help="taskset CPU list for the relay ('' = no taskset)")
    p.add_argument("--relay-arg", action="append", default=[], help="extra relay flag (repeatable)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stallers", type=int, default=300)
    p.add_argument("--stall-bytes", type=parse_size, default=parse_size("1536KiB"))
    p.add_argument("--msg-bytes", type=parse_size, default=parse_size("16KiB"))
    p.add_argument("--partials", type=int, default=600)
    p.add_argument("--partial-bytes", type=parse_size, default=parse_size("512KiB"))
    p.add_argument("--announce-bytes", type=parse_size, default=parse_size("1MiB"))
    p.add_argument("--hold", type=float, default=2.0, help="seconds the burst is held once sent")
    p.add_argument("--settle", type=float, default=30.0, help="seconds after the burst's end")
    p.add_argument("--burst-timeout", type=float, default=90.0)
    p.add_argument("--min-growth", type=float, default=200.0, help="MiB")
    p.add_argument("--return-pct", type=float, default=90.0)
    p.add_argument("--label", default="")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    if args.stallers + args.partials > 5000:
        sys.exit("at most 5,000 connections per burst")
    raise_nofile()
    port = free_port()
    cmd = [
        args.relay,
        "--listen", f"127.0.0.1:{port}",
        "--workers", str(args.workers),
        "--max-connections", "10000",
        "--slow-consumer", "drop",
        "--stats-interval", "0",
        "--log-level", "warn",
    ] + args.relay_arg
    if args.relay_cpu:
        cmd = ["taskset", "-c", args.relay_cpu] + cmd
    relay = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    results = []
    try:
        # Wait for the listener (bounded).
        deadline = time.monotonic() + 15
        while True:
            if relay.poll() is not None:
                sys.exit(f"relay exited early ({relay.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("relay never listened")
                time.sleep(0.1)
        sampler = Sampler(relay.pid)
        # Warm up: one echo round trip, then let start-up allocations settle.
        w = open_conns(port, "/echo", 1, 0, time.monotonic() + 10)[0]
        w.setblocking(True)
        w.sendall(client_frame(0x1, b"warm-up"))
        w.settimeout(5)
        w.recv(64)
        w.close()
        sampler.sleep(3.0)
        base1 = sampler(force=True)
        for r in range(args.rounds):
            res = run_round(args, port, sampler, base1)
            res["round"] = r + 1
            results.append(res)
            b = res["back_within_s"]
            back = "-" if b is None else f"{b:.1f} s"
            print(
                f"round {r + 1}: baseline {res['baseline_kib'] / 1024:.1f} MiB, "
                f"peak {res['peak_kib'] / 1024:.1f} MiB, "
                f"after {args.settle:.0f} s {res['after_kib'] / 1024:.1f} MiB, "
                f"returned {res['returned_pct']:.1f} % of {res['growth_kib'] / 1024:.1f} MiB "
                f"(back within {args.return_pct:.0f} % after {back}; "
                f"burst sent in {res['send_s']:.1f} s, {res['unsent_bytes']} B unsent)",
                flush=True,
            )
    finally:
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(timeout=15)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()

    failures = []
    for res in results:
        if res["growth_kib"] < args.min_growth * 1024:
            failures.append(f"round {res['round']} grew only {res['growth_kib'] / 1024:.0f} MiB")
        if res["returned_pct"] < args.return_pct:
            failures.append(f"round {res['round']} returned {res['returned_pct']:.1f} %")
    if len(results) < args.rounds:
        failures.append("not every round ran")
    ratchet = (results[-1]["after_kib"] - results[0]["after_kib"]) / 1024 if results else 0
    label = f"{args.label}: " if args.label else ""
    verdict = "PASS" if not failures else "FAIL"
    print(
        f"{label}{verdict}: first baseline {base1 / 1024:.1f} MiB; after-{args.settle:.0f}s "
        f"last - first round {ratchet:+.1f} MiB; criterion: growth >= {args.min_growth:.0f} MiB and "
        f">= {args.return_pct:.0f} % returned within {args.settle:.0f} s in every round"
        + (f" ({'; '.join(failures)})" if failures else "")
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"label": args.label, "base1_kib": base1, "rounds": results,
                       "verdict": verdict, "args": vars(args)}, f, indent=1)
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
