"""The request-file corpus (gunicorn style) run against ``RequestReader``.

Layout: ``tests/requests/valid/NNN_name.http`` holds raw request bytes exactly as on the wire
(one request or several pipelined ones) and ``NNN_name.json`` the expected parse: one object,
or a list of objects for pipelined requests, with the keys ``method``, ``target``, ``version``,
``host`` (normalized), ``headers`` (as forwarded: names as received, values without OWS,
underscore names dropped), ``body`` (de-chunked, latin-1 text), ``keep_alive``, ``chunked``,
``content_length`` and optionally ``expect_continue`` / ``upgrade``.

``tests/requests/invalid/NNN_name.http`` has a ``NNN_name.json`` with ``status`` (the
``HttpError`` status) and ``events_before``: how many ``RequestHead`` events the reader must
produce before the error (pipelined valid-then-invalid requests, or a valid head whose chunked
body turns out to be broken).

Every file is fed (a) in one piece, (b) one byte at a time and (c) in random splits with a fixed
seed; the (body-coalesced) events must be identical. Valid files are also parsed with h11 as an
independent oracle for the JSON expectations.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

import h11
import pytest

from prefork_lb.http.request import MESSAGE_END, HttpError, RequestHead, RequestReader

CORPUS = Path(__file__).resolve().parent.parent / "requests"
VALID = sorted((CORPUS / "valid").glob("*.http"))
INVALID = sorted((CORPUS / "invalid").glob("*.http"))

# (directory/stem, aspect) -> reason. Aspects: "parse" (everything but the header list),
# "headers", "split" (identical events for every segmentation), "error" (invalid files),
# "h11" (the oracle). Every entry is a known bug in the code under test (strict xfail).
KNOWN_BUGS: dict[tuple[str, str], str] = {}

# h11 deviates from our rules on these files, so the oracle comparison is skipped.
H11_SKIP: dict[str, str] = {
    # h11 raises "no request line received" for a CRLF before the request line (RFC 9112 2.2
    # says a server SHOULD ignore at least one).
    "016_empty_line_before_request": "h11 rejects an empty line before the request line",
    "044_empty_lines_before_token_method": "h11 rejects an empty line before the request line",
}


def _key(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _params(paths: list[Path], aspect: str) -> list[Any]:
    out = []
    for path in paths:
        reason = KNOWN_BUGS.get((_key(path), aspect))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(path, id=_key(path), marks=marks))
    return out


# --- feeding ----------------------------------------------------------------------------------


def _feed(data: bytes, pieces: list[bytes]) -> list[Any]:
    assert b"".join(pieces) == data
    reader = RequestReader()
    for piece in pieces:
        reader.feed(piece)
    events = list(reader.events)
    if any(isinstance(e, HttpError) for e in events):
        assert reader.closed
    return events


def _one_piece(data: bytes) -> list[bytes]:
    return [data]


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def _random_split(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces = []
    pos = 0
    while pos < len(data):
        n = rng.choice((1, 2, 3, 5, 8, 13, 64, 500, 4096))
        pieces.append(data[pos : pos + n])
        pos += n
    return pieces


def _normalized(events: list[Any]) -> list[Any]:
    """Coalesce adjacent body pieces; errors compare by status and reason."""
    out: list[Any] = []
    for e in events:
        if isinstance(e, bytes):
            if out and isinstance(out[-1], bytes):
                out[-1] += e
            else:
                out.append(e)
        elif isinstance(e, HttpError):
            out.append(("error", e.status, e.reason))
        else:
            out.append(e)
    return out


def _requests(events: list[Any]) -> list[dict[str, Any]]:
    """Events of a stream without errors -> parsed requests in the JSON shape."""
    parsed: list[dict[str, Any]] = []
    body: list[bytes] | None = None
    for e in events:
        if isinstance(e, HttpError):
            pytest.fail(f"unexpected HttpError {e.status} {e.reason!r} after {len(parsed)} request(s)")
        if isinstance(e, RequestHead):
            assert body is None, "RequestHead before the previous MESSAGE_END"
            body = []
            parsed.append(
                {
                    "method": e.method.decode("latin-1"),
                    "target": e.target.decode("latin-1"),
                    "version": list(e.version),
                    "host": e.host,
                    "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in e.headers],
                    "keep_alive": e.keep_alive,
                    "chunked": e.chunked,
                    "content_length": e.content_length,
                    "expect_continue": e.expect_continue,
                    "upgrade": e.upgrade,
                }
            )
        elif e is MESSAGE_END:
            assert body is not None, "MESSAGE_END without a head"
            parsed[-1]["body"] = b"".join(body).decode("latin-1")
            body = None
        else:
            assert isinstance(e, bytes) and body is not None, f"unexpected event {e!r}"
            body.append(e)
    assert body is None, "the last request is incomplete"
    return parsed


def _expected(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.with_suffix(".json").read_text())
    return data if isinstance(data, list) else [data]


def _strip_headers(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "headers"} for item in items]


# --- corpus sanity ----------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    assert len(VALID) >= 25
    assert len(INVALID) >= 40
    for directory in ("valid", "invalid"):
        stems = {p.stem for p in (CORPUS / directory).iterdir()}
        for stem in stems:
            assert (CORPUS / directory / f"{stem}.http").is_file(), stem
            assert (CORPUS / directory / f"{stem}.json").is_file(), stem
    for path in INVALID:
        spec = json.loads(path.with_suffix(".json").read_text())
        assert set(spec) == {"status", "events_before"}, path.name


# --- valid files ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _params(VALID, "parse"))
def test_valid_parse(path: Path) -> None:
    parsed = _requests(_feed(path.read_bytes(), [path.read_bytes()]))
    expected = _expected(path)
    assert len(parsed) == len(expected)
    for got, want in zip(_strip_headers(parsed), _strip_headers(expected), strict=True):
        # optional keys are compared only when the JSON names them
        got = {k: v for k, v in got.items() if k in want}
        assert got == want


@pytest.mark.parametrize("path", _params(VALID, "headers"))
def test_valid_headers(path: Path) -> None:
    parsed = _requests(_feed(path.read_bytes(), [path.read_bytes()]))
    expected = _expected(path)
    assert [p["headers"] for p in parsed] == [e["headers"] for e in expected]


# --- invalid files ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", _params(INVALID, "error"))
def test_invalid_rejected(path: Path) -> None:
    spec = json.loads(path.with_suffix(".json").read_text())
    events = _feed(path.read_bytes(), [path.read_bytes()])
    errors = [i for i, e in enumerate(events) if isinstance(e, HttpError)]
    assert errors, f"no error; events: {_normalized(events)!r}"
    assert errors == [len(events) - 1], "the error must be the last event, and the only one"
    error = events[-1]
    heads = sum(isinstance(e, RequestHead) for e in events)
    assert (error.status, heads) == (spec["status"], spec["events_before"]), error.reason


# --- every file: segmentation must not matter --------------------------------------------------


@pytest.mark.parametrize("path", _params(VALID + INVALID, "split"))
def test_split_invariance(path: Path) -> None:
    data = path.read_bytes()
    whole = _normalized(_feed(data, _one_piece(data)))
    assert _normalized(_feed(data, _bytewise(data))) == whole
    seed = zlib.crc32(path.name.encode())
    for round_ in range(3):
        assert _normalized(_feed(data, _random_split(data, seed + round_))) == whole


def test_feed_after_error_is_ignored() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nX-A : v\r\n\r\n")
    assert reader.closed
    assert [type(e) for e in reader.events] == [HttpError]
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(e) for e in reader.events] == [HttpError]


# --- h11 as an oracle for the valid files ------------------------------------------------------


def _h11_parse(data: bytes) -> list[dict[str, Any]]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    out: list[dict[str, Any]] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            break
        if isinstance(event, h11.Request):
            out.append(
                {
                    "method": event.method.decode("latin-1"),
                    "target": event.target.decode("latin-1"),
                    "version": [int(x) for x in event.http_version.split(b".")],
                    "headers": [
                        (n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()
                    ],
                    "body": b"",
                }
            )
        elif isinstance(event, h11.Data):
            out[-1]["body"] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            out[-1]["body"] = out[-1]["body"].decode("latin-1")
            conn.send(h11.Response(status_code=204, headers=[]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
        else:
            pytest.fail(f"unexpected h11 event {event!r}")
    return out


def _comparable_headers(headers: list[Any]) -> list[tuple[str, str]]:
    # h11 lowercases names and Transfer-Encoding values; our rules drop "_" names.
    out = []
    for name, value in headers:
        lower = name.lower()
        if "_" in lower:
            continue
        out.append((lower, value.lower() if lower == "transfer-encoding" else value))
    return out


@pytest.mark.parametrize("path", _params(VALID, "h11"))
def test_h11_oracle(path: Path) -> None:
    if path.stem in H11_SKIP:
        pytest.skip(H11_SKIP[path.stem])
    got = _h11_parse(path.read_bytes())
    expected = _expected(path)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g["method"], g["target"], g["version"], g["body"]) == (
            e["method"],
            e["target"],
            e["version"],
            e["body"],
        )
        assert _comparable_headers(g["headers"]) == _comparable_headers(e["headers"])


# --- targeted cases that do not fit the file format --------------------------------------------


def test_http_1_2_is_rejected_like_llhttp_strict() -> None:
    # Deliberate (docs/http-conformance.md): RFC 9110 2.5 would treat HTTP/1.2 as 1.1, but
    # llhttp's strict mode rejects it and no HTTP/1.2 client exists; nginx accepts it.
    raw = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"
    events = _feed(raw, [raw])
    assert [e.status for e in events if isinstance(e, HttpError)] == [400]


def _big_head(total: int) -> bytes:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n"
    i = 0
    while len(head) < total:
        head += b"X-P%d: %s\r\n" % (i, b"v" * 6000)
        i += 1
    return head + b"\r\n"


def test_head_limit_does_not_depend_on_segmentation() -> None:
    data = _big_head(45 * 1024)
    results = set()
    for pieces in (
        _one_piece(data),
        _bytewise(data),
        [data[i : i + 4096] for i in range(0, len(data), 4096)],
    ):
        events = _feed(data, pieces)
        results.add(events[-1].status if isinstance(events[-1], HttpError) else 0)
    assert results == {431}


def _fields_totalling(total: int) -> bytes:
    """A head whose field lines (name + value + ": " + CRLF each) add up to exactly ``total``."""
    fields = [b"Host: a\r\n"]
    used = len(fields[0])
    i = 0
    while used < total:
        name = b"X-F%03d" % i
        room = min(8000, total - used - len(name) - 4)
        assert room >= 0
        fields.append(name + b": " + b"v" * room + b"\r\n")
        used += len(fields[-1])
        i += 1
    assert used == total
    return b"GET / HTTP/1.1\r\n" + b"".join(fields) + b"\r\n"


@pytest.mark.parametrize(("total", "status"), [(32 * 1024, None), (32 * 1024 + 1, 431)])
def test_header_block_limit_is_exact(total: int, status: int | None) -> None:
    data = _fields_totalling(total)
    for pieces in (_one_piece(data), _bytewise(data), _random_split(data, total)):
        events = _feed(data, pieces)
        if status is None:
            assert [type(e) for e in events] == [RequestHead, type(MESSAGE_END)]
        else:
            assert len(events) == 1 and isinstance(events[0], HttpError) and events[0].status == status


def test_body_is_not_parsed_as_a_request() -> None:
    """A GET with a body that looks like a request: the bytes stay body (no smuggling)."""
    inner = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    data = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
    events = _normalized(_feed(data, [data]))
    assert [type(e) for e in events] == [RequestHead, bytes, type(MESSAGE_END)]
    assert events[1] == inner


def test_error_after_upgrade_head_stops_parsing() -> None:
    """After an upgrade request nothing more is parsed (we never tunnel; the connection closes)."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGARBAGE\r\n\r\n"
    reader = RequestReader()
    reader.feed(data)
    assert reader.closed
    events = list(reader.events)
    assert [type(e) for e in events] == [RequestHead, type(MESSAGE_END)]
    assert events[0].upgrade and not events[0].keep_alive


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        (b"Expect: 100-continue\r\n", True),
        (b"Expect: 100-CONTINUE\r\n", True),
        (b"Expect: 100-continue, foo\r\n", False),
        (b"Expect: foo\r\n", False),
        (b"", False),
    ],
)
def test_expect_continue_flag(line: bytes, expect: bool) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\n" + line + b"Content-Length: 1\r\n\r\nx"
    head = _feed(data, [data])[0]
    assert isinstance(head, RequestHead)
    assert head.expect_continue is expect
