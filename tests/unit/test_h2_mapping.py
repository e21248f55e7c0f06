"""http/h2/mapping.py (sans-IO): HTTP/2 header lists -> the pipeline's RequestHead (or the
stream error, connection error, HTTP error instead), and the pipeline's HTTP/1.1 response
bytes -> an HTTP/2 header list and DATA. Cases follow RFC 9113 section 8 and nginx 1.22."""

from __future__ import annotations

import pytest

from prefork_lb.http.h2.mapping import (
    ENHANCE_YOUR_CALM,
    PROTOCOL_ERROR,
    ConnectionError_,
    ResponseMapper,
    StreamError,
    map_request,
)
from prefork_lb.http.headers import simple_response
from prefork_lb.http.request import HttpError, RequestHead

BASE = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":path", b"/a/b?x=1"),
    (b":authority", b"Example.COM:8443"),
]


def mapped(fields: list[tuple[bytes, bytes]], end: bool = True) -> object:
    return map_request(fields, end, 8192, 32768)


def head(fields: list[tuple[bytes, bytes]], end: bool = True) -> RequestHead:
    out = mapped(fields, end)
    assert type(out) is RequestHead, out
    return out


def test_pseudo_headers_become_the_request_head() -> None:
    h = head([*BASE, (b"user-agent", b"t")])
    assert (h.method, h.target, h.raw_path, h.query, h.version) == (
        b"GET",
        b"/a/b?x=1",
        b"/a/b",
        b"x=1",
        (2, 0),
    )
    assert h.host == "example.com"
    assert h.headers == [(b"host", b"Example.COM:8443"), (b"user-agent", b"t")]  # rule 3
    assert h.header_index[b"host"] == b"Example.COM:8443"
    assert (h.content_length, h.chunked, h.upgrade, h.keep_alive, h.authority) == (
        None,
        False,
        False,
        True,
        None,
    )


def test_host_without_authority_and_mismatch() -> None:
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"b.test")]
    assert head(fields).host == "b.test"
    out = mapped([*BASE, (b"host", b"other.test")])
    assert isinstance(out, HttpError) and out.status == 400
    assert head([*BASE, (b"host", b"example.com:8443")]).host == "example.com"


def test_cookie_crumbs_joined() -> None:
    h = head([*BASE, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")])
    assert h.header_index[b"cookie"] == b"a=1; b=2"
    assert [v for n, v in h.headers if n == b"cookie"] == [b"a=1; b=2"]


@pytest.mark.parametrize(
    "fields",
    [
        [*BASE, (b"X-Upper", b"1")],  # upper-case name
        [*BASE, (b"connection", b"keep-alive")],
        [*BASE, (b"keep-alive", b"5")],
        [*BASE, (b"proxy-connection", b"x")],
        [*BASE, (b"transfer-encoding", b"chunked")],
        [*BASE, (b"upgrade", b"websocket")],
        [*BASE, (b"te", b"gzip")],
        [*BASE, (b"x", b"a\r\nb")],
        [*BASE, (b"x", b" lead")],
        [*BASE, (b":foo", b"1")],  # unknown pseudo-header
        [*BASE, (b":path", b"/again")],  # duplicate
        [(b"accept", b"*/*"), *BASE],  # pseudo after regular
        [(b":method", b"GET"), (b":path", b"/")],  # no :scheme
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"")],
    ],
)
def test_malformed_requests_are_stream_errors(fields: list[tuple[bytes, bytes]]) -> None:
    out = mapped(fields)
    assert isinstance(out, StreamError) and out.code == PROTOCOL_ERROR, out


def test_te_trailers_and_underscore_names() -> None:
    h = head([*BASE, (b"te", b"trailers"), (b"x_forwarded_for", b"1.2.3.4")])
    assert b"x_forwarded_for" not in h.header_index  # underscores_in_headers off
    assert h.header_index[b"te"] == b"trailers"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [(b"CONNECT", None, 405), (b"TRACE", b"/", 405), (b"get", b"/", 400), (b"GET", b"http://x/", 400)],
)
def test_refused_methods_and_targets(method: bytes, path: bytes | None, status: int) -> None:
    fields = [(b":method", method), (b":authority", b"x:443")]
    if path is not None:
        fields += [(b":scheme", b"http"), (b":path", path)]
    out = mapped(fields)
    assert isinstance(out, HttpError) and out.status == status


