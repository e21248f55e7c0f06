"""The response header encoder: HPACK without the dynamic table, per field cached (issue 20).

h2's default HPACK encoder indexes every response field into the connection's dynamic
table, searching and updating the table per field (~8 us for a small response's four
fields). nginx never indexes response fields: each is a static-table index or a literal
"without indexing" (RFC 7541 6.2.2), Huffman-coded. Done that way, a field's encoding
depends on the field alone, so it can be cached.

Rules:
1. A (name, value) that is in the static table whole is sent as its index (``:status
   200`` is one byte); a name in the static table gets its index and a literal value;
   anything else a literal name and value. Never "incremental indexing": the dynamic table
   stays empty for the connection's life, and the client's decoder keeps nothing of ours.
2. Encodings are cached per worker in ``_CACHE`` (a plain dict keyed by the field), which
   is emptied whenever it reaches ``CACHE_MAX`` entries: varying values (Date, lengths,
   cookies) cost at most that many entries, and bytes already encoded are never reused
   for another field.
3. Table size updates are still sent (``guard.CappedEncoder``'s accounting, rule 8 there):
   a client that lowers SETTINGS_HEADER_TABLE_SIZE gets the update RFC 7541 4.2 requires at
   the start of the next block, even though nothing is ever indexed.
4. Values are the pipeline's bytes; names are lower-case already (mapping rule 10). The
   header block is the same bytes whichever connection sends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

from prefork_lb.http.h2.guard import CappedEncoder

CACHE_MAX: Final = 4096  # rule 2
_HUFFMAN: Final = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_STATIC_FULL: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAME: Final[dict[bytes, int]] = {}
for _i, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FULL.setdefault((_name, _value), _i)
    _STATIC_NAME.setdefault(_name, _i)
_CACHE: Final[dict[tuple[bytes, bytes], bytes]] = {}


def _string(data: bytes) -> bytes:
    """An HPACK string literal: Huffman-coded when that is shorter (as nginx)."""
    coded = _HUFFMAN.encode(data)
    if len(coded) < len(data):
        length = encode_integer(len(coded), 7)
        length[0] |= 0x80
        return bytes(length) + coded
    return bytes(encode_integer(len(data), 7)) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """Rule 1: one field's representation, never indexing it."""
    index = _STATIC_FULL.get((name, value))
    if index is not None:
        prefix = encode_integer(index, 7)
        prefix[0] |= 0x80
        return bytes(prefix)
    index = _STATIC_NAME.get(name)
    if index is not None:
        return bytes(encode_integer(index, 4)) + _string(value)  # 0000xxxx: without indexing
    return b"\x00" + _string(name) + _string(value)


class FieldCacheEncoder(CappedEncoder):
    """h2's ``encoder``: ``encode`` as rules 1-3 (the table size setter is CappedEncoder's)."""

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        table = self.header_table
        block = [self._encode_table_size_change()] if table.resized else []
        table.resized = False
        cache = _CACHE
        for field in headers:
            key = (field[0], field[1])
            encoded = cache.get(key)
            if encoded is None:
                if len(cache) >= CACHE_MAX:
                    cache.clear()
                encoded = cache[key] = encode_field(*key)
            block.append(encoded)
        return b"".join(block)
