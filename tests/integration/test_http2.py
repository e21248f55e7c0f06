"""HTTP/2 for clients (issue 20) through the real master and workers: curl over TLS (ALPN)
and by prior knowledge, a raw ``h2`` client (tests/h2_client.py) for multiplexing, the
stream limit, flow control both ways, malformed requests and graceful GOAWAY, with real
backends (scripts/demo_backend.py, tests/backends.GatedBackend)."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated
from hyperframe.frame import PingFrame

from tests.backends import Backend, GatedBackend, free_port
from tests.h2_client import H2Client, Stream
from tests.harness import LB as _LB
from tests.harness import ZoneReader, wait_for
from tests.tls_certs import TestCA

LOG = "$request|$status|$server_protocol|$connection|$connection_requests|$body_bytes_sent|$upstream_addr"
PATTERN = b"0123456789abcdef"


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend(count=1) as b:
        yield b


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    ca = TestCA(tmp_path_factory.mktemp("h2tls") / "certs")
    ca.issue("a.test")
    ca.issue("b.test")
    return ca


def config(port: int, upstream: str, listen: str = "", server_extra: str = "", http_extra: str = "") -> str:
    listen = listen or f'"127.0.0.1:{port} http2"'
    return textwrap.dedent(
        f"""
        workers = 1
        error_log = "error.log"
        error_log_level = "info"
        [http]
        access_log = "access.log"
        {http_extra}
        [http.log_formats]
        t = '{LOG}'
        [http.upstreams.backend]
        servers = [{{ address = "{upstream}" }}]
        [[http.servers]]
        listen = [{listen}]
        log_format = "t"
        {server_extra}
          [[http.servers.locations]]
          match = "/"
          proxy_pass = "http://backend"
          proxy_read_timeout = "30s"
        """
    )


def tls_config(port: int, upstream: str, ca: TestCA) -> str:
    """a.test turns HTTP/2 on (``http2 = true``); b.test shares the address without it."""
    servers = ""
    for name, extra in (("a.test", "http2 = true"), ("b.test", "")):
        servers += textwrap.dedent(
            f"""
            [[http.servers]]
            listen = ["127.0.0.1:{port} ssl"]
            server_name = ["{name}"]
            ssl_certificate = "{ca.dir}/{name}-rsa.crt"
            ssl_certificate_key = "{ca.dir}/{name}-rsa.key"
            log_format = "t"
            {extra}
              [[http.servers.locations]]
              match = "/"
              proxy_pass = "http://backend"
            """
        )
    head = config(port, upstream).split("[[http.servers]]")[0]
    return head + servers


class LB(_LB):
    """The harness's LB; at exit the error log must hold no alert (a handler's traceback)."""

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if exc[0] is None:
            assert "[alert]" not in self.output(), self.output()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-s", "--max-time", "20", *args], capture_output=True, text=True, timeout=30
    )


def log_lines(lb: LB, count: int) -> list[str]:
    return wait_for(lambda: (lines := lb.access_log()) and len(lines) >= count and lines, what="access log")


def test_curl_prior_knowledge_and_http11_on_one_port(tmp_path: Path, backend: Backend) -> None:
    """h2c by prior knowledge and HTTP/1.1 on the same ``http2`` address (nginx >= 1.25.1's
    autodetect), each logged once with its protocol. Catches: the preface sniffing, the
    stream running the proxy, $server_protocol."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port) as lb:
        out = curl("--http2-prior-knowledge", "-w", "|%{http_version}", f"http://127.0.0.1:{port}/a?size=20")
        assert out.stdout == (PATTERN + PATTERN[:4]).decode() + "|2"
        out = curl("--http1.1", "-w", "|%{http_version}", f"http://127.0.0.1:{port}/b")
        assert out.stdout == f"{backend.ports[0]}\n|1.1"
        lines = log_lines(lb, 2)
    assert lines[0].startswith("GET /a?size=20 HTTP/2.0|200|HTTP/2.0|")
    assert lines[0].endswith(f"|20|{backend.addrs[0]}")
    assert lines[1].startswith("GET /b HTTP/1.1|200|HTTP/1.1|")


