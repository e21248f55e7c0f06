"""TLS to upstreams (issue 14; http/upstream_tls.py): prefork-lb in front of a real nginx
that serves TLS with a certificate from a CA made in the test with the openssl CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends import free_port
from tests.harness import LB, basic_config, request, status_config, upstream_block, wait_for
from tests.nginx_conf import Nginx

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
OPENSSL = shutil.which("openssl")
pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None or OPENSSL is None, reason="needs nginx and openssl"),
]


@dataclass
class Pki:
    ca: Path  # the CA that signed the backend's certificate
    other_ca: Path  # a CA that did not
    cert: Path  # CN up.test, SAN DNS:up.test
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(d: Path) -> Pki:
    """Two CAs and a certificate for up.test from the first, made in ``d``."""
    for ca in ("ca", "other"):
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=test {ca} CA",
            cwd=d,
        )  # fmt: skip
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "up.key", "-out", "up.csr", "-subj", "/CN=up.test", cwd=d,
    )  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName = DNS:up.test\n")
    _openssl(
        "x509", "-req", "-in", "up.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "up.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d,
    )  # fmt: skip
    return Pki(d / "ca.crt", d / "other.crt", d / "up.crt", d / "up.key")


class TlsNginx(Nginx):
    """nginx serving TLS; each response and log line names the TCP connection, its request
    count, whether the TLS session was resumed and the SNI name received."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        directory.mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        inner = free_port()
        (directory / "big").mkdir()
        (directory / "big" / "file").write_bytes(os.urandom(5 << 20))
        conf = f"""
{user}
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log info;
events {{ worker_connections 64; }}
http {{
    log_format tls '$connection $connection_requests $ssl_session_reused sni=$ssl_server_name '
                   '$request_length';
    access_log access.log tls;
    client_body_temp_path tmp-body;
    proxy_temp_path tmp-proxy;
    client_max_body_size 10m;
    ssl_session_cache shared:S:1m;
    server {{
        listen {self.addr} ssl;
        ssl_certificate {pki.cert};
        ssl_certificate_key {pki.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "tls $connection_requests $ssl_session_reused sni=$ssl_server_name\\n"; }}
        location /big/ {{ root {directory}; }}
        location = /post {{ proxy_pass http://127.0.0.1:{inner}; }}  # reads the whole body first
    }}
    server {{
        listen 127.0.0.1:{inner};
        access_log off;
        location / {{ return 200 "posted\\n"; }}
    }}
}}
"""
        super().__init__(directory, port, conf)

    def log(self, lines: int) -> list[list[str]]:
        path = self.dir / "access.log"

        def read() -> list[str]:
            return path.read_text().splitlines() if path.exists() else []

        wait_for(lambda: len(read()) >= lines, what=f"{lines} backend log lines")
        return [line.split() for line in read()]


@pytest.fixture
def backend(tmp_path: Path, pki: Pki) -> Iterator[TlsNginx]:
    with TlsNginx(tmp_path / "backend", pki) as b:
        yield b


def _lb(tmp_path: Path, backend: TlsNginx, location_extra: str, upstream_extra: str = "") -> LB:
    port = free_port()
    config = basic_config(
        port, upstream_block("backend", [backend.addr], upstream_extra), location_extra=location_extra
    ).replace('"http://backend"', '"https://backend"')
    return LB(tmp_path, config, port)


def test_verify_on_with_the_right_ca(tmp_path: Path, backend: TlsNginx, pki: Pki) -> None:
    """Catches: no TLS to upstreams (old code: https was a config error), the verified name
    (proxy_ssl_name) not sent as SNI, or a valid chain rejected."""
    extra = (
        f'proxy_ssl_verify = true\n  proxy_ssl_trusted_certificate = "{pki.ca}"\n'
        '  proxy_ssl_name = "up.test"\n  proxy_ssl_server_name = true'
    )
    with _lb(tmp_path, backend, extra) as lb:
        status, _, body = lb.get("/")
        assert (status, body) == (200, b"tls 1 . sni=up.test\n")


def test_verify_off_is_nginx_default(tmp_path: Path, backend: TlsNginx) -> None:
    """Catches: verification or SNI by default (nginx 1.22: neither; the backend's
    certificate is from a CA prefork-lb does not know)."""
    with _lb(tmp_path, backend, "") as lb:
        status, _, body = lb.get("/")
        assert (status, body) == (200, b"tls 1 . sni=\n")


