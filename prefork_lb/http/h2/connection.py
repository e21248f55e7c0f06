"""An HTTP/2 client connection (gevent shell over the sans-IO ``h2`` library, issue 20).

The connection's greenlet reads, feeds ``h2`` and dispatches its events; every stream runs
the HTTP/1.1 pipeline in a greenlet of its own (``stream.py``). ``h2`` is only ever called
between two yields, so its state is consistent for every greenlet.

Rules:
1. Writing: whoever changed ``h2``'s state calls ``flush``; one greenlet at a time sends
   (``_flushing``), looping until nothing is left, so frames never interleave. A send that
   fails or takes longer than ``send_timeout`` ends the connection. The reader may be
   that greenlet (its own frames: ACKs, WINDOW_UPDATEs): while the client reads nothing
   it stops reading too, until ``send_timeout``.
   Streams do not write themselves (``flush_later``): the frames they queue are written by
   one callback on the hub after every greenlet woken in that loop iteration has run, so
   the responses of streams completing together leave in one TLS record and one send
   (rather than one each: the send and the record cost ~15% of a small response's CPU).
   That callback only sends what the socket takes at once; a remainder (``_pending_out``,
   always sent first) is finished by a greenlet with the usual ``flush``. A stream that
   queued more than ``OUT_HIGH_WATER`` bytes since the last write flushes itself and
   waits, as before (the backpressure that bounds what waits in memory).
2. Streams: a HEADERS opening a stream while ``http2_max_concurrent_streams`` streams are
   being processed is answered RST_STREAM REFUSED_STREAM (7), per stream, as nginx. The
   SETTINGS frame advertises the limit, while ``h2``'s own check (which would end the
   whole connection) is kept at ``H2_STREAM_CEILING``.
3. Receive windows: the connection window is opened to 2^31-1 at once (as nginx) and
   topped up once half of it was used (DATA of reset streams included); each stream's
   window (``http2_body_preread_size``, 64k) is reopened only as its body is consumed
   (stream.py rule 1). So a stream buffers at most its window, and a slow upstream never
   stops the other streams' uploads.
4. Idle: with no stream in progress, a connection idle for ``http2_idle_timeout`` (from
   the end of its last stream) gets GOAWAY NO_ERROR and is closed. While streams run
   there is no connection-level read timeout (each stream has nginx's per-operation
   timeouts). When the last stream ends the reader's wait is restarted (``_Rearm``
   thrown into it) with the idle timeout; ``IDLE_CHECK_S`` bounds a busy wait anyway.
   With no stream in progress it counts as idle in the zone (the API's
   ``connections.idle``), as an HTTP/1.1 connection between requests.
5. Graceful shutdown (reload, QUIT): ``close_if_idle`` sends GOAWAY NO_ERROR naming the
   last stream accepted, once; streams in progress finish, later streams are refused;
   the connection closes when none is left. h2's ``close_connection`` would stop every
   stream, so this GOAWAY frame is written beside h2's output.
6. A protocol error found by ``h2`` gets its GOAWAY (h2 queues it); ``guard.Guard`` is
   asked after every read and may end the connection with its GOAWAY code; header limits
   (mapping rule 2) end it with ENHANCE_YOUR_CALM. Streams in progress then fail with
   ClientGone (499).
7. ``keepalive_requests`` (nginx >= 1.19.7 applies it to HTTP/2): the stream that reaches
   it is served and followed by a graceful GOAWAY (rule 5). The value is the default
   server's (its first location's, where the server-level value is inherited).
8. A frame longer than the advertised SETTINGS_MAX_FRAME_SIZE (16k) is refused once more
   than one read of it is buffered (GOAWAY FRAME_SIZE_ERROR): h2 checks the length only
   when the whole frame has arrived, so a client declaring 16 MiB could make it buffer
   that much per connection.
9. Parking (as HTTP/1.1's, http/connection.py rule 6): a ``parkable`` connection with no
   stream, nothing buffered in h2 either way and no GOAWAY sent, idle for
   ``PARK_AFTER_S``, returns from ``serve`` with True; the worker watches its socket
   without a greenlet and runs ``serve`` again when it is readable, or calls ``close``
   (GOAWAY first, written without waiting) at ``http2_idle_timeout``. The h2 state
   (~10 KiB) stays; the greenlet (~10 KiB) goes. It stays counted as idle meanwhile.
10. Content-length (mapping rule 6): h2's own check of a request body against its
   content-length would end the whole connection (GOAWAY PROTOCOL_ERROR). It is turned
   off (``_Stream``: h2 makes its stream objects as HEADERS arrive, before this loop sees
   the event, so the check must be gone from the start) and done here instead: DATA
   beyond the length ("client intended to send body data larger than declared") or
   END_STREAM short of it ("client prematurely closed stream") fail that stream only
   (stream rule 6: 400, as nginx), its DATA dropped (and its window reopened).
11. Lingering close after an error GOAWAY (rule 6, 8; h2's own): closing a socket with
   unread input makes the kernel send RST, and a client whose RST arrives before it read
   the GOAWAY loses it (so a flooding client never learns why). So, as nginx (its HTTP/2
   lingering close, 1.19.1+) and as http/connection.py rule 7: FIN after the GOAWAY, then
   read and discard (no h2, no guard) until the client closes, at most the server's
   ``lingering_timeout`` per wait and ``min(lingering_time, LINGER_MAX_S)`` in all;
   ``lingering_close = "off"`` closes at once. The streams have already failed by then.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Final

from gevent import getcurrent
from gevent.event import Event
from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream as H2Stream_
from hyperframe.frame import GoAwayFrame

from prefork_lb.http.client import ClientGone
from prefork_lb.http.exchange import ConnectionInfo
from prefork_lb.http.h2.encoder import FieldCacheEncoder
from prefork_lb.http.h2.guard import OK, Guard, configure, limits_of
from prefork_lb.http.h2.mapping import (
    REFUSED_STREAM,
    ConnectionError_,
    StreamError,
    map_request,
    map_trailers,
)
from prefork_lb.http.h2.stream import H2Stream, StreamIO, TlsH2Stream
from prefork_lb.http.request import HttpError
from prefork_lb.netio import ClientSocket, recv, send_all

if TYPE_CHECKING:
    from prefork_lb.http.routing import ServerRouter
    from prefork_lb.http.runtime import HttpRuntime

log = logging.getLogger("prefork_lb.error")

# _open copies a ConnectionInfo field by field: a field added there must be added here too
assert [f.name for f in fields(ConnectionInfo)] == [
    "remote_addr", "remote_port", "server_addr", "server_port", "connection_id", "requests", "tls",
    "realip_remote_addr",
], "ConnectionInfo changed: update H2Session._open's copy"  # fmt: skip

MAX_WINDOW: Final = 2**31 - 1
H2_STREAM_CEILING: Final = 2**16  # rule 2: h2's own limit, far above any advertised one
IDLE_CHECK_S: Final = 5.0  # rule 4
OUT_HIGH_WATER: Final = 256 * 1024  # rule 1's backpressure
PARK_AFTER_S: Final = 1.0  # rule 9, as HTTP/1.1's (http/connection.py rule 6)
LINGER_MAX_S: Final = 5.0  # rule 11: a hostile client is not read for 30 s
CLOSE_WAIT_S: Final = 1.0  # after our GOAWAY, with no stream left: the client's FIN awaited
NO_ERROR: Final = 0
FRAME_SIZE_ERROR: Final = 6


class _Rearm(Exception):
    """Thrown into the reader's recv wait (rule 4): wait again with the idle timeout."""


