"""The 3-node cluster benchmark behind loadtest/cluster-bench.sh (see its
header and docs/benchmarks.md "Cluster (3 nodes + Redis)").

A private redis-server (unix socket) and three wsrelay nodes with
broker = "redis" run on core 0, the generator on core 1. Measured, medians
over --runs:

  fanout   3,000 raw-room subscribers (1,000 per node), one publisher on
           node 1 at 1,000 msg/s: deliveries/s, loss, latency per node,
           same-node against cross-node (the Redis hop), Redis CPU per
           100k deliveries/s, relay CPU per delivery.
  churn    Centrifugo subscribers on distinct channels dropping and
           coming back (1,000 reconnects/s: each a subscribe and an
           unsubscribe) with redis_subscribe_linger 5s (default) and 0:
           Redis commands/s (INFO commandstats), Redis CPU, relay CPU.
  memory   bytes per history entry: the relay's own publish-with-history
           script run in Redis on a stream with MAXLEN, MEMORY USAGE.

CPU is utime+stime from /proc/PID/stat, sampled every 100 ms and
interpolated at the edges of the generator's measured window (its JSON
`nodes.window_unix_s`); Redis commands likewise from INFO commandstats.
Standard library only.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

CLK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- Redis: a minimal RESP client over the unix socket ----------------------


class Resp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        self.f = self.s.makefile("rb")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.s.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"bad RESP line {line!r}")

    def close(self):
        self.s.close()


def commandstats(r):
    """calls per command from INFO commandstats, and Redis' own CPU seconds
    (INFO cpu: getrusage, microseconds; /proc ticks are 10 ms) as "_cpu"."""
    text = r.cmd("INFO", "commandstats").decode() + r.cmd("INFO", "cpu").decode()
    out = {}
    for m in re.finditer(r"cmdstat_([\w|]+):calls=(\d+)", text):
        out[m.group(1)] = int(m.group(2))
    cpu = re.search(r"used_cpu_sys:([\d.]+).*?used_cpu_user:([\d.]+)", text, re.S)
    # Less the time spent answering these INFO calls themselves.
    info = re.search(r"cmdstat_info:calls=\d+,usec=(\d+)", text)
    out["_cpu"] = float(cpu.group(1)) + float(cpu.group(2)) - (int(info.group(1)) / 1e6 if info else 0)
    return out


def busy_ticks():
    """Busy ticks of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # less idle and iowait


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None


# --- processes --------------------------------------------------------------


