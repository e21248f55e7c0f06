"""WebSocket / Upgrade tunnels through a real prefork-lb (issue 14; http/tunnel.py).

A real WebSocket client and server (the ``websockets`` package) on both sides of the
proxy, with no WebSocket-specific config unless a test says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.backends import free_port
from tests.harness import LB, accepts, basic_config, request, status_config, upstream_block, wait_for
from tests.ws_backend import WsBackend

# nginx's canonical WebSocket config in TOML ("upgrade" literal: there is no ``map`` yet)
CANONICAL = (
    'proxy_http_version = "1.1"\n  proxy_set_header = { Upgrade = "$http_upgrade", Connection = "upgrade" }'
)


@pytest.fixture
def ws_backend() -> Iterator[WsBackend]:
    with WsBackend() as b:
        yield b


def _connect(port: int, path: str = "/echo") -> ClientConnection:
    return connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10, close_timeout=10, max_size=None)


def _lb(tmp_path: Path, backend: str, location_extra: str = "", read_timeout: str = "5s") -> LB:
    port = free_port()
    config = basic_config(port, upstream_block("backend", [backend]), location_extra=location_extra)
    config = config.replace('proxy_read_timeout = "5s"', f'proxy_read_timeout = "{read_timeout}"')
    return LB(tmp_path, config, port)


def test_echo_with_no_config(tmp_path: Path, ws_backend: WsBackend) -> None:
    """Catches: no tunnel at all (old code: the Upgrade never went upstream, websockets
    answered 426 and the client's handshake failed), the 101 head (Connection: upgrade,
    the upstream's Upgrade and Sec-WebSocket-Accept kept), the relay both ways of small
    and large messages, and the access log line written when the tunnel ends."""
    with _lb(tmp_path, ws_backend.addr) as lb:
        with _connect(lb.port) as ws:
            assert ws.response is not None
            assert ws.response.status_code == 101
            headers = ws.response.headers
            assert headers["Connection"].lower() == "upgrade"
            assert headers["Upgrade"].lower() == "websocket"
            assert headers["Server"] == "prefork-lb"
            for text in ("hello", "é" * 1000):
                ws.send(text)
                assert ws.recv(timeout=10) == text
            big = os.urandom(1 << 20)
            ws.send(big)
            assert ws.recv(timeout=10) == big
        assert ws.close_code == 1000  # the client closed first; the close handshake went through
        sent = dict(ws_backend.handshakes[0])
        assert sent["upgrade"] == "websocket" and sent["connection"] == "upgrade"
        assert "sec-websocket-key" in sent and sent["host"] == "backend"
        line = lb.access_log(1)[0]
        assert line.startswith("GET /echo HTTP/1.1|101|")


def test_server_closes_first(tmp_path: Path, ws_backend: WsBackend) -> None:
    """Catches: the upstream's close (its close frame, then its FIN) not reaching the
    client, or the client connection left open once the upstream side ended."""
    with _lb(tmp_path, ws_backend.addr) as lb:
        with _connect(lb.port, "/close") as ws:
            ws.send("x")
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        assert ws.close_code == 1001 and ws.close_reason == "bye"
        assert lb.access_log(1)[0].startswith("GET /close HTTP/1.1|101|")


@pytest.mark.parametrize("connection", ["upgrade", "$connection_upgrade"])
def test_nginx_canonical_config(tmp_path: Path, ws_backend: WsBackend, connection: str) -> None:
    """Catches: nginx's canonical WebSocket config (proxy_http_version 1.1 and the Upgrade
    and Connection headers, Connection as a literal "upgrade" or nginx's documented
    ``$connection_upgrade``) rejected as a config error or sending the fields twice; an
    ordinary request through the same location is still answered."""
    extra = CANONICAL.replace('Connection = "upgrade"', f'Connection = "{connection}"')
    with _lb(tmp_path, ws_backend.addr, extra) as lb:
        with _connect(lb.port) as ws:
            ws.send("canonical")
            assert ws.recv(timeout=10) == "canonical"
        assert request(lb.port, "GET", "/plain")[0] == 426  # websockets: "Upgrade Required"
    names = [k for k, _ in ws_backend.handshakes[0]]
    assert names.count("upgrade") == 1 and names.count("connection") == 1


def test_idle_timeout_and_traffic_one_way(tmp_path: Path, ws_backend: WsBackend) -> None:
    """Catches: an idle tunnel kept past proxy_read_timeout (nginx closes both sides with no
    close frame: the client sees 1006), and a tunnel with traffic in one direction only
    (client -> upstream, the upstream silent) cut as idle: nginx re-arms its one timer on
    traffic either way."""
    with _lb(tmp_path, ws_backend.addr, read_timeout="2s") as lb:
        with _connect(lb.port, "/sink") as ws:
            end = time.monotonic() + 4.0
            while time.monotonic() < end:  # one message every 250 ms: never idle for 2 s
                ws.send("tick")
                time.sleep(0.25)
            ws.ping().wait(10)  # still open: the pong came back through the tunnel
        with _connect(lb.port, "/echo") as idle:
            start = time.monotonic()
            with pytest.raises(ConnectionClosed):
                idle.recv(timeout=20)
            assert time.monotonic() - start >= 1.9
        assert idle.close_code == 1006
        wait_for(lambda: "while proxying upgraded connection" in lb.output(), what="the timeout logged")


def test_reload_keeps_open_tunnel(tmp_path: Path, ws_backend: WsBackend) -> None:
    """Catches: a reload cutting open tunnels. The old worker stops accepting and drains
    idle connections, but a tunnel is not idle: it keeps working on the old worker until
    it closes, and then the old worker exits."""
    with _lb(tmp_path, ws_backend.addr) as lb:
        old = {w.pid for w in lb.workers()}
        with _connect(lb.port) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: {w.pid for w in lb.workers()} - old, what="the new worker")
            for i in range(3):
                ws.send(f"after {i}")
                assert ws.recv(timeout=10) == f"after {i}"
            assert old & {w.pid for w in lb.workers()}, "the old worker keeps the tunnel"
        wait_for(lambda: not old & {w.pid for w in lb.workers()}, what="the old worker to exit")
        with _connect(lb.port) as ws2:  # the new worker tunnels too
            ws2.send("new")
            assert ws2.recv(timeout=10) == "new"


def test_max_conns_and_status_api_during_tunnel(tmp_path: Path, ws_backend: WsBackend) -> None:
    """Catches: a tunnel that releases its peer early (max_conns = 1 must refuse a second
    request while the tunnel is open, and admit one after it closed) or is missing from
    the status API's peer ``active`` count or its active connections."""
    port, api_port = free_port(), free_port()
    config = status_config(port, api_port, [ws_backend.addr], workers=1, server_params=", max_conns = 1")
    with LB(tmp_path, config, port):

        def active() -> int:
            _, _, body = request(api_port, "GET", "/api/9/http/upstreams/backend")
            return int(json.loads(body)["peers"][0]["active"])

        def connections() -> int:  # the API request's own connection included
            return int(json.loads(request(api_port, "GET", "/api/9/connections")[2])["active"])

        with _connect(port) as ws:
            ws.send("held")
            assert ws.recv(timeout=10) == "held"
            assert active() == 1
            assert connections() == 2
            assert request(port, "GET", "/plain")[0] == 502  # the only server is at max_conns
            ws.send("still")
            assert ws.recv(timeout=10) == "still"
        wait_for(lambda: active() == 0, what="the peer released")
        wait_for(lambda: connections() == 1, what="the tunnel's connection gone")
        assert request(port, "GET", "/plain")[0] == 426  # websockets: "Upgrade Required"


