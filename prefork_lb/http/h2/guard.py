"""Per-connection accounting of hostile HTTP/2 input (sans-IO; issue 20).

``Guard.receive(conn, data, now)`` is the connection loop's ``receive_data()``: it feeds h2
and calls ``Guard.check(events, now)`` on the events, which answers ``OK`` (0) or the GOAWAY
error code that ends the connection. ``configure(conn, limits)`` sets, once per connection,
the limits the ``h2`` library enforces itself. The guard only counts: no I/O, no clock of its
own (``now`` is the loop's cached clock), O(events) work, a handful of ints of state.

Rules (docs/http2.md has the measurements beside nginx 1.22's answers):
1. Rapid reset (CVE-2023-44487): client RST_STREAMs are counted per window of ``window_s``;
   over ``max_resets`` (default 2 x max_concurrent_streams: nginx refuses new streams past
   twice its limit in one read) -> ENHANCE_YOUR_CALM (11). A stream the client reset before
   its greenlet ran starts nothing (stream.py ``run``): no upstream request, no log line.
2. Control-frame floods (CVE-2019-9512/9515/9518: PING, SETTINGS, PRIORITY, empty DATA,
   WINDOW_UPDATE of less than ``TINY_WINDOW`` bytes): over ``max_control`` per window ->
   ENHANCE_YOUR_CALM. Larger WINDOW_UPDATEs are not counted: a fast download legitimately
   sends one per half window (32 KiB with 64 KiB windows); 1-byte increments are a way to
   make the server work per byte (each wakes a stream, h2 ~6 us). Frames that
   ask for an answer (PING, SETTINGS ACK) cannot pile up either way: the loop writes
   ``data_to_send()`` before it reads again, so a client that does not read stops being read.
3. Header field and list sizes are mapping.py's (rule 2: GOAWAY ENHANCE_YOUR_CALM, nginx's
   Huffman-coded lengths); the guard does not check them again.
4. HPACK bombs (one big dynamic-table entry referenced by thousands of one-byte indexes):
   mapping.py sees a header list only once decoded, so the h2 library's HPACK decoder must
   stop first: ``configure`` bounds it at twice ``max_header_size`` (RFC 9113 list size:
   name + value + 32 per field; h2's own default, 64 KiB, would refuse lists a raised
   large_client_header_buffers allows). Over it: DenialOfServiceError, and h2 writes GOAWAY
   ENHANCE_YOUR_CALM itself, having decoded at most that many bytes.
5. Decoded header bytes per window over ``max_header_bytes`` (default max_header_size x
   max_concurrent_streams) -> ENHANCE_YOUR_CALM: HPACK amplification spread over many
   small streams, each under rule 4, is bounded too.
6. CONTINUATION floods (CVE-2024-27316 class): h2 buffers a header block until
   END_HEADERS and fails the connection with PROTOCOL_ERROR after 64 CONTINUATION frames
   (``h2.frame_buffer.CONTINUATION_BACKLOG``), frames being at most ``max_inbound_frame_size``
   (16 KiB, set here): at most ~1 MiB per connection, never decoded. The guard sees nothing
   of a header block before it ends, so this bound is h2's.
7. ``receive`` feeds h2 a read in slices of 16 KiB and checks after each, so a flood is cut
   within 16 KiB of its bound, not after a whole ``http2_recv_buffer_size`` read (256 KiB:
   ~6000 HEADERS + RST_STREAM pairs at ~50 us each in h2). Reads up to 16 KiB (every TLS
   record) take one call, as before.
8. The response encoder's dynamic table is capped at ``ENCODER_TABLE_MAX`` (4096, the RFC's
   initial size; nginx's encoder keeps at most 4096 too): h2 would size it to whatever the
   client's SETTINGS_HEADER_TABLE_SIZE says (up to 4 GiB) and keep every distinct response
   field in it for the connection's life. RFC 7541 4.2 lets the encoder use less than the
   peer allows; a smaller client setting is still followed (with the size update h2 sends).
   The server's encoder (encoder.py's FieldCacheEncoder, a CappedEncoder) indexes nothing
   at all, as nginx; the cap and the size updates stay for any other CappedEncoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    Event,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from hpack import Encoder

from prefork_lb.config.model import Http2Config

OK: Final = 0
ENHANCE_YOUR_CALM: Final = 11
FRAME_SIZE: Final = 16384  # SETTINGS_MAX_FRAME_SIZE we accept (the RFC's initial value)
SLICE: Final = 16384  # rule 7: bytes handed to h2 between two checks
ENCODER_TABLE_MAX: Final = 4096  # rule 8
TINY_WINDOW: Final = 1024  # rule 2: a WINDOW_UPDATE below this counts as a control frame
_CONTROL: Final = (PingReceived, PriorityUpdated, RemoteSettingsChanged, UnknownFrameReceived)


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """The bounds of one connection, derived from its address's default server's http2
    settings (``limits_of``: made once per distinct settings, then cached)."""

    max_header_size: int = 32768
    max_resets: int = 256
    max_control: int = 1000
    max_header_bytes: int = 32768 * 128
    window_s: float = 1.0

    @classmethod
    def of(cls, max_header_size: int, max_concurrent_streams: int) -> GuardLimits:
        """From the server's http2 settings (rules 1, 4, 5)."""
        return cls(
            max_header_size=max_header_size,
            max_resets=2 * max_concurrent_streams,
            max_header_bytes=max_header_size * max_concurrent_streams,
        )


