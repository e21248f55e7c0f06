"""HTTP/2 <-> the HTTP/1.1 request pipeline (sans-IO: bytes in, values out).

A stream's request headers become the ``RequestHead`` the HTTP/1.1 reader would have made
(``map_request``), and what the pipeline sends (an HTTP/1.1 response: head, then a body
framed by Content-Length or chunked, exactly as ``headers.py`` and ``relay.py`` build it)
becomes an HTTP/2 header list and DATA (``ResponseMapper``). So routing, rewrites, limits,
the proxy, error pages and the access log run unchanged for a stream.

Request rules (RFC 9113 section 8, nginx 1.22 where it differs):
1. Pseudo-header fields come before regular ones; only ``:method``, ``:scheme``,
   ``:path``, ``:authority``, each at most once; ``:method``, ``:scheme`` and ``:path`` are
   required. A name with an upper-case letter, a byte outside the token alphabet, an
   empty name, a value with NUL/CR/LF or leading/trailing whitespace, a connection-specific
   field (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade) or TE other
   than "trailers" make the request malformed: stream error PROTOCOL_ERROR (RST_STREAM 1),
   as nginx resets such streams. Such a stream never reaches the pipeline.
2. One field longer than ``max_field_size`` or a header list longer than
   ``max_header_size`` ends the connection: GOAWAY ENHANCE_YOUR_CALM (11), as nginx >=
   1.19.7. nginx compares the field's length as sent (HPACK, Huffman-coded or not); the
   decoded length over the limit is checked again as the Huffman-coded length (computed
   only then), so a 9000-byte value that Huffman-codes under 8 KiB passes as in nginx.
3. ``:authority`` gives the Host when present; a ``host`` field too must name the same
   host (else 400). Without ``:authority`` the ``host`` field is used. The header list
   handed to the pipeline gets a ``host`` field from ``:authority`` when it had none, so
   ``$http_host`` and the upstream's Host work as for HTTP/1.1.
4. Cookie crumbs (RFC 9113 8.2.3) are joined with "; " into one ``cookie`` field.
5. CONNECT and TRACE are answered 405, as for HTTP/1.1 (``request.py`` rule 5); a method
   outside nginx's alphabet (request.py rule 2) and an invalid ``:path`` are answered 400;
   fields with "_" are dropped (underscores_in_headers off).
6. ``content-length`` is parsed (invalid: 400). A request with a body and no
   content-length is passed on as chunked (the proxy sends it upstream chunked). A body
   that does not match the content-length fails its stream only with 400, as nginx
   (connection.py rule 10 checks it; h2's own check, a connection error, is off).
7. ``version`` is (2, 0): ``$server_protocol`` is "HTTP/2.0", and the response relay
   re-chunks unframed bodies (which ``ResponseMapper`` un-chunks).

9. Trailers (a HEADERS frame ending the body) go upstream after a chunked body's last
   chunk (``map_trailers``), except fields that must not be trailers (framing, Host,
   Authorization, Cookie...). Checked as rule 1; a body sent upstream with a
   content-length cannot carry them, and they are dropped there. nginx 1.22 instead ends
   the connection (GOAWAY PROTOCOL_ERROR, "client sent HEADERS frame with incorrect
   identifier"). Trailers of upstream responses are not relayed (nginx's proxy drops
   them too).

Response rules:
10. The status line gives ``:status``; names are lower-cased; hop-by-hop fields
   (header_rules.HOP_BY_HOP) are dropped; the body follows Content-Length, chunked framing
   (decoded) or none (HEAD, 1xx, 204, 304). ``feed`` returns the pieces of DATA and
   whether the response ended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from prefork_lb.http.header_rules import HOP_BY_HOP
from prefork_lb.http.request import MAX_METHOD, HttpError, RequestHead
from prefork_lb.http.response import ChunkedDecoder, UpstreamProtocolError
from prefork_lb.http.uri import UriError, normalize_host, split_target
from prefork_lb.units import parse_decimal

# RFC 9113 error codes used here
PROTOCOL_ERROR: Final = 1
INTERNAL_ERROR: Final = 2
REFUSED_STREAM: Final = 7
ENHANCE_YOUR_CALM: Final = 11

_PSEUDO: Final = frozenset({b":method", b":scheme", b":path", b":authority"})
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# a field name: lower-case token characters only (RFC 9110 token, RFC 9113 8.2.1)
_bad_name = re.compile(rb"[^a-z0-9!#$%&'*+\-.^_`|~]").search
_bad_value = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$").search
_METHOD_CHARS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-")
_NO_BODY_STATUS: Final = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class StreamError:
    """Rule 1: reset this stream with ``code``."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionError_:
    """Rule 2: GOAWAY with ``code``; the connection ends."""

    code: int
    reason: str