class Switcher:
    """A raw upstream that answers every request with 101 and then echoes bytes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
            rest = buf.split(b"\r\n\r\n", 1)[1]
            if buf.startswith(b"GET /flood"):  # 101, then bytes until the proxy gives up
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\n"
                )
                try:
                    while True:
                        conn.sendall(b"x" * 65536)
                except OSError:
                    return
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\n")
            conn.sendall(b"hi:")
            if rest:
                conn.sendall(rest)
            while data := conn.recv(4096):
                conn.sendall(data)


def test_unsolicited_101_is_502(tmp_path: Path) -> None:
    """Catches: a 101 accepted when the client never asked to upgrade (502, as an invalid
    response), while the same upstream's 101 to an Upgrade request is tunnelled, bytes
    sent right behind the request head included (old code: 502 for both)."""
    switcher = Switcher()
    try:
        with _lb(tmp_path, switcher.addr) as lb:
            assert request(lb.port, "GET", "/")[0] == 502
            assert "unexpected interim response" in lb.output()
            with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\nearly")
                got = b""
                while not got.endswith(b"hi:early"):
                    data = s.recv(4096)
                    assert data, got
                    got += data
                assert got.startswith(b"HTTP/1.1 101 ")
                s.sendall(b"ping")
                assert s.recv(4096) == b"ping"
                s.shutdown(socket.SHUT_WR)
                assert s.recv(4096) == b""  # half-close passed on; the upstream closed; so did we
    finally:
        switcher.sock.close()


def test_shutdown_timeout_aborts_tunnel(tmp_path: Path, ws_backend: WsBackend) -> None:
    """Catches: a tunnel pinning an old worker past worker_shutdown_timeout (nginx cuts it:
    the client sees 1006 and the worker exits)."""
    port = free_port()
    up = upstream_block("backend", [ws_backend.addr])
    config = basic_config(port, up, top_extra='worker_shutdown_timeout = "1s"')
    with LB(tmp_path, config, port) as lb:
        old = {w.pid for w in lb.workers()}
        with _connect(port) as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
            assert lb.signal("reload").returncode == 0
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=20)
        assert ws.close_code == 1006
        wait_for(lambda: not old & {w.pid for w in lb.workers()}, what="the old worker to exit")


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path tmp-body;
    proxy_temp_path tmp-proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream backend {{ server {backend}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
    }}
}}
"""