DEFAULT_LIMITS: Final = GuardLimits()


@lru_cache(maxsize=64)
def limits_of(settings: Http2Config) -> GuardLimits:
    """A server's limits, made once per distinct settings (a frozen, hashable config)."""
    return GuardLimits.of(settings.max_header_size_bytes, settings.max_concurrent_streams)


class CappedEncoder(Encoder):
    """Rule 8: h2 sets ``header_table_size`` from the client's SETTINGS; never above the cap."""

    @property
    def header_table_size(self) -> int:
        return int(self.header_table.maxsize)

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.header_table.maxsize = value = min(value, ENCODER_TABLE_MAX)
        if self.header_table.resized:
            self.table_size_changes.append(value)


def configure(
    conn: H2Connection, limits: GuardLimits = DEFAULT_LIMITS, encoder: CappedEncoder | None = None
) -> None:
    """The limits h2 enforces itself (rules 4, 6 and 8); call once, before the connection
    sends or receives anything. ``encoder``: a CappedEncoder subclass's instance to use
    (the server's is encoder.py's FieldCacheEncoder)."""
    conn.decoder.max_header_list_size = 2 * limits.max_header_size
    conn.max_inbound_frame_size = FRAME_SIZE
    conn.encoder = encoder if encoder is not None else CappedEncoder()


class Guard:
    """The counters of one connection (rules 1, 2, 5; ``receive``: rule 7)."""

    __slots__ = ("_control", "_header_bytes", "_resets", "_window_start", "limits", "reason")

    def __init__(self, limits: GuardLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._window_start = 0.0
        self._resets = 0
        self._control = 0
        self._header_bytes = 0
        self.reason = ""  # why the last non-OK answer was given, for the error log

    def receive(self, conn: H2Connection, data: bytes, now: float) -> tuple[list[Event], int]:
        """``conn.receive_data(data)`` in slices of ``SLICE`` bytes with ``check`` after each:
        the events and ``OK`` or the GOAWAY code (rule 7). h2's ProtocolError propagates."""
        if len(data) <= SLICE:
            events = conn.receive_data(data)
            return events, self.check(events, now)
        events = []
        for start in range(0, len(data), SLICE):
            batch = conn.receive_data(data[start : start + SLICE])
            events += batch
            code = self.check(batch, now)
            if code != OK:
                return events, code
        return events, OK

    def check(self, events: Iterable[object], now: float) -> int:
        """``OK``, or the GOAWAY error code that ends the connection (``reason`` says why)."""
        lim = self.limits
        if now - self._window_start >= lim.window_s:
            self._window_start = now
            self._resets = self._control = self._header_bytes = 0
        for event in events:
            if isinstance(event, (RequestReceived, TrailersReceived)):
                for name, value in event.headers:
                    self._header_bytes += len(name) + len(value)
            elif isinstance(event, DataReceived):
                if not event.flow_controlled_length and event.stream_ended is None:
                    self._control += 1
            elif isinstance(event, StreamReset):
                if event.remote_reset:
                    self._resets += 1
            elif isinstance(event, WindowUpdated):
                if event.delta < TINY_WINDOW:
                    self._control += 1
            elif isinstance(event, _CONTROL):
                self._control += 1
        if self._resets > lim.max_resets:
            self.reason = f"client reset too many streams ({self._resets} in {lim.window_s:g}s)"
            return ENHANCE_YOUR_CALM
        if self._control > lim.max_control:
            self.reason = f"http2 flood detected ({self._control} control frames in {lim.window_s:g}s)"
            return ENHANCE_YOUR_CALM
        if self._header_bytes > lim.max_header_bytes:
            self.reason = f"client sent too many header bytes ({self._header_bytes} in {lim.window_s:g}s)"
            return ENHANCE_YOUR_CALM
        return OK
