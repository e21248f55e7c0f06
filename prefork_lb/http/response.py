"""Upstream response heads and body framing (sans-IO).

We parse upstream responses ourselves rather than with llhttp because the proxy must know
exact byte boundaries: where a HEAD/204/304 response ends, whether bytes beyond the
announced length arrived (then the connection is never reused), and where a 1xx interim
response stops.

Rules (RFC 9112, stricter than nginx 1.22 where nginx is lax):
1. Status line ``HTTP/1.x SP 3DIGIT [SP reason]``; anything else -> invalid header (502).
2. Field lines are ``token ":" OWS value OWS``; obs-fold, whitespace before ":", CR, NUL
   or other CTLs in values, and a missing colon -> invalid header (502).
3. Content-Length together with Transfer-Encoding -> 502. Several Content-Length values
   must all be equal (then collapsed), otherwise 502.
4. Transfer-Encoding must be exactly "chunked"; any other coding -> 502 (we de-chunk, so
   another coding would reach the client undeclared).
5. Framing: no body for 1xx/204/304 and responses to HEAD; chunked; Content-Length; else
   the body runs until the upstream closes (never reusable).
6. The header block must fit ``proxy_buffer_size`` (nginx: "upstream sent too big header").
7. Line ends: CRLF, or a bare LF as nginx accepts (RFC 9112 section 2.2 lets a recipient
   accept it). A bare CR stays invalid. The CRLF head is the fast path (one ``find`` and
   one regex match); bare LF costs only when no CRLF blank line is buffered or the CRLF
   block does not parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from prefork_lb.units import parse_decimal, parse_hex

_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
# The whole head in one C-level pass (the common case); only a head it rejects is walked
# line by line again, to say what is wrong. 7.4 -> 2.4 us for a typical nginx head.
_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_HEAD = re.compile(
    rb"HTTP/1\.([0-9]) ([0-9]{3})(?: (" + _VALUE + rb"))?((?:\r\n" + _TOKEN + rb":" + _VALUE + rb")*)"
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
MAX_CHUNK_LINE: Final = 4096
MAX_TRAILERS: Final = 8192

Framing = Literal["none", "length", "chunked", "close"]


class UpstreamProtocolError(Exception):
    """The upstream broke HTTP framing (nginx's "invalid_header" condition)."""


@dataclass(slots=True)
class ResponseHead:
    version_minor: int
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # hop-by-hop fields still included
    connection_tokens: frozenset[bytes]
    framing: Framing
    content_length: int | None  # as announced; the body length when framing == "length"
    keep_alive: bool  # the upstream allows reusing the connection after this response


def _diagnose(block: bytes) -> UpstreamProtocolError:
    """Why ``_HEAD`` rejected ``block``, line by line."""
    lines = block.split(b"\r\n")
    if _STATUS_LINE.fullmatch(lines[0]) is None:
        return UpstreamProtocolError("invalid status line")
    return UpstreamProtocolError("invalid header line")


def parse_response_head(block: bytes, head_request: bool) -> ResponseHead:
    """Parse ``block`` (status line to the last field line, without the blank line)."""
    m = _HEAD.fullmatch(block)
    if m is None:
        raise _diagnose(block)
    minor = int(m.group(1))
    status = int(m.group(2))
    if status < 100:
        raise UpstreamProtocolError("invalid status code")
    headers: list[tuple[bytes, bytes]] = []
    content_length: int | None = None
    te: bytes | None = None
    connection = b""
    fields = m.group(4)
    for line in fields.split(b"\r\n")[1:] if fields else ():
        name, _, value = line.partition(b":")
        value = value.strip(b" \t")
        lower = name.lower()
        if lower == b"content-length":
            for part in value.split(b","):
                n = parse_decimal(part.strip(b" \t"))
                if n is None or (content_length is not None and n != content_length):
                    raise UpstreamProtocolError("invalid or conflicting Content-Length")
                content_length = n
        elif lower == b"transfer-encoding":
            te = value if te is None else te + b", " + value
        elif lower == b"connection":
            connection = value if not connection else connection + b", " + value
        headers.append((name, value))
    tokens = frozenset(t.strip(b" \t").lower() for t in connection.split(b",")) if connection else frozenset()
    keep_alive = minor >= 1 and b"close" not in tokens
    framing: Framing
    if head_request or status < 200 or status in (204, 304):
        framing = "none"
        if te is not None and content_length is not None and status >= 200:
            raise UpstreamProtocolError("Content-Length and Transfer-Encoding together")
    elif te is not None:
        if content_length is not None:
            raise UpstreamProtocolError("Content-Length and Transfer-Encoding together")
        if te.strip(b" \t").lower() != b"chunked":
            # gzip etc. would reach the client undeclared once we de-chunk: refuse (502)
            raise UpstreamProtocolError("unsupported transfer coding")
        framing = "chunked"
    elif content_length is not None:
        framing = "length"
    else:
        framing = "close"
        keep_alive = False
    return ResponseHead(
        version_minor=minor,
        status=status,
        reason=m.group(3) or b"",
        headers=headers,
        connection_tokens=tokens,
        framing=framing,
        content_length=content_length,
        keep_alive=keep_alive,
    )


def head_end(buf: bytes, scan: int) -> tuple[int, int]:
    """Where the head buffered in ``buf`` ends: (end of its last line, start of what
    follows), or (-1, -1) while no blank line has arrived. ``scan``: no blank line ends
    before it (the caller passes ``len(buf) - 3`` of its previous look)."""
    end = buf.find(b"\r\n\r\n", scan)
    if end >= 0:
        return end, end + 4
    m = _BLANK_LINE.search(buf, scan)
    return (-1, -1) if m is None else (m.start(), m.end())


def parse_buffered_head(buf: bytes, end: int, after: int, head_request: bool) -> tuple[ResponseHead, int]:
    """Parse the head that ``head_end`` found; returns it and where the rest of ``buf``
    starts. A CRLF head that fails to parse is tried once more with bare-LF line ends (rule
    7): its blank line may be an earlier LF one, or its lines may end in bare LF."""
    try:
        return parse_response_head(buf[:end], head_request), after
    except UpstreamProtocolError:
        m = _BLANK_LINE.search(buf)
        if m is None:
            raise
        block = buf[: m.start()]
        if block.count(b"\n") == block.count(b"\r\n"):
            if m.start() == end:
                raise
            return parse_response_head(block, head_request), m.end()
        lines = block.split(b"\n")
        block = b"\r\n".join(line[:-1] if line[-1:] == b"\r" else line for line in lines)
        return parse_response_head(block, head_request), m.end()


class ChunkedDecoder:
    """Incremental, strict decoder of a chunked body.

    ``feed(data)`` returns the decoded data pieces found so far; once the last chunk and
    the trailer section are complete, ``done`` is True and ``extra`` holds any bytes that
    followed (their presence means the connection must not be reused). Trailers are
    validated and dropped.
    """

    __slots__ = ("_buf", "_need", "_state", "done", "extra")

    def __init__(self) -> None:
        self._buf = b""
        self._state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self._need = 0
        self.done = False
        self.extra = b""

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        while pos < end:
            state = self._state
            if state == 1:
                take = min(self._need, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._need -= take
                if self._need == 0:
                    self._state = 2
            elif state == 0:
                nl = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
                if nl < 0:
                    if end - pos - (buf[end - 1] == 13) > MAX_CHUNK_LINE:  # a CR awaiting LF is free
                        raise UpstreamProtocolError("chunk size line too long")
                    break
                m = _CHUNK_SIZE.fullmatch(buf, pos, nl)
                if m is None:
                    raise UpstreamProtocolError("invalid chunk size")
                size = parse_hex(m.group(1))
                assert size is not None
                pos = nl + 2
                if size == 0:
                    self._state = 3
                else:
                    self._need = size
                    self._state = 1
            elif state == 2:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise UpstreamProtocolError("missing CRLF after chunk data")
                pos += 2
                self._state = 0
            else:  # trailers, then the final CRLF
                nl = buf.find(b"\r\n", pos, pos + MAX_TRAILERS + 2)
                if nl < 0:
                    if end - pos - (buf[end - 1] == 13) > MAX_TRAILERS:  # a CR awaiting LF is free
                        raise UpstreamProtocolError("trailer line too long")
                    break
                if nl == pos:
                    self.done = True
                    self.extra = buf[nl + 2 :]
                    self._buf = b""
                    return out
                if _FIELD.fullmatch(buf, pos, nl) is None:
                    raise UpstreamProtocolError("invalid trailer field")
                pos = nl + 2
        self._buf = buf[pos:] if pos < end else b""
        return out