def test_curl_tls_alpn_h2_for_every_server_of_the_address(
    tmp_path: Path, backend: Backend, ca: TestCA
) -> None:
    """ALPN h2 over TLS; b.test, which has no ``http2`` but shares the socket, speaks h2 too
    (trap 9); ``--http1.1`` still works. Catches: ALPN on the SNI-switched context."""
    port = free_port()
    with LB(tmp_path, tls_config(port, backend.addrs[0], ca), port) as lb:
        for name in ("a.test", "b.test"):
            out = curl(
                "--http2",
                "--cacert",
                f"{ca.dir}/ca.crt",
                "--resolve",
                f"{name}:{port}:127.0.0.1",
                "-w",
                "|%{http_version}",
                f"https://{name}:{port}/x?chunked=1",
            )
            assert out.stdout.endswith("|2"), out
        out = curl(
            "--http1.1",
            "--cacert",
            f"{ca.dir}/ca.crt",
            "--resolve",
            f"a.test:{port}:127.0.0.1",
            "-w",
            "|%{http_version}",
            f"https://a.test:{port}/y",
        )
        assert out.stdout == f"{backend.ports[0]}\n|1.1"
        lines = log_lines(lb, 3)
    assert [line.split("|")[2] for line in lines] == ["HTTP/2.0", "HTTP/2.0", "HTTP/1.1"]


def test_raw_client_over_tls(tmp_path: Path, backend: Backend, ca: TestCA) -> None:
    port = free_port()
    ctx = ssl.create_default_context(cafile=f"{ca.dir}/ca.crt")
    with LB(tmp_path, tls_config(port, backend.addrs[0], ca), port):
        with H2Client(port, tls=ctx, server_hostname="a.test") as c:
            s = c.get("/z?size=100", authority="a.test")
    assert s.status == 200 and bytes(s.data) == (PATTERN * 7)[:100]


def test_streams_are_multiplexed_on_one_connection(tmp_path: Path) -> None:
    """Ten streams reach the upstream together (none waits for another's response), each
    is logged once on the same connection. Catches: streams served one after another."""
    port = free_port()
    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr), port) as lb:
        with H2Client(port) as c:
            sids = [c.request("GET", f"/m{i}") for i in range(10)]
            gate.wait_arrived(10)
            assert not any(c.streams[s].done for s in sids)
            gate.release()
            c.wait(lambda: all(c.streams[s].done for s in sids))
            assert [c.streams[s].status for s in sids] == [200] * 10
            assert all(bytes(c.streams[s].data) == b"%d\n" % gate.port for s in sids)
        lines = log_lines(lb, 10)
    assert sorted(line.split("|")[0] for line in lines) == sorted(f"GET /m{i} HTTP/2.0" for i in range(10))
    assert len({line.split("|")[3] for line in lines}) == 1  # one $connection
    assert sorted(int(line.split("|")[4]) for line in lines) == list(range(1, 11))


def test_130_streams_128_served_2_refused(tmp_path: Path) -> None:
    """nginx (nginx-semantics-2.md P3): with 128 streams in progress the 129th and 130th
    get RST_STREAM REFUSED_STREAM (7) each, the connection lives on and the 128 are served.
    Catches: h2's own limit (GOAWAY for the whole connection) or no limit at all."""
    port = free_port()
    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr), port):
        with H2Client(port) as c:
            c.wait(lambda: c.conn.remote_settings.max_concurrent_streams == 128, what="SETTINGS")
            c.conn.ignore_limit = True  # type: ignore[attr-defined]
            sids = [c.request("GET", f"/s{i}") for i in range(130)]
            c.wait(lambda: sum(c.streams[s].reset_code == 7 for s in sids) == 2, what="2 refused")
            gate.wait_arrived(128)
            assert [s for s in sids if c.streams[s].reset_code is not None] == sids[128:]
            gate.release()
            c.wait(lambda: all(c.streams[s].done for s in sids))
            assert [c.streams[s].status for s in sids[:128]] == [200] * 128
            assert c.goaway is None
            again = c.get("/after")  # the connection still serves
            assert again.status == 200
        assert gate.arrived == 129


