"""The response head of a cache HIT (cache_serve.py rule 2, the prebuilt head of a worker's
memo entry): exact bytes on the wire, keep-alive and close, with hidden fields, add_header
and a rewritten Location; so a prebuilt head that drops, reorders or keeps a field the
per-request build would not, or reuses one location's head in another, fails here."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import free_port
from tests.cache_backend import CacheBackend
from tests.harness import LB, wait_for
from tests.integration.test_cache_path import config


@pytest.fixture
def be() -> Iterator[CacheBackend]:
    with CacheBackend() as b:
        yield b


# two locations sharing entries (the same key), with different header rules
LOCS = """proxy_cache_valid = ["10s"]
  proxy_cache_key = "$arg_k"
  proxy_hide_header = ["X-Secret"]
  [[http.servers.locations]]
  match = "/other/"
  proxy_pass = "http://backend"
  proxy_cache = "one"
  proxy_cache_key = "$arg_k"
  proxy_cache_valid = ["10s"]
"""


def raw_heads(port: int, path: str, n: int, close_last: bool) -> list[bytes]:
    """``n`` GETs on one connection (the last with Connection: close when asked): each
    response head, Date blanked; the bodies are read by Content-Length."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        buf = b""
        for i in range(n):
            close = close_last and i == n - 1
            extra = b"Connection: close\r\n" if close else b""
            s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a.test\r\n" + extra + b"\r\n")
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, "connection closed early"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            while len(buf) < length:
                buf += s.recv(65536)
            buf = buf[length:]
            out.append(re.sub(rb"Date: [^\r]+", b"Date: *", head) + b"\r\n\r\n")
    return out


def stored(tmp_path: Path, n: int) -> bool:
    return len([p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.parent.name != "tmp"]) >= n


def test_hit_heads_exact(tmp_path: Path, be: CacheBackend) -> None:
    be.route("/h", headers=[("Content-Type", "text/plain"), ("X-Secret", "s"), ("X-Up", "1")])
    port = free_port()
    with LB(tmp_path, config(port, be, LOCS), port):
        assert raw_heads(port, "/h?k=1", 1, False)[0].startswith(b"HTTP/1.1 200 OK\r\n")
        wait_for(lambda: stored(tmp_path, 1), what="the entry")
        heads = raw_heads(port, "/h?k=1", 3, close_last=True)
        common = (
            b"HTTP/1.1 200 OK\r\nServer: prefork-lb\r\nDate: *\r\nContent-Type: text/plain\r\n"
            b"X-Up: 1\r\nX-Cache-Status: HIT\r\nContent-Length: 4\r\n"
        )
        ka, close = common + b"Connection: keep-alive\r\n\r\n", common + b"Connection: close\r\n\r\n"
        assert heads == [ka, ka, close]
        # the same entry from a location without hide/add_header: its own head, X-Secret
        # passes; then the first location again: its head again
        assert (
            raw_heads(port, "/other/h?k=1", 2, False)
            == [
                b"HTTP/1.1 200 OK\r\nServer: prefork-lb\r\nDate: *\r\nContent-Type: text/plain\r\n"
                b"X-Secret: s\r\nX-Up: 1\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\n"
            ]
            * 2
        )
        assert raw_heads(port, "/h?k=1", 1, False) == heads[:1]
        assert sum(be.hits.values()) == 1  # one upstream request: all else HITs


def test_hit_location_is_rewritten(tmp_path: Path, be: CacheBackend) -> None:
    """proxy_redirect default on a stored Location: the per-request build (not prebuilt)."""
    be.route("/r", headers=[("Location", "http://backend/x")])
    port = free_port()
    with LB(tmp_path, config(port, be, 'proxy_cache_valid = ["10s"]'), port):
        raw_heads(port, "/r", 1, False)
        wait_for(lambda: stored(tmp_path, 1), what="the entry")
        heads = raw_heads(port, "/r", 2, False)
    assert len(heads) == 2 and all(b"X-Cache-Status: HIT\r\n" in h for h in heads)
    assert all(f"Location: http://a.test:{port}/x\r\n".encode() in h for h in heads), heads