Mapped = RequestHead | HttpError | StreamError | ConnectionError_


def _encoded_len(value: bytes) -> int:
    """The Huffman-coded length of ``value`` (rule 2; only for fields over the limit)."""
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    return min(len(value), len(HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(value)))


def map_request(
    fields: list[tuple[bytes, bytes]], end_stream: bool, max_field: int, max_header: int
) -> Mapped:
    """A stream's decoded header list -> the pipeline's head, or what to answer instead."""
    method = scheme = path = authority = None
    headers: list[tuple[bytes, bytes]] = []
    index: dict[bytes, bytes] = {}
    cookies: list[bytes] = []
    total = 0
    regular = False
    for name, value in fields:
        size = len(name) + len(value)
        if size > max_field and len(name) + _encoded_len(value) > max_field:
            return ConnectionError_(ENHANCE_YOUR_CALM, "client exceeded http2_max_field_size limit")
        total += size + 32  # RFC 9113 6.5.2's per-field overhead, as the header list size
        if total > max_header:
            return ConnectionError_(ENHANCE_YOUR_CALM, "client exceeded http2_max_header_size limit")
        if name[:1] == b":":
            if regular or name not in _PSEUDO:
                return StreamError(PROTOCOL_ERROR, "invalid pseudo-header")
            if name == b":method":
                if method is not None:
                    return StreamError(PROTOCOL_ERROR, "duplicate :method")
                method = value
            elif name == b":scheme":
                if scheme is not None:
                    return StreamError(PROTOCOL_ERROR, "duplicate :scheme")
                scheme = value
            elif name == b":path":
                if path is not None:
                    return StreamError(PROTOCOL_ERROR, "duplicate :path")
                path = value
            else:
                if authority is not None:
                    return StreamError(PROTOCOL_ERROR, "duplicate :authority")
                authority = value
            continue
        regular = True
        if not name or _bad_name(name) is not None:
            return StreamError(PROTOCOL_ERROR, "invalid header name")
        if value and _bad_value(value) is not None:
            return StreamError(PROTOCOL_ERROR, "invalid header value")
        if name in _CONNECTION_SPECIFIC:
            return StreamError(PROTOCOL_ERROR, "connection-specific header")
        if name == b"te" and value.lower() != b"trailers":
            return StreamError(PROTOCOL_ERROR, "TE other than trailers")
        if b"_" in name:
            continue  # underscores_in_headers off (request.py rule 6)
        if name == b"cookie":  # rule 4: joined below, in order
            cookies.append(value)
            continue
        if name in index:
            if name == b"host":
                return HttpError(400, "duplicate Host header")
            index[name] += b", " + value
        else:
            index[name] = value
        headers.append((name, value))
    if method == b"CONNECT":  # rule 5; its form has no :scheme and :path (RFC 9113 8.5)
        return HttpError(405, "method not allowed")
    if method is None or scheme is None or path is None:
        return StreamError(PROTOCOL_ERROR, "missing pseudo-header")
    if not path:
        return StreamError(PROTOCOL_ERROR, "empty :path")
    if cookies:
        joined = b"; ".join(cookies)
        index[b"cookie"] = joined
        headers.append((b"cookie", joined))
    head_length = len(method) + len(path) + 11 + sum(len(n) + len(v) + 4 for n, v in headers)
    if len(method) > MAX_METHOD or not _METHOD_CHARS.issuperset(method) or not method:
        return HttpError(400, "invalid method")
    if method in (b"CONNECT", b"TRACE"):
        return HttpError(405, "method not allowed")
    try:
        found, raw_path, query = split_target(path)
        if found is not None:
            raise UriError("absolute :path")
    except UriError:
        return HttpError(400, "invalid :path")
    host_value = index.get(b"host")
    try:
        if authority is not None:
            host = normalize_host(authority)
            if host_value is None:
                index[b"host"] = authority
                headers.insert(0, (b"host", authority))
            elif normalize_host(host_value) != host:
                return HttpError(400, ":authority and Host differ")
        elif host_value is not None:
            host = normalize_host(host_value)
        else:
            host = ""
    except UriError:
        return HttpError(400, "invalid host")
    content_length = None
    cl = index.get(b"content-length")
    if cl is not None:
        content_length = parse_decimal(cl)
        if content_length is None:
            return HttpError(400, "invalid Content-Length")
    chunked = content_length is None and not end_stream
    expect = index.get(b"expect")
    return RequestHead(
        method=method,
        target=path,
        version=(2, 0),
        headers=headers,
        header_index=index,
        authority=None,
        raw_path=raw_path,
        query=query,
        host=host,
        content_length=content_length,
        chunked=chunked,
        keep_alive=True,
        expect_continue=(
            not end_stream and expect is not None and expect.strip(b" \t").lower() == b"100-continue"
        ),
        upgrade=False,
        head_length=head_length,
    )


