"""build_upstream_head / build_response_head / HeaderPlan (sans-IO header rewriting)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from prefork_lb.config.model import LocationConfig, ProxyPass
from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.headers import (
    HOP_BY_HOP,
    SERVER_HEADER,
    HeaderPlan,
    build_response_head,
    build_upstream_head,
    connection_tokens,
    status_line,
    upgrade_value,
)
from prefork_lb.http.response import parse_response_head
from prefork_lb.http.tunnel import switch_head

NOW = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
DATE = b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"


def location(host_header: str = "backend", set_headers: tuple[tuple[str, str], ...] = ()) -> LocationConfig:
    return LocationConfig(
        match="/",
        modifier="",
        pattern="/",
        regex=None,
        proxy_pass=ProxyPass(upstream=host_header, uri=None, host_header=host_header),
        return_=None,
        proxy_set_header=set_headers,
    )


def exchange(
    headers: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"GET",
    target: bytes = b"/x?y=1",
    **kw: Any,
) -> Exchange:
    if headers is None:
        headers = [(b"Host", b"client.example"), (b"Accept", b"*/*")]
    index: dict[bytes, bytes] = {}
    for name, value in headers:
        key = name.lower()
        index[key] = index[key] + b", " + value if key in index else value
    path, _, args = target.decode("latin-1").partition("?")
    fields: dict[str, Any] = {
        "conn": ConnectionInfo("192.0.2.7", 54321, "127.0.0.1", 8080, 1),
        "method": method,
        "target": target,
        "path": path,
        "args": args,
        "version": (1, 1),
        "headers": headers,
        "header_index": index,
        "host": "client.example",
        "start_time": NOW,
        "location": location(),
    }
    fields.update(kw)
    return Exchange(**fields)


def upstream(
    ex: Exchange,
    set_headers: tuple[tuple[str, str], ...] = (),
    body_length: int | None = None,
    chunked: bool = False,
    pooled: bool = True,
    target: bytes = b"/x?y=1",
) -> bytes:
    return build_upstream_head(ex, HeaderPlan.compile(set_headers), target, body_length, chunked, pooled)


def split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(b": ")
        assert sep, line
        fields.append((name, value))
    return lines[0], fields


def names(head: bytes) -> list[bytes]:
    return [n.lower() for n, _ in split_head(head)[1]]


def assert_well_formed(head: bytes) -> None:
    body = head[:-4]
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert b"\r" not in body.replace(b"\r\n", b"")
    assert b"\x00" not in head


# --- HeaderPlan / connection_tokens -------------------------------------------------------------


def test_plan_defaults_host_to_proxy_host() -> None:
    plan = HeaderPlan.compile([("X-Real-IP", "$remote_addr")])
    assert [n for n, _ in plan.fields] == [b"Host", b"X-Real-IP"]
    assert plan.overridden == {b"host", b"x-real-ip"}


def test_plan_puts_configured_host_first() -> None:
    plan = HeaderPlan.compile([("X-A", "1"), ("HOST", "$host"), ("X-B", "2")])
    assert [n for n, _ in plan.fields] == [b"HOST", b"X-A", b"X-B"]


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        (None, frozenset()),
        (b"", frozenset()),
        (b"close", {b"close"}),
        (b"Keep-Alive, X-Secret ,\tUPGRADE", {b"keep-alive", b"x-secret", b"upgrade"}),
    ],
)
def test_connection_tokens(value: bytes | None, tokens: frozenset[bytes]) -> None:
    assert connection_tokens(value) == tokens


# --- build_upstream_head -------------------------------------------------------------------------


def test_simple_get() -> None:
    head = upstream(exchange())
    assert head == b"GET /x?y=1 HTTP/1.1\r\nHost: backend\r\nAccept: */*\r\n\r\n"


def test_request_line_uses_given_target_and_http_1_1() -> None:
    ex = exchange(target=b"http://client.example/a%2Fb", version=(1, 0))
    head = upstream(ex, target=b"/rewritten/a%2Fb")
    assert head.startswith(b"GET /rewritten/a%2Fb HTTP/1.1\r\n")


def test_host_defaults_to_proxy_host() -> None:
    ex = exchange(location=location("app.internal:8081"))
    _, fields = split_head(upstream(ex))
    assert fields[0] == (b"Host", b"app.internal:8081")
    assert [v for n, v in fields if n.lower() == b"host"] == [b"app.internal:8081"]


def test_configured_host() -> None:
    ex = exchange()
    _, fields = split_head(upstream(ex, set_headers=(("Host", "$host"),)))
    assert fields[0] == (b"Host", b"client.example")
    assert sum(n.lower() == b"host" for n, _ in fields) == 1


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_every_hop_by_hop_field_is_stripped(name: bytes) -> None:
    wire = name.title()
    ex = exchange([(b"Host", b"h"), (wire, b"x"), (name.upper(), b"y"), (b"X-Keep", b"1")])
    head = upstream(ex)
    assert name not in names(head)
    assert b"X-Keep: 1\r\n" in head


def test_hop_by_hop_from_client_all_at_once() -> None:
    ex = exchange(
        [
            (b"Host", b"client.example"),
            (b"Connection", b"keep-alive, Upgrade, HTTP2-Settings"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-Checksum"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"),
            (b"Accept", b"*/*"),
        ]
    )
    head = upstream(ex, chunked=True)
    assert head == (
        b"GET /x?y=1 HTTP/1.1\r\nHost: backend\r\nAccept: */*\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_fields_named_in_connection_are_stripped() -> None:
    ex = exchange(
        [
            (b"Host", b"h"),
            (b"Connection", b"close, X-Secret"),
            (b"x-secret", b"1"),
            (b"X-Other", b"2"),
            (b"Connection", b" x-more\t"),
            (b"X-MORE", b"3"),
        ]
    )
    head = upstream(ex)
    assert names(head) == [b"host", b"x-other"]


def test_connection_cannot_remove_configured_fields() -> None:
    ex = exchange([(b"Host", b"h"), (b"Connection", b"X-Real-IP, Host")])
    _, fields = split_head(upstream(ex, set_headers=(("X-Real-IP", "$remote_addr"),)))
    assert fields == [(b"Host", b"backend"), (b"X-Real-IP", b"192.0.2.7")]


@pytest.mark.parametrize(
    "field",
    [
        (b"Proxy-Authorization", b"Basic dTpw"),
        (b"proxy-authorization", b"Basic dTpw"),
        (b"Expect", b"100-continue"),
        (b"Content-Length", b"5"),
        (b"content-length", b"005"),
        (b"Host", b"client.example"),
        (b"HOST", b"client.example"),
    ],
)
def test_client_fields_dropped(field: tuple[bytes, bytes]) -> None:
    ex = exchange([field, (b"Accept", b"*/*")], method=b"POST")
    head = upstream(ex, body_length=5)
    assert head == b"POST /x?y=1 HTTP/1.1\r\nHost: backend\r\nAccept: */*\r\nContent-Length: 5\r\n\r\n"


def test_authorization_is_forwarded() -> None:
    ex = exchange([(b"Host", b"h"), (b"Authorization", b"Bearer t")])
    assert b"Authorization: Bearer t\r\n" in upstream(ex)


def test_end_to_end_fields_forwarded_byte_exact_in_order() -> None:
    headers = [
        (b"Host", b"h"),
        (b"Cookie", b"a=1"),
        (b"x-Weird-Case", b"caf\xc3\xa9 \x80\xff"),
        (b"Cookie", b"b=2"),
        (b"X-Empty", b""),
    ]
    _, fields = split_head(upstream(exchange(headers)))
    assert fields[1:] == headers[1:]


def test_proxy_set_header_overrides_client_field() -> None:
    ex = exchange([(b"Host", b"h"), (b"X-Forwarded-For", b"10.0.0.1"), (b"x-real-ip", b"6.6.6.6")])
    plan = (("X-Forwarded-For", "$proxy_add_x_forwarded_for"), ("X-Real-IP", "$remote_addr"))
    _, fields = split_head(upstream(ex, set_headers=plan))
    assert fields == [
        (b"Host", b"backend"),
        (b"X-Forwarded-For", b"10.0.0.1, 192.0.2.7"),
        (b"X-Real-IP", b"192.0.2.7"),
    ]


def test_proxy_set_header_empty_value_removes_field() -> None:
    ex = exchange([(b"Host", b"h"), (b"Accept-Encoding", b"gzip"), (b"Accept", b"*/*")])
    head = upstream(ex, set_headers=(("Accept-Encoding", ""),))
    assert b"accept-encoding" not in names(head)
    assert b"Accept: */*\r\n" in head


def test_proxy_set_header_variable_rendering_empty_omits_field() -> None:
    ex = exchange([(b"Host", b"h")])
    head = upstream(ex, set_headers=(("X-Client-Cert", "$http_x_client_cert"),))
    assert b"x-client-cert" not in names(head)


def test_proxy_set_header_host_empty_removes_host() -> None:
    head = upstream(exchange(), set_headers=(("Host", ""),))
    assert b"host" not in names(head)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a\r\nX-Injected: 1", b"/a%0D%0AX-Injected: 1"),
        ("/a\nb\rc\x00d", b"/a%0Ab%0Dc%00d"),
    ],
)
def test_crlf_from_variables_is_neutralised(path: str, expected: bytes) -> None:
    # $uri is percent-decoded (%0D%0A becomes a real CR LF), the classic splitting vector
    ex = exchange(path=path)
    head = upstream(ex, set_headers=(("X-Original-URI", "$uri"),))
    assert_well_formed(head)
    assert b"X-Original-URI: " + expected + b"\r\n" in head
    assert b"x-injected" not in names(head)


def test_crlf_in_literal_template_is_neutralised() -> None:
    head = upstream(exchange(), set_headers=(("X-A", "a\r\nX-Injected: 1"),))
    assert_well_formed(head)
    assert b"x-injected" not in names(head)


@pytest.mark.parametrize(
    ("method", "body_length", "chunked", "framing"),
    [
        (b"POST", 11, False, b"Content-Length: 11\r\n"),
        (b"POST", 0, False, b"Content-Length: 0\r\n"),
        (b"PUT", 0, False, b"Content-Length: 0\r\n"),
        (b"PATCH", 0, False, b"Content-Length: 0\r\n"),
        (b"GET", 3, False, b"Content-Length: 3\r\n"),
        (b"GET", 0, False, b""),
        (b"GET", None, False, b""),
        (b"POST", None, False, b""),
        (b"POST", None, True, b"Transfer-Encoding: chunked\r\n"),
        (b"DELETE", None, True, b"Transfer-Encoding: chunked\r\n"),
    ],
)
def test_body_framing(method: bytes, body_length: int | None, chunked: bool, framing: bytes) -> None:
    ex = exchange([(b"Host", b"h"), (b"Content-Length", b"003"), (b"Transfer-Encoding", b"chunked")], method)
    head = upstream(ex, body_length=body_length, chunked=chunked)
    assert head == b"%s /x?y=1 HTTP/1.1\r\nHost: backend\r\n%s\r\n" % (method, framing)


def test_content_length_is_canonical() -> None:
    ex = exchange([(b"Host", b"h"), (b"Content-Length", b"0003")], method=b"POST")
    head = upstream(ex, body_length=3)
    assert b"Content-Length: 3\r\n" in head
    assert b"0003" not in head


@pytest.mark.parametrize(("pooled", "has_close"), [(True, False), (False, True)])
def test_connection_close_only_when_not_pooled(pooled: bool, has_close: bool) -> None:
    ex = exchange([(b"Host", b"h"), (b"Connection", b"keep-alive")])
    head = upstream(ex, pooled=pooled, body_length=2, chunked=False, set_headers=())
    assert head.endswith(b"Connection: close\r\n\r\n") is has_close
    assert names(head).count(b"connection") == (1 if has_close else 0)
    assert b"keep-alive" not in head


def test_upstream_head_has_exactly_one_blank_line() -> None:
    ex = exchange(method=b"POST")
    head = upstream(ex, body_length=1, pooled=False, set_headers=(("X-A", "$remote_addr"),))
    assert head.count(b"\r\n\r\n") == 1
    assert head.endswith(b"\r\n\r\n")
    assert_well_formed(head)


# --- build_response_head -----------------------------------------------------------------------


def response(
    headers: list[tuple[bytes, bytes]],
    connection_listed: frozenset[bytes] = frozenset(),
    framing: bytes = b"Content-Length: 5\r\n",
    keep_alive: bool = True,
    status: int = 200,
    reason: bytes = b"OK",
) -> bytes:
    return build_response_head(status, reason, headers, connection_listed, framing, keep_alive, NOW)


def test_response_head_layout() -> None:
    head = response([(b"Content-Type", b"text/plain"), (b"ETag", b'"abc"')])
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        + SERVER_HEADER
        + DATE
        + b'Content-Type: text/plain\r\nETag: "abc"\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n'
    )


def test_response_drops_hop_by_hop_server_date_and_length() -> None:
    upstream_headers = [
        (b"Server", b"gunicorn"),
        (b"date", b"Mon, 01 Jan 2001 00:00:00 GMT"),
        (b"Content-Length", b"999"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"Keep-Alive", b"timeout=5, max=100"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"HTTP2-Settings", b"x"),
        (b"X-Internal", b"secret"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Kept", b"\x80\xff"),
    ]
    head = response(upstream_headers, connection_listed=frozenset({b"keep-alive", b"x-internal"}))
    _, fields = split_head(head)
    assert fields == [
        (b"Server", b"prefork-lb"),
        (b"Date", b"Sun, 06 Nov 1994 08:49:37 GMT"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Kept", b"\x80\xff"),
        (b"Content-Length", b"5"),
        (b"Connection", b"keep-alive"),
    ]


@pytest.mark.parametrize(
    ("framing", "keep_alive", "tail"),
    [
        (b"Content-Length: 0\r\n", True, b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n"),
        (
            b"Transfer-Encoding: chunked\r\n",
            True,
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        ),
        (b"", False, b"Connection: close\r\n\r\n"),
        (b"Content-Length: 12\r\n", False, b"Content-Length: 12\r\nConnection: close\r\n\r\n"),
    ],
)
def test_response_framing_and_keep_alive(framing: bytes, keep_alive: bool, tail: bytes) -> None:
    head = response([(b"X-A", b"1")], framing=framing, keep_alive=keep_alive)
    assert head.endswith(b"X-A: 1\r\n" + tail)
    assert names(head).count(b"connection") == 1


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [
        (200, b"OK", b"HTTP/1.1 200 OK\r\n"),
        (200, b"Fine", b"HTTP/1.1 200 Fine\r\n"),
        (404, b"", b"HTTP/1.1 404 Not Found\r\n"),
        (599, b"", b"HTTP/1.1 599 Unknown\r\n"),
        (204, b"", b"HTTP/1.1 204 No Content\r\n"),
    ],
)
def test_status_line(status: int, reason: bytes, line: bytes) -> None:
    assert status_line(status, reason) == line
    assert response([], status=status, reason=reason).startswith(line)


def test_response_date_follows_now() -> None:
    a = build_response_head(200, b"OK", [], frozenset(), b"", True, NOW)
    b = build_response_head(200, b"OK", [], frozenset(), b"", True, NOW + 61.5)
    assert DATE in a
    assert b"Date: Sun, 06 Nov 1994 08:50:38 GMT\r\n" in b
    assert re.search(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n", b)


# --- rule 8: Upgrade (issue 14) ----------------------------------------------------------------

WS_CLIENT = [
    (b"Host", b"h"),
    (b"Connection", b"keep-alive, Upgrade"),
    (b"Upgrade", b"websocket"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
]


@pytest.mark.parametrize(
    ("set_headers", "sent"),
    [
        ((), b"websocket"),  # no config at all
        ((("Upgrade", "$http_upgrade"), ("Connection", "upgrade")), b"websocket"),  # nginx's
        ((("Upgrade", "websocket"),), b"websocket"),
        ((("Upgrade", ""),), None),  # the operator removed it: no upgrade upstream
    ],
)
def test_upgrade_value(set_headers: tuple[tuple[str, str], ...], sent: bytes | None) -> None:
    """Catches: an upgrade that goes upstream though the config removed it (a 101 would
    then be taken as a switch nobody asked for), or none sent with no config at all."""
    assert upgrade_value(exchange(WS_CLIENT), HeaderPlan.compile(set_headers)) == sent


@pytest.mark.parametrize(
    "set_headers",
    [
        (),
        (("Upgrade", "$http_upgrade"), ("Connection", "upgrade")),
        (("Connection", ""),),  # the keep-alive idiom does not stop an upgrade
    ],
)
def test_upgrade_fields_sent_once(set_headers: tuple[tuple[str, str], ...]) -> None:
    """Catches: Upgrade and Connection missing (old code: both were hop-by-hop and dropped,
    so no upgrade ever reached the upstream) or sent twice with nginx's canonical config."""
    ex = exchange(WS_CLIENT)
    plan = HeaderPlan.compile(set_headers)
    head = build_upstream_head(ex, plan, b"/ws", None, False, False, upgrade_value(ex, plan))
    assert_well_formed(head)
    fields = split_head(head)[1]
    assert [v for n, v in fields if n.lower() == b"upgrade"] == [b"websocket"]
    assert [v.lower() for n, v in fields if n.lower() == b"connection"] == [b"upgrade"]
    assert (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==") in fields


def test_switch_head_keeps_upgrade() -> None:
    """Catches: the upstream's Upgrade dropped from the 101 (it is hop-by-hop and named in
    Connection, so the ordinary response rules drop it) or its framing fields passed on."""
    resp = parse_response_head(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nServer: ws\r\nContent-Length: 0",
        False,
    )
    head = switch_head(resp, NOW)
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\n" + SERVER_HEADER + DATE + b"Connection: upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
