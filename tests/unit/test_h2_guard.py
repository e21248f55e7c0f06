"""prefork_lb/http/h2/guard.py against a real (sans-IO) h2 server connection fed hand-made
frames: each hostile pattern of issue 20 is answered at its bound and not one step before."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import hpack
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from prefork_lb.config.model import Http2Config
from prefork_lb.http.h2.guard import ENHANCE_YOUR_CALM, OK, Guard, GuardLimits, configure, limits_of

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
REQUEST = [(":method", "GET"), (":scheme", "http"), (":authority", "localhost"), (":path", "/")]


def server(limits: GuardLimits | None = None) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    if limits is not None:
        configure(conn, limits)
    conn.initiate_connection()
    conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 100000})
    conn.receive_data(PREFACE + SettingsFrame(0, flags=["ACK"]).serialize())
    conn.data_to_send()
    return conn


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes([*out, value])


def literal(name: bytes, value: bytes, indexed: bool = False) -> bytes:
    return (
        (b"\x40" if indexed else b"\x00") + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value
    )


def frames(*fs: Frame) -> bytes:
    return b"".join(f.serialize() for f in fs)


def goaway_code(conn: h2.connection.H2Connection) -> int:
    data = conn.data_to_send()
    f, _ = Frame.parse_frame_header(memoryview(data[-17:-8]))
    assert isinstance(f, GoAwayFrame), data[-17:]
    f.parse_body(memoryview(data[-8:]))
    return int(f.error_code)


def rapid_resets(encoder: hpack.Encoder, first: int, count: int) -> bytes:
    block = encoder.encode(REQUEST)
    out = []
    for sid in range(first, first + 2 * count, 2):
        out.append(HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        out.append(RstStreamFrame(sid, error_code=8).serialize())
    return b"".join(out)


def test_rapid_reset_bound_and_window() -> None:
    """Catches: resets not counted, the bound off by one, or a window that never restarts
    (a client cancelling 256 streams a second would be cut after a few seconds)."""
    conn, guard, enc = server(), Guard(GuardLimits(max_resets=256)), hpack.Encoder()
    events = conn.receive_data(rapid_resets(enc, 1, 256))
    assert guard.check(events, now=10.0) == OK
    events = conn.receive_data(rapid_resets(enc, 513, 256))
    assert guard.check(events, now=11.5) == OK  # a new window
    events = conn.receive_data(rapid_resets(enc, 1025, 1))
    assert guard.check(events, now=11.6) == ENHANCE_YOUR_CALM
    assert "reset too many streams" in guard.reason


def test_client_reset_counted_alone() -> None:
    """Catches: a client reset of a stream opened in an earlier batch not counted."""
    conn, enc = server(), hpack.Encoder()
    conn.receive_data(frames(HeadersFrame(1, enc.encode(REQUEST), flags=["END_HEADERS"])))
    events = conn.receive_data(frames(RstStreamFrame(1, error_code=8)))
    guard = Guard(GuardLimits(max_resets=0))
    assert guard.check(events, now=1.0) == ENHANCE_YOUR_CALM


@pytest.mark.parametrize(
    "frame",
    [
        PingFrame(0, opaque_data=b"12345678"),
        SettingsFrame(0),
        PriorityFrame(3, depends_on=0, stream_weight=16),
    ],
    ids=["ping", "settings", "priority"],
)
def test_control_flood(frame: Frame) -> None:
    """Catches: a control frame type not counted (CVE-2019-9512/9515 class)."""
    conn, guard = server(), Guard(GuardLimits(max_control=1000))
    assert guard.check(conn.receive_data(frame.serialize() * 1000), now=5.0) == OK
    assert guard.check(conn.receive_data(frame.serialize()), now=5.1) == ENHANCE_YOUR_CALM
    assert "flood" in guard.reason


def test_empty_data_counted_real_data_not() -> None:
    """Catches: empty DATA floods (CVE-2019-9518) passing, or an upload's DATA counted as control."""
    conn, enc = server(), hpack.Encoder()
    conn.receive_data(
        frames(HeadersFrame(1, enc.encode([*REQUEST[:3], (":path", "/u")]), flags=["END_HEADERS"]))
    )
    guard = Guard(GuardLimits(max_control=10))
    assert guard.check(conn.receive_data(frames(*[DataFrame(1, b"x" * 100) for _ in range(50)])), 1.0) == OK
    assert (
        guard.check(conn.receive_data(frames(*[DataFrame(1, b"") for _ in range(11)])), 1.0)
        == ENHANCE_YOUR_CALM
    )