# never forwarded as trailers (RFC 9110 6.5.1: framing, routing, request modifiers, auth)
_NOT_TRAILERS: Final = frozenset(
    {
        b"content-length",
        b"content-type",
        b"host",
        b"expect",
        b"range",
        b"authorization",
        b"cookie",
        b"te",
        b"trailer",
    }
)


def map_trailers(
    fields: list[tuple[bytes, bytes]], max_header: int
) -> bytes | StreamError | ConnectionError_:
    """Rule 9: a stream's trailer fields -> HTTP/1.1 field lines for the upstream's last
    chunk. Malformed as in rule 1 (a pseudo-header among them too): stream error."""
    out: list[bytes] = []
    total = 0
    for name, value in fields:
        total += len(name) + len(value) + 32
        if total > max_header:
            return ConnectionError_(ENHANCE_YOUR_CALM, "client exceeded http2_max_header_size limit")
        if not name or name[:1] == b":" or _bad_name(name) is not None:
            return StreamError(PROTOCOL_ERROR, "invalid trailer name")
        if value and _bad_value(value) is not None:
            return StreamError(PROTOCOL_ERROR, "invalid trailer value")
        if name in _CONNECTION_SPECIFIC:
            return StreamError(PROTOCOL_ERROR, "connection-specific trailer")
        if name in _NOT_TRAILERS or b"_" in name:
            continue
        out.append(name + b": " + value + b"\r\n")
    return b"".join(out)


class ResponseMapper:
    """Rule 10: the pipeline's HTTP/1.1 response bytes -> (:status and fields, DATA, end).

    ``feed`` returns (header list or None, body pieces, ended); the header list comes once,
    with the call that completes the head."""

    __slots__ = ("_buf", "_decoder", "_head_request", "_remaining", "ended", "head_sent", "status")

    def __init__(self, head_request: bool) -> None:
        self._head_request = head_request
        self._buf = b""
        self._decoder: ChunkedDecoder | None = None
        self._remaining = -1  # Content-Length left; -1: unframed (until the pipeline is done)
        self.head_sent = False
        self.ended = False
        self.status = 0

    @property
    def unframed(self) -> bool:
        """A body with neither length nor chunks: it ends when the pipeline returns."""
        return self._decoder is None and self._remaining < 0

    def feed(self, data: bytes) -> tuple[list[tuple[bytes, bytes]] | None, list[bytes], bool]:
        if self.ended:
            return None, [], True
        fields = None
        if not self.head_sent:
            buf = self._buf + data if self._buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return None, [], False
            self._buf = b""
            fields = self._head(buf[:end])
            data = buf[end + 4 :]
            if self.ended:
                return fields, [], True
        pieces: list[bytes]
        decoder = self._decoder
        if decoder is not None:
            try:
                pieces = [p for p in decoder.feed(data) if p] if data else []
            except UpstreamProtocolError:
                raise ValueError("the pipeline sent an invalid chunked body") from None
            if decoder.done:
                self.ended = True
        elif self._remaining >= 0:
            if len(data) >= self._remaining:
                data = data[: self._remaining]
                self.ended = True
            self._remaining -= len(data)
            pieces = [data] if data else []
        else:
            pieces = [data] if data else []
        return fields, pieces, self.ended

    def _head(self, block: bytes) -> list[tuple[bytes, bytes]]:
        lines = block.split(b"\r\n")
        status_line = lines[0]
        status = int(status_line[9:12])
        self.status = status
        out: list[tuple[bytes, bytes]] = [(b":status", b"%d" % status)]
        length = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lower = name.strip().lower()
            value = value.strip(b" \t")
            if lower == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
                continue
            if lower in HOP_BY_HOP:
                continue
            if lower == b"content-length":
                length = parse_decimal(value)
            out.append((lower, value))
        self.head_sent = True
        if self._head_request or status < 200 or status in _NO_BODY_STATUS:
            self.ended = status >= 200
        elif chunked:
            self._decoder = ChunkedDecoder()
        elif length is not None:
            self._remaining = length
            self.ended = length == 0
        return out