@pytest.mark.parametrize(
    ("extra", "logged"),
    [
        (
            'proxy_ssl_trusted_certificate = "{other}"\n  proxy_ssl_name = "up.test"',
            "upstream SSL certificate verify error: (20:unable to get local issuer certificate) "
            "while SSL handshaking to upstream",
        ),
        (
            'proxy_ssl_trusted_certificate = "{ca}"\n  proxy_ssl_name = "wrong.test"',
            'upstream SSL certificate does not match "wrong.test" while SSL handshaking to upstream',
        ),
    ],
    ids=["wrong-ca", "wrong-name"],
)
def test_verify_failure_is_502(tmp_path: Path, backend: TlsNginx, pki: Pki, extra: str, logged: str) -> None:
    """Catches: a certificate that fails verification accepted, the failure not a 502, the
    reason missing from the error log, or the peer not charged a failure (nginx charges it:
    the status API counts it in ``fails``)."""
    extra = "proxy_ssl_verify = true\n  " + extra.format(other=pki.other_ca, ca=pki.ca)
    port, api_port = free_port(), free_port()
    config = status_config(port, api_port, [backend.addr], workers=1, proxy_extra=extra)
    with LB(tmp_path, config.replace('"http://backend"', '"https://backend"'), port) as lb:
        assert request(port, "GET", "/")[0] == 502
        wait_for(lambda: logged in lb.output(), what="the verify error logged")
        doc = json.loads(request(api_port, "GET", "/api/9/http/upstreams/backend")[2])
        assert doc["peers"][0]["fails"] == 1
    assert backend.log(0) == []  # no request ever reached the backend


def test_pooled_tls_connection_is_reused(tmp_path: Path, backend: TlsNginx) -> None:
    """Catches: TLS connections not pooled (a handshake per request) or a pooled one that
    breaks on reuse: the backend sees one connection for all requests."""
    with _lb(tmp_path, backend, "", upstream_extra="keepalive = 4") as lb:
        bodies = [lb.get("/")[2] for _ in range(4)]
    assert bodies == [f"tls {n} . sni=\n".encode() for n in range(1, 5)]
    log = backend.log(4)
    assert len({fields[0] for fields in log}) == 1  # one $connection


def test_session_resumed_on_new_connection(tmp_path: Path, backend: TlsNginx) -> None:
    """Catches: no session reuse (a full handshake on every new connection): without a pool
    each request opens a connection and the second one resumes the first one's session."""
    with _lb(tmp_path, backend, "") as lb:
        bodies = [lb.get("/")[2] for _ in range(3)]
    assert bodies[0] == b"tls 1 . sni=\n"
    assert bodies[1:] == [b"tls 1 r sni=\n"] * 2
    (tmp_path / "off").mkdir()
    with _lb(tmp_path / "off", backend, "proxy_ssl_session_reuse = false") as lb:
        assert [lb.get("/")[2] for _ in range(2)] == [b"tls 1 . sni=\n"] * 2


def test_large_bodies_both_ways(tmp_path: Path, backend: TlsNginx) -> None:
    """Catches: TLS records split or lost on the way up (a request body far larger than one
    record and the socket buffer; nginx reads all of it) or down (a response of many
    records), on a pooled connection that then serves one more request."""
    with _lb(tmp_path, backend, 'client_max_body_size = "10m"', upstream_extra="keepalive = 2") as lb:
        body = os.urandom(3 << 20)
        status, _, got = request(lb.port, "POST", "/post", body=body)
        assert (status, got) == (200, b"posted\n")
        status, _, got = lb.get("/big/file")
        assert status == 200 and got == (backend.dir / "big" / "file").read_bytes()
        assert lb.get("/")[2] == b"tls 3 . sni=\n"
    log = backend.log(3)
    assert int(log[0][4]) > len(body)  # $request_length: nginx read the whole body


def test_idle_pooled_tls_connection_closed_by_upstream(tmp_path: Path, backend: TlsNginx) -> None:
    """Catches: the pool's idle-readability rule not holding for TLS (upstream.py rule 4):
    the backend closes an idle pooled connection (close_notify, FIN); the worker must close
    its end at once, and the next request gets a new connection, not an error."""
    conf = backend.dir / "nginx.conf"
    conf.write_text(
        conf.read_text().replace(
            "client_max_body_size 10m;", "client_max_body_size 10m;\n    keepalive_timeout 1s;"
        )
    )
    assert backend.proc is not None
    backend.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reconfiguring" in (backend.dir / "error.log").read_text(), what="nginx reload")
    with _lb(tmp_path, backend, "", upstream_extra="keepalive = 2") as lb:
        assert lb.get("/")[2] == b"tls 1 . sni=\n"
        (worker,) = lb.workers()

        def open_to_backend() -> int:
            return sum(1 for c in worker.net_connections("tcp") if c.raddr and c.raddr.port == backend.port)

        wait_for(lambda: open_to_backend() == 0, what="the idle TLS connection closed by the worker")
        assert lb.get("/")[2] in (b"tls 1 . sni=\n", b"tls 1 r sni=\n")