class Cluster:
    def __init__(self, args, out):
        self.args = args
        self.out = out
        self.rdir = os.path.join(out, "redis")
        os.makedirs(self.rdir, exist_ok=True)
        self.sock = os.path.join(self.rdir, "redis.sock")
        self.redis_pid = None
        self.nodes = []  # (proc, port)

    def start_redis(self):
        if os.path.exists(self.sock):
            os.remove(self.sock)
        subprocess.run(
            ["taskset", "-c", "0", "redis-server", "--port", "0", "--unixsocket", self.sock,
             "--unixsocketperm", "700", "--daemonize", "yes", "--save", "", "--appendonly", "no",
             "--pidfile", os.path.join(self.rdir, "redis.pid"), "--dir", self.rdir,
             "--logfile", os.path.join(self.rdir, "redis.log")],
            check=True)
        for _ in range(500):
            try:
                r = Resp(self.sock)
                if r.cmd("PING") == "PONG":
                    r.close()
                    break
            except OSError:
                time.sleep(0.02)
        with open(os.path.join(self.rdir, "redis.pid")) as f:
            self.redis_pid = int(f.read().strip())
        log(f"redis-server pid {self.redis_pid} on unix://{self.sock}")

    def stop_redis(self):
        try:
            r = Resp(self.sock)
            r.cmd("SHUTDOWN", "NOSAVE")
        except (OSError, RuntimeError, ConnectionError):
            pass
        for _ in range(250):
            if cpu_ticks(self.redis_pid) is None:
                return
            time.sleep(0.02)

    def start_nodes(self, linger):
        self.stop_nodes()
        base = self.args.port
        for i in range(3):
            port = base + i
            cfg = os.path.join(self.out, f"node{i + 1}.toml")
            with open(cfg, "w") as f:
                f.write(
                    f'listen = "127.0.0.1:{port}"\nworkers = 1\nstats_interval = "0s"\n'
                    f'shutdown_timeout = "1s"\nbroker = "redis"\nredis_url = ["unix://{self.sock}"]\n'
                    f'redis_subscribe_linger = "{linger}"\ntoken_hmac_secret_key = "load-secret"\n'
                    '[[namespaces]]\nname = "chat"\nallow_subscribe_for_client = true\n'
                    "allow_publish_for_client = true\n")
            logf = open(os.path.join(self.out, f"node{i + 1}.log"), "a")
            p = subprocess.Popen(["taskset", "-c", "0", self.args.relay, "--config", cfg],
                                 stdout=logf, stderr=subprocess.STDOUT)
            self.nodes.append((p, port))
        for p, port in self.nodes:
            deadline = time.time() + 15
            while True:
                body = healthz(port)
                if body == "ok":
                    break
                if p.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"node on port {port} did not come up (healthz {body!r}); "
                                     f"see {self.out}/node*.log")
                time.sleep(0.05)
        log(f"3 nodes up (ports {base}-{base + 2}), redis_subscribe_linger = {linger}")

    def stop_nodes(self):
        for p, _ in self.nodes:
            p.terminate()
        for p, _ in self.nodes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.nodes = []

    def urls(self):
        return [f"ws://127.0.0.1:{port}" for _, port in self.nodes]

    def pids(self):
        return [p.pid for p, _ in self.nodes]


def healthz(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.split(b"\r\n\r\n", 1)[1].decode().strip()
    except (OSError, IndexError):
        return None


# --- sampling ----------------------------------------------------------------


class Sampler(threading.Thread):
    """Every 100 ms: wall time, CPU ticks of each pid, Redis commandstats."""

    def __init__(self, pids, sock):
        super().__init__(daemon=True)
        self.pids = pids
        self.r = Resp(sock)
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.time()
            ticks = [cpu_ticks(p) for p in self.pids] + [busy_ticks()]
            cs = commandstats(self.r)
            self.samples.append((t, ticks, cs))
            self.stop.wait(0.1)

    def finish(self):
        self.stop.set()
        self.join()
        self.r.close()

    def at(self, t, value):
        """value(sample) linearly interpolated at wall time t."""
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return value(s[0])
        for a, b in zip(s, s[1:]):
            if a[0] <= t <= b[0]:
                va, vb = value(a), value(b)
                w = (t - a[0]) / max(b[0] - a[0], 1e-9)
                return va + (vb - va) * w
        return value(s[-1])

    def delta(self, t0, t1, value):
        return self.at(t1, value) - self.at(t0, value)


def cpu_s(sampler, t0, t1, i):
    """CPU seconds of pid i over [t0, t1]; i = 0 is Redis (INFO cpu)."""
    if i == 0:
        return sampler.delta(t0, t1, lambda s: s[2]["_cpu"])
    return sampler.delta(t0, t1, lambda s: (s[1][i] or 0) / CLK)


def foreign_pct(sampler, t0, t1, ours_s, gen_pct):
    """CPU used by everything else on the machine in the window (other
    jobs on a shared machine), % of one core: busy − Redis − relays −
    generator."""
    busy = sampler.delta(t0, t1, lambda s: s[1][-1] / CLK)
    return 100 * (busy - ours_s) / (t1 - t0) - gen_pct


def run_gen(args, out, name, gen_args):
    path = os.path.join(out, "json", f"{name}.json")
    cmd = ["taskset", "-c", "1", args.gen, "--threads", "1", "--cpus", "1", "-q", "--json", path]
    cmd += gen_args
    with open(os.path.join(out, "log", f"{name}.log"), "w") as logf:
        logf.write(" ".join(cmd) + "\n")
        logf.flush()
        rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=120).returncode
    with open(path) as f:
        return json.load(f), rc, cmd


