"""parse_response_head and ChunkedDecoder (upstream responses, sans-IO)."""

from __future__ import annotations

import random

import pytest

from prefork_lb.http.response import (
    MAX_CHUNK_LINE,
    MAX_TRAILERS,
    ChunkedDecoder,
    ResponseHead,
    UpstreamProtocolError,
    parse_response_head,
)


def parse(block: bytes, head_request: bool = False) -> ResponseHead:
    return parse_response_head(block, head_request)


# --- parse_response_head: accepted heads ------------------------------------------------------


def test_normal_head() -> None:
    r = parse(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2"
    )
    assert (r.version_minor, r.status, r.reason) == (1, 200, b"OK")
    assert r.headers == [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"12"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert (r.framing, r.content_length, r.keep_alive) == ("length", 12, True)
    assert r.connection_tokens == frozenset()


@pytest.mark.parametrize("line", [b"HTTP/1.1 200", b"HTTP/1.1 200 "])
def test_status_line_without_reason(line: bytes) -> None:
    r = parse(line + b"\r\nContent-Length: 0")
    assert (r.status, r.reason, r.framing, r.content_length) == (200, b"", "length", 0)


def test_reason_phrase_kept_raw() -> None:
    r = parse(b"HTTP/1.1 404 Not\tFound \x80\xff\r\nContent-Length: 0")
    assert r.reason == b"Not\tFound \x80\xff"


def test_http_1_0_is_not_keep_alive() -> None:
    r = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 3")
    assert (r.version_minor, r.framing, r.keep_alive) == (0, "length", False)
    # an HTTP/1.0 upstream is never reused, even if it says keep-alive (as nginx)
    r = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3")
    assert r.keep_alive is False
    assert r.connection_tokens == {b"keep-alive"}


@pytest.mark.parametrize(
    "fields",
    [
        b"Connection: close",
        b"Connection: Close",
        b"connection: keep-alive, CLOSE",
        b"Connection: x-a\r\nConnection:  close ",
    ],
)
def test_connection_close(fields: bytes) -> None:
    r = parse(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nContent-Length: 1")
    assert r.keep_alive is False
    assert b"close" in r.connection_tokens
    assert r.framing == "length"


def test_connection_tokens_lowercased_and_stripped() -> None:
    r = parse(
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret ,\tKeep-Alive\r\nConnection: Upgrade\r\nContent-Length: 0"
    )
    assert r.connection_tokens == {b"x-secret", b"keep-alive", b"upgrade"}
    assert r.keep_alive is True


def test_field_value_ows_stripped_and_obs_text_kept() -> None:
    r = parse(b"HTTP/1.1 200 OK\r\nX-A:\t a b \t\r\nX-B: \x80\xff\r\nX-C:\r\nContent-Length: 0")
    assert r.headers[:3] == [(b"X-A", b"a b"), (b"X-B", b"\x80\xff"), (b"X-C", b"")]


# --- framing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "head_request", "framing", "content_length"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1234", True, "none", 1234),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", True, "none", None),
        (b"HTTP/1.1 200 OK", True, "none", None),
        (b"HTTP/1.1 100 Continue", False, "none", None),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload", False, "none", None),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket", False, "none", None),
        (b"HTTP/1.1 204 No Content", False, "none", None),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 7", False, "none", 7),
        (b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10', False, "none", 10),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked", False, "none", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5", False, "length", 5),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0", False, "length", 0),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 007", False, "length", 7),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", False, "chunked", None),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED ", False, "chunked", None),
    ],
)
def test_framing(block: bytes, head_request: bool, framing: str, content_length: int | None) -> None:
    r = parse(block, head_request)
    assert (r.framing, r.content_length) == (framing, content_length)
    assert r.keep_alive is True