def test_large_upload_and_download(tmp_path: Path, backend: Backend) -> None:
    """Request bodies stream to the upstream within the 64k stream window (reopened as the
    upstream consumes), with and without content-length; an 8 MB response streams back
    within the client's windows. Catches: a window never reopened (a stall), a body cut
    or re-framed wrongly."""
    port = free_port()
    body = bytes(range(256)) * 20000  # 5,120,000 bytes
    digest = hashlib.sha256(body).hexdigest()
    with LB(tmp_path, config(port, backend.addrs[0], server_extra='client_max_body_size = "10m"'), port):
        with H2Client(port) as c:
            up = c.request("POST", "/u?echo=1", [("content-length", str(len(body)))], body=body)
            chunked = c.request("PUT", "/c?echo=1", body=body)  # no content-length
            down = c.request("GET", "/d?size=8000000")
            c.wait(lambda: all(c.streams[s].done for s in (up, chunked, down)), timeout_s=60)
            for sid in (up, chunked):
                assert c.streams[sid].status == 200
                echo = json.loads(bytes(c.streams[sid].data))
                assert (echo["body_len"], echo["body_sha256"]) == (len(body), digest)
            headers = {k.lower(): v for k, v in json.loads(bytes(c.streams[chunked].data))["headers"]}
            assert headers.get("transfer-encoding") == "chunked"
            data = bytes(c.streams[down].data)
            assert len(data) == 8000000 and data == (PATTERN * 500000)
            assert c.streams[down].header(b"content-length") == b"8000000"


def test_stalled_reader_does_not_block_other_streams(tmp_path: Path, backend: Backend) -> None:
    """A stream whose reader never reopens its window stops at the window; other streams
    on the connection are served meanwhile. Catches: a connection-wide send blocked by one
    stream's window."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        with H2Client(port) as c:
            c.hold.add(1)
            slow = c.request("GET", "/big?size=1000000")
            assert slow == 1
            c.wait(lambda: len(c.streams[slow].data) >= 65535, what="the first window")
            for i in range(3):
                assert c.get(f"/other{i}").status == 200
            assert len(c.streams[slow].data) == 65535 and not c.streams[slow].done
            c.hold.discard(1)
            c.conn.increment_flow_control_window(1 << 20, stream_id=slow)
            c.flush()
            c.wait(lambda: c.streams[slow].done)
            assert bytes(c.streams[slow].data) == (PATTERN * 62500)


def test_malformed_stream_reset_others_served(tmp_path: Path, backend: Backend) -> None:
    """An upper-case header name, a connection-specific header and a missing :path reset
    only their stream (PROTOCOL_ERROR); CONNECT gets 405; the connection serves on."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port) as lb:
        with H2Client(port) as c:
            c.conn.config.validate_outbound_headers = False
            c.conn.config.normalize_outbound_headers = False
            bad = [
                c.request("GET", "/u", [("X-Upper", "1")]),
                c.request("GET", "/c", [("connection", "keep-alive")]),
            ]
            c.wait(lambda: all(c.streams[s].done for s in bad))
            assert [c.streams[s].reset_code for s in bad] == [1, 1]
            sid = c.conn.get_next_available_stream_id()
            c.streams[sid] = type(c.streams[bad[0]])()
            c.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"x:443")], end_stream=True)
            c.flush()
            c.wait(lambda: c.streams[sid].done)
            assert c.streams[sid].status == 405
            ok = c.get("/fine", headers=[("cookie", "a=1"), ("cookie", "b=2")], end=True)
            assert ok.status == 200
            echo = c.get("/e?echo=1", headers=[("cookie", "a=1"), ("cookie", "b=2")])
            headers = {k.lower(): v for k, v in json.loads(bytes(echo.data))["headers"]}
            assert headers["cookie"] == "a=1; b=2"
            assert c.goaway is None
        log_lines(lb, 2)