def test_websocket_to_tls_upstream(tmp_path: Path, pki: Pki) -> None:
    """Catches: a tunnel that does not work over a TLS upstream connection (wss upstream)."""
    from websockets.sync.client import connect

    from tests.ws_backend import WsBackend

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert, pki.key)
    with WsBackend(ctx) as ws_up:
        port = free_port()
        config = basic_config(port, upstream_block("backend", [ws_up.addr])).replace(
            '"http://backend"', '"https://backend"'
        )
        with LB(tmp_path, config, port), connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
            for size in (10, 100_000):
                message = os.urandom(size)
                ws.send(message)
                assert ws.recv(timeout=10) == message


@pytest.mark.parametrize("good", [True, False], ids=["right-ca", "wrong-ca"])
def test_active_health_checks_use_the_location_tls(
    tmp_path: Path, backend: TlsNginx, pki: Pki, good: bool
) -> None:
    """Active health checks (issue 17) of an https:// location probe over TLS with its
    proxy_ssl_* settings: verified against the CA, the name sent as SNI; a certificate that
    fails verification makes the peer unhealthy and no client request reaches it. Catches:
    plain-HTTP probes to a TLS upstream (the peer would be unhealthy with the right CA too)
    or probes that skip verification (it would stay up with the wrong one)."""
    ca = pki.ca if good else pki.other_ca
    extra = (
        f'proxy_ssl_verify = true\n  proxy_ssl_trusted_certificate = "{ca}"\n'
        '  proxy_ssl_name = "up.test"\n  proxy_ssl_server_name = true\n'
        '  health_check = { interval = "200ms", uri = "/healthz", mandatory = true }'
    )
    with _lb(tmp_path, backend, extra) as lb:
        if good:
            lines = backend.log(2)  # two probes, each on its own TLS connection, with SNI
            assert all(line[3] == "sni=up.test" for line in lines), lines
            wait_for(lambda: lb.get("/")[0] == 200, what="the peer up and serving")
            assert "is unhealthy" not in lb.output()
        else:
            wait_for(lambda: "is unhealthy: SSL handshake failed" in lb.output(), what="unhealthy")
            assert lb.get("/")[0] == 502
            assert backend.log(0) == []  # neither a probe nor a client request got through


def _stream_lb(tmp_path: Path, backend: TlsNginx, server_extra: str) -> LB:
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = f"""
workers = 1
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
[stream.upstreams.backend]
servers = [{{ address = "{backend.addr}" }}]
[[stream.servers]]
listen = ["127.0.0.1:{port}"]
proxy_pass = "backend"
proxy_connect_timeout = "5s"
proxy_timeout = "10s"
proxy_ssl = true
{server_extra}
"""
    return LB(tmp_path, config, port)


def _through_stream(port: int) -> bytes:
    """One HTTP request over the TCP proxy; everything the client got until the close."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: up.test\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:  # closed with our request unread: nothing relayed
                data = b""
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_stream_proxy_ssl(tmp_path: Path, backend: TlsNginx, pki: Pki) -> None:
    """Catches: no TLS from stream servers to upstreams (old code: ``proxy_ssl`` was an
    unknown key), SNI sent without proxy_ssl_server_name, the verified name not sent, or
    sessions not reused from one TCP session to the next (stream/upstream_tls.py rule 3)."""
    with _stream_lb(tmp_path / "off", backend, "") as lb:
        assert _through_stream(lb.port).endswith(b"tls 1 . sni=\n")
    extra = (
        f'proxy_ssl_verify = true\nproxy_ssl_trusted_certificate = "{pki.ca}"\n'
        'proxy_ssl_name = "up.test"\nproxy_ssl_server_name = true\nproxy_ssl_protocols = ["TLSv1.2"]'
    )
    with _stream_lb(tmp_path / "verify", backend, extra) as lb:
        first = _through_stream(lb.port)
        second = _through_stream(lb.port)
        assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"tls 1 . sni=up.test\n")
        assert second.endswith(b"tls 1 r sni=up.test\n")  # the session was resumed


def test_stream_proxy_ssl_verify_failure(tmp_path: Path, backend: TlsNginx, pki: Pki) -> None:
    """Catches: a stream upstream whose certificate fails verification still relayed, or
    the failure not logged as nginx does (rule 2: charged and logged while handshaking)."""
    extra = (
        f'proxy_ssl_verify = true\nproxy_ssl_trusted_certificate = "{pki.other_ca}"\n'
        'proxy_ssl_name = "up.test"'
    )
    with _stream_lb(tmp_path, backend, extra) as lb:
        assert _through_stream(lb.port) == b""
        wait_for(lambda: "while SSL handshaking to upstream" in lb.output(), what="the handshake error")
        assert "certificate verify failed" in lb.output()
