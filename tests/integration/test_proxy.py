"""The real master, real workers, real backends: HTTP proxying behaviour end to end."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, basic_config, raw_exchange, request, upstream_block, wait_for


@pytest.fixture(scope="module")
def backends() -> Iterator[Backend]:
    with Backend(count=3) as b:
        yield b


def names(backends: Backend, ports: list[str]) -> str:
    letter = {str(p): "abc"[i] for i, p in enumerate(backends.ports)}
    return " ".join(letter.get(p, "?") for p in ports)


def test_round_robin_weights_match_nginx(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    a, b, c = backends.addrs
    up = upstream_block("backend", [a, b, c], **{a: ", weight = 5"})
    with LB(tmp_path, basic_config(port, up), port):
        seen = [request(port, "GET", "/")[1]["x-port"] for _ in range(14)]
    assert names(backends, seen) == "a a b a c a a a a b a c a a"


def test_upstream_keepalive_pool_reuses_connections(tmp_path: Path) -> None:
    port = free_port()
    with Backend(count=1) as one:
        up = upstream_block("backend", one.addrs, extra="keepalive = 4\nkeepalive_requests = 3")
        with LB(tmp_path, basic_config(port, up), port):
            conns = [request(port, "GET", "/")[1]["x-conn"] for _ in range(7)]
    # nginx scenario 23: keepalive_requests 3 -> connection ids 1 1 1 2 2 2 3
    assert conns == ["1", "1", "1", "2", "2", "2", "3"]


def test_without_keepalive_every_request_opens_a_connection(tmp_path: Path) -> None:
    port = free_port()
    with Backend(count=1) as one:
        up = upstream_block("backend", one.addrs)
        with LB(tmp_path, basic_config(port, up), port):
            conns = [request(port, "GET", "/?echo=1")[2] for _ in range(3)]
    bodies = [json.loads(c) for c in conns]
    assert [b["conn"] for b in bodies] == [1, 2, 3]
    assert all(["Connection", "close"] in b["headers"] for b in bodies)


def test_client_keepalive_and_pipelining_in_order(tmp_path: Path, backends: Backend) -> None:
    """Four pipelined requests on one connection, the first the slowest: four responses,
    in request order (each echoes its own target), the first three kept alive."""
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    targets = [f"/?delay={d}&echo=1&seq={i}" for i, d in enumerate((30, 0, 10))] + ["/?echo=1&seq=last"]
    with LB(tmp_path, basic_config(port, up), port):
        req = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % t.encode() for t in targets[:3])
        req += b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % targets[3].encode()
        out = raw_exchange(port, req)
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert out.count(b"Connection: keep-alive") == 3 and out.endswith(b"\n")
    echoed = [json.loads(m)["target"] for m in re.findall(rb"\r\n\r\n(\{.*?\})\n", out)]
    assert echoed == targets


def test_chunked_request_body_streams_to_upstream(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    body = bytes(range(256)) * 4000  # ~1 MB, beyond client_body_buffer_size: streamed
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + 7000]), body[i : i + 7000]) for i in range(0, len(body), 7000)
    )
    head = b"POST /?echo=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with LB(tmp_path, basic_config(port, up, location_extra='client_max_body_size = "4m"'), port):
        out = raw_exchange(port, head + chunks + b"0\r\n\r\n", timeout_s=10)
    status, _, rest = out.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK"
    echo = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["Transfer-Encoding", "chunked"] in echo["headers"]


def test_content_length_body_and_large_response(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    with LB(tmp_path, basic_config(port, up), port):
        status, _, data = request(port, "POST", "/?echo=1", body=b"hello")
        assert status == 200 and json.loads(data)["body_len"] == 5
        status, headers, data = request(port, "GET", "/?size=3000000")
    assert status == 200 and headers["content-length"] == "3000000"
    assert data == (b"0123456789abcdef" * (3000000 // 16 + 1))[:3000000]


@pytest.mark.parametrize("knob", ["chunked=1", "noframe=1"])
def test_chunked_and_unframed_responses_rechunked(tmp_path: Path, backends: Backend, knob: str) -> None:
    """HTTP/1.1 clients get such bodies re-chunked; HTTP/1.0 clients get them delimited by
    close, and the connection does close even when the client asked for keep-alive (the
    proxy's outcome withdraws it, proxy.py rule 9; a connection left open would make the
    client wait for the keep-alive timeout: ``<timeout>`` in the read)."""
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1], extra="keepalive = 2")
    with LB(tmp_path, basic_config(port, up), port):
        status, headers, data = request(port, "GET", f"/?{knob}&size=100000")
        assert status == 200 and headers.get("transfer-encoding") == "chunked"
        assert data == (b"0123456789abcdef" * 6250)
        # HTTP/1.0 clients get the body delimited by close, never chunked
        out = raw_exchange(port, f"GET /?{knob}&size=1000 HTTP/1.0\r\n\r\n".encode())
        asked = f"GET /?{knob}&size=1000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        kept = raw_exchange(port, asked.encode())
    for response in (out, kept):
        head, _, body = response.partition(b"\r\n\r\n")
        assert b"chunked" not in head and b"Connection: close" in head and len(body) == 1000, response[-200:]


def test_head_204_304_have_no_body_and_keep_connection(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1], extra="keepalive = 2")
    with LB(tmp_path, basic_config(port, up), port):
        out = raw_exchange(
            port,
            b"HEAD /?size=1234 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /?status=204 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /?status=304 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /?size=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    parts = out.split(b"HTTP/1.1 ")
    assert len(parts) == 5, out
    assert (
        parts[1].startswith(b"200") and b"Content-Length: 1234" in parts[1] and parts[1].endswith(b"\r\n\r\n")
    )
    assert parts[2].startswith(b"204") and parts[2].endswith(b"\r\n\r\n")
    assert parts[3].startswith(b"304") and parts[3].endswith(b"\r\n\r\n")
    assert parts[4].startswith(b"200") and parts[4].endswith(b"\r\n\r\n012")


def test_dead_server_is_skipped_and_logged_like_nginx(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    a = backends.addrs[0]
    up = upstream_block("backend", [a, dead])
    with LB(tmp_path, basic_config(port, up), port) as lb:
        statuses = [request(port, "GET", f"/r{i}")[0] for i in range(5)]
        lines = lb.access_log(5)
    assert statuses == [200] * 5
    # nginx scenario 4: a, then dead+a (502, 200; connect "-, x"), then a a a
    assert lines[0] == f"GET /r0 HTTP/1.1|200|{a}|200|" + lines[0].rsplit("|", 1)[1]
    assert lines[1].startswith(f"GET /r1 HTTP/1.1|200|{dead}, {a}|502, 200|-, ")
    assert all(line.split("|")[2] == a for line in lines[2:])


def test_all_servers_down_gives_502_with_group_name(tmp_path: Path) -> None:
    port = free_port()
    d1, d2 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    up = upstream_block("backend", [d1, d2])
    with LB(tmp_path, basic_config(port, up), port) as lb:
        first = request(port, "GET", "/one")
        second = request(port, "GET", "/two")
        lines = lb.access_log(2)
        errors = lb.output()
    assert first[0] == 502 and second[0] == 502
    assert lines[0].split("|")[2:4] == [f"{d1}, {d2}", "502, 502"]
    assert lines[1].split("|")[2:4] == ["backend", "502"]  # nginx: no live upstreams
    assert "no live upstreams" in errors


def test_read_timeout_gives_504_then_next_server(tmp_path: Path, backends: Backend) -> None:
    """a never answers: after proxy_read_timeout the request goes to b (logged as
    "a, b" / "504, 200"); with a alone it is a 504. The timeout is 1s, not less: b must
    answer within it on a busy machine too."""
    port = free_port()
    a, b = backends.addrs[:2]
    hang = a.split(":")[1]
    up = upstream_block("backend", [a, b])
    cfg = basic_config(port, up).replace('proxy_read_timeout = "5s"', 'proxy_read_timeout = "1s"')
    with LB(tmp_path, cfg, port) as lb:
        status, headers, _ = request(port, "GET", f"/?hang=1&hangport={hang}")
        assert status == 200 and headers["x-port"] == b.split(":")[1]
        assert lb.access_log(1)[0].split("|")[1:4] == ["200", f"{a}, {b}", "504, 200"]
    # a single attempt that times out is a 504
    port2 = free_port()
    up2 = upstream_block("backend", [a])
    cfg2 = basic_config(port2, up2).replace('proxy_read_timeout = "5s"', 'proxy_read_timeout = "1s"')
    (tmp_path / "single").mkdir()
    with LB(tmp_path / "single", cfg2, port2):
        assert request(port2, "GET", f"/?hang=1&hangport={hang}")[0] == 504


def test_post_is_not_retried_after_being_sent(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    a, b = backends.addrs[:2]
    up = upstream_block("backend", [a, b])
    extra = 'proxy_next_upstream = ["error", "timeout", "http_502"]'
    with LB(tmp_path, basic_config(port, up, location_extra=extra), port) as lb:
        assert request(port, "POST", f"/?status=502&statusport={a.split(':')[1]}", body=b"x")[0] == 502
        assert request(port, "GET", "/r")[0] == 200
        lines = lb.access_log(2)
    assert lines[0].split("|")[2:4] == [a, "502"]  # passed through, not retried


def test_proxy_set_header_and_hop_by_hop(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    extra = (
        'proxy_set_header = { Host = "$host", "X-Real-IP" = "$remote_addr", '
        '"X-Forwarded-For" = "$proxy_add_x_forwarded_for" }'
    )
    with LB(tmp_path, basic_config(port, up, location_extra=extra), port):
        _, _, data = request(
            port,
            "GET",
            "/?echo=1",
            headers={
                "Host": "example.test",
                "Connection": "X-Secret",
                "X-Secret": "1",
                "Keep-Alive": "5",
                "X-Forwarded-For": "10.0.0.1",
                "TE": "trailers",
                "X_Under": "1",
            },
        )
    got = {k.lower(): v for k, v in json.loads(data)["headers"]}
    assert got["host"] == "example.test"
    assert got["x-real-ip"] == "127.0.0.1"
    assert got["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    for dropped in ("x-secret", "keep-alive", "te", "x_under"):
        assert dropped not in got


def test_location_routing_return_and_server_names(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    a, b = backends.addrs[:2]
    cfg = f"""