def test_oversized_header_goaway_enhance_your_calm(tmp_path: Path, backend: Backend) -> None:
    """nginx (P4): a 20 KB header value ends the connection with GOAWAY 11."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        with H2Client(port) as c:
            c.request("GET", "/big", [("x-big", "v" * 20000)])
            c.wait(lambda: c.goaway is not None, what="GOAWAY")
            assert c.goaway is not None and c.goaway.error_code == 11


def test_graceful_goaway_on_reload_in_flight_streams_finish(tmp_path: Path) -> None:
    """``-s reload``: the old worker sends GOAWAY NO_ERROR naming the last stream it took;
    the three streams in progress finish with 200, then the connection closes. Catches: a
    GOAWAY through h2's close_connection (which stops every stream) or an abrupt close."""
    port = free_port()
    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr), port) as lb:
        with H2Client(port) as c:
            sids = [c.request("GET", f"/r{i}") for i in range(3)]
            gate.wait_arrived(3)
            lb.signal("reload")
            c.wait(lambda: c.goaway is not None, what="GOAWAY")
            assert c.goaway is not None
            assert (c.goaway.error_code, c.goaway.last_stream_id) == (0, sids[-1])
            assert not any(c.streams[s].done for s in sids)
            gate.release()
            c.wait(lambda: all(c.streams[s].done for s in sids))
            assert [c.streams[s].status for s in sids] == [200] * 3
            deadline = time.monotonic() + 10
            while not c.closed and time.monotonic() < deadline:
                c.pump(1.0)
            assert c.closed
        with H2Client(port) as c2:  # the new generation serves h2
            gate.shut()
            gate.release()
            assert c2.get("/new").status == 200


def test_client_reset_ends_the_upstream_wait(tmp_path: Path) -> None:
    """RST_STREAM from the client while the upstream has not answered: the stream ends at
    once (logged 499 with its upstream), the other stream is untouched. Catches: a reset
    stream left waiting for its upstream (rapid reset would cost upstream time)."""
    port = free_port()
    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr), port) as lb:
        with H2Client(port) as c:
            gone = c.request("GET", "/gone")
            kept = c.request("GET", "/kept")
            gate.wait_arrived(2)
            c.conn.reset_stream(gone, 8)  # CANCEL
            c.flush()
            lines = log_lines(lb, 1)
            assert lines[0].startswith("GET /gone HTTP/2.0|499|HTTP/2.0|")
            assert lines[0].endswith(f"|{gate.addr}")
            assert not c.streams[kept].done
            gate.release()
            c.wait(lambda: c.streams[kept].done)
            assert c.streams[kept].status == 200


def test_content_length_mismatch_fails_that_stream_only(tmp_path: Path, backend: Backend) -> None:
    """A request body shorter or longer than its content-length gets 400 on its own stream
    (nginx 1.22's answer) while another stream of the connection, in progress meanwhile, is
    served and the connection lives on (no GOAWAY). Catches: h2's own check ending the whole
    connection with GOAWAY PROTOCOL_ERROR."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        with H2Client(port) as c:
            other = c.request("POST", "/o?echo=1", [("content-length", "4")], end=False)
            short = c.request("POST", "/s?echo=1", [("content-length", "10")], body=b"12345")
            c.wait(lambda: c.streams[short].done, what="the short body's answer")
            long = c.request("POST", "/l?echo=1", [("content-length", "3")], body=b"0123456789")
            c.wait(lambda: c.streams[long].done, what="the long body's answer")
            c.send_body(other, b"good")
            c.wait(lambda: c.streams[other].done, what="the other stream")
            assert c.streams[short].status == 400 and c.streams[long].status == 400
            assert c.streams[other].status == 200
            assert json.loads(bytes(c.streams[other].data))["body_len"] == 4
            assert c.get("/after").status == 200
            assert c.goaway is None


def test_flood_goaway_is_not_lost(tmp_path: Path, backend: Backend) -> None:
    """A PING flood cut by the guard (GOAWAY ENHANCE_YOUR_CALM) while the client is still
    sending: the server reads and discards the rest (lingering close, h2/connection.py rule
    11), so the client, once it stops sending and reads, gets the GOAWAY and a clean EOF.
    Catches: closing with unread input, whose RST makes the client's sends fail and destroys
    the GOAWAY before the client reads it (seen with ``lingering_close = "off"``)."""
    port = free_port()
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    pings = ping.serialize() * 500
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        client = H2Connection(H2Configuration(client_side=True))
        client.initiate_connection()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(client.data_to_send())
            for _ in range(20):  # 10000 PINGs: the guard cuts at 1000 in a second
                s.sendall(pings)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        events = client.receive_data(data)
        ends = [e for e in events if isinstance(e, ConnectionTerminated)]
        assert ends and ends[0].error_code == 11, ends


def test_keepalive_requests_ends_the_connection_gracefully(tmp_path: Path, backend: Backend) -> None:
    """keepalive_requests = 3: the third stream is served, then GOAWAY NO_ERROR naming it
    (nginx >= 1.19.7 applies keepalive_requests to HTTP/2)."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0], server_extra="keepalive_requests = 3"), port):
        with H2Client(port) as c:
            assert [c.get(f"/k{i}").status for i in range(3)] == [200] * 3
            c.wait(lambda: c.goaway is not None, what="GOAWAY")
            assert c.goaway is not None and (c.goaway.error_code, c.goaway.last_stream_id) == (0, 5)


