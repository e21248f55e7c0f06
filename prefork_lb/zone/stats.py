"""Statistics writers over the zone's words (sans-IO: a memoryview and offsets).

Rules:
1. Peer and server-zone statistics are written under the zone lock, when an attempt or a
   request ends (the lock is held for the release anyway), so totals are exact across
   workers and survive reloads with the slot.
2. "processing" (requests in progress per server zone) lives in each worker's row cell of
   the zone's slot: one writer, no lock; readers sum the live rows.
3. Codes outside ``layout.CODES`` count only in their class (and the total).
"""

from __future__ import annotations

import bisect
from typing import Final

from prefork_lb.zone import layout as L

_CODE_INDEX: Final = {code: L.P_S_CODES + i for i, code in enumerate(L.CODES)}


def _response(mv: memoryview, base: int, status: int) -> None:
    klass = status // 100
    if 1 <= klass <= 5:
        mv[base + L.P_S_1XX + klass - 1] += 1
    mv[base + L.P_S_TOTAL] += 1
    index = _CODE_INDEX.get(status)
    if index is not None:
        mv[base + index] += 1


def record_http_peer(
    mv: memoryview, base: int, status: int, sent: int, received: int, header_ms: int | None, response_ms: int
) -> None:
    """An upstream response ended (``base``: the peer's record)."""
    _response(mv, base, status)
    mv[base + L.P_S_SENT] += sent
    mv[base + L.P_S_RECEIVED] += received
    if header_ms is not None:
        mv[base + L.P_S_HEADER_MS] += header_ms
        mv[base + L.P_S_HEADER_N] += 1
    mv[base + L.P_S_RESPONSE_MS] += response_ms
    mv[base + L.P_S_RESPONSE_N] += 1
    mv[base + L.P_S_HIST + bisect.bisect_left(L.HIST_BOUNDS_MS, response_ms)] += 1


def record_stream_peer(
    mv: memoryview,
    base: int,
    sent: int,
    received: int,
    connect_ms: int | None,
    first_byte_ms: int | None,
    session_ms: int,
) -> None:
    """A stream session on this peer ended."""
    mv[base + L.P_S_SENT] += sent
    mv[base + L.P_S_RECEIVED] += received
    if connect_ms is not None:
        mv[base + L.P_S_HEADER_MS] += connect_ms
        mv[base + L.P_S_HEADER_N] += 1
    if first_byte_ms is not None:
        mv[base + L.P_S_FIRST_BYTE_MS] += first_byte_ms
    mv[base + L.P_S_RESPONSE_MS] += session_ms
    mv[base + L.P_S_RESPONSE_N] += 1


def record_zone(mv: memoryview, base: int, status: int, received: int, sent: int, discarded: bool) -> None:
    """A request (or stream session) of a server zone ended (``base``: the zone's record)."""
    mv[base + L.P_REQUESTS] += 1
    _response(mv, base, status)
    mv[base + L.P_S_RECEIVED] += received
    mv[base + L.P_S_SENT] += sent
    if discarded:
        mv[base + L.P_S_DISCARDED] += 1