# --- scenarios ------------------------------------------------------------------


def fanout_run(args, cl, out, r, subscribers, name):
    pids = [cl.redis_pid] + cl.pids()
    smp = Sampler(pids, cl.sock)
    smp.start()
    gen_args = []
    for u in cl.urls():
        gen_args += ["--url", u]
    gen_args += ["--settle", "1s", "--warmup", "1s", "--duration", f"{args.secs}s",
                 "--drain", "3s", "fanout", "--subscribers", str(subscribers),
                 "--publishers", "1", "--rate", str(args.rate), "--roles"]
    j, rc, cmd = run_gen(args, out, f"{name}__{r}", gen_args)
    smp.finish()
    t0, t1 = j["nodes"]["window_unix_s"]
    win = t1 - t0
    m = j["messages"]
    n = j["nodes"]
    deliveries_s = m["received_per_s"]
    redis_cpu = cpu_s(smp, t0, t1, 0)
    relay_cpu = [cpu_s(smp, t0, t1, i) for i in (1, 2, 3)]
    pubs = smp.delta(t0, t1, lambda s: s[2].get("publish", 0))
    same, cross = n["same_node_latency"], n["cross_node_latency"]
    res = {
        "deliveries_per_s": deliveries_s,
        "sent_per_s": m["sent_per_s"],
        "lost": m["lost"], "duplicated": m["duplicated"], "reordered": m["reordered"],
        "expected": m["expected"], "delivered": m["delivered_unique"],
        "pass": j["pass"],
        "generator_cpu_pct": j["generator"]["cpu_percent_of_one_core"],
        "send_lag_p99_us": j["send_lag"]["p99_us"],
        "per_node": [{"url": x["url"], "receivers": x["receivers"],
                      "deliveries_per_s": x["received_per_s"], "lost": x["lost"],
                      "dup": x["duplicated"], "reordered": x["reordered"],
                      "p50_us": x["latency"]["p50_us"], "p99_us": x["latency"]["p99_us"],
                      "max_us": x["latency"]["max_us"]} for x in n["nodes"]],
        "same_p50_us": same["p50_us"], "same_p99_us": same["p99_us"],
        "cross_p50_us": cross["p50_us"], "cross_p99_us": cross["p99_us"],
        "hop_p50_us": cross["p50_us"] - same["p50_us"],
        "hop_p99_us": cross["p99_us"] - same["p99_us"],
        "window_s": win,
        "redis_cpu_pct": 100 * redis_cpu / win,
        "redis_publish_per_s": pubs / win,
        # % of one core Redis spends per 100k deliveries/s (the brief's unit;
        # Redis' work follows publications x subscribed nodes, not deliveries).
        "redis_cpu_pct_per_100k_deliveries_s": 100 * redis_cpu / win / (deliveries_s / 1e5)
        if deliveries_s else None,
        "redis_cpu_us_per_publish": 1e6 * redis_cpu / pubs if pubs else None,
        "relay_cpu_pct": [100 * c / win for c in relay_cpu],
        "relay_cpu_pct_total": 100 * sum(relay_cpu) / win,
        "other_load_pct": foreign_pct(smp, t0, t1, sum(relay_cpu) + cpu_s(smp, t0, t1, 0),
                                      j["generator"]["cpu_percent_of_one_core"]),
        "relay_cpu_ns_per_delivery": 1e9 * sum(relay_cpu) / (deliveries_s * win)
        if deliveries_s else None,
        "command": " ".join(cmd),
    }
    log(f"  {name} ({subscribers} subscribers) run {r}: {deliveries_s / 1e6:.2f}M deliveries/s, lost {m['lost']}, "
        f"same p50/p99 {same['p50_us']:.0f}/{same['p99_us']:.0f} us, cross "
        f"{cross['p50_us']:.0f}/{cross['p99_us']:.0f} us, redis {res['redis_cpu_pct']:.1f}% "
        f"of a core, relays {[round(x) for x in res['relay_cpu_pct']]}%")
    return res


