"""Client request reading: httptools (llhttp, strict mode) plus the rules llhttp leaves to us.

``RequestReader.feed(data)`` appends events to ``reader.events`` in wire order:
``RequestHead``, body ``bytes`` pieces (already de-chunked), ``MESSAGE_END``, and finally an
``HttpError`` if the stream became invalid. The connection loop consumes them in order, so
pipelined requests are answered in order and an invalid request after valid ones gets its
400 only after the earlier responses (nginx does the same).

Rules enforced here (llhttp already rejects CL+TE, duplicate or non-digit Content-Length,
bad chunk sizes, obs-fold, space before colon, NUL/CR/CTL in values, bare LF):
1. Request line over 8 KiB -> 414; one header line over 8 KiB, more than 100 header fields,
   or header fields over 32 KiB in total -> 431. Complete fields are counted exactly, so
   the outcome never depends on how the bytes were segmented; an unfinished head is also
   bounded between reads, which caps what llhttp buffers for one endless field.
2. HTTP/2+ in an HTTP/1 request line -> 505. A method is any token of nginx's alphabet
   (upper-case letters, "_" and "-", RFC 9110 allows any token; nginx forwards these), at
   most ``MAX_METHOD`` bytes: ``FOO`` and ``PURGE`` are requests like any other. Anything
   else (lower case, digits, other token characters, longer) -> 400, so a case variant
   such as ``get`` or ``trace`` never reaches a backend that might upper-case it.
3. Transfer-Encoding on HTTP/1.0 -> 400; any coding other than a lone "chunked" -> 501.
4. HTTP/1.1 without exactly one valid Host -> 400; two Host lines -> 400.
5. CONNECT and TRACE -> 405.
6. Header names containing "_" are dropped (nginx: underscores_in_headers off), so that
   X_Forwarded_For can never alias X-Forwarded-For behind a CGI-style backend.
7. Trailers of chunked requests are dropped, never merged into the head.
8. Every error closes the connection after the error response.

Methods llhttp does not know (it rejects ``FOO``) are handled by finding each request line
ourselves: ``feed`` hands llhttp the stream in pieces that end exactly where a message can
end (after the head's CRLFCRLF, after Content-Length body bytes, after each CRLFCRLF of a
chunked body: the last chunk and the trailers always end with one), so every message starts
at the start of a piece. There the method is read (buffered while incomplete: at most
``MAX_METHOD`` bytes), checked (rule 2) and, unless llhttp must see it (``_FED_AS_IS``:
CONNECT's authority-form target, PRI's HTTP/2 preface), replaced by ``GET`` for llhttp,
whose request parsing does not otherwise depend on the method. The reader keeps the real
one. Outcomes never depend on how the bytes were segmented (the corpus feeds every file in
one piece, byte by byte and in random splits). Cost: one ``find`` per piece; a chunked
body is split once per CRLFCRLF it contains (4 bytes per llhttp call at worst, the order of
llhttp's own per-chunk callback for 1-byte chunks).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import httptools

from prefork_lb.http.uri import UriError, normalize_host, split_target
from prefork_lb.units import parse_decimal

MAX_REQUEST_LINE: Final = 8192
MAX_FIELD_LINE: Final = 8192
MAX_FIELDS: Final = 100
MAX_HEAD: Final = 32 * 1024
MAX_METHOD: Final = 32  # rule 2; nginx has no limit of its own but the 8 KiB request line
_METHOD_CHARS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-")
# Methods llhttp parses as given: the common ones (no copy of the data), and the two whose
# parsing llhttp changes (CONNECT: authority-form target; PRI: the HTTP/2 preface). Every
# other method is fed to llhttp as GET.
_FED_AS_IS: Final = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"PRI", b"TRACE"}
)
_CRLF2: Final = b"\r\n\r\n"
# Where the reader is in the byte stream (see the module docstring).
_START: Final = 0  # before a request line (after optional empty lines)
_HEAD: Final = 1  # inside a head, method done: llhttp gets bytes up to the CRLFCRLF
_BODY_LENGTH: Final = 2  # Content-Length body: llhttp gets exactly the bytes left
_BODY_CHUNKED: Final = 3  # chunked body: llhttp gets bytes up to each CRLFCRLF


class HttpError(Exception):
    """A request the proxy answers itself with ``status`` and then closes the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]
    header_index: dict[bytes, bytes]
    authority: str | None  # host from an absolute-form target
    raw_path: bytes
    query: bytes
    host: str  # normalized host: authority, else Host header, else ""
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    upgrade: bool  # Connection: upgrade + Upgrade were sent (http/tunnel.py; close after)
    head_length: int


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MESSAGE_END"