def test_expect_100_continue_sends_interim_headers(tmp_path: Path, backend: Backend) -> None:
    """A request with ``expect: 100-continue`` and no body yet gets HEADERS :status 100 once
    the proxy needs the body, then the final response. Catches: a client waiting for the
    interim response forever (or the pipeline's HTTP/1.1 "100 Continue" bytes leaking)."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        with H2Client(port) as c:
            sid = c.request(
                "POST", "/x?echo=1", [("content-length", "5"), ("expect", "100-continue")], end=False
            )
            c.wait(lambda: c.streams[sid].interim, what="100 Continue")
            assert c.streams[sid].interim == [[(b":status", b"100")]]
            c.send_body(sid, b"hello")
            c.wait(lambda: c.streams[sid].done)
            assert c.streams[sid].status == 200
            assert json.loads(bytes(c.streams[sid].data))["body_len"] == 5


def test_idle_connection_gets_goaway(tmp_path: Path, backend: Backend) -> None:
    """``http2_idle_timeout``: no stream for that long -> GOAWAY NO_ERROR and the close.
    Catches: idle HTTP/2 connections kept forever."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0], server_extra='http2_idle_timeout = "1s"'), port):
        with H2Client(port) as c:
            assert c.get("/one").status == 200
            start = time.monotonic()
            c.wait(lambda: c.goaway is not None, what="GOAWAY")
            assert c.goaway is not None and (c.goaway.error_code, c.goaway.last_stream_id) == (0, 1)
            assert 0.8 <= time.monotonic() - start < 5
            c.wait(lambda: c.closed, what="the close")


