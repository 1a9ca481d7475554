"""Interop: Python `websockets` (permessage-deflate on by default) against the
relay binary, over ws:// and wss:// (a test CA from `trustme`, trusted by the
client's ssl context).

    WSRELAY_BIN=target/debug/wsrelay tests/interop/.venv/bin/pytest tests/interop/python

(scripts/test-interop.sh sets up the venv and runs it.) Whether a message
travelled compressed is read from a byte-counting TCP proxy between client
and relay (`proxies` fixture; it does not terminate TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosedError
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.sync.client import connect

from conftest import TIMEOUT

MIB = 1 << 20
SCHEMES = ["ws", "wss"]


def compressible_text(n: int) -> str:
    """`n` bytes of a JSON chat log cut to length (ASCII; deflate shrinks it
    several times over)."""
    rows, size, i = [], 2, 0
    while size < n:
        row = json.dumps(
            {"id": i, "user": f"user{i % 17}", "room": "lobby", "text": f"message number {i} in the lobby", "ts": 1764900000 + i},
            separators=(",", ":"),
        )
        rows.append(row)
        size += len(row) + 1
        i += 1
    s = "[" + ",".join(rows) + "]"
    return s[:n] if len(s) >= n else s + " " * (n - len(s))


def open_ws(relay, client_ssl, scheme, path, *, compression="deflate", proxy=None):
    """A sync `websockets` client on `path`; deflate offered unless
    `compression=None`; through `proxy` when given."""
    url = relay.url(scheme, path, proxy.port if proxy else None)
    return connect(
        url,
        ssl=client_ssl if scheme == "wss" else None,
        compression=compression,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        max_size=MIB,
    )


def deflate_of(ws) -> PerMessageDeflate | None:
    found = [e for e in ws.protocol.extensions if isinstance(e, PerMessageDeflate)]
    return found[0] if found else None


def assert_deflate_negotiated(ws) -> None:
    header = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    params = [p.strip() for p in header.split(";")]
    assert params[0] == "permessage-deflate", header
    assert "server_no_context_takeover" in params, header
    assert "client_no_context_takeover" in params, header
    ext = deflate_of(ws)
    assert ext is not None, "websockets did not enable permessage-deflate"
    # The client's view: the server resets its context after each message,
    # and so must the client.
    assert ext.remote_no_context_takeover and ext.local_no_context_takeover


def payloads():
    """(id, message, compressible)."""
    return [
        ("text-small", "hello, relay", False),
        ("binary-small", os.urandom(100), False),
        ("text-1MiB-json", compressible_text(MIB), True),
        ("binary-1MiB-json", compressible_text(MIB).encode(), True),
        ("binary-1MiB-random", os.urandom(MIB), False),
        ("text-utf8", "żółć ✓ 🚀 " * 5000, False),
    ]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no-compression"])
@pytest.mark.parametrize(
    "name,message,compressible",
    [
pytest.param(*p, id=p[0]) for p in payloads()
    ],
)
def test_echo(relay, client_ssl, proxies, request, scheme, compression, name, message, compressible):
    proxy = proxies(scheme)
    with open_ws(relay, client_ssl, scheme, "/echo", compression=compression, proxy=proxy) as ws:
        if compression:
            assert_deflate_negotiated(ws)
        else:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert deflate_of(ws) is None
        up_before, _ = proxy.counts()
        ws.send(message)
        got = ws.recv(timeout=TIMEOUT)
        assert type(got) is type(message), "the echo keeps the opcode"
        assert len(got) == len(message)
        assert got == message
        sent = proxy.counts()[0] - up_before
        if compression and compressible:
            assert sent < len(message) / 4, f"{len(message)} bytes went up as {sent}: not compressed"
        elif not compression:
            assert sent >= len(message)


def test_incompressible_message_just_under_the_frame_limit_with_deflate(relay, client_ssl):
    """1 MiB - 4 KiB of random bytes, compressed (a little longer than the
    message): echoed. The full 1 MiB case is in test_echo: the relay's limit
    on a compressed frame allows deflate's overhead over max_frame_bytes."""
    with open_ws(relay, client_ssl, "wss", "/echo") as ws:
        assert_deflate_negotiated(ws)
        message = os.urandom(MIB - 4096)
        ws.send(message)
        assert ws.recv(timeout=TIMEOUT) == message


def test_async_client_echo_over_wss_with_deflate(relay, client_ssl):
    """The asyncio implementation too (the sync one shares its sans-IO core,
    not its I/O)."""

    async def run():
        async with async_connect(
            relay.url("wss", "/echo"), ssl=client_ssl, open_timeout=TIMEOUT, max_size=MIB
        ) as ws:
            assert_deflate_negotiated(ws)
            for message in ("small", compressible_text(300_000), os.urandom(50_000)):
                await ws.send(message)
                got = await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert got == message

    asyncio.run(run())


