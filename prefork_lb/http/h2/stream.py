"""One HTTP/2 stream as the pipeline's client (gevent shell, issue 20).

A stream runs ``ClientConnection._handle`` (routing, rewrite, limits, proxy, error pages,
access log, statistics) in its own greenlet, exactly as an HTTP/1.1 request; it is the
``http/client.py`` Client the proxy sees, so the proxy, request body and relay are the
HTTP/1.1 ones.

Rules:
1. ``read_body`` takes the DATA the connection queued for the stream; each piece taken
   reopens the stream's receive window by its flow-controlled length (the client may send
   more only as the upstream consumes: at most the advertised window is buffered per
   stream). A body wait longer than ``client_body_timeout`` resets the stream (ClientGone).
2. ``send`` gets the pipeline's HTTP/1.1 bytes; ``mapping.ResponseMapper`` turns them into
   HEADERS and DATA. DATA goes out in frames of at most ``http2_chunk_size`` within the
   stream's and the connection's send windows; a stream with no window waits for a
   WINDOW_UPDATE (at most ``send_timeout``, then it is reset): a slow reader of one stream
   never blocks another.
3. A stream the client reset (or the connection ended) fails its next ``read_body`` or
   ``send`` with ClientGone: logged 499 when no response began, as nginx. A stream waiting
   elsewhere (the upstream's response, a limit_req delay) gets ClientGone thrown in at
   once, so its upstream request ends too (nginx finalizes the request on RST_STREAM):
   a reset stream costs no upstream time (rapid reset, CVE-2023-44487). Never while the
   stream's greenlet is the connection's writer (a frame half sent would corrupt it). A
   stream reset before its greenlet started (the RST in the same read as its HEADERS) is
   not processed at all: no upstream request and no access log line (nginx would log a
   499 for it).
4. ``abort`` (a truncated upstream body, 444) resets the stream INTERNAL_ERROR; a response
   not completed when the pipeline returns is reset the same way, except an unframed body
   (its end is the pipeline's return: END_STREAM). A complete response whose request body
   the client is still sending ends with RST_STREAM NO_ERROR (RFC 9113 8.1), as nginx.
5. ``Expect: 100-continue``: the interim 100 HEADERS go out when the body is first needed.
6. A request body that does not match its content-length (connection.py rule 10) fails
   the stream's next ``read_body`` with HttpError 400, as an HTTP/1.1 body that ended
   early: the pipeline answers 400 on that stream (nginx 1.22's answer), other streams go on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import getcurrent
from gevent.event import Event

from prefork_lb.http.client import ClientGone
from prefork_lb.http.connection import ClientConnection
from prefork_lb.http.h2.mapping import INTERNAL_ERROR, ResponseMapper
from prefork_lb.http.request import HttpError, RequestHead
from prefork_lb.tls.connection import TlsConnection

if TYPE_CHECKING:
    from prefork_lb.http.exchange import ConnectionInfo
    from prefork_lb.http.h2.connection import H2Session
    from prefork_lb.http.routing import ServerRouter
    from prefork_lb.http.runtime import HttpRuntime

NO_ERROR: Final = 0
_CONTINUE: Final = [(b":status", b"100")]


class StreamIO:
    """The Client side of a stream; mixed into ``ClientConnection`` (or ``TlsConnection``).

    No ``__slots__`` here (mypy would refuse the attributes); the concrete classes declare
    them all, so no instance dict is ever made."""

    session: H2Session
    sid: int
    pieces: deque[tuple[bytes, int]]
    remote_ended: bool
    reset_code: int | None
    wake: Event
    glet: Any  # the greenlet running the stream, None once it finishes (rule 3)
    trailer_lines: bytes  # the client's trailers as field lines (mapping rule 9)
    body_left: int  # content-length still to come; -1 without one (rule 6)
    body_error: HttpError | None  # the body broke its content-length (rule 6)
    mapper: ResponseMapper
    request: RequestHead | HttpError
    if TYPE_CHECKING:  # ClientConnection's, for mypy
        body_done: bool
        continue_pending: bool
        body_timeout_s: float
        send_timeout_s: float
        keep_alive: bool

    def init_stream(
        self,
        session: H2Session,
        sid: int,
        request: RequestHead | HttpError,
        info: ConnectionInfo,
        router: ServerRouter,
        runtime: HttpRuntime,
        clock: Callable[[], float],
    ) -> None:
        """What ``ClientConnection.__init__`` sets, without its request parser."""
        me: Any = self
        me.sock = session.sock
        me.info = info
        me.router = router
        me.runtime = runtime
        me.clock = clock
        me.keep_alive = True
        me.idle = False
        me.idle_since = clock()
        me.head = None
        me.body_done = True
        me.body_timeout_s = 60.0
        me.send_timeout_s = 60.0
        me.continue_pending = False
        me.status_zone = None
        me.parkable = False
        me.linger_from = router.default
        me.lingering = False
        me.park_deadline = 0.0
        me.tunnel = None
        self.session = session
        self.sid = sid
        self.request = request
        self.pieces = deque()
        self.remote_ended = False
        self.reset_code = None
        self.wake = Event()
        self.glet = None
        self.trailer_lines = b""
        self.body_error = None
        self.body_left = -1
        if type(request) is RequestHead and request.content_length is not None:
            self.body_left = request.content_length
        method = request.method if type(request) is RequestHead else b"GET"
        self.mapper = ResponseMapper(method == b"HEAD")

    # ---- the stream's greenlet ----

    def run(self) -> None:
        me: Any = self
        self.glet = getcurrent()
        try:
            request = self.request
            if self.reset_code is not None:
                pass  # reset before it started (rule 3): no upstream request, no log line
            elif type(request) is RequestHead:
                me._handle(request)
            else:
                assert isinstance(request, HttpError)
                me._reject(request)
        except ClientGone:
            pass
        finally:
            self._finish()

    def _finish(self) -> None:
        """Rule 4, then the connection forgets the stream."""
        self.glet = None  # no reset is thrown in from here on (rule 3)
        session = self.session
        mapper = self.mapper
        if self.reset_code is None:
            if not mapper.ended:
                if mapper.head_sent and mapper.unframed:
                    try:
                        session.end_stream(self.sid)
                    except ClientGone:  # the connection broke meanwhile
                        self.reset_code = INTERNAL_ERROR
                else:
                    self._reset(INTERNAL_ERROR)
            if self.reset_code is None and not self.remote_ended:
                self._reset(NO_ERROR)
        session.stream_done(self)

    def _reset(self, code: int) -> None:
        if self.reset_code is None:
            self.reset_code = code
            self.session.reset_stream(self.sid, code)

    # ---- http/client.py's Client ----

    def read_body(self, block: bool) -> bytes | bool | None:
        if self.body_done:
            return True
        if self.body_error is not None:  # rule 6
            raise self.body_error
        pieces = self.pieces
        while not pieces:
            if self.reset_code is not None:
                raise ClientGone
            if self.body_error is not None:
                raise self.body_error
            if self.remote_ended:
                self.body_done = True
                return True
            if not block:
                return None
            if self.continue_pending:  # rule 5
                self.continue_pending = False
                self.session.send_headers(self.sid, _CONTINUE, False)
            wake = self.wake
            wake.clear()
            if not wake.wait(self.body_timeout_s):
                self._reset(INTERNAL_ERROR)
                raise ClientGone
        data, flow = pieces.popleft()
        self.continue_pending = False
        if not self.remote_ended:
            self.session.consumed(self.sid, flow)  # rule 1
        return data

    def send(self, data: bytes) -> None:
        if self.reset_code is not None:
            raise ClientGone
        try:
            fields, pieces, ended = self.mapper.feed(data)
        except ValueError:
            self._reset(INTERNAL_ERROR)
            raise ClientGone from None
        session = self.session
        if fields is not None:
            session.queue(session.h2.send_headers, self.sid, fields, ended and not pieces)
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            self._send_data(piece, ended and i == last)
        if ended and not pieces and fields is None:
            session.queue(session.h2.end_stream, self.sid)
        session.flush_for_stream()  # one send for the head and what the windows allowed
        if self.reset_code is not None:
            raise ClientGone

    def _send_data(self, data: bytes, end: bool) -> None:
        """Rule 2: within the windows, in frames of at most the chunk size; queued, sent
        by the caller's flush (or before waiting for a window)."""
        session = self.session
        send_data = session.h2.send_data
        view = memoryview(data)
        while True:
            if self.reset_code is not None:
                raise ClientGone
            room = session.window(self.sid)
            if room <= 0:
                session.flush_for_stream()
                wake = self.wake
                wake.clear()
                if not wake.wait(self.send_timeout_s):
                    self._reset(INTERNAL_ERROR)
                    raise ClientGone
                continue
            piece = view[:room]
            view = view[room:]
            done = not view
            session.queue(send_data, self.sid, piece.tobytes(), end and done)
            if done:
                return

    def abort(self) -> None:
        self.keep_alive = False
        self._reset(INTERNAL_ERROR)

    def tunnel_io(self) -> tuple[Any, bytes]:
        raise ClientGone  # no Upgrade over HTTP/2 (mapping rule 1 refuses it first)

    def hold_tunnel(self, tunnel: Any) -> None:
        pass

    def trailers(self) -> bytes:
        return self.trailer_lines

    # ---- ClientConnection's I/O, per stream ----

    def _finish_body(self) -> None:
        """An unread body is dropped when the stream ends (rule 4)."""

    def _linger(self) -> None:
        pass

    def _delay(self, delay_s: float) -> None:
        gevent.sleep(delay_s)

    def close(self) -> None:
        pass


_STREAM_SLOTS: Final = (
    "body_error",
    "body_left",
    "glet",
    "trailer_lines",
    "mapper",
    "pieces",
    "remote_ended",
    "request",
    "reset_code",
    "session",
    "sid",
    "wake",
)


class H2Stream(StreamIO, ClientConnection):
    __slots__ = _STREAM_SLOTS


class TlsH2Stream(StreamIO, TlsConnection):
    __slots__ = _STREAM_SLOTS