def churn_run(args, cl, out, linger, r):
    pids = [cl.redis_pid] + cl.pids()
    smp = Sampler(pids, cl.sock)
    smp.start()
    conns = args.churn_conns
    # Each 100 ms the generator drops ceil(conns x f) subscribers; they come
    # back 300 ms later: churn_rate reconnects (subscribe + unsubscribe) /s.
    frac = args.churn_rate / 10 / conns
    gen_args = []
    for u in cl.urls():
        gen_args += ["--url", u]
    gen_args += ["--settle", "1s", "--warmup", "1s", "--duration", f"{args.secs}s",
                 "--max-loss", "1", "pubsub", "--conns", str(conns), "--channels", str(conns),
                 "--publishers", "1", "--rate", "100", "--namespace", "chat",
                 "--hmac-secret", "load-secret", "--reconnect-every", "100ms",
                 "--reconnect-fraction", f"{frac:.6f}", "--reconnect-away", "300ms"]
    j, rc, cmd = run_gen(args, out, f"churn_linger{linger}__{r}", gen_args)
    smp.finish()
    t0, t1 = j["nodes"]["window_unix_s"]
    win = t1 - t0
    rec = j["pubsub"]["recovery"] or {}
    cmds = {}
    for c in ("subscribe", "unsubscribe", "publish"):
        cmds[c] = smp.delta(t0, t1, lambda s, c=c: s[2].get(c, 0)) / win
    # (Without the sampler's own INFO calls.)
    total = smp.delta(t0, t1, lambda s: sum(v for k, v in s[2].items() if k not in ("info", "_cpu"))) / win
    redis_cpu = cpu_s(smp, t0, t1, 0)
    relay_cpu = [cpu_s(smp, t0, t1, i) for i in (1, 2, 3)]
    measured = j["measured_s"]
    res = {
        "linger": linger,
        # Drops happen over warm-up + duration, each followed by a reconnect.
        "reconnects_per_s": rec.get("drops", 0) / (measured + j["warmup_s"]),
        "drops": rec.get("drops", 0), "reconnects": rec.get("reconnects", 0),
        "resubscribed": rec.get("resubscribed", 0), "retries": rec.get("retries", 0),
        "errors": j["pubsub"]["errors"],
        "redis_commands_per_s": total,
        "redis_subscribe_per_s": cmds["subscribe"],
        "redis_unsubscribe_per_s": cmds["unsubscribe"],
        "redis_publish_per_s": cmds["publish"],
        "redis_cpu_pct": 100 * redis_cpu / win,
        "relay_cpu_pct": [100 * c / win for c in relay_cpu],
        "relay_cpu_pct_total": 100 * sum(relay_cpu) / win,
        "other_load_pct": foreign_pct(smp, t0, t1, sum(relay_cpu) + redis_cpu,
                                      j["generator"]["cpu_percent_of_one_core"]),
        "window_s": win,
        "command": " ".join(cmd),
    }
    log(f"  churn linger={linger} run {r}: {res['reconnects_per_s']:.0f} reconnects/s, redis "
        f"{total:.0f} commands/s (SUBSCRIBE {cmds['subscribe']:.0f}, UNSUBSCRIBE "
        f"{cmds['unsubscribe']:.0f}), redis {res['redis_cpu_pct']:.1f}% of a core, relays "
        f"{res['relay_cpu_pct_total']:.0f}% in all")
    return res


