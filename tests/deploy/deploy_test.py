"""Clients for scripts/test-deploy.sh: wsrelay behind nginx, behind HAProxy with the
PROXY protocol, and its graceful stop as systemd drives it.

Every client connects from its own loopback address (127.0.0.3, 127.0.0.4, ...; all
of 127.0.0.0/8 is local on Linux) while the proxies reach the relay from 127.0.0.1,
the relay's only trusted proxy. So the relay can only tell the clients apart, and
a per-IP limit of 1 can only refuse the second connection from the same client,
if it reads the client's address from what the proxy forwards.

Each subcommand exits 0 when every check passed, 1 (with the failed check) otherwise.
Every wait is bounded (TIMEOUT seconds), none depends on a sub-second window.
"""

import argparse
import asyncio
import http.client
import signal
import socket
import ssl
import subprocess
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)
    print(f"  ok: {what}", flush=True)


def tls_context(ca):
    if ca is None:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    return ctx


async def join(url, ctx, source, headers=None):
    """Opens a WebSocket from `source` (a loopback address); returns it."""
    return await connect(
        url,
        ssl=ctx,
        additional_headers=headers or {},
        local_addr=(source, 0),
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        ping_interval=None,
    )


async def refused_with(url, ctx, source, headers=None):
    """The HTTP status the handshake was refused with, or None if it succeeded."""
    try:
        ws = await join(url, ctx, source, headers)
    except InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    return None


def publish(host, port, ctx, room, token, body, source):
    """POST /publish/{room} through the proxy; returns the HTTP status."""
    if ctx is None:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT, source_address=(source, 0))
    else:
        conn = http.client.HTTPSConnection(
            host, port, timeout=TIMEOUT, context=ctx, source_address=(source, 0)
        )
    try:
        conn.request(
            "POST",
            f"/publish/{room}",
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


async def receive(ws):
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


def split_url(url):
    scheme, rest = url.split("://", 1)
    hostport = rest.split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return scheme, host, int(port)


async def proxied(args):
    """Common to both proxies: per-IP limit on the forwarded address, publish."""
    ctx = tls_context(args.ca)
    scheme, host, port = split_url(args.proxy)
    room = f"{args.proxy}/rooms/x"

    a = await join(room, ctx, "127.0.0.3")
    check(True, "client A (127.0.0.3) joined /rooms/x through the proxy")
    b_headers = {"X-Forwarded-For": "127.0.0.3"} if args.forge else {}
    b = await join(room, ctx, "127.0.0.4", b_headers)
    if args.forge:
        check(
            True,
            "client B (127.0.0.4, forged X-Forwarded-For: 127.0.0.3) joined: the relay counts "
            "neither the proxy's address nor the forged one",
        )
    else:
        check(True, "client B (127.0.0.4) joined: the relay does not count the proxy's address")
    status = await refused_with(room, ctx, "127.0.0.3")
    check(
        status == 429,
        f"a second client from 127.0.0.3 is refused with 429 (max_connections_per_ip = 1); got {status}",
    )

    body = f"hello through {args.name}"
    status = await asyncio.to_thread(publish, host, port, ctx, "x", args.token, body, "127.0.0.6")
    check(status in (200, 202, 204), f"POST /publish/x through the proxy is accepted; got {status}")
    for name, ws in (("A", a), ("B", b)):
        got = await receive(ws)
        check(got == body, f"client {name} received the publish; got {got!r}")
    await a.close()
    await b.close()

    if args.direct_xff:
        # An untrusted peer (127.0.0.5, straight to the relay) forging the header of a
        # client that holds its one connection: ignored, so not refused.
        hold = await join(room, ctx, "127.0.0.3")
        status = await refused_with(f"{args.direct_xff}/rooms/x", None, "127.0.0.5", {"X-Forwarded-For": "127.0.0.3"})
        check(
            status is None,
            f"X-Forwarded-For from an untrusted peer is ignored (not counted as 127.0.0.3); got {status}",
        )
        await hold.close()

    if args.raw:
        await raw_refused(args.raw)


UPGRADE = (
    b"GET /rooms/x HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def raw_talk(host, port, data):
    """Sends `data` from 127.0.0.1 (a trusted peer); returns (bytes received, whether
    the relay closed the connection within 2 x TIMEOUT)."""
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + TIMEOUT * 2
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                return got, True
            except TimeoutError:
                continue
            if not chunk:
                return got, True
            got += chunk
        return got, False


async def raw_refused(target):
    """A client that skips the PROXY hop is refused: with a plain upgrade request at
    once, silent ones after a bounded wait."""
    host, port = target.rsplit(":", 1)
    got, closed = await asyncio.to_thread(raw_talk, host, port, UPGRADE)
    first = got.split(b"\r\n", 1)[0]
    check(b" 101 " not in first + b" ", f"a raw TCP client without a PROXY header is not upgraded (answer: {first!r})")
    check(closed, "... and is disconnected")
    got, closed = await asyncio.to_thread(raw_talk, host, port, b"")
    check(closed and b" 101 " not in got, f"a silent raw TCP client is disconnected within {2 * TIMEOUT:.0f}s")


async def stop(args):
    """Runs the relay as the unit's ExecStart does, then stops it as systemd does."""
    proc = subprocess.Popen(args.command)
    try:
        ws = None
        deadline = time.monotonic() + TIMEOUT
        while ws is None:
            try:
                ws = await join(f"{args.url}/rooms/x", None, "127.0.0.3")
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise CheckFailed(f"the relay did not accept a WebSocket (exit status {proc.poll()})")
                await asyncio.sleep(0.1)
        check(True, "a client joined /rooms/x")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(ws.recv(), args.stop_timeout)
            raise CheckFailed("the client received a message instead of a close")
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            check(code == 1001, f"SIGTERM: the client got close 1001; got {code}")
        try:
            rc = await asyncio.to_thread(proc.wait, args.stop_timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the relay did not exit within TimeoutStopSec ({args.stop_timeout}s)")
        took = time.monotonic() - t0
        check(rc == 0, f"the relay exited with status 0 (so Restart=on-failure does not restart it); got {rc}")
        check(took < args.stop_timeout, f"... after {took:.1f}s, within TimeoutStopSec ({args.stop_timeout}s)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    px = sub.add_parser("proxied", help="clients through a proxy")
    px.add_argument("--name", required=True, help="label in messages")
    px.add_argument("--proxy", required=True, help="wss://host:port of the proxy")
    px.add_argument("--ca", help="CA file for wss")
    px.add_argument("--token", required=True, help="publish_token")
    px.add_argument("--forge", action="store_true", help="client B forges X-Forwarded-For")
    px.add_argument("--direct-xff", help="ws://host:port of the relay itself (untrusted-peer check)")
    px.add_argument("--raw", help="host:port of the relay itself (PROXY header required)")
    st = sub.add_parser("stop", help="graceful stop on SIGTERM")
    st.add_argument("--url", required=True, help="ws://host:port the command listens on")
    st.add_argument("--stop-timeout", type=float, required=True, help="TimeoutStopSec, seconds")
    st.add_argument("command", nargs=argparse.REMAINDER, help="-- relay command")
    args = p.parse_args()
    if args.cmd == "stop":
        if args.command[:1] == ["--"]:
            args.command = args.command[1:]
    try:
        asyncio.run(proxied(args) if args.cmd == "proxied" else stop(args))
    except CheckFailed as e:
        print(f"  FAILED: {e}", flush=True)
        sys.exit(1)
    except (OSError, InvalidStatus, ConnectionClosed, asyncio.TimeoutError) as e:
        print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