error_log = "error.log"
[http]
access_log = "off"
[http.upstreams.one]
servers = [{{ address = "{a}" }}]
[http.upstreams.two]
servers = [{{ address = "{b}" }}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
server_name = ["default.test"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://one"
  [[http.servers.locations]]
  match = "^~ /static/"
  proxy_pass = "http://two"
  [[http.servers.locations]]
  match = "~* \\\\.php$"
  return = "403"
  [[http.servers.locations]]
  match = "= /moved"
  return = "301 https://example.test$request_uri"
[[http.servers]]
listen = ["127.0.0.1:{port}"]
server_name = ["*.other.test"]
  [[http.servers.locations]]
  match = "/"
  return = "200 other $host"
"""
    pa, pb = a.split(":")[1], b.split(":")[1]
    with LB(tmp_path, cfg, port):
        assert request(port, "GET", "/x")[1]["x-port"] == pa
        assert request(port, "GET", "/static/x.php")[1]["x-port"] == pb
        assert request(port, "GET", "/x.PHP")[0] == 403
        status, headers, _ = request(port, "GET", "/moved?q=1")
        assert status == 301 and headers["location"] == "https://example.test/moved?q=1"
        assert request(port, "GET", "/", headers={"Host": "www.other.test"})[2] == b"other www.other.test"
        assert request(port, "GET", "/", headers={"Host": "unknown.test"})[1]["x-port"] == pa
        # nginx's auto-redirect: only "location /static/" proxies, so "/static" gets a 301
        status, headers, _ = request(port, "GET", "/static?x=1")
        assert status == 301 and headers["location"] == "/static/?x=1"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
    ],
)
def test_malformed_requests_get_status_and_close(
    tmp_path: Path, backends: Backend, raw: bytes, status: int
) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    with LB(tmp_path, basic_config(port, up), port) as lb:
        workers = {w.pid for w in lb.workers()}
        out = raw_exchange(port, raw)
        assert out.startswith(b"HTTP/1.1 %d " % status)
        assert b"Connection: close" in out and not out.endswith(b"<timeout>")
        # a bad client never hurts the next one, nor the worker (a respawned one would run too)
        assert request(port, "GET", "/")[0] == 200
        assert {w.pid for w in lb.workers() if w.is_running()} == workers


def test_valid_request_then_invalid_answers_both_in_order(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    with LB(tmp_path, basic_config(port, up), port):
        out = raw_exchange(
            port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n"
        )
    assert out.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 400 Bad Request" in out


def test_upstream_protocol_errors_are_502_and_truncations_close(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    with LB(tmp_path, basic_config(port, up), port):
        assert request(port, "GET", "/?bigheader=70000")[0] == 502
        assert request(port, "GET", "/?close=1")[0] == 502
        out = raw_exchange(port, b"GET /?shortbody=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"Content-Length: 10" in out and out.endswith(b"\r\n\r\n01")  # never padded, then closed
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /?rst=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
        assert b"Content-Length: 100000" in got and len(got.split(b"\r\n\r\n", 1)[1]) < 100000


def test_access_log_buffer_flush_if_and_several_logs(tmp_path: Path, backends: Backend) -> None:
    port = free_port()
    up = upstream_block("backend", backends.addrs[:1])
    cfg = f"""
error_log = "error.log"
[http]
[http.log_formats]
short = '$request_uri $status'
{up}
[[http.servers]]
listen = ["127.0.0.1:{port}"]
access_log = [
  "all.log",
  {{ path = "buffered.log", format = "short", buffer = "64k", flush = "1h" }},
  {{ path = "errors.log", format = "short", if = "$arg_log" }},
]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  [[http.servers.locations]]
  match = "/quiet"
  access_log = "off"
  return = "204"
"""
    with LB(tmp_path, cfg, port):
        statuses = [request(port, "GET", path)[0] for path in ("/a", "/b?log=1", "/c?log=0", "/quiet")]
        assert statuses == [200, 200, 200, 204]
        wait_for(
            lambda: (
                (tmp_path / "all.log").exists() and len((tmp_path / "all.log").read_text().splitlines()) == 3
            ),
            what="combined log",
        )
        assert '"GET /a HTTP/1.1" 200' in (tmp_path / "all.log").read_text()
        errors = wait_for(
            lambda: (tmp_path / "errors.log").exists() and (tmp_path / "errors.log").read_text(),
            what="conditional log",
        )
        assert errors.splitlines() == ["/b?log=1 200"]  # "0" and empty are not logged
        # buffered (64k, flush=1h): nothing is written while the worker runs...
        buffered = tmp_path / "buffered.log"
        assert not buffered.exists() or buffered.read_text() == ""
    # ...and everything when it exits (a graceful or fast stop flushes)
    assert buffered.read_text().splitlines() == ["/a 200", "/b?log=1 200", "/c?log=0 200"]
