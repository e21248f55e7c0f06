"""Client input that reaches the backend, end to end through the real proxy (issue 11
item 11): control characters a client smuggles into a variable, and token methods.

What each test catches on the old code is in its docstring.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, raw_exchange

CONFIG = """
workers = 1
error_log = "error.log"
[http]
access_log = "access.log"
[http.upstreams.backend]
servers = [{{ address = "{backend}" }}]

[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_set_header = {{ X-Uri = "$uri", X-Arg = "$arg_a", X-H = "$http_x_h" }}
"""


@pytest.fixture(scope="module")
def lb_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    with Backend(count=1) as backend:
        config = CONFIG.format(backend=backend.addrs[0], port=port)
        with LB(tmp_path_factory.mktemp("client-input"), config, port):
            yield port


def _echo(port: int, request: bytes) -> tuple[bytes, dict[str, object]]:
    out = raw_exchange(port, request)
    head, _, body = out.partition(b"\r\n\r\n")
    return head, json.loads(body) if head.startswith(b"HTTP/1.1 200 ") else {}


def test_decoded_uri_control_characters_reach_the_backend_encoded(lb_port: int) -> None:
    """``$uri`` is percent-decoded, so ``%0B`` is a real VT in it. The old code sent VT, FF,
    0x1c-0x1f and DEL raw in ``X-Uri`` (the demo backend refused the request with 400);
    now they arrive as ``%0B`` ..., while HTAB and the raw ``$arg_a`` pass unchanged."""
    head, echo = _echo(
        lb_port,
        b"GET /ctl/%0B%0C%1C%1F%7F%09x?a=%0B&echo=1 HTTP/1.1\r\n"
        b"Host: x\r\nX-H: a\tb\r\nConnection: close\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 200 "), head
    headers = {name.lower(): value for name, value in echo["headers"]}  # type: ignore[attr-defined]
    assert headers["x-uri"] == "/ctl/%0B%0C%1C%1F%7F\tx"
    assert headers["x-arg"] == "%0B"
    assert headers["x-h"] == "a\tb"


def test_token_methods_are_forwarded(lb_port: int) -> None:
    """``FOO`` (any token of nginx's alphabet) is a method (RFC 9110): forwarded with its body,
    also pipelined after a chunked request on one connection. The old code answered 400
    (llhttp knows only a fixed list of methods). ``foo`` stays 400 (nginx too)."""
    out = raw_exchange(
        lb_port,
        b"POST /?echo=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nab\r\n\r\n\r\n0\r\n\r\n"
        b"FOO /?echo=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
        b"BAR-BAZ /?echo=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    statuses, echoes = [], []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        statuses.append(head[:12])
        echoes.append(json.loads(rest[:length]) if head.startswith(b"HTTP/1.1 200") else {})
        out = rest[length:]
    assert statuses == [b"HTTP/1.1 200"] * 3
    assert [(e["method"], e["body_len"]) for e in echoes] == [("POST", 6), ("FOO", 3), ("BAR-BAZ", 0)]
    lower = raw_exchange(lb_port, b"foo / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert lower.startswith(b"HTTP/1.1 400 ")
