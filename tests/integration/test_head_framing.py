"""HEAD responses never carry a body, whichever part of the proxy answers (issue 12 item 4).

Each case sends ``HEAD X`` and ``GET X`` pipelined in one write on one keep-alive
connection and checks the exact bytes: the GET's status line starts right after the blank
line ending the HEAD response's head, the HEAD head announces the same Content-Length as
the GET (where the body is stable), and the GET response is complete with nothing after it.

What it catches: on the old code the slash redirect (``HEAD /api``) sent its 301 with the
167-byte error page, so the GET response started inside that body (``test_head_then_get
[slash-redirect]`` fails there); any local response built without the request method would
fail the same way.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB

CONFIG = """
workers = 1
error_log = "error.log"
[http]
access_log = "access.log"
[http.upstreams.backend]
servers = [{{ address = "{backend}" }}]
[http.upstreams.dead]
servers = [{{ address = "127.0.0.1:{dead}" }}]

[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/proxy/"
  proxy_pass = "http://backend"
  [[http.servers.locations]]
  match = "/dead/"
  proxy_pass = "http://dead"
  proxy_next_upstream = ["off"]
  [[http.servers.locations]]
  match = "/api/"
  api = true
  [[http.servers.locations]]
  match = "= /metrics"
  metrics = true
  [[http.servers.locations]]
  match = "/dashboard"
  dashboard = true
  [[http.servers.locations]]
  match = "= /text"
  return = "200 hello $uri"
  [[http.servers.locations]]
  match = "= /redirect"
  return = "302 /elsewhere"
  [[http.servers.locations]]
  match = "= /gone"
  return = 410
  [[http.servers.locations]]
  match = "= /empty"
  return = 204
  [[http.servers.locations]]
  match = "= /denied"
  proxy_pass = "http://127.0.0.1:{dead}"
  deny = ["all"]
  [[http.servers.locations]]
  match = "= /returned"
  return = "200 returned"
  deny = ["all"]
"""

# (path, status of both responses, are the two bodies identical?)
CASES = {
    "slash-redirect": ("/api", 301, True),
    "api": ("/api/", 200, False),
    "api-error": ("/api/nope", 404, True),
    "metrics": ("/metrics", 200, False),
    "dashboard": ("/dashboard/", 200, True),
    "return-text": ("/text", 200, True),
    "return-redirect": ("/redirect", 302, True),
    "return-error": ("/gone", 410, True),
    "return-204": ("/empty", 204, True),
    "deny-403": ("/denied", 403, True),
    # nginx runs ``return`` (rewrite phase) before allow/deny (access phase): 200, not 403
    # (shared/reference/nginx-semantics-2.md 2.1; before 2026-12-07 prefork-lb said 403)
    "return-before-deny": ("/returned", 200, True),
    "no-location-404": ("/nowhere", 404, True),
    "proxy-502": ("/dead/x", 502, True),
    "proxied": ("/proxy/x", 200, True),
}


@pytest.fixture(scope="module")
def lb_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    directory: Path = tmp_path_factory.mktemp("head")
    with Backend(count=1) as backend:
        config = CONFIG.format(backend=backend.addrs[0], dead=free_port(), port=port)
        with LB(directory, config, port):
            yield port


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return None


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("case", list(CASES))
def test_head_then_get(lb_port: int, case: str) -> None:
    path, status, same_body = CASES[case]
    target = path.encode()
    out = _exchange(
        lb_port,
        b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % target
        + b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target,
    )
    head1, sep, rest = out.partition(b"\r\n\r\n")
    assert sep and head1.startswith(b"HTTP/1.1 %d " % status), out[:300]
    assert b"Connection: keep-alive" in head1
    # The GET's response starts right after the HEAD response's head: no body in between.
    assert rest.startswith(b"HTTP/1.1 %d " % status), rest[:300]
    head2, sep, body2 = rest.partition(b"\r\n\r\n")
    assert sep and b"Connection: close" in head2
    length2 = _content_length(head2)
    if status in (204, 304):
        assert length2 is None and _content_length(head1) is None and body2 == b""
        return
    assert length2 is not None and length2 > 0
    assert len(body2) == length2  # complete, and nothing after it
    if same_body:
        assert _content_length(head1) == length2  # HEAD describes the GET's body