def test_request_trailers_go_upstream_after_a_chunked_body(tmp_path: Path, backend: Backend) -> None:
    """A stream's trailers (HEADERS after DATA) reach the upstream in the last chunk of the
    chunked body; Authorization among them is not forwarded. nginx 1.22 ends the connection
    instead (GOAWAY PROTOCOL_ERROR). Catches: trailers lost, or a stream error for them."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        with H2Client(port) as c:
            sid = c.request("POST", "/t?echo=1", end=False)
            c.send_body(sid, b"hello", end=False)
            c.conn.send_headers(sid, [(b"x-checksum", b"abc"), (b"authorization", b"x")], end_stream=True)
            c.flush()
            c.wait(lambda: c.streams[sid].done)
            assert c.streams[sid].status == 200
            echo = json.loads(bytes(c.streams[sid].data))
            assert (echo["body_len"], echo["trailers"]) == (5, [["x-checksum", "abc"]])
            bad = c.request("POST", "/t", end=False)
            c.send_body(bad, b"x", end=False)
            c.conn.config.validate_outbound_headers = False
            c.conn.config.normalize_outbound_headers = False
            c.conn.send_headers(bad, [(b"X-Upper", b"1")], end_stream=True)
            c.flush()
            c.wait(lambda: c.streams[bad].done)
            assert c.streams[bad].reset_code == 1
            assert c.get("/still").status == 200


def test_quit_closes_idle_connections_and_finishes_streams(tmp_path: Path) -> None:
    """``-s quit``: an idle HTTP/2 connection gets GOAWAY and is closed at once; a busy one
    gets GOAWAY, its stream finishes with 200, then it closes and the master exits.
    Catches: an idle connection holding the worker until worker_shutdown_timeout, or the
    in-flight stream cut."""
    port = free_port()
    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr), port) as lb:
        with H2Client(port) as idle, H2Client(port) as busy:
            sid = busy.request("GET", "/slow")
            gate.wait_arrived(1)
            idle.wait(lambda: idle.conn.remote_settings.max_concurrent_streams == 128, what="SETTINGS")
            start = time.monotonic()
            lb.signal("quit")
            idle.wait(lambda: idle.closed, what="the idle connection's close")
            assert idle.goaway is not None and idle.goaway.error_code == 0
            assert time.monotonic() - start < 5
            busy.wait(lambda: busy.goaway is not None, what="GOAWAY")
            assert not busy.streams[sid].done
            gate.release()
            busy.wait(lambda: busy.streams[sid].done)
            assert busy.streams[sid].status == 200
            assert lb.proc is not None
            lb.proc.wait(timeout=15)


def test_client_not_reading_bounds_worker_memory(tmp_path: Path, backend: Backend) -> None:
    """A client that grants huge windows and then reads nothing (a TCP zero-window stall)
    while two streams download 40 MB each: the worker's memory stays bounded (one stream
    waits in the socket send, the other behind it, at most OUT_HIGH_WATER queued), instead
    of queueing whole responses in h2's output buffer. Catches: streams queueing without
    backpressure while another greenlet's send is blocked."""

    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port) as lb:
        (worker,) = lb.workers()
        with H2Client(port) as c:
            c.conn.update_settings({4: 2**31 - 1})  # INITIAL_WINDOW_SIZE
            c.conn.increment_flow_control_window(2**31 - 1 - 65535)
            c.flush()
            c.get("/warm")
            base = worker.memory_info().rss
            for _ in range(2):
                c.request("GET", "/big?size=40000000")
            samples: list[int] = []

            def settled() -> bool:  # the worker stopped growing: both streams are blocked
                samples.append(worker.memory_info().rss)
                return len(samples) > 10 and max(samples[-10:]) - min(samples[-10:]) < 1 << 20

            wait_for(settled, what="the worker's memory to settle")
            grown = max(samples) - base
            assert grown < 24 << 20, f"worker grew by {grown >> 20} MiB"


def test_streams_reset_at_once_never_reach_the_upstream(tmp_path: Path) -> None:
    """Rapid reset (CVE-2023-44487 pattern): 50 streams each opened and reset in the same
    write cost no upstream request; a normal stream afterwards is served. Catches: every
    reset stream still proxied (upstream load from a client that pays nothing)."""
    port = free_port()
    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr), port):
        gate.release()
        with H2Client(port) as c:
            assert c.get("/first").status == 200
            for i in range(50):
                sid = c.conn.get_next_available_stream_id()
                c.streams[sid] = Stream()
                fields = [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":path", b"/r%d" % i),
                    (b":authority", b"x"),
                ]
                c.conn.send_headers(sid, fields)
                c.conn.reset_stream(sid, 8)
            c.flush()
            assert c.get("/after").status == 200
            assert gate.arrived == 2  # /first and /after only