def test_hpack_bomb_stopped_by_configured_decoder() -> None:
    """An entry of 4000 bytes in the dynamic table referenced 4000 times (4 KiB on the wire,
    16 MB decoded). Catches: ``configure`` not setting the decoder's list bound (twice the
    server's max_header_size; h2's own default is 64 KiB), or h2 answering anything but
    GOAWAY 11. The list size counts 32 bytes per field: the request's own fields are 174, a
    reference 4038, so 8 references fit in 32 KiB and 16 in 64 KiB, one more does not."""
    base = b"\x82\x86\x84\x01" + hpack_int(9, 7) + b"localhost"
    insert = literal(b"x-bomb", b"b" * 4000, indexed=True)
    for limits, fits in ((None, 16), (GuardLimits(max_header_size=16384), 8)):
        conn = server(limits)
        conn.receive_data(frames(HeadersFrame(1, base + insert, flags=["END_HEADERS", "END_STREAM"])))
        block = base + bytes([0x80 | 62]) * fits
        conn.receive_data(frames(HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"])))
        with pytest.raises(h2.exceptions.DenialOfServiceError):
            conn.receive_data(frames(HeadersFrame(5, block + b"\xbe", flags=["END_HEADERS", "END_STREAM"])))
        assert goaway_code(conn) == ENHANCE_YOUR_CALM
    conn = server(GuardLimits())
    conn.receive_data(frames(HeadersFrame(1, base + insert, flags=["END_HEADERS", "END_STREAM"])))
    with pytest.raises(h2.exceptions.DenialOfServiceError):  # the bomb itself: stopped while decoding
        conn.receive_data(frames(HeadersFrame(3, base + b"\xbe" * 4000, flags=["END_HEADERS", "END_STREAM"])))


def test_header_bytes_per_window() -> None:
    """Catches: amplification spread over many streams, each under the list bound, unbounded."""
    conn, enc = server(), hpack.Encoder()
    guard = Guard(GuardLimits(max_header_bytes=100_000))
    headers = [*REQUEST, ("x-a", "v" * 6000)]
    sid, verdict = 1, OK
    for _ in range(16):  # 16 x ~6 KB = ~97 KB: fine
        events = conn.receive_data(
            frames(HeadersFrame(sid, enc.encode(headers), flags=["END_HEADERS", "END_STREAM"]))
        )
        verdict = guard.check(events, 2.0)
        sid += 2
        assert verdict == OK
    events = conn.receive_data(
        frames(HeadersFrame(sid, enc.encode(headers), flags=["END_HEADERS", "END_STREAM"]))
    )
    assert guard.check(events, 2.0) == ENHANCE_YOUR_CALM


def test_continuation_flood_bounded_by_h2() -> None:
    """Catches: an h2 upgrade dropping its CONTINUATION backlog, or ``configure`` not capping
    the frame size (64 frames x 16 KiB is the most one header block may buffer)."""
    conn, enc = server(GuardLimits()), hpack.Encoder()
    conn.receive_data(frames(HeadersFrame(1, enc.encode(REQUEST))))
    fragment = literal(b"x-f", b"v" * 1000)
    conn.receive_data(frames(*[ContinuationFrame(1, fragment) for _ in range(63)]))
    with pytest.raises(h2.exceptions.ProtocolError):
        conn.receive_data(frames(*[ContinuationFrame(1, fragment) for _ in range(2)]))
    conn = server(GuardLimits())
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        conn.receive_data(frames(HeadersFrame(1, enc.encode(REQUEST) + literal(b"x", b"v" * 16384))))


def test_receive_cuts_a_flood_within_a_slice() -> None:
    """Catches: a whole 256 KiB read handed to h2 before the guard looks (rule 7): ~6000
    rapid-reset streams processed (~0.3 s of CPU) where the bound is 256."""
    conn, enc, guard = server(), hpack.Encoder(), Guard(GuardLimits(max_resets=256))
    data = rapid_resets(enc, 1, 6000)
    assert len(data) > 150_000
    events, code = guard.receive(conn, data, now=1.0)
    assert code == ENHANCE_YOUR_CALM
    opened = conn.highest_inbound_stream_id // 2 + 1
    assert 256 < opened <= 256 + 16384 // 30, opened  # cut within one slice past the bound
    assert len(events) <= 3 * opened  # request, end, reset per stream: none beyond the cut


def test_receive_small_read_is_one_call() -> None:
    """A read within one slice gives the same events as receive_data itself."""
    conn, enc = server(), hpack.Encoder()
    events, code = Guard().receive(
        conn, frames(HeadersFrame(1, enc.encode(REQUEST), flags=["END_HEADERS"])), 1.0
    )
    assert code == OK and [type(e).__name__ for e in events] == ["RequestReceived"]


def _responses(conn: h2.connection.H2Connection, client: hpack.Decoder, first: int, count: int) -> None:
    """``count`` requests answered with distinct field values; the client decodes every
    response (the encoder's table and the client's mirror must agree)."""
    enc = hpack.Encoder()
    for sid in range(first, first + 2 * count, 2):
        conn.receive_data(frames(HeadersFrame(sid, enc.encode(REQUEST), flags=["END_HEADERS", "END_STREAM"])))
        value = b"v%d" % sid * 40
        conn.send_headers(sid, [(b":status", b"200"), (b"x-unique", value)], end_stream=True)
        data = conn.data_to_send()
        while data:
            f, length = Frame.parse_frame_header(memoryview(data[:9]))
            f.parse_body(memoryview(data[9 : 9 + length]))
            data = data[9 + length :]
            if isinstance(f, HeadersFrame):
                assert (b"x-unique", value) in list(client.decode(f.data, raw=True))


def test_response_encoder_table_capped() -> None:
    """A client advertising SETTINGS_HEADER_TABLE_SIZE 2^31-1. Catches: h2 sizing the response
    encoder's table by it, so every distinct response field stays in memory for the
    connection's life (measured without the cap: 500 KB after 2000 small responses)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    configure(conn, GuardLimits())
    conn.initiate_connection()
    huge = {SettingsFrame.HEADER_TABLE_SIZE: 2**31 - 1}
    conn.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0, settings=huge).serialize())
    conn.data_to_send()
    client = hpack.Decoder()
    client.max_allowed_table_size = 2**31 - 1  # what it advertised
    _responses(conn, client, 1, 500)
    assert conn.encoder.header_table_size == 4096
    assert conn.encoder.header_table._current_size <= 4096


def test_response_encoder_follows_a_smaller_client_table() -> None:
    """Catches: the cap ignoring a client that allows less than 4096 (its decoder would then
    be sent references to entries it never kept)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    configure(conn, GuardLimits())
    conn.initiate_connection()
    small = {SettingsFrame.HEADER_TABLE_SIZE: 256}
    conn.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0, settings=small).serialize())
    conn.data_to_send()
    client = hpack.Decoder()
    client.max_allowed_table_size = 256  # the encoder must signal the shrink before using the table
    _responses(conn, client, 1, 50)
    assert conn.encoder.header_table_size == 256
    assert client.header_table._current_size <= 256