MESSAGE_END: Final = _End()
Event = RequestHead | bytes | _End | HttpError


class RequestReader:
    """One per client connection; the llhttp parser is reused for every request on it."""

    __slots__ = (
        "_body_left",
        "_chunked",
        "_complete",
        "_content_length",
        "_field_bytes",
        "_field_count",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_index",
        "_method",
        "_parser",
        "_pending",
        "_state",
        "_tail",
        "_url",
        "_url_len",
        "closed",
        "events",
        "upgrade_data",
    )

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.closed = False  # an error or an upgrade ended parsing for good
        self.upgrade_data = b""  # bytes after an upgrade head: the tunnel's first client bytes
        self._parser = httptools.HttpRequestParser(self)
        self._state = _START
        self._pending = b""  # _START: an incomplete method
        self._method = b""  # the request's real method (llhttp may have seen GET)
        self._tail = b""  # _HEAD/_BODY_CHUNKED: the last 3 bytes fed, for a split CRLFCRLF
        self._body_left = 0
        self._complete = False  # llhttp ended a message during the last piece
        self._reset()

    def _reset(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._url: list[bytes] = []
        self._url_len = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._index: dict[bytes, bytes] = {}
        self._field_count = 0
        self._field_bytes = 0
        self._content_length: int | None = None
        self._chunked = False

    @property
    def in_head(self) -> bool:
        """True while a request head has started but is not complete."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        # Bytes of an unfinished head, counted per feed: a head that starts inside this
        # chunk is counted from the next one, so the bound errs by at most one read.
        self._head_bytes = self._head_bytes + len(data) if self._in_head else 0
        try:
            self._feed(data)
        except HttpError as e:
            self._fail(e)
            return
        except httptools.HttpParserUpgrade:
            # The request was queued as an ordinary one and the connection ends after it:
            # bytes after the head are never parsed, only kept (``upgrade_data``) for the
            # tunnel if the upstream switches protocols (http/tunnel.py).
            self.closed = True
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause if isinstance(cause, HttpError) else HttpError(400, "bad request"))
            return
        except httptools.HttpParserInvalidMethodError:
            self._fail(HttpError(400, "invalid method"))
            return
        except httptools.HttpParserError as e:
            self._fail(_classify_parser_error(str(e)))
            return
        if self._in_head and self._head_bytes > MAX_HEAD + MAX_REQUEST_LINE:
            if self._field_count == 0 and not self._headers:
                self._fail(HttpError(414, "request URI too large"))
            else:
                self._fail(HttpError(431, "request header fields too large"))

    def _feed(self, data: bytes) -> None:
        """Hand ``data`` to llhttp in pieces that end where a message can end (docstring)."""
        feed = self._parser.feed_data
        while data:
            state = self._state
            if state == _START:
                data = self._start(data)
                continue
            if state == _BODY_LENGTH:
                left = self._body_left
                if len(data) < left:
                    self._body_left = left - len(data)
                    feed(data)
                    return
                piece, data = data[:left], data[left:]
                self._complete = False
                feed(piece)
                self._state = _START  # llhttp ended the message with the last body byte
                continue
            # _HEAD or _BODY_CHUNKED: the next CRLFCRLF, possibly split across reads
            tail = self._tail
            cut = (tail + data[:3]).find(_CRLF2) if tail else -1
            if cut >= 0:
                cut += 4 - len(tail)  # a CRLFCRLF begun in the previous piece
            else:
                cut = data.find(_CRLF2)
                if cut < 0:
                    self._tail = data[-3:] if len(data) >= 3 else (tail + data)[-3:]
                    feed(data)
                    return
                cut += 4
            piece, data = data[:cut], data[cut:]
            self._tail = b""
            self._complete = False
            try:
                feed(piece)
            except httptools.HttpParserUpgrade:
                self.upgrade_data = data  # the piece ends with the head: the rest is not HTTP
                raise
            if self._complete:
                self._state = _START
            elif state == _HEAD and not self._in_head:  # the head is done, a body follows
                if self._chunked:
                    self._state = _BODY_CHUNKED
                else:
                    self._state = _BODY_LENGTH
                    self._body_left = self._content_length or 0
            else:  # a CRLFCRLF inside chunk data: keep the bytes for a split one
                self._tail = piece[-3:]

    def _start(self, data: bytes) -> bytes:
        """At a request line: read and check the method, feed llhttp its start. Returns
        what is left for the head, or b"" when the method is still incomplete."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        elif data[0] in (0x0D, 0x0A):  # empty lines before a request line: llhttp skips them
            skip = len(data) - len(data.lstrip(b"\r\n"))
            self._parser.feed_data(data[:skip])
            data = data[skip:]
            if not data:
                return b""
        space = data.find(b" ", 0, MAX_METHOD + 1)
        method = data if space < 0 else data[:space]
        if not method or not _METHOD_CHARS.issuperset(method) or (space < 0 and len(data) > MAX_METHOD):
            raise HttpError(400, "invalid method")
        if space < 0:  # incomplete: wait for more, as part of the head (header timeout)
            self._pending = data
            self._in_head = True
            return b""
        self._method = method
        self._state = _HEAD
        self._tail = b""
        if method in _FED_AS_IS:
            return data
        return b"GET" + data[space:]

    def _fail(self, error: HttpError) -> None:
        self.closed = True
        self.events.append(error)

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        head_bytes = self._head_bytes
        self._reset()
        self._head_bytes = head_bytes
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_len += len(url)
        if self._url_len > MAX_REQUEST_LINE:
            raise HttpError(414, "request URI too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer of a chunked body: dropped (rule 7)
        if value and value[-1] in (0x20, 0x09):
            value = value.rstrip(b" \t")  # llhttp keeps trailing OWS; RFC 9112 5.1 excludes it
        self._field_count += 1
        if self._field_count > MAX_FIELDS:
            raise HttpError(431, "too many header fields")
        size = len(name) + len(value)
        if size > MAX_FIELD_LINE:
            raise HttpError(431, "request header field too large")
        self._field_bytes += size + 4  # ": " and CRLF
        if self._field_bytes > MAX_HEAD:
            raise HttpError(431, "request header fields too large")
        if b"_" in name:
            return  # rule 6
        lower = name.lower()
        if lower in self._index:
            if lower == b"host":
                raise HttpError(400, "duplicate Host header")
            if lower == b"transfer-encoding":
                raise HttpError(400, "duplicate Transfer-Encoding header")
            self._index[lower] += b", " + value
        else:
            self._index[lower] = value
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        major, _, minor = version.partition(".")
        ver = (int(major), int(minor or 0))
        if ver[0] != 1:
            raise HttpError(505, "HTTP version not supported")
        method = self._method
        if method in (b"CONNECT", b"TRACE"):
            raise HttpError(405, "method not allowed")
        target = b"".join(self._url) if len(self._url) != 1 else self._url[0]
        try:
            authority, raw_path, query = split_target(target)
        except UriError as e:
            raise HttpError(e.status, "invalid request target") from None
        index = self._index
        host_value = index.get(b"host")
        try:
            if authority is not None:
                host = normalize_host(authority.encode("latin-1"))
            elif host_value is not None:
                host = normalize_host(host_value)
            elif ver >= (1, 1):
                raise HttpError(400, "missing Host header")
            else:
                host = ""
        except UriError:
            raise HttpError(400, "invalid host") from None
        te = index.get(b"transfer-encoding")
        chunked = False
        content_length = None
        if te is not None:
            if ver < (1, 1):
                raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if te.strip(b" \t").lower() != b"chunked":
                raise HttpError(501, "unsupported transfer coding")
            chunked = True
        else:
            cl = index.get(b"content-length")
            if cl is not None:
                content_length = parse_decimal(cl.strip(b" \t"))
                if content_length is None:
                    raise HttpError(400, "invalid Content-Length")
        expect = index.get(b"expect")
        upgrade = bool(parser.should_upgrade()) and method != b"CONNECT"
        if upgrade and (chunked or content_length):
            raise HttpError(400, "upgrade request with a body")
        self._in_head = False
        self._head_bytes = 0
        self._chunked = chunked
        self._content_length = content_length
        self.events.append(
            RequestHead(
                method=method,
                target=target,
                version=ver,
                headers=self._headers,
                header_index=index,
                authority=authority,
                raw_path=raw_path,
                query=query,
                host=host,
                content_length=content_length,
                chunked=chunked,
                keep_alive=bool(parser.should_keep_alive()) and not upgrade,
                expect_continue=(
                    expect is not None and ver >= (1, 1) and expect.strip(b" \t").lower() == b"100-continue"
                ),
                upgrade=upgrade,
                head_length=self._url_len + self._field_bytes,
            )
        )

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self._in_head = False
        self._complete = True
        self.events.append(MESSAGE_END)


def _classify_parser_error(message: str) -> HttpError:
    if "Invalid HTTP version" in message:
        return HttpError(400, "invalid HTTP version")
    if "Transfer-Encoding" in message and "Content-Length" not in message:
        # llhttp: "chunked" repeated or not the final coding (RFC 9112 6.3: 400)
        return HttpError(400, "invalid Transfer-Encoding")
    return HttpError(400, message.strip() or "bad request")