def test_body_framing() -> None:
    assert (head([*BASE, (b"content-length", b"5")], end=False).content_length, False) == (5, False)
    chunked = head(BASE, end=False)
    assert (chunked.content_length, chunked.chunked) == (None, True)
    out = mapped([*BASE, (b"content-length", b"x")], end=False)
    assert isinstance(out, HttpError) and out.status == 400
    assert head([*BASE, (b"expect", b"100-continue")], end=False).expect_continue
    assert not head([*BASE, (b"expect", b"100-continue")], end=True).expect_continue


def test_header_limits_are_connection_errors_like_nginx() -> None:
    """nginx: one field over 8k (as sent) or a list over 32k -> GOAWAY 11. A 9000-byte value
    that Huffman-codes under 8k passes (nginx served it: 200)."""
    assert type(mapped([*BASE, (b"x", b"a" * 9000)])) is RequestHead
    out = mapped([*BASE, (b"x", b"\xff" * 9000)])  # \xff Huffman-codes to 26 bits: longer
    assert isinstance(out, ConnectionError_) and out.code == ENHANCE_YOUR_CALM
    out = mapped([*BASE, (b"x", b"v" * 20000)])
    assert isinstance(out, ConnectionError_) and out.code == ENHANCE_YOUR_CALM
    many = [*BASE] + [(b"x-%d" % i, b"v" * 4000) for i in range(9)]
    out = mapped(many)
    assert isinstance(out, ConnectionError_) and out.code == ENHANCE_YOUR_CALM


def feed_all(
    m: ResponseMapper, data: bytes, step: int = 0
) -> tuple[list[tuple[bytes, bytes]] | None, bytes, bool]:
    fields = None
    body = b""
    ended = False
    pieces = [data[i : i + step] for i in range(0, len(data), step)] if step else [data]
    for piece in pieces:
        f, out, ended = m.feed(piece)
        if f is not None:
            assert fields is None
            fields = f
        body += b"".join(out)
    return fields, body, ended


@pytest.mark.parametrize("step", [0, 1, 7])
def test_response_length_framed(step: int) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: b\r\n\r\nhello"
    )
    fields, body, ended = feed_all(ResponseMapper(False), wire, step)
    assert fields == [(b":status", b"200"), (b"server", b"x"), (b"content-length", b"5"), (b"x-a", b"b")]
    assert (body, ended) == (b"hello", True)


@pytest.mark.parametrize("step", [0, 1, 5])
def test_response_chunked_is_unchunked(step: int) -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
    fields, body, ended = feed_all(ResponseMapper(False), wire, step)
    assert fields == [(b":status", b"200")]
    assert (body, ended) == (b"hello!", True)


def test_response_without_body() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    fields, body, ended = feed_all(ResponseMapper(True), wire)  # HEAD: length kept, no body
    assert fields == [(b":status", b"200"), (b"content-length", b"10")] and ended and body == b""
    fields, body, ended = feed_all(ResponseMapper(False), b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
    assert fields == [(b":status", b"304"), (b"etag", b"x")] and ended
    m = ResponseMapper(False)
    fields, body, ended = feed_all(m, b"HTTP/1.1 200 OK\r\n\r\nabc")  # unframed: ends with the pipeline
    assert (body, ended, m.unframed) == (b"abc", False, True)


def test_simple_response_maps() -> None:
    """The proxy's own answers (headers.simple_response) map like upstream ones."""
    out, _ = simple_response(404, b"<html>nf</html>", False, 0.0)
    fields, body, ended = feed_all(ResponseMapper(False), out)
    assert fields is not None and fields[0] == (b":status", b"404")
    assert all(n == n.lower() and n != b"connection" for n, _ in fields)
    assert (body, ended) == (b"<html>nf</html>", True)


def test_trailers_map_to_field_lines() -> None:
    from prefork_lb.http.h2.mapping import map_trailers

    lines = map_trailers(
        [(b"x-sum", b"1"), (b"content-length", b"9"), (b"authorization", b"s"), (b"x_a", b"b")], 32768
    )
    assert lines == b"x-sum: 1\r\n"
    for bad in ([(b":path", b"/")], [(b"X-A", b"1")], [(b"connection", b"close")], [(b"x", b"a\nb")]):
        out = map_trailers(bad, 32768)
        assert isinstance(out, StreamError) and out.code == PROTOCOL_ERROR
    big = map_trailers([(b"x", b"v" * 40000)], 32768)
    assert isinstance(big, ConnectionError_) and big.code == ENHANCE_YOUR_CALM