def memory_per_entry(cl, repo):
    """Bytes per history entry: the relay's publish-with-history script
    (src/broker/scripts.rs) run in Redis with realistic envelopes."""
    with open(os.path.join(repo, "src/broker/scripts.rs")) as f:
        script = re.search(r'pub const PUBLISH: &str = r#"(.*?)"#;', f.read(), re.S).group(1)
    r = Resp(cl.sock)
    r.cmd("SELECT", 9)
    r.cmd("FLUSHDB")
    out = []
    info = b'{"client":"0f5d6c1e-3f1a-4c55-9a4e-6d1b2f7e8a90","user":"user-18273"}'
    chat = (b'{"type":"message","room":"support","user":"user-18273","text":"Thanks, the'
            b' order shows as shipped now. Do you have the tracking number?","ts":1733390000123}')
    quote = b'{"type":"quote","s":"KITE","q":[' + b",".join(
        b'{"p":%d.%02d,"z":%d,"d":"%s"}' % (6443 + i, (i * 7) % 100, 100 * (i % 23 + 1),
                                            b"B" if i % 2 else b"S") for i in range(14)) + b"]}"
    for label, payload in (("chat message", chat), ("market quote", quote)):
        for n, maxlen in ((1000, 1000), (10000, 1000), (100, 100)):
            ch = f"room:{label.split()[0]}-{n}-{maxlen}"
            meta, stream = f"wsrelay.meta.{ch}", f"wsrelay.stream.{ch}"
            chb = ch.encode()
            head = bytes([1, 2]) + os.urandom(16) + len(chb).to_bytes(2, "big") + chb
            tail = bytes([1]) + len(info).to_bytes(4, "big") + info + \
                len(payload).to_bytes(4, "big") + payload
            before = int(re.search(rb"used_memory:(\d+)", r.cmd("INFO", "memory")).group(1))
            for _ in range(n):
                r.cmd("EVAL", script, 2, meta, stream, f"wsrelay.ch.{ch}", head, tail,
                      maxlen, 300000, "0a1b2c3d")
            after = int(re.search(rb"used_memory:(\d+)", r.cmd("INFO", "memory")).group(1))
            usage = r.cmd("MEMORY", "USAGE", stream, "SAMPLES", 0)
            kept = r.cmd("XLEN", stream)
            env = len(head) + 1 + len("%d.0a1b2c3d" % n) + len(tail)
            out.append({"payload": label, "data_bytes": len(payload), "envelope_bytes": env,
                        "published": n, "maxlen": maxlen, "kept": kept,
                        "stream_bytes": usage, "bytes_per_entry": usage / kept,
                        "used_memory_delta_per_entry": (after - before) / kept})
            log(f"  history {label}: {kept} entries of a {env}-byte envelope (MAXLEN {maxlen}, "
                f"{n} published): {usage / kept:.0f} B/entry by MEMORY USAGE, "
                f"{(after - before) / kept:.0f} B/entry by INFO memory")
    r.cmd("FLUSHDB")
    r.close()
    return out


def memory_per_subscription(cl, n=20000):
    """Redis memory per subscribed channel: the first node subscribing to a
    channel (the channel's entry and the subscriber's), then each further
    node (one more subscriber of a known channel)."""
    names = [f"wsrelay.ch.room:chat-{i:06d}" for i in range(n)]

    def used(r):
        return int(re.search(rb"used_memory:(\d+)", r.cmd("INFO", "memory")).group(1))

    probe = Resp(cl.sock)
    out = {"channels": n}
    subs = []
    for label in ("first_node_bytes_per_channel", "next_node_bytes_per_channel"):
        before = used(probe)
        c = Resp(cl.sock)
        for i in range(0, n, 500):
            batch = names[i:i + 500]
            c.s.sendall(b"".join(
                [b"*%d\r\n$9\r\nSUBSCRIBE\r\n" % (len(batch) + 1)] +
                [b"$%d\r\n%s\r\n" % (len(x), x.encode()) for x in batch]))
            for _ in batch:
                c._read()
        subs.append(c)
        out[label] = (used(probe) - before) / n
    for c in subs:
        c.close()
    probe.close()
    log(f"  subscriptions: {out['first_node_bytes_per_channel']:.0f} B per channel for the first node "
        f"subscribed, {out['next_node_bytes_per_channel']:.0f} B for each further node ({n} channels)")
    return out


# --- summary ---------------------------------------------------------------------


