"""Harness for the Python interop suite: the real relay binary with a plain and
a TLS listener and permessage-deflate on, a throwaway CA and server
certificate made at run time with `trustme` (nothing secret in the
repository), and a byte-counting TCP proxy to see on the wire whether a
message travelled compressed.

Environment: WSRELAY_BIN, the relay binary (default target/debug/wsrelay,
then target/release/wsrelay, under the repository root).
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trustme

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]

#: Hang guard for every wait (seconds); never a synchronisation window.
TIMEOUT = 20.0


def relay_binary() -> str:
    env = os.environ.get("WSRELAY_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = REPO_ROOT / "target" / profile / "wsrelay"
        if p.exists():
            return str(p)
    raise RuntimeError("no relay binary: cargo build --bin wsrelay, or set WSRELAY_BIN")


def free_port() -> int:
    """A port that was free a moment ago (the relay does not log its TLS port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        # A TOML literal string: the paths and names used here have no quote.
        assert "'" not in v and "\n" not in v, v
        return f"'{v}'"
    raise TypeError(v)


def to_toml(config: dict, namespaces: list[dict]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in config.items()]
    for ns in namespaces:
        lines += ["", "[[namespaces]]"] + [f"{k} = {toml_value(v)}" for k, v in ns.items()]
    return "\n".join(lines) + "\n"


class Relay:
    """A running relay: `url(scheme, path)`, `port_of(scheme)`, `log()`."""

    def __init__(self, proc: subprocess.Popen, port: int, tls_port: int, log_path: pathlib.Path):
        self.proc = proc
        self.port = port
        self.tls_port = tls_port
        self.log_path = log_path

    def port_of(self, scheme: str) -> int:
        return self.tls_port if scheme == "wss" else self.port

    def url(self, scheme: str, path: str, port: int | None = None) -> str:
        return f"{scheme}://127.0.0.1:{port or self.port_of(scheme)}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_relay(directory: pathlib.Path, cert_path, key_path) -> Relay:
    log_path = directory / "relay.log"
    last = ""
    # The TLS port is chosen here and bound by the relay a moment later:
    # retry if something else took it in between.
    for _attempt in range(3):
        tls_port = free_port()
        config = {
            "listen": "127.0.0.1:0",
            "tls_listen": f"127.0.0.1:{tls_port}",
            "tls_cert": str(cert_path),
            "tls_key": str(key_path),
            "compression": True,
            "allow_anonymous_connect_without_token": True,
        }
        namespaces = [
            {
                "name": "chat",
                "allow_subscribe_for_client": True,
                "allow_subscribe_for_anonymous": True,
                "allow_publish_for_subscriber": True,
                "allow_publish_for_anonymous": True,
            }
        ]
        config_path = directory / "wsrelay.toml"
        config_path.write_text(to_toml(config, namespaces))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [relay_binary(), "--config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
            )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            # The start-up line is logged once every listener is bound.
            m = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
            if m:
                return Relay(proc, int(m.group(1)), tls_port, log_path)
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        last = log_path.read_text(errors="replace")
        if "in use" not in last.lower():
            break
    raise RuntimeError(f"relay did not start; its output:\n{last}")


class CountingProxy:
    """TCP proxy to 127.0.0.1:target counting bytes: `up` client -> relay,
    `down` relay -> client (TLS records included: it does not terminate TLS)."""

    def __init__(self, target: int):
        self.target = target
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for s in self._sockets:
                s.close()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def relay(ca, tmp_path_factory):
    d = tmp_path_factory.mktemp("relay")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path = d / "chain.pem"
    key_path = d / "key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    r = start_relay(d, cert_path, key_path)
    yield r
    r.stop()
    # A relay that crashed mid-run fails the last test loudly, not silently.
    assert r.proc.returncode == 0, f"relay exit code {r.proc.returncode}; log:\n{r.log()}"


@pytest.fixture(scope="session")
def client_ssl(ca) -> ssl.SSLContext:
    """Trusts the test CA only; verifies the host name (127.0.0.1 is in the
    certificate's subjectAltName)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def proxies(relay):
    made: list[CountingProxy] = []

    def make(scheme: str) -> CountingProxy:
        p = CountingProxy(relay.port_of(scheme))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