def test_tiny_window_updates_counted_large_ones_not() -> None:
    """Catches: 1-byte WINDOW_UPDATE floods passing, or a download's ordinary updates (half a
    64 KiB window each) counted as control frames."""
    conn, guard = server(), Guard(GuardLimits(max_control=1000))
    big = WindowUpdateFrame(0, window_increment=32768).serialize()
    assert guard.check(conn.receive_data(big * 2000), now=1.0) == OK
    tiny = WindowUpdateFrame(0, window_increment=1023).serialize()
    assert guard.check(conn.receive_data(tiny * 1000), now=1.0) == OK
    assert guard.check(conn.receive_data(tiny), now=1.0) == ENHANCE_YOUR_CALM


def test_limits_follow_the_servers_http2_settings() -> None:
    """Catches: the guard built with fixed defaults whatever http2_max_concurrent_streams and
    large_client_header_buffers say (and one GuardLimits per connection instead of per settings)."""
    cfg = Http2Config(max_concurrent_streams=10, max_header_size_bytes=16384)
    limits = limits_of(cfg)
    assert (limits.max_resets, limits.max_header_size, limits.max_header_bytes) == (20, 16384, 163840)
    assert limits_of(Http2Config(max_concurrent_streams=10, max_header_size_bytes=16384)) is limits
    assert limits_of(Http2Config()) == GuardLimits.of(32768, 128) == GuardLimits(max_resets=256)