def test_shutdown_timeout_ends_held_streams(tmp_path: Path) -> None:
    """``worker_shutdown_timeout``: a stream still waiting for its upstream when it expires
    is reset and ends its upstream wait, so it is logged (499) before the worker exits.
    Catches: held streams left waiting (never logged, the worker killed around them)."""
    port = free_port()
    with GatedBackend() as gate:
        text = 'worker_shutdown_timeout = "1s"\n' + config(port, gate.addr)
        with LB(tmp_path, text, port) as lb:
            with H2Client(port) as c:
                sid = c.request("GET", "/held")
                gate.wait_arrived(1)
                lb.signal("quit")
                c.wait(lambda: c.streams[sid].done or c.closed, what="the stream's end")
                assert not c.streams[sid].ended
            assert lb.proc is not None
            lb.proc.wait(timeout=15)
            assert lb.access_log()[0].startswith("GET /held HTTP/2.0|499|HTTP/2.0|")


def test_client_gone_ends_streams_waiting_for_upstream(tmp_path: Path) -> None:
    """The client closes its connection while a stream waits for the upstream: the stream
    ends at once, logged 499 (nginx notices the close too). Catches: the stream waiting
    for its upstream and logging the upstream's status for a client long gone."""
    port = free_port()
    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr), port) as lb:
        with H2Client(port) as c:
            c.request("GET", "/left")
            gate.wait_arrived(1)
        lines = log_lines(lb, 1)
        assert lines[0].startswith("GET /left HTTP/2.0|499|HTTP/2.0|")
        gate.release()


