"""HTTP/2 differential P1-P5 (nginx-semantics-2.md section 6): nginx 1.22 and prefork-lb
run the same scenario in turn, in front of the same real backend, with the same clients
(curl, the raw ``h2`` client tests/h2_client.py, the hostile client tests/h2_hostile.py).

Both servers listen with nginx 1.22's syntax where prefork-lb accepts it (``"... http2"`` and
``"... ssl http2"`` listen flags). One deliberate difference is asserted as such: P2, an
HTTP/1.1 request on a plain http2 port, gets h2 frames from nginx 1.22 and an HTTP/1.1
answer from prefork-lb (nginx >= 1.25.1's autodetect, docs/http2.md).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import h2_hostile as hh
from tests.backends import Backend, GatedBackend, free_port
from tests.h2_client import H2Client
from tests.harness import LB, raw_exchange
from tests.nginx_conf import NGINX, Nginx, scenario
from tests.tls_certs import TestCA

LOG = "$server_protocol|$status|$request"

pytestmark = pytest.mark.skipif(NGINX is None, reason="the differential needs nginx 1.22 (/usr/sbin/nginx)")


@dataclass
class Served:
    """One server up: its plain http2 port, its TLS port, its access log."""

    name: str
    plain: int
    tls: int
    access_log: Callable[[int], list[str]]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    ca = TestCA(tmp_path_factory.mktemp("h2diff"))
    ca.issue("localhost", "ec")
    return ca


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend(1) as be:
        yield be


def nginx_conf(plain: int, tls: int, ca: TestCA, upstream: str) -> str:
    return scenario(
        f"""
    log_format t '{LOG}';
    access_log access.log t;
    server {{
        listen 127.0.0.1:{plain} http2;
        listen 127.0.0.1:{tls} ssl http2;
        ssl_certificate {ca.dir}/localhost-ec.crt;
        ssl_certificate_key {ca.dir}/localhost-ec.key;
        location / {{ proxy_pass http://{upstream}; proxy_read_timeout 30s; }}
    }}
"""
    )


def lb_conf(plain: int, tls: int, ca: TestCA, upstream: str) -> str:
    return f"""
workers = 1
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "access.log"
[http.log_formats]
t = '{LOG}'
[http.upstreams.be]
servers = [{{ address = "{upstream}" }}]

[[http.servers]]
listen = ["127.0.0.1:{plain} http2", "127.0.0.1:{tls} ssl http2"]
log_format = "t"
ssl_certificate = ["{ca.dir}/localhost-ec.crt"]
ssl_certificate_key = ["{ca.dir}/localhost-ec.key"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://be"
  proxy_read_timeout = "30s"
"""


@contextmanager
def serve(kind: str, directory: Path, ca: TestCA, upstream: str) -> Iterator[Served]:
    plain, tls = free_port(), free_port()
    if kind == "nginx":
        with Nginx(directory, plain, nginx_conf(plain, tls, ca, upstream)) as ngx:
            yield Served(kind, plain, tls, ngx.access_log)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        with LB(directory, lb_conf(plain, tls, ca, upstream), plain) as lb:
            yield Served(kind, plain, tls, lb.access_log)


def both(tmp_path: Path, ca: TestCA, upstream: str) -> Iterator[AbstractContextManager[Served]]:
    for kind in ("nginx", "prefork-lb"):
        yield serve(kind, tmp_path / kind, ca, upstream)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "--max-time", "20", *args], capture_output=True, text=True, timeout=30
    )


def test_p1_prior_knowledge_get(tmp_path: Path, ca: TestCA, backend: Backend) -> None:
    """P1: ``listen N http2`` without ssl, a prior-knowledge GET: 200 over h2 from both, the
    backend's body unchanged, one access log line ``HTTP/2.0|200``. Upstream is HTTP/1.x in
    both (nginx's default proxy_http_version 1.0; prefork-lb's HTTP/1.1 keep-alive pools).
    Catches: h2c not served on the flagged listener, or the stream not proxied."""
    for server in both(tmp_path, ca, backend.addrs[0]):
        with server as s:
            r = curl(
                "--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://127.0.0.1:{s.plain}/p1?echo=1"
            )
            body, version = r.stdout.rsplit("\n", 1)
            assert version == "2", (s.name, r.stdout, r.stderr)
            upstream = json.loads(body)
            assert upstream["target"] == "/p1?echo=1", s.name
            assert upstream["version"].startswith("HTTP/1."), (s.name, upstream["version"])
            assert s.access_log(1)[-1] == "HTTP/2.0|200|GET /p1?echo=1 HTTP/2.0", s.name


def test_p2_http11_on_the_plain_http2_port(tmp_path: Path, ca: TestCA, backend: Backend) -> None:
    """P2: an HTTP/1.1 request on a plain http2 port. nginx 1.22 answers with h2 frames (its
    SETTINGS: a 9-byte frame header of type 4); prefork-lb answers HTTP/1.1 (nginx >= 1.25.1's
    autodetect, the choice docs/http2.md records). Catches either behaviour changing."""
    request = b"GET /p2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for server in both(tmp_path, ca, backend.addrs[0]):
        with server as s:
            answer = raw_exchange(s.plain, request, timeout_s=3.0)
            if s.name == "nginx":
                assert answer[3] == 0x4 and answer[4] == 0 and answer[5:9] == b"\0\0\0\0", answer[:32]
            else:
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:64]


def test_p3_130_streams_128_served_2_refused(tmp_path: Path, ca: TestCA) -> None:
    """P3: 130 concurrent streams on one connection, the upstream holding every answer:
    128 reach the backend, the last 2 get RST_STREAM REFUSED_STREAM (7), and once the backend
    answers the 128 are served on the same connection. Catches: a different limit, h2's
    own GOAWAY instead of per-stream refusal, or refused streams reaching the upstream."""
    for kind in ("nginx", "prefork-lb"):
        p3_once(kind, tmp_path, ca)


def p3_once(kind: str, tmp_path: Path, ca: TestCA) -> None:
    with GatedBackend() as gate, serve(kind, tmp_path / kind, ca, gate.addr) as s, H2Client(s.plain) as c:
        c.wait(lambda: c.conn.remote_settings.max_concurrent_streams == 128, what="SETTINGS")
        c.conn.ignore_limit = True
        sids = [c.request("GET", f"/s{i}") for i in range(130)]
        c.wait(lambda: sum(c.streams[sid].reset_code == 7 for sid in sids) == 2, what="2 refused")
        gate.wait_arrived(128)
        assert [sid for sid in sids if c.streams[sid].reset_code is not None] == sids[128:], kind
        gate.release()
        c.wait(lambda: all(c.streams[sid].done for sid in sids[:128]), what="128 answers")
        assert [c.streams[sid].status for sid in sids[:128]] == [200] * 128, kind
        assert c.goaway is None, kind
        assert gate.arrived == 128, kind


def test_p4_header_size(tmp_path: Path, ca: TestCA, backend: Backend) -> None:
    """P4: a 20 KB header value (random-ish: Huffman cannot shrink it under 8 KiB) ends the
    connection with GOAWAY ENHANCE_YOUR_CALM (11) in both; a 9000-byte value of one letter
    (5.6 KB once Huffman-coded, under large_client_header_buffers' 8k) is served by both.
    Catches: a decoded-length check (refusing the 9000-byte value) or no check at all."""
    for server in both(tmp_path, ca, backend.addrs[0]):
        with server as s:
            big = hh.oversized_header(s.plain, size=20000)
            assert big.answer.goaway == hh.ENHANCE_YOUR_CALM, (s.name, big.line())
            with H2Client(s.plain) as c:
                ok = c.get("/p4", headers=[("x-long", "a" * 9000)])
                assert ok.status == 200, s.name


def test_p5_alpn_h2_over_tls(tmp_path: Path, ca: TestCA, backend: Backend) -> None:
    """P5: ``listen ... ssl http2``: curl negotiates h2 by ALPN and the access log says
    ``$server_protocol`` HTTP/2.0; ``--http1.1`` on the same port gets HTTP/1.1. Catches:
    ALPN not offering h2, or not falling back to http/1.1."""
    for server in both(tmp_path, ca, backend.addrs[0]):
        with server as s:
            url = f"https://localhost:{s.tls}/p5"
            resolve = f"localhost:{s.tls}:127.0.0.1"
            h2 = curl(
                "--http2",
                "--cacert",
                str(ca.cert),
                "--resolve",
                resolve,
                "-w",
                "%{http_version}",
                "-o",
                "/dev/null",
                url,
            )
            h1 = curl(
                "--http1.1",
                "--cacert",
                str(ca.cert),
                "--resolve",
                resolve,
                "-w",
                "%{http_version}",
                "-o",
                "/dev/null",
                url,
            )
            assert (h2.stdout, h1.stdout) == ("2", "1.1"), (s.name, h2.stderr, h1.stderr)
            lines = s.access_log(2)  # waits for two lines
            assert lines[-2:] == ["HTTP/2.0|200|GET /p5 HTTP/2.0", "HTTP/1.1|200|GET /p5 HTTP/1.1"], s.name