@pytest.mark.parametrize("block", [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK\r\nContent-Type: text/html"])
def test_close_delimited(block: bytes) -> None:
    r = parse(block)
    assert (r.framing, r.content_length, r.keep_alive) == ("close", None, False)


@pytest.mark.parametrize(
    "cl_fields",
    [
        b"Content-Length: 5\r\nContent-Length: 5",
        b"Content-Length: 5, 5",
        b"Content-Length: 5,5\r\ncontent-length: 005",
    ],
)
def test_identical_content_lengths_collapse(cl_fields: bytes) -> None:
    r = parse(b"HTTP/1.1 200 OK\r\n" + cl_fields)
    assert (r.framing, r.content_length) == ("length", 5)


# --- rejected heads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        # framing
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX: 1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        # we de-chunk, so another coding would reach the client undeclared
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity",
        # Content-Length syntax (never int())
        b"HTTP/1.1 200 OK\r\nContent-Length: +5",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x5",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1_0",
        b"HTTP/1.1 200 OK\r\nContent-Length: ",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5,",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa3",
        b"HTTP/1.1 200 OK\r\nContent-Length: 12345678901234567890",
        # field lines
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tfolded",
        b"HTTP/1.1 200 OK\r\nX-A : v",
        b"HTTP/1.1 200 OK\r\nX-A\t: v",
        b"HTTP/1.1 200 OK\r\n X-A: v",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\rInjected: 1",
        b"HTTP/1.1 200 OK\r\nX-A: a\x01b",
        b"HTTP/1.1 200 OK\r\nX-A: a\x7f",
        b"HTTP/1.1 200 OK\r\nX-A: \x0bv",
        b"HTTP/1.1 200 OK\r\nX-A: v\nX-B: w",
        b"HTTP/1.1 200 OK\r\nNoColon",
        b"HTTP/1.1 200 OK\r\n: v",
        b"HTTP/1.1 200 OK\r\nX@A: v",
        b"HTTP/1.1 200 OK\r\n",  # the block must not contain the blank line
        # status line
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 OK",
        b"HTTP/1.1 000 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2x0 OK",
        b"HTTP/1.1 \xd9\xa3\xd9\xa3\xd9\xa3 OK",
        b"HTTP/2 200 OK",
        b"HTTP/2.0 200 OK",
        b"HTTP/1.10 200 OK",
        b"HTTP/1 200 OK",
        b"http/1.1 200 OK",
        b"HTTX/1.1 200 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1\t200 OK",
        b"HTTP/1.1 200OK",
        b"HTTP/1.1 200 O\rK",
        b"HTTP/1.1 200 OK\x00",
        b"HTTP/1.1 200 OK\nContent-Length: 0",
        b" HTTP/1.1 200 OK",
        b"",
    ],
)
def test_rejected(block: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        parse(block)


def test_cl_and_te_rejected_even_without_body() -> None:
    # the framing is broken whatever the status: never reuse that connection
    with pytest.raises(UpstreamProtocolError):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", head_request=True)
    with pytest.raises(UpstreamProtocolError):
        parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nTransfer-Encoding: chunked")


# --- ChunkedDecoder ------------------------------------------------------------------------------

BODY = (
    b"5;name=value\r\nhello\r\n"
    b"1\r\n \r\n"
    b'A ; ext="q;d" ; x\r\n0123456789\r\n'
    b"00000a\r\nabcdefghij\r\n"
    b"0;last=1\r\n"
    b"X-Trailer: 1\r\n"
    b"Server-Timing: db;dur=53\r\n"
    b"\r\n"
)
DECODED = b"hello 0123456789abcdefghij"


def decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    d = ChunkedDecoder()
    out: list[bytes] = []
    for piece in pieces:
        assert not d.done
        out += d.feed(piece)
    return b"".join(out), d


def splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 9)
        pieces.append(data[pos : pos + n])
        pos += n
    return pieces


def test_decode_in_one_piece() -> None:
    out, d = decode([BODY])
    assert out == DECODED
    assert d.done and d.extra == b""


def test_decode_byte_by_byte() -> None:
    out, d = decode([BODY[i : i + 1] for i in range(len(BODY))])
    assert out == DECODED
    assert d.done and d.extra == b""


@pytest.mark.parametrize("seed", range(20))
def test_decode_random_splits(seed: int) -> None:
    out, d = decode(splits(BODY, seed))
    assert out == DECODED
    assert d.done and d.extra == b""


def test_not_done_until_final_crlf() -> None:
    d = ChunkedDecoder()
    assert b"".join(d.feed(BODY[:-2])) == DECODED
    assert not d.done
    assert d.feed(b"\r") == []
    assert not d.done
    assert d.feed(b"\n") == []
    assert d.done


def test_empty_body() -> None:
    out, d = decode([b"0\r\n\r\n"])
    assert (out, d.done, d.extra) == (b"", True, b"")


def test_data_is_streamed_before_the_chunk_ends() -> None:
    d = ChunkedDecoder()
    assert d.feed(b"a\r\n01234") == [b"01234"]
    assert d.feed(b"56789\r\n") == [b"56789"]
    assert not d.done