@pytest.mark.parametrize("sender_scheme", SCHEMES)
def test_room_fan_out_to_deflate_and_plain_members_over_both_transports(
    relay, client_ssl, proxies, sender_scheme
):
    """One room, four members: deflate and no-compression, over ws:// and
    wss://. Each receives exactly what was sent, in order; the deflate
    members receive the compressible messages compressed, the others
    uncompressed."""
    room = f"/rooms/py-fanout-{sender_scheme}"
    members = []
    with contextlib.ExitStack() as stack:
        for scheme in SCHEMES:
            for compression in ("deflate", None):
                proxy = proxies(scheme)
                ws = stack.enter_context(open_ws(relay, client_ssl, scheme, room, compression=compression, proxy=proxy))
                members.append((f"{scheme}/{compression}", ws, proxy, compression))
                if compression:
                    assert_deflate_negotiated(ws)
                else:
                    assert deflate_of(ws) is None
        with open_ws(relay, client_ssl, sender_scheme, room) as sender:
            messages = [
                "hi",
                compressible_text(MIB),
                os.urandom(64 * 1024),
                compressible_text(300_000).encode(),
                '{"text":"a small JSON message in a room"}',
            ]
            total = sum(len(m) for m in messages)
            compressible = MIB + 300_000
            before = {label: proxy.counts()[1] for label, _, proxy, _ in members}
            for m in messages:
                sender.send(m)
            for label, ws, proxy, compression in members:
                for i, m in enumerate(messages):
                    got = ws.recv(timeout=TIMEOUT)
                    assert type(got) is type(m), f"{label}: message {i} opcode"
                    assert got == m, f"{label}: message {i} ({len(m)} bytes) differs"
                down = proxy.counts()[1] - before[label]
                if compression:
                    assert down < total - compressible / 2, f"{label}: {down} bytes for {total}: not compressed"
                else:
                    assert down >= total, f"{label}: {down} bytes for {total}"


class Centrifuge:
    """Centrifugo client protocol v2, JSON: commands out, replies and pushes
    in (one or more newline-separated JSON objects per message)."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 1
        self.inbox: list[dict] = []

    def _read(self) -> None:
        data = self.ws.recv(timeout=TIMEOUT)
        assert isinstance(data, str), "the JSON protocol speaks text"
        for line in data.splitlines():
            if line.strip():
                self.inbox.append(json.loads(line))

    def _take(self, pred) -> dict:
        while True:
            for i, m in enumerate(self.inbox):
                if pred(m):
                    return self.inbox.pop(i)
            self._read()

    def call(self, method: str, params: dict) -> dict:
        cid = self.next_id
        self.next_id += 1
        self.ws.send(json.dumps({"id": cid, method: params}))
        reply = self._take(lambda m: m.get("id") == cid)
        assert "error" not in reply, reply
        return reply[method]

    def push(self) -> dict:
        return self._take(lambda m: "push" in m)["push"]


def test_centrifugo_protocol_over_wss_with_deflate(relay, client_ssl):
    """/connection/websocket over wss:// with deflate: connect, subscribe,
    publish; the publication reaches the publisher (subscribed) and a second
    subscriber on ws:// without compression, identical."""
    channel = "chat:interop"
    with open_ws(relay, client_ssl, "wss", "/connection/websocket") as zws, open_ws(
        relay, client_ssl, "ws", "/connection/websocket", compression=None
    ) as pws:
        assert_deflate_negotiated(zws)
        assert deflate_of(pws) is None
        z, p = Centrifuge(zws), Centrifuge(pws)
        for c in (z, p):
            connected = c.call("connect", {})
            assert connected.get("client"), connected
            c.call("subscribe", {"channel": channel})
        data = {"text": "hello over wss with deflate", "rows": [{"n": i, "text": f"row {i} of a long message"} for i in range(5000)]}
        assert len(json.dumps(data)) > 100_000
        assert z.call("publish", {"channel": channel, "data": data}) == {}
        for c in (z, p):
            push = c.push()
            assert push["channel"] == channel
            assert push["pub"]["data"] == data


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fragmented_compressed_message(relay, client_ssl, scheme):
    """A message sent as fragments (websockets compresses it as one
    message across its continuation frames, RSV1 on the first) echoes
    whole."""
    parts = [compressible_text(30_000), compressible_text(40_000), "end"]
    with open_ws(relay, client_ssl, scheme, "/echo") as ws:
        assert_deflate_negotiated(ws)
        ws.send(iter(parts))
        assert ws.recv(timeout=TIMEOUT) == "".join(parts)
        ws.send(iter([p.encode() for p in parts]))
        assert ws.recv(timeout=TIMEOUT) == "".join(parts).encode()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_server_max_window_bits_below_15_is_declined_and_the_connection_opens(relay, client_ssl, scheme):
    """docs/protocol.md: an offer with server_max_window_bits below 15 is
    declined; the handshake still succeeds, without compression."""
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=10, client_max_window_bits=True)
    url = relay.url(scheme, "/echo")
    with connect(
        url,
        ssl=client_ssl if scheme == "wss" else None,
        compression=None,
        extensions=[factory],
        open_timeout=TIMEOUT,
        max_size=MIB,
    ) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert deflate_of(ws) is None
        message = compressible_text(100_000)
        ws.send(message)
        assert ws.recv(timeout=TIMEOUT) == message


@pytest.mark.parametrize("scheme", SCHEMES)
def test_compressed_message_inflating_past_max_message_bytes_gets_1009(relay, client_ssl, scheme):
    """A compressed message whose inflated size is one byte over
    max_message_bytes (1 MiB) is refused with 1009 (it is small on the
    wire); one of exactly 1 MiB passes (test_echo)."""
    with open_ws(relay, client_ssl, scheme, "/echo") as ws:
        assert_deflate_negotiated(ws)
        ws.send("x" * (MIB + 1))
        with pytest.raises(ConnectionClosedError) as e:
            ws.recv(timeout=TIMEOUT)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009, e.value


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ping_is_answered_with_deflate(relay, client_ssl, scheme):
    """Control frames stay uncompressed with deflate negotiated: a ping with
    a payload gets its pong."""
    with open_ws(relay, client_ssl, scheme, "/echo") as ws:
        assert_deflate_negotiated(ws)
        pong = ws.ping(b"are you there")
        assert pong.wait(TIMEOUT), "no pong"