class _Settings(Settings):
    """Rule 2: advertise ``max_concurrent_streams`` but let h2 count to the ceiling."""

    @property
    def max_concurrent_streams(self) -> int:
        return H2_STREAM_CEILING

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[SettingCodes.MAX_CONCURRENT_STREAMS] = value


class _Stream(H2Stream_):
    """Rule 10: h2's stream, without its connection-level content-length check."""

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        self._actual_content_length += length


class _Connection(H2Connection):
    """Rule 10: h2's connection, making ``_Stream``s (a class swap: same layout)."""

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream_:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _Stream
        return stream


class H2Session:
    __slots__ = (
        "_drained",
        "_extra",
        "_flush_scheduled",
        "_flushing",
        "_pending_out",
        "_spawn",
        "_unsent",
        "_waiting",
        "broken",
        "clock",
        "closing",
        "goaway_sent",
        "guard",
        "h2",
        "idle",
        "idle_since",
        "info",
        "initial",
        "last_sid",
        "linger",
        "max_requests",
        "park_deadline",
        "parkable",
        "parked",
        "router",
        "runtime",
        "send_timeout_s",
        "settings",
        "sock",
        "started",
        "streams",
        "verify",
    )

    def __init__(
        self,
        sock: ClientSocket,
        info: ConnectionInfo,
        router: ServerRouter,
        runtime: HttpRuntime,
        clock: Callable[[], float],
        spawn: Callable[..., Any],
        verify: str | None = None,
    ) -> None:
        """``verify``: None for h2c, else the TLS address's ssl_verify_client."""
        self.sock = sock
        self.info = info
        self.router = router
        self.runtime = runtime
        self.clock = clock
        self._spawn = spawn
        self.verify = verify
        self.settings = settings = router.default.http2_settings
        locations = router.default.locations
        self.max_requests = locations[0].keepalive_requests if locations else 1000
        self.send_timeout_s = 60.0
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,  # mapping rule 1: stream errors, not h2's GOAWAY
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        h2 = self.h2 = _Connection(config)
        h2.local_settings = _Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: settings.body_preread_size_bytes,
                SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_size_bytes,
            },
        )
        # what SETTINGS advertises is also what the HPACK decoder accepts: a larger list
        # (an HPACK bomb: one big field referenced many times) is GOAWAY 11 as it inflates
        h2.decoder.max_header_list_size = settings.max_header_size_bytes
        self.streams: dict[int, StreamIO] = {}
        self.guard = Guard(limits_of(settings))
        configure(h2, self.guard.limits, FieldCacheEncoder())  # encoder.py: no dynamic table
        self.last_sid = 0
        self.goaway_sent = False
        self.closing = False  # the client sent GOAWAY, or we did: no new streams
        self.broken = False
        self.linger = False  # an error GOAWAY went out: lingering close (rule 11)
        self.idle = False  # counted in the zone's idle connections (rule 4)
        self.idle_since = clock()
        self._flushing: Any = None  # the greenlet sending (rule 1)
        self._drained = Event()  # set whenever no send is in progress
        self._drained.set()
        self._unsent = 0  # DATA bytes queued in h2 since the sender took its last batch
        self._flush_scheduled = False  # flush_later's callback is queued (rule 1)
        self._pending_out = b""  # taken from h2, not yet sent: goes before anything else
        self._waiting: Any = None  # the reader, while it waits in recv (rule 4)
        self._extra = b""
        self.initial = b""  # bytes already read from the socket, fed to h2 first
        self.started = False  # serve ran once (the connection preface is out)
        self.parkable = False  # set by the worker (rule 9)
        self.park_deadline = 0.0  # while parked: when the idle timeout expires
        self.parked = False

    # ---- the connection's greenlet ----

    def serve(self) -> bool:
        """Serve until the connection ends (False) or is parked (True, rule 9)."""
        h2 = self.h2
        if not self.started:
            self.started = True
            h2.initiate_connection()
            h2.increment_flow_control_window(MAX_WINDOW - h2.inbound_flow_control_window)
            self._count_idle(True)
        size = self.settings.recv_buffer_size_bytes
        parked = self.parked = False
        try:
            self._flush_quietly()
            while not self.broken:
                if self.closing and not self.streams:
                    break
                idle = not self.streams
                # the wait is re-armed from here after every read or timeout: the last
                # stream may end while this greenlet waits (rule 4)
                if not idle:
                    timeout_s = min(self.settings.idle_timeout_s, IDLE_CHECK_S)
                else:
                    limit_s = CLOSE_WAIT_S if self.closing else self.settings.idle_timeout_s
                    timeout_s = self.idle_since + limit_s - self.clock()
                    if timeout_s <= 0:
                        self.goaway(NO_ERROR)
                        break
                park = idle and self.parkable and not self.closing and timeout_s > PARK_AFTER_S
                if self.initial:  # the preface bytes accept.py read (its rule 2)
                    data, self.initial = self.initial, b""
                else:
                    self._waiting = getcurrent()
                    try:
                        data = recv(self.sock, size, PARK_AFTER_S if park else timeout_s)
                    except _Rearm:
                        continue
                    except TimeoutError:
                        if park and self._parkable_now():
                            self.park_deadline = self.idle_since + self.settings.idle_timeout_s
                            parked = self.parked = True
                            return True
                        continue
                    except OSError:
                        break
                    finally:
                        self._waiting = None
                if not data:
                    break
                try:
                    events, code = self.guard.receive(h2, data, self.clock())
                except ProtocolError as e:
                    log.info("client sent invalid HTTP/2 data (%s), client: %s", e, self.info.remote_addr)
                    self.goaway_sent = self.linger = True
                    break
                if len(getattr(h2.incoming_buffer, "_data", b"")) > size + h2.max_inbound_frame_size + 9:
                    # rule 8: an overlong frame h2 would buffer whole (up to 16 MiB) first
                    log.info("client sent too large an HTTP/2 frame, client: %s", self.info.remote_addr)
                    self._close_with(FRAME_SIZE_ERROR)
                    break
                if code != OK:
                    log.info("%s (GOAWAY %d), client: %s", self.guard.reason, code, self.info.remote_addr)
                    self._close_with(code)
                    break
                self._dispatch(events)
                window = h2.inbound_flow_control_window
                if window < MAX_WINDOW // 2:  # rule 3: topped up, whoever's DATA it was
                    h2.increment_flow_control_window(MAX_WINDOW - window)
                self._flush_quietly()
        finally:
            if not parked:
                self._count_idle(False)
                self._flush_quietly()
                self._end_streams()
                if self.linger:
                    self._linger()
                self.close()
        return False

    def _linger(self) -> None:
        """Rule 11: FIN after the GOAWAY, then read and discard until the client closes."""
        cfg = self.router.default
        if cfg.lingering_close == "off" or cfg.lingering_time_s <= 0:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = self.clock() + min(cfg.lingering_time_s, LINGER_MAX_S)
        wait_s = cfg.lingering_timeout_s
        size = self.settings.recv_buffer_size_bytes
        while True:
            left_s = deadline - self.clock()
            if left_s <= 0:
                return
            try:
                if not recv(self.sock, size, min(wait_s, left_s) if wait_s > 0 else left_s):
                    return  # the client closed: it had every byte we sent
            except OSError:  # TimeoutError included
                return

    def _parkable_now(self) -> bool:
        """Rule 9: nothing in progress, nothing buffered either way."""
        return (
            not self.streams
            and self._flushing is None
            and not self._flush_scheduled
            and not self._pending_out
            and not self._extra
            and not self.initial
            and not getattr(self.h2.incoming_buffer, "_data", b"")
        )

    def unpark(self) -> None:
        """The worker stopped watching the parked connection (readable: ``serve`` runs
        again; or its idle timeout: ``close`` follows)."""

    def _goaway_parked(self) -> None:
        """Rule 9: a parked connection's idle timeout (on the hub, no greenlet): GOAWAY
        as rule 4's, written without waiting (a full socket loses it)."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_sid
        frame.error_code = NO_ERROR
        try:
            self.sock._sock.send(self._pending_out + self.h2.data_to_send() + frame.serialize())
        except OSError:
            pass

    def _count_idle(self, idle: bool) -> None:
        """Rule 4: the zone's count of idle connections (the API's ``connections.idle``)."""
        if idle != self.idle:
            self.idle = idle
            self.runtime.zone.mv[self.runtime.idle_cell] += 1 if idle else -1

    def _dispatch(self, events: list[Any]) -> None:
        streams = self.streams
        for ev in events:
            kind = type(ev)
            if kind is DataReceived:
                sid = ev.stream_id
                flow = ev.flow_controlled_length
                stream = streams.get(sid)
                if stream is not None and stream.reset_code is None:
                    if stream.body_left >= 0:  # rule 10
                        stream.body_left -= len(ev.data)
                        if stream.body_left < 0 or (ev.stream_ended is not None and stream.body_left):
                            self._body_mismatch(stream, flow)
                            continue
                    if ev.data:
                        stream.pieces.append((ev.data, flow))
                        stream.wake.set()
                    elif flow:
                        self.consumed(sid, flow)
            elif kind is RequestReceived:
                self._open(ev.stream_id, ev.headers, ev.stream_ended is not None)
            elif kind is StreamEnded:
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.remote_ended = True
                    if stream.body_left > 0 and stream.body_error is None:  # rule 10
                        self._body_mismatch(stream, 0)
                    stream.wake.set()
            elif kind is StreamReset:
                stream = streams.get(ev.stream_id)
                if stream is not None and stream.reset_code is None:
                    stream.reset_code = ev.error_code
                    stream.wake.set()
                    self._cancel(stream)
            elif kind is WindowUpdated:
                if ev.stream_id:
                    stream = streams.get(ev.stream_id)
                    if stream is not None:
                        stream.wake.set()
                else:
                    for stream in streams.values():
                        stream.wake.set()
            elif kind is RemoteSettingsChanged:
                for stream in streams.values():
                    stream.wake.set()
            elif kind is TrailersReceived:  # mapping rule 9; its StreamEnded follows
                stream = streams.get(ev.stream_id)
                if stream is not None and stream.reset_code is None:
                    lines = map_trailers(ev.headers, self.settings.max_header_size_bytes)
                    if isinstance(lines, bytes):
                        stream.trailer_lines = lines
                    elif isinstance(lines, StreamError):
                        stream.reset_code = lines.code
                        self.reset_stream(ev.stream_id, lines.code)
                        stream.wake.set()
                        self._cancel(stream)
                    else:
                        self._close_with(lines.code)
                        return
            elif kind is ConnectionTerminated:
                self.closing = True
            # Ping, priority, settings ACK: h2 answers them.

    def _body_mismatch(self, stream: StreamIO, flow: int) -> None:
        """Rule 10: the stream's body broke its content-length; the stream fails with 400."""
        if stream.body_error is None:
            short = stream.body_left > 0
            log.info(
                "client %s, stream %d, client: %s",
                "prematurely closed stream" if short else "intended to send body data larger than declared",
                stream.sid,
                self.info.remote_addr,
            )
            stream.body_error = HttpError(400, "request body does not match content-length")
            stream.pieces.clear()
            stream.wake.set()
        self.consumed(stream.sid, flow)

    def _open(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        settings = self.settings
        if self.closing:  # after a GOAWAY either way (rule 5)
            self.reset_stream(sid, REFUSED_STREAM)
            return
        if len(self.streams) >= settings.max_concurrent_streams:  # rule 2
            self.reset_stream(sid, REFUSED_STREAM)
            return
        mapped = map_request(
            fields, end_stream, settings.max_field_size_bytes, settings.max_header_size_bytes
        )
        if isinstance(mapped, StreamError):
            log.info("client sent %s, stream %d, client: %s", mapped.reason, sid, self.info.remote_addr)
            self.reset_stream(sid, mapped.code)
            return
        if isinstance(mapped, ConnectionError_):
            log.info("%s, client: %s", mapped.reason, self.info.remote_addr)
            self._close_with(mapped.code)
            return
        # the stream's own view of the connection: $connection_requests is this stream's
        # number (its _handle counts it), not whatever the connection reached by log time
        i = self.info  # a copy, made field by field (dataclasses.replace costs ~3 us)
        info = ConnectionInfo(
            i.remote_addr, i.remote_port, i.server_addr, i.server_port, i.connection_id,
            i.requests, i.tls, i.realip_remote_addr,
        )  # fmt: skip
        self.info.requests += 1
        stream: H2Stream | TlsH2Stream
        if self.verify is None:
            stream = H2Stream.__new__(H2Stream)
            stream.init_stream(self, sid, mapped, info, self.router, self.runtime, self.clock)
        else:
            tls_stream = TlsH2Stream.__new__(TlsH2Stream)
            tls_stream.init_stream(self, sid, mapped, info, self.router, self.runtime, self.clock)
            tls_stream.setup(False, self.verify)
            stream = tls_stream
        stream.remote_ended = end_stream
        self.streams[sid] = stream
        self.last_sid = sid
        self._count_idle(False)
        self._spawn(stream.run)
        if self.info.requests >= self.max_requests:  # rule 7
            self.goaway(NO_ERROR)

    def _rearm_reader(self) -> None:
        """Rule 4: the last stream ended while the reader waits with a busy connection's
        timeout; it starts its wait over as an idle one (idle timeout, parking)."""
        reader = self._waiting
        if reader is None:
            return

        def rearm() -> None:  # on the hub: only if it still waits in that recv
            if self._waiting is reader:
                reader.throw(_Rearm)

        self.sock.hub.loop.run_callback(rearm)

    def _cancel(self, stream: StreamIO) -> None:
        """Stream rule 3: end the reset stream's wait (upstream, delay) at once."""
        glet = stream.glet
        if glet is None:
            return

        def throw() -> None:  # on the hub: the stream may have moved on meanwhile
            if stream.glet is glet and self._flushing is not glet and glet is not getcurrent():
                glet.throw(ClientGone)

        self.sock.hub.loop.run_callback(throw)

    # ---- what streams call ----

    def stream_done(self, stream: StreamIO) -> None:
        self.streams.pop(stream.sid, None)
        if not self.streams:
            self.idle_since = self.clock()
            if not self.broken:
                self._count_idle(True)
                self._rearm_reader()
            if self.closing or self.goaway_sent:
                self.flush_now()
                self._wake_reader()
                return
        self.flush_later()

    def window(self, sid: int) -> int:
        try:
            room = self.h2.local_flow_control_window(sid)
        except (StreamClosedError, ProtocolError, KeyError):
            return 0
        return min(room, self.h2.max_outbound_frame_size, self.settings.chunk_size_bytes)

    def send_headers(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        self.queue(self.h2.send_headers, sid, fields, end)
        self.flush_for_stream()

    def end_stream(self, sid: int) -> None:
        self.queue(self.h2.end_stream, sid)
        self.flush_for_stream()

    def queue(self, method: Callable[..., Any], *args: Any) -> None:
        """An h2 call on behalf of a stream (sent by the next flush); a failure is the
        client's end (ClientGone)."""
        if self.broken:
            raise ClientGone
        try:
            method(*args)
        except (ProtocolError, StreamClosedError):
            raise ClientGone from None
        if method == self.h2.send_data:
            self._unsent += len(args[1])

    def flush_for_stream(self) -> None:
        """Rule 1, and its backpressure: while another greenlet's send is blocked (the
        client reads slowly), a stream that queued more than ``OUT_HIGH_WATER`` bytes
        since waits for that send (at most ``send_timeout``), so what waits in memory is
        bounded by the socket, not by the windows the client granted. Below that, the
        write is left to ``flush_later`` (rule 1: coalesced with the other streams')."""
        if self._unsent <= OUT_HIGH_WATER:
            self.flush_later()
            return
        try:
            self.flush()
        except OSError:
            raise ClientGone from None
        while self._flushing is not None and self._unsent > OUT_HIGH_WATER:
            drained = self._drained
            if not drained.wait(self.send_timeout_s) or self.broken:
                raise ClientGone
            try:
                self.flush()
            except OSError:
                raise ClientGone from None

    def reset_stream(self, sid: int, code: int) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (ProtocolError, StreamClosedError):
            return
        self.flush_later()

    def consumed(self, sid: int, flow: int) -> None:
        """Stream rule 1: reopen the stream's window by what the pipeline took."""
        if not flow:
            return
        try:
            self.h2.increment_flow_control_window(flow, stream_id=sid)
        except (ProtocolError, StreamClosedError):
            return
        self.flush_later()

    # ---- writing (rule 1) ----

    def flush_later(self) -> None:
        """Rule 1: what h2 holds is written by one callback on the hub once the greenlets
        woken in this loop iteration have run (a flush in progress sends it anyway)."""
        if self._flush_scheduled or self._flushing is not None or self.broken:
            return
        self._flush_scheduled = True
        self.sock.hub.loop.run_callback(self._flush_callback)

    def _flush_callback(self) -> None:
        """On the hub: send what the socket takes now; a greenlet finishes the rest."""
        self._flush_scheduled = False
        if self._flushing is not None or self.broken:
            return
        data = self._pending_out + self.h2.data_to_send()
        self._unsent = 0
        if self._extra:
            data, self._extra = data + self._extra, b""
        if not data:
            return
        try:
            sent: int = self.sock._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            self._pending_out = b""
            self._abort_socket()
            return
        # a TLS write that would block must be retried with the same bytes first
        self._pending_out = data[sent:]
        if self._pending_out:
            self._spawn(self._flush_quietly)

    def flush_now(self) -> None:
        """``flush`` for callers with nothing to raise into (a failure marks it broken)."""
        self._flush_quietly()

    def flush(self) -> None:
        if self._flushing is not None or self.broken:
            return
        self._flushing = getcurrent()
        self._drained.clear()
        try:
            while True:
                data = self.h2.data_to_send()
                self._unsent = 0
                if self._pending_out:
                    data, self._pending_out = self._pending_out + data, b""
                if self._extra:
                    data, self._extra = data + self._extra, b""
                if not data:
                    return
                send_all(self.sock, data, self.send_timeout_s)
        except OSError:
            self.broken = True
            self._abort_socket()
            raise
        finally:
            self._flushing = None
            self._drained.set()

    def _flush_quietly(self) -> None:
        """A failed send marks the connection broken (the loop ends); nothing to raise."""
        try:
            self.flush()
        except OSError:
            pass

    def goaway(self, code: int) -> None:
        """Rule 5: GOAWAY naming the last stream accepted, h2's state left open."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self.closing = True
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_sid
        frame.error_code = code
        self._extra += frame.serialize()
        try:
            self.flush()
        except OSError:
            pass

    def _close_with(self, code: int) -> None:
        """Rule 6: GOAWAY ``code`` and the end of the connection."""
        if not self.goaway_sent:
            self.goaway_sent = self.linger = True
            self.h2.close_connection(error_code=code, last_stream_id=self.last_sid)
        self.closing = True
        self.broken = True
        try:
            data, self._pending_out = self._pending_out + self.h2.data_to_send(), b""
            send_all(self.sock, data, self.send_timeout_s)
        except OSError:
            pass

    def _end_streams(self) -> None:
        """The connection is gone: every stream fails with ClientGone (rule 6)."""
        self.broken = True
        for stream in list(self.streams.values()):
            if stream.reset_code is None:
                stream.reset_code = NO_ERROR
            stream.wake.set()
            self._cancel(stream)  # waiting for its upstream: 499 now, as nginx

    def _wake_reader(self) -> None:
        """No stream left after a GOAWAY: FIN after our last frame; the reader ends at the
        client's FIN or after ``CLOSE_WAIT_S`` (closing with unread input would reset)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _abort_socket(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- what the worker calls ----

    def close_if_idle(self, idle_s: float, now: float) -> bool:
        """Rule 5 (the worker is draining)."""
        self.goaway(NO_ERROR)
        if self.streams:
            return False
        self._abort_socket()  # idle: the reader's recv ends now (its wait may be long)
        return True

    def abort(self) -> None:
        """The worker's shutdown timeout: every stream ends now, its upstream wait too."""
        self.broken = True
        for stream in list(self.streams.values()):
            stream.abort()
            self._cancel(stream)
        self._abort_socket()

    def close(self) -> None:
        if self.parked:  # rule 9: the worker closes a parked connection at its idle timeout
            self.parked = False
            self._goaway_parked()
            self._count_idle(False)
        try:
            self.sock.close()
        except OSError:
            pass
