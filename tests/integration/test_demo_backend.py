"""The demo/test upstream server (scripts/demo_backend.py) driven through tests.backends.Backend."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.backends import Backend, free_port

PATTERN = b"0123456789abcdef"


def pattern(n: int) -> bytes:
    return (PATTERN * (n // 16 + 1))[:n]


@pytest.fixture(scope="module")
def be() -> Iterator[Backend]:
    with Backend(2) as backend:
        yield backend


def get(port: int, target: str, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks: list[bytes] = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def split(resp: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def test_listening_and_default_response(be: Backend) -> None:
    assert len(be.ports) == 2 and len(set(be.ports)) == 2
    assert be.addrs == [f"127.0.0.1:{p}" for p in be.ports]
    for port in be.ports:
        resp, body = get(port, "/any/path")
        assert resp.status == 200
        assert body == f"{port}\n".encode()
        assert resp.getheader("X-Port") == str(port)
        assert int(resp.getheader("X-Conn", "0")) >= 1
        assert resp.getheader("X-Conn-Requests") == "1"
        assert resp.getheader("Content-Type", "").startswith("text/plain")
        assert resp.getheader("Content-Length") == str(len(body))
        assert resp.getheader("X-Name") is None


def test_name() -> None:
    with Backend(1, name="a") as backend:
        resp, body = get(backend.ports[0], "/")
        assert body == b"a\n"
        assert resp.getheader("X-Name") == "a"
        assert resp.getheader("X-Port") == str(backend.ports[0])
        assert backend.proc is not None
        proc = backend.proc
    # SIGTERM -> clean exit (one that ignored it would be killed after STOP_TIMEOUT: -9)
    assert proc.returncode == 0


def test_keepalive_counting_and_stats(be: Backend) -> None:
    port = be.ports[1]
    before = be.stats(port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    seqs = []
    for i in range(1, 4):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.read() == f"{port}\n".encode()
        assert resp.getheader("X-Conn-Requests") == str(i)
        seqs.append(resp.getheader("X-Conn"))
    assert len(set(seqs)) == 1
    mid = be.stats(port)
    assert mid["connections"] == before["connections"] + 1
    assert mid["requests"] == before["requests"] + 3
    assert mid["open"] == before["open"] + 1
    conn.close()
    after = be.wait_stats(port, lambda s: s["open"] == before["open"])
    assert after["open"] == before["open"]
    # the next connection gets the next sequence number (stats probes do not take one)
    resp, _ = get(port, "/")
    assert int(resp.getheader("X-Conn", "0")) == int(seqs[0] or 0) + 1
    final = be.stats(port)
    assert final["connections"] == before["connections"] + 2
    assert final["accepted"] > final["connections"]


def test_status_and_statusport(be: Backend) -> None:
    p0, p1 = be.ports
    resp, body = get(p0, "/?status=503")
    assert resp.status == 503 and body == f"{p0}\n".encode()
    resp, _ = get(p0, f"/x?status=502&statusport={p1}")
    assert resp.status == 200
    resp, _ = get(p1, f"/x?status=502&statusport={p1}")
    assert resp.status == 502
    resp, body = get(p0, "/?status=204")
    assert resp.status == 204 and body == b"" and resp.getheader("Content-Length") is None


def test_delay(be: Backend) -> None:
    t0 = time.monotonic()
    resp, _ = get(be.ports[0], "/?delay=200")
    assert resp.status == 200
    assert time.monotonic() - t0 >= 0.19


def test_size_pattern(be: Backend) -> None:
    resp, body = get(be.ports[0], "/?size=200003")
    assert resp.getheader("Content-Length") == "200003"
    assert body == pattern(200003)
    resp, body = get(be.ports[0], "/?size=0")
    assert resp.getheader("Content-Length") == "0" and body == b""


def test_chunked(be: Backend) -> None:
    resp, body = get(be.ports[0], "/?chunked=1&size=150000")
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Length") is None
    assert body == pattern(150000)
    # the raw stream really has several chunks, even for a tiny body
    data = raw(be.ports[0], b"GET /?chunked=1&size=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, headers, body = split(data)
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"3\r\n012\r\n3\r\n345\r\n3\r\n678\r\n1\r\n9\r\n0\r\n\r\n"


def test_noframe(be: Backend) -> None:
    port = be.ports[0]
    data = raw(port, b"GET /?noframe=1&size=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = split(data)
    assert status == "HTTP/1.1 200 OK"
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert body == pattern(5000)


def test_echo_chunked_post(be: Backend) -> None:
    port = be.ports[1]
    payload = b"hello, " * 1000 + b"world"
    pieces = [payload[:10], payload[10:5000], payload[5000:]]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-Trail: yes\r\n\r\n"
    req = (
        b"POST /echo/path?echo=1&k=v HTTP/1.1\r\nHost: example.test\r\nX-MiXeD-Case:  v1 \r\n"
        b"Transfer-Encoding: chunked\r\nx-mixed-case: v2\r\nConnection: close\r\n\r\n" + body
    )
    status, headers, rbody = split(raw(port, req))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json"
    info = json.loads(rbody)
    assert info["method"] == "POST"
    assert info["target"] == "/echo/path?echo=1&k=v"
    assert info["version"] == "HTTP/1.1"
    assert info["headers"] == [
        ["Host", "example.test"],
        ["X-MiXeD-Case", "v1"],
        ["Transfer-Encoding", "chunked"],
        ["x-mixed-case", "v2"],
        ["Connection", "close"],
    ]
    assert info["trailers"] == [["X-Trail", "yes"]]
    assert info["body_len"] == len(payload)
    assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert info["port"] == port and info["conn"] == int(headers["x-conn"])


def test_echo_content_length_and_expect(be: Backend) -> None:
    port = be.ports[0]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PUT /?echo=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abcde")
        resp = http.client.HTTPResponse(s, method="PUT")
        resp.begin()
        info = json.loads(resp.read())
        resp.close()
    assert info["body_len"] == 5 and info["body_sha256"] == hashlib.sha256(b"abcde").hexdigest()


def test_head(be: Backend) -> None:
    port = be.ports[0]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("HEAD", "/?size=12345")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == "12345"
        assert resp.read() == b""
        # the connection is still in sync: no body was sent
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.read() == f"{port}\n".encode()
        assert resp.getheader("X-Conn-Requests") == "2"
    finally:
        conn.close()


def test_pipelining_and_http10(be: Backend) -> None:
    port = be.ports[0]
    data = raw(
        port, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert b"X-Conn-Requests: 2\r\n" in data and b"Connection: close\r\n" in data
    # HTTP/1.0 closes by default ...
    status, headers, body = split(raw(port, b"GET / HTTP/1.0\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK" and body == f"{port}\n".encode()
    assert headers["connection"] == "close"
    # ... unless asked to keep alive; chunked=1 falls back to a close-delimited body for HTTP/1.0
    data = raw(
        port,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /?chunked=1&size=3 HTTP/1.0\r\n"
        b"Connection: keep-alive\r\n\r\n",
    )
    first, _, second = data.partition(b"\n\r\n" + f"{port}\n".encode())
    assert b"Connection: keep-alive" in first
    status, headers, body = split(second)
    assert "transfer-encoding" not in headers and body == b"012"


def test_close_hang_shortbody_rst(be: Backend) -> None:
    p0, p1 = be.ports
    # close=1: the request is read, the connection closed without any answer
    assert raw(p0, b"GET /?close=1 HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    # hangport: only the named listener hangs
    req = f"GET /?hang=1&hangport={p0} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert split(raw(p1, req))[0] == "HTTP/1.1 200 OK"
    with socket.create_connection(("127.0.0.1", p0), timeout=0.3) as s:
        s.sendall(req)
        with pytest.raises(TimeoutError):
            s.recv(100)
    # shortbody: announces 10 bytes, sends 2, closes
    _, headers, body = split(raw(p0, b"GET /?shortbody=1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert headers["content-length"] == "10" and body == b"01"
    # rst: 1000 of 100000 announced bytes, then a reset
    got = b""
    with socket.create_connection(("127.0.0.1", p0), timeout=5) as s:
        s.sendall(b"GET /?rst=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            while chunk := s.recv(65536):
                got += chunk
    _, headers, body = split(got)
    assert headers["content-length"] == "100000" and body == pattern(1000)


def test_bigheader(be: Backend) -> None:
    resp, _ = get(be.ports[0], "/?bigheader=20000")
    assert resp.getheader("X-Big") == "x" * 20000


@pytest.mark.parametrize(
    "req",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /?status=abc HTTP/1.1\r\n\r\n",
    ],
)
def test_bad_requests(be: Backend, req: bytes) -> None:
    status, headers, _ = split(raw(be.ports[1], req))
    assert status.startswith("HTTP/1.1 400 ")
    assert headers["connection"] == "close"


def test_free_port() -> None:
    port = free_port()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