def med(runs, key):
    vals = [x[key] for x in runs if x.get(key) is not None]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--secs", type=int, default=5, help="measured seconds per run (after 1s warm-up)")
    ap.add_argument("--subscribers", type=int, default=3000)
    ap.add_argument("--light-subscribers", type=int, default=300,
                    help="second fan-out point, light load: the Redis hop without queueing")
    ap.add_argument("--rate", type=int, default=1000, help="fanout publications/s")
    ap.add_argument("--churn-rate", type=int, default=1000, help="reconnects/s (each a subscribe + an unsubscribe)")
    ap.add_argument("--churn-conns", type=int, default=1500)
    ap.add_argument("--port", type=int, default=19101, help="node 1's port (nodes 2, 3: +1, +2)")
    ap.add_argument("--relay", default="target/release/wsrelay")
    ap.add_argument("--gen", default="target/release/wsrelay-load")
    ap.add_argument("--out", default=time.strftime("target/bench/cluster-%Y%m%d-%H%M%S"))
    ap.add_argument("--skip", default="", help="comma list of fanout,churn,memory to skip")
    args = ap.parse_args()
    repo = os.getcwd()
    out = os.path.abspath(args.out)
    for d in ("json", "log"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cl = Cluster(args, out)
    cl.start_redis()
    result = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": args.runs,
              "params": vars(args) | {"out": out},
              "machine": f"{os.cpu_count()} cores; redis-server and the 3 nodes on core 0, generator on core 1"}
    try:
        if "fanout" not in skip:
            cl.start_nodes("5s")
            for name, subs in (("fanout", args.subscribers), ("fanout_light", args.light_subscribers)):
                runs = [fanout_run(args, cl, out, r, subs, name) for r in range(args.runs)]
                m = {k: med(runs, k) for k in runs[0]
                     if isinstance(runs[0][k], (int, float)) and not isinstance(runs[0][k], bool)}
                for key in ("p50_us", "p99_us", "deliveries_per_s"):
                    m[f"per_node_{key}"] = [
                        statistics.median(x["per_node"][i][key] for x in runs) for i in range(3)]
                result[name] = {"subscribers": subs, "runs": runs, "median": m}
        if "churn" not in skip:
            result["churn"] = {}
            for linger in ("5s", "0s"):
                cl.start_nodes(linger)
                runs = [churn_run(args, cl, out, linger, r) for r in range(args.runs)]
                result["churn"][linger] = {"runs": runs, "median": {
                    k: med(runs, k) for k in runs[0] if isinstance(runs[0][k], (int, float))
                    and not isinstance(runs[0][k], bool)}}
        if "memory" not in skip:
            result["history_memory"] = memory_per_entry(cl, repo)
            result["subscription_memory"] = memory_per_subscription(cl)
    finally:
        cl.stop_nodes()
        cl.stop_redis()
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = table(result)
    with open(os.path.join(out, "result.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"written: {out}/result.json, {out}/result.md")
    bad = [r for k in ("fanout", "fanout_light") for r in result.get(k, {}).get("runs", [])
           if r["lost"] or r["duplicated"] or r["reordered"]]
    return 1 if bad else 0


def table(res):
    o = [f"# Cluster (3 nodes + Redis): commit {res['commit']}, {res['date']}, "
         f"medians of {res['runs']} runs", "", res["machine"], ""]
    fs = [res[k] for k in ("fanout", "fanout_light") if k in res]
    if fs:
        ms = [f["median"] for f in fs]

        def row(name, fmt):
            o.append(f"| {name} | " + " | ".join(fmt(m) for m in ms) + " |")

        o += ["## Fan-out across nodes (1 publisher on node 1 at "
              f"{res['params']['rate']} msg/s, subscribers spread evenly)", "",
              "| figure | " + " | ".join(f"{f['subscribers']:,} subscribers" for f in fs) + " |",
              "|---|" + "---|" * len(fs)]
        row("deliveries/s", lambda m: f"{m['deliveries_per_s'] / 1e6:.3f}M (sent {m['sent_per_s']:.0f}/s)")
        o.append("| lost / dup / reordered (all runs) | " + " | ".join(
            f"{sum(r['lost'] for r in f['runs'])} / {sum(r['duplicated'] for r in f['runs'])} / "
            f"{sum(r['reordered'] for r in f['runs'])}" for f in fs) + " |")
        for i in range(3):
            row(f"node {i + 1}: deliveries/s, p50 / p99",
                lambda m, i=i: f"{m['per_node_deliveries_per_s'][i] / 1e3:.0f}k, "
                f"{m['per_node_p50_us'][i] / 1e3:.2f} / {m['per_node_p99_us'][i] / 1e3:.2f} ms")
        row("same-node p50 / p99", lambda m: f"{m['same_p50_us'] / 1e3:.2f} / {m['same_p99_us'] / 1e3:.2f} ms")
        row("cross-node p50 / p99", lambda m: f"{m['cross_p50_us'] / 1e3:.2f} / {m['cross_p99_us'] / 1e3:.2f} ms")
        row("Redis hop (cross − same) p50 / p99", lambda m: f"{m['hop_p50_us'] / 1e3:.2f} / {m['hop_p99_us'] / 1e3:.2f} ms")
        row("Redis CPU", lambda m: f"{m['redis_cpu_pct']:.2f}% of a core ({m['redis_publish_per_s']:.0f} PUBLISH/s)")
        row("Redis CPU per 100k deliveries/s", lambda m: f"{m['redis_cpu_pct_per_100k_deliveries_s']:.3f}% of a core")
        row("Redis CPU per PUBLISH (to 3 subscribed nodes)", lambda m: f"{m['redis_cpu_us_per_publish']:.1f} µs")
        row("relay CPU (3 nodes together)", lambda m: f"{m['relay_cpu_pct_total']:.0f}% of a core")
        row("relay CPU per delivery", lambda m: f"{m['relay_cpu_ns_per_delivery']:.0f} ns")
        row("other jobs on the machine (not ours)", lambda m: f"{m['other_load_pct']:.0f}% of a core")
        row("generator CPU, send lag p99", lambda m: f"{m['generator_cpu_pct']:.0f}% of a core, {m['send_lag_p99_us'] / 1e3:.2f} ms")
        o.append("")
    c = res.get("churn")
    if c:
        o += ["## Subscribe-on-demand under churn (reconnecting subscribers, one channel each)", "",
              "| redis_subscribe_linger | reconnects/s | Redis commands/s | SUBSCRIBE/s | UNSUBSCRIBE/s | Redis CPU | relay CPU (3 nodes) | other jobs |",
              "|---|---|---|---|---|---|---|---|"]
        for linger, v in c.items():
            m = v["median"]
            o.append(f"| {linger} | {m['reconnects_per_s']:.0f} | {m['redis_commands_per_s']:.0f} | "
                     f"{m['redis_subscribe_per_s']:.0f} | {m['redis_unsubscribe_per_s']:.0f} | "
                     f"{m['redis_cpu_pct']:.1f}% | {m['relay_cpu_pct_total']:.0f}% | {m['other_load_pct']:.0f}% |")
        o.append("")
    h = res.get("history_memory")
    if h:
        o += ["## Memory per history entry (publish-with-history script, MEMORY USAGE of the stream)", "",
              "| payload | data B | envelope B | published | MAXLEN | B/entry (MEMORY USAGE) | B/entry (INFO used_memory) |",
              "|---|---|---|---|---|---|---|"]
        for x in h:
            o.append(f"| {x['payload']} | {x['data_bytes']} | {x['envelope_bytes']} | {x['published']} | "
                     f"{x['maxlen']} | {x['bytes_per_entry']:.0f} | {x['used_memory_delta_per_entry']:.0f} |")
        o.append("")
    sm = res.get("subscription_memory")
    if sm:
        o += [f"Redis memory per subscribed channel ({sm['channels']:,} channels): "
              f"{sm['first_node_bytes_per_channel']:.0f} B for the first node, "
              f"{sm['next_node_bytes_per_channel']:.0f} B for each further node.", ""]
    return "\n".join(o) + "\n"


if __name__ == "__main__":
    sys.exit(main())
