"""Layout of the shared-memory zone (sans-IO: offsets and sizes only).

The zone is one MAP_SHARED mapping of little-endian int64 words at 8-byte-aligned
offsets, viewed as ``memoryview(...).cast("q")``; every offset below is a word index.

    header   HEADER_WORDS words: MAGIC, VERSION, rows W, peer slots P, size in bytes
    peers    P records of PEER_WORDS words (fields P_*), one per peer slot
    rows     W rows of ROW_HEADER_WORDS + 2P words: R_* header, ``active[slot]``, then
             ``inflight_ms[slot]`` (least_time: sum of the start times of its requests)

Rules:
1. Peer records are read and written only while holding the zone lock (every balancing
   decision and every release), by workers and by the master (slot setup, repair). That is
   what makes nginx-with-zone semantics exact across workers.
2. A worker row has exactly one writer: the worker it belongs to (under the lock for
   ``active``); the master writes it only before the worker starts and after it died.
   ``active[slot]`` and ``inflight_ms[slot]`` repeat, per worker, its part of ``P_CONNS``
   and of ``P_INFLIGHT_MS``, so the master can recount both from the live rows after a
   worker died at any point.
3. Peer slots are assigned by the master and keyed by peer identity, so a reload keeps
   the state of peers that still exist.
"""

from __future__ import annotations

from typing import Final

MAGIC: Final = 0x706C627A6F6E6531  # "plbzone1"
VERSION: Final = 1
HEADER_WORDS: Final = 8
H_MAGIC, H_VERSION, H_ROWS, H_PEERS, H_SIZE = range(5)

PEER_WORDS: Final = 16
(
    P_USED,  # 1 while a peer owns the slot
    P_CW,  # smooth-WRR current_weight
    P_EW,  # effective_weight
    P_CONNS,  # active requests/sessions, all workers
    P_FAILS,  # nginx "fails"
    P_ACCESSED,  # second of the last failure
    P_CHECKED,  # nginx "checked" (seconds)
    P_REQUESTS,  # selections, total
    P_FAILED_TOTAL,  # failed attempts, total
    P_UNAVAIL,  # times it became unavailable through max_fails
    P_RT_MS,  # least_time: moving average of the measured time (ms); -1 before the first
    P_SLOW_START_MS,  # slow_start: when the ramp began (ms since epoch), 0 = no ramp
    P_SELECTED_MS,  # last selection (ms since epoch)
    P_DOWNSTART_MS,  # when it became unavailable (ms since epoch), 0 while usable
    P_INFLIGHT_MS,  # least_time inflight: sum of the start times (ms) of in-flight requests
    P_KEY_HASH,  # hash of the peer's identity: a new master after exec finds its slots
) = range(PEER_WORDS)

ROW_HEADER_WORDS: Final = 8
R_PID, R_GENERATION, R_SLOT, R_HEARTBEAT_NS, R_STARTED_MS = range(5)

DEFAULT_ROWS: Final = 128  # up to 64 workers, with room for an old and a new generation
DEFAULT_SIZE: Final = 2 * 1024 * 1024


ROW_PEER_WORDS: Final = 2  # active, inflight_ms


def size_for(peers: int, rows: int) -> int:
    return 8 * (HEADER_WORDS + peers * PEER_WORDS + rows * (ROW_HEADER_WORDS + ROW_PEER_WORDS * peers))


def peer_capacity(size_bytes: int, rows: int) -> int:
    """How many peer slots fit in ``size_bytes`` with ``rows`` worker rows."""
    words = size_bytes // 8 - HEADER_WORDS - rows * ROW_HEADER_WORDS
    return max(0, words // (PEER_WORDS + ROW_PEER_WORDS * rows))


def peer_base(slot: int) -> int:
    return HEADER_WORDS + slot * PEER_WORDS


def row_words(peers: int) -> int:
    return ROW_HEADER_WORDS + ROW_PEER_WORDS * peers


def row_base(row: int, peers: int) -> int:
    return HEADER_WORDS + peers * PEER_WORDS + row * row_words(peers)


def active_index(row: int, peers: int, slot: int) -> int:
    return row_base(row, peers) + ROW_HEADER_WORDS + slot


def inflight_index(row: int, peers: int, slot: int) -> int:
    return row_base(row, peers) + ROW_HEADER_WORDS + peers + slot
