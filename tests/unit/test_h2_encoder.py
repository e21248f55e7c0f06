"""encoder.py: response header blocks without the dynamic table, cached per field.

Decoded with the hpack library's own decoder (what the h2 library as a client, and so
curl-like peers, run): catches a wrong representation, a field leaking into the client's
dynamic table, a missing table size update, and an unbounded cache."""

from __future__ import annotations

from hpack import Decoder

from prefork_lb.http.h2 import encoder
from prefork_lb.http.h2.encoder import CACHE_MAX, FieldCacheEncoder, encode_field

FIELDS = [
    (b":status", b"200"),
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Mon, 07 Dec 2026 19:40:00 GMT"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"2"),
    (b"x-odd", b"\x01\xff bytes \x7f"),
    (b"set-cookie", b"a=b; Path=/"),
]


def test_round_trip_and_nothing_indexed() -> None:
    enc, dec = FieldCacheEncoder(), Decoder()
    first = enc.encode(FIELDS)
    assert dec.decode(first, raw=True) == FIELDS
    assert enc.encode(FIELDS) == first  # the same bytes again: no table state involved
    assert dec.decode(first, raw=True) == FIELDS
    assert len(dec.header_table.dynamic_entries) == 0


def test_representations_as_nginx() -> None:
    assert encode_field(b":status", b"200") == b"\x88"  # static index 8
    # name index 54 (server) > 15: the 4-bit prefix continues; literal without indexing
    assert encode_field(b"server", b"x")[:2] == b"\x0f\x27"
    assert encode_field(b"x-a", b"b")[0] == 0x00  # new name, without indexing


def test_table_size_update_sent_once() -> None:
    enc, dec = FieldCacheEncoder(), Decoder()
    dec.decode(enc.encode(FIELDS[:2]), raw=True)
    enc.header_table_size = 0  # the client's SETTINGS_HEADER_TABLE_SIZE = 0
    block = enc.encode(FIELDS[:2])
    assert block[0] == 0x20  # dynamic table size update to 0 first
    assert dec.decode(block, raw=True) == FIELDS[:2]
    assert dec.header_table.maxsize == 0
    assert enc.encode(FIELDS[:2])[0] != 0x20


def test_cache_bounded() -> None:
    enc, dec = FieldCacheEncoder(), Decoder()
    for i in range(CACHE_MAX + 10):
        field = [(b"etag", b'"%d"' % i)]
        assert dec.decode(enc.encode(field), raw=True) == field
    assert len(encoder._CACHE) <= CACHE_MAX