def test_overlong_frame_is_refused_before_it_is_buffered(tmp_path: Path, backend: Backend) -> None:
    """A frame declaring 16 MiB (over the 16k SETTINGS_MAX_FRAME_SIZE) gets GOAWAY
    FRAME_SIZE_ERROR (6) once a read beyond it arrived, not after 16 MiB were buffered.
    Catches: h2's whole-frame buffering (its length check comes after the body)."""
    import socket

    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            )  # empty SETTINGS
            s.sendall(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")  # DATA, 16 MiB - 1 declared
            got = b""
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < 4 << 20:  # at most 4 MiB: the server must have answered by then
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            try:
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    got += data
            except OSError:
                pass
        assert b"\x07\x00\x00\x00\x00\x00" in got  # a GOAWAY frame header (type 7, stream 0)
        goaway = got[got.index(b"\x07\x00\x00\x00\x00\x00") - 3 :]
        assert goaway[13:17] == b"\x00\x00\x00\x06"  # FRAME_SIZE_ERROR


def test_preface_split_across_reads(tmp_path: Path, backend: Backend) -> None:
    """The first read ending inside the preface (``PRI * HT`` ... or an HTTP/1.1 ``P``
    ... ``OST``): the bytes are consumed, the rest awaited without spinning, and both
    protocols still see their whole stream. Catches: the partial bytes lost, or a busy
    loop on a socket kept readable by unread bytes."""
    import socket

    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port) as lb:
        (worker,) = lb.workers()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"P")
            cpu = worker.cpu_times()
            wait_for(lambda: worker.status() == "sleeping", what="the worker idle")
            time.sleep(0.5)  # a busy loop would show as CPU time over this half second
            spent = sum(worker.cpu_times()[:2]) - sum(cpu[:2])
            s.sendall(b"OST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK") and spent < 0.2
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            from h2.config import H2Configuration
            from h2.connection import H2Connection
            from h2.events import ResponseReceived

            h2c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            h2c.initiate_connection()
            h2c.send_headers(
                1,
                [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/h2"), (b":authority", b"x")],
                end_stream=True,
            )
            out = h2c.data_to_send()
            raw.sendall(out[:8])  # "PRI * HT"
            wait_for(lambda: worker.status() == "sleeping", what="the worker idle")
            raw.sendall(out[8:])
            statuses: list[bytes] = []
            while not statuses:
                data = raw.recv(65536)
                assert data, "closed before the response"
                for ev in h2c.receive_data(data):
                    if isinstance(ev, ResponseReceived):
                        statuses.append(dict(ev.headers)[b":status"])
                raw.sendall(h2c.data_to_send())
            assert statuses == [b"200"]


def test_idle_h2_connection_counts_as_idle_in_the_api(tmp_path: Path, backend: Backend) -> None:
    """The status API's connections.idle counts an HTTP/2 connection with no stream in
    progress (as an HTTP/1.1 one between requests), and not while a stream runs."""
    port, api = free_port(), free_port()
    extra = f"""
[[http.servers]]
listen = ["127.0.0.1:{api}"]
  [[http.servers.locations]]
  match = "/api/"
  api = true
"""

    def idle() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/api/9/connections", timeout=5) as r:
            return int(json.loads(r.read())["idle"])

    with GatedBackend() as gate, LB(tmp_path, config(port, gate.addr) + extra, port):
        with H2Client(port) as c:
            c.wait(lambda: c.conn.remote_settings.max_concurrent_streams == 128, what="SETTINGS")
            wait_for(lambda: idle() == 1, what="one idle connection")
            sid = c.request("GET", "/held")
            gate.wait_arrived(1)
            assert idle() == 0
            gate.release()
            c.wait(lambda: c.streams[sid].done)
            wait_for(lambda: idle() == 1, what="idle again")
        wait_for(lambda: idle() == 0, what="no idle connection once closed")


def test_hpack_bomb_is_stopped_while_inflating(tmp_path: Path, backend: Backend) -> None:
    """One 4000-byte field put in the HPACK table, then a header block naming it 20 times
    (a few dozen bytes on the wire, 80 KB inflated): GOAWAY ENHANCE_YOUR_CALM (11), nginx's
    answer to a header list over 32k (the decoder stops at the advertised size as it
    inflates). Catches: the inflated list accepted and proxied."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port):
        with H2Client(port) as c:
            first = c.get("/one", headers=[("x-bomb", "b" * 4000)])  # enters both HPACK tables
            assert first.status == 200
            c.request("GET", "/two", headers=[("x-bomb", "b" * 4000)] * 20)
            c.wait(lambda: c.goaway is not None, what="GOAWAY")
            assert c.goaway is not None and c.goaway.error_code == 11


def parked(zone: ZoneReader) -> int:
    L = zone.L
    return sum(int(zone.mv[L.row_base(r, zone.peers) + L.R_PARKED]) for r in range(zone.rows))


def test_idle_connection_is_parked_served_again_and_expires(tmp_path: Path, backend: Backend) -> None:
    """An HTTP/2 connection idle for a second is parked (the zone's parked count), served
    again when a stream arrives (several times), and at ``http2_idle_timeout`` gets GOAWAY
    and is closed while parked. Catches: a parked connection never woken (the request
    hangs), its h2 state reset on resume (a second connection preface), or the idle
    timeout lost while parked."""
    port = free_port()
    extra = 'http2_idle_timeout = "3s"'
    with LB(tmp_path, config(port, backend.addrs[0], server_extra=extra), port) as lb:
        zone = ZoneReader(lb.master_pid)
        with H2Client(port) as c:
            for i in range(3):
                wait_for(lambda: parked(zone) == 1, what="the connection to be parked")
                assert c.get(f"/p{i}").status == 200
                assert parked(zone) == 0
            wait_for(lambda: parked(zone) == 1, what="parked again")
            start = time.monotonic()
            c.wait(lambda: c.goaway is not None, what="GOAWAY")
            assert c.goaway is not None and (c.goaway.error_code, c.goaway.last_stream_id) == (0, 5)
            assert time.monotonic() - start < 4
            c.wait(lambda: c.closed, what="the close")
        wait_for(lambda: parked(zone) == 0, what="no parked connection")


def test_quit_closes_a_parked_connection(tmp_path: Path, backend: Backend) -> None:
    """``-s quit`` with a parked HTTP/2 connection: GOAWAY, the close, the master's exit,
    well before worker_shutdown_timeout. Catches: a parked connection the drain cannot
    reach (no greenlet to wake)."""
    port = free_port()
    with LB(tmp_path, config(port, backend.addrs[0]), port) as lb:
        zone = ZoneReader(lb.master_pid)
        with H2Client(port) as c:
            assert c.get("/x").status == 200
            wait_for(lambda: parked(zone) == 1, what="the connection to be parked")
            lb.signal("quit")
            c.wait(lambda: c.closed, what="the close")
            assert c.goaway is not None and c.goaway.error_code == 0
        assert lb.proc is not None
        lb.proc.wait(timeout=10)