def _handshake(port: int) -> tuple[int, list[tuple[str, str]]]:
    """The 101's status and fields (but Server and Date) seen by a real client, after an echo."""
    with _connect(port) as ws:
        ws.send("diff")
        assert ws.recv(timeout=10) == "diff"
        assert ws.response is not None
        fields = [(k.lower(), v) for k, v in ws.response.headers.raw_items()]
        return ws.response.status_code, [(k, v) for k, v in fields if k not in ("server", "date")]


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_handshake_differential_nginx(tmp_path: Path, ws_backend: WsBackend) -> None:
    """Catches: a 101 head or an upstream handshake request that differs from nginx 1.22's
    with its canonical WebSocket config (map + proxy_http_version + proxy_set_header), for
    prefork-lb with no config and with the same config written in TOML."""
    assert NGINX is not None
    port = free_port()
    ngx_dir = tmp_path / "nginx"
    ngx_dir.mkdir()
    user = "user root;" if os.geteuid() == 0 else ""
    (ngx_dir / "nginx.conf").write_text(NGINX_CONF.format(user=user, backend=ws_backend.addr, port=port))
    proc = subprocess.Popen(
        [NGINX, "-p", str(ngx_dir), "-c", str(ngx_dir / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: accepts(port), what="nginx to listen")
        expected = _handshake(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for i, extra in enumerate(("", CANONICAL)):
        (tmp_path / f"lb{i}").mkdir()
        with _lb(tmp_path / f"lb{i}", ws_backend.addr, extra) as lb:
            status, fields = _handshake(lb.port)
        assert (status, [k for k, _ in fields]) == (expected[0], [k for k, _ in expected[1]])
        assert dict(fields)["connection"] == dict(expected[1])["connection"] == "upgrade"
        assert dict(fields)["upgrade"] == dict(expected[1])["upgrade"]
    # what the upstream received: the same fields and values (in another order: nginx puts
    # proxy_set_header first, Host after them)
    got = [sorted((k, "key" if k == "sec-websocket-key" else v) for k, v in h) for h in ws_backend.handshakes]
    assert got[0] == got[1] == got[2], got


def test_send_timeout_cuts_a_client_that_stops_reading(tmp_path: Path) -> None:
    """Catches: a tunnel to a client that stopped reading kept forever (nginx's
    send_timeout covers blocked client writes in a tunnel; nginx logs it at info)."""
    switcher = Switcher()
    try:
        with _lb(tmp_path, switcher.addr, 'send_timeout = "1s"') as lb:
            with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n")
                wait_for(
                    lambda: (
                        "client timed out (110: Connection timed out) while proxying upgraded" in lb.output()
                    ),
                    what="the send timeout",
                )
            line = lb.access_log(1)[0]
            assert line.startswith("GET /flood HTTP/1.1|101|")
    finally:
        switcher.sock.close()
