"""Token methods in ``RequestReader`` (issue 11 item 11b): the reader finds every request
line itself, so it must find the end of each message exactly, however the bytes arrive.

Random pipelined streams (known and unknown methods; no body, Content-Length bodies and
chunked bodies whose data is full of CR, LF and CRLFCRLF, with extensions and trailers) are
fed whole, in random splits and byte by byte; every feeding must give exactly the generated
requests. The old reader answered 400 to the first unknown method, so every stream holding
one fails there.
"""

from __future__ import annotations

import random

import pytest

from prefork_lb.http import request
from prefork_lb.http.request import MESSAGE_END, HttpError, RequestHead, RequestReader

MAX_METHOD = 32  # request.py rule 2 (checked below)

METHODS = [b"GET", b"POST", b"HEAD", b"FOO", b"PURGE", b"QUERY", b"X-Y_Z", b"M" * MAX_METHOD, b"DELETE"]
BODY_BYTES = b"\r\n\r\nab0\r\n"


def _stream(rng: random.Random) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    out, expected = [], []
    for i in range(rng.randint(1, 5)):
        method = rng.choice(METHODS)
        body = bytes(rng.choice(BODY_BYTES) for _ in range(rng.randint(0, 40)))
        kind = rng.choice(("none", "length", "chunked"))
        head = b"%s /r%d HTTP/1.1\r\nHost: h\r\n" % (method, i)
        if kind == "none":
            body = b""
            out.append(head + b"\r\n")
        elif kind == "length":
            out.append(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        else:
            chunks, rest = [], body
            while rest:
                n = rng.randint(1, len(rest))
                ext = rng.choice((b"", b";a=b"))
                chunks.append(b"%x%s\r\n%s\r\n" % (n, ext, rest[:n]))
                rest = rest[n:]
            trailer = rng.choice((b"", b"X-T: 1\r\n"))
            last = b"0\r\n" + trailer + b"\r\n"
            out.append(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + last)
        expected.append((method, body))
    return b"".join(out), expected


def _parse(pieces: list[bytes]) -> list[tuple[bytes, bytes]]:
    reader = RequestReader()
    for piece in pieces:
        reader.feed(piece)
    got: list[tuple[bytes, bytes]] = []
    body: list[bytes] = []
    for event in reader.events:
        if isinstance(event, HttpError):
            pytest.fail(f"unexpected {event!r}")
        if type(event) is RequestHead:
            got.append((event.method, b""))
            body = []
        elif event is MESSAGE_END:
            got[-1] = (got[-1][0], b"".join(body))
        else:
            assert isinstance(event, bytes)
            body.append(event)
    return got


def _splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("seed", range(40))
def test_random_pipelined_streams_parse_the_same_however_split(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        data, expected = _stream(rng)
        assert _parse([data]) == expected
        assert _parse(_splits(data, rng)) == expected
        assert _parse([data[i : i + 1] for i in range(len(data))]) == expected


def test_method_length_limit() -> None:
    assert getattr(request, "MAX_METHOD", None) == MAX_METHOD


def test_an_incomplete_method_is_part_of_the_head() -> None:
    """A method split across reads counts as a started head (header timeout, no parking)."""
    reader = RequestReader()
    reader.feed(b"FO")
    assert reader.in_head and not reader.events
    reader.feed(b"O / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = reader.events[0]
    assert type(head) is RequestHead and head.method == b"FOO" and not reader.in_head


@pytest.mark.parametrize("data", [b"A" * (MAX_METHOD + 1), b"get ", b"FOO\t/", b"\x16\x03\x01"])
def test_invalid_methods_fail_early(data: bytes) -> None:
    """Rejected as soon as the bytes prove the method invalid, without waiting for a SP."""
    reader = RequestReader()
    reader.feed(data)
    assert reader.closed and isinstance(reader.events[-1], HttpError) and reader.events[-1].status == 400