@pytest.mark.parametrize(
    ("pieces", "extra"),
    [
        ([b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"], b"HTTP/1.1 200 OK\r\n"),
        ([b"3\r\nabc\r\n0\r\n", b"\r\nXY"], b"XY"),
        ([b"3\r\nabc\r\n0\r\nT: 1\r\n\r", b"\nZ"], b"Z"),
    ],
)
def test_extra_bytes_after_the_end(pieces: list[bytes], extra: bytes) -> None:
    out, d = decode(pieces)
    assert out == b"abc"
    assert d.done and d.extra == extra


def test_chunk_size_limits() -> None:
    # 15 hex digits are the maximum; leading zeros count
    d = ChunkedDecoder()
    assert d.feed(b"fffffffffffffff\r\nab") == [b"ab"]
    out, d = decode([b"000000000000003\r\nabc\r\n0\r\n\r\n"])
    assert out == b"abc" and d.done


def test_trailing_whitespace_after_size_accepted() -> None:
    out, d = decode([b"3 \t\r\nabc\r\n0\r\n\r\n"])
    assert out == b"abc" and d.done


@pytest.mark.parametrize(
    "data",
    [
        b"zz\r\n",
        b"0x3\r\nabc\r\n",
        b"+3\r\nabc\r\n",
        b"-3\r\nabc\r\n",
        b" 3\r\nabc\r\n",
        b"3_0\r\n",
        b"\xd9\xa3\r\nabc\r\n",
        b"\r\nabc\r\n",
        b"ffffffffffffffff\r\n",  # 16 hex digits
        b"fffffffffffffffff\r\n",  # 17 hex digits
        b"3;a\x00b\r\nabc\r\n",
        b"3;a\rb\r\nabc\r\n",
        b"3\nabc\r\n0\r\n\r\n",  # bare LF after the size
        b"3\r\nabcXX0\r\n\r\n",  # data not followed by CRLF
        b"3\r\nabc\rX0\r\n\r\n",
        b"3\r\nabc\n0\r\n\r\n",  # bare LF after the data
        b"3\r\nabc\r\n\r\n0\r\n\r\n",  # extra CRLF before the last chunk
        b"0\r\nX T: 1\r\n\r\n",  # invalid trailer lines
        b"0\r\nX : 1\r\n\r\n",
        b"0\r\nNoColon\r\n\r\n",
        b"0\r\n folded: 1\r\n\r\n",
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\nX: 1\nY: 2\r\n\r\n",
        b"0\n\r\n",
    ],
)
def test_rejects(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        decode([data])
    with pytest.raises(UpstreamProtocolError):
        decode([data[i : i + 1] for i in range(len(data))])


def test_overlong_size_line_rejected_without_crlf() -> None:
    d = ChunkedDecoder()
    d.feed(b"3;" + b"e" * (MAX_CHUNK_LINE - 2))  # exactly the limit: still waiting
    with pytest.raises(UpstreamProtocolError):
        d.feed(b"e")
    with pytest.raises(UpstreamProtocolError):
        ChunkedDecoder().feed(b"3;" + b"e" * 100_000 + b"\r\nabc\r\n")


def test_overlong_trailers_rejected() -> None:
    d = ChunkedDecoder()
    d.feed(b"0\r\nX: " + b"v" * (MAX_TRAILERS - 3))  # exactly the limit: still waiting
    with pytest.raises(UpstreamProtocolError):
        d.feed(b"v")


def test_size_line_at_the_limit_accepted() -> None:
    line = b"1;" + b"e" * (MAX_CHUNK_LINE - 2)
    assert len(line) == MAX_CHUNK_LINE
    out, d = decode([line + b"\r\nx\r\n0\r\n\r\n"])
    assert out == b"x" and d.done


@pytest.mark.parametrize(
    "data",
    [
        b"1;" + b"e" * (MAX_CHUNK_LINE - 2) + b"\r\nx\r\n0\r\n\r\n",
        b"1\r\nx\r\n0\r\nX: " + b"v" * (MAX_TRAILERS - 3) + b"\r\n\r\n",
    ],
    ids=["size-line", "trailer"],
)
def test_line_at_the_limit_independent_of_splits(data: bytes) -> None:
    whole, d = decode([data])
    assert whole == b"x" and d.done
    cut = data.index(b"\r\n", 8) + 1  # between the CR and the LF of the long line
    out, d = decode([data[:cut], data[cut:]])
    assert out == b"x" and d.done
