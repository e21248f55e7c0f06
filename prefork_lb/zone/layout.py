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
VERSION: Final = 3  # 3: PEER_WORDS 64 -> 72, the active health-check words P_HC_*
HEADER_WORDS: Final = 16
(
    H_MAGIC,
    H_VERSION,
    H_ROWS,
    H_PEERS,
    H_SIZE,
    H_RESPAWNED,  # workers respawned after dying (master)
    H_RELOADS,  # successful reloads (master)
    H_GENERATION,  # current generation (master)
    H_START_MS,  # master start (ms since epoch)
    H_LOAD_MS,  # last (re)load (ms since epoch)
    H_ACCEPTED_GONE,  # connections accepted by workers that have exited (master folds rows in)
    H_DROPPED_GONE,
    H_LOCK,  # the futex lock word (zone.py), when H_LOCK_KIND says so
    H_LOCK_KIND,  # LOCK_FLOCK (0: also what a zone made before this word existed reads) or LOCK_FUTEX
    H_PROBER_HEARTBEAT_NS,  # the health prober's hub stamps it every second (monotonic ns)
) = range(15)
LOCK_FLOCK: Final = 0
LOCK_FUTEX: Final = 1

PEER_WORDS: Final = 72
(
    P_USED,  # 1 while a peer owns the slot, 2 for a server status zone (USED_PEER / USED_ZONE)
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
) = range(16)
# Statistics (written under the lock when a request or session ends). Server zones use the
# same slot records (keyed by zone name), reading P_S_PROCESSING and the response fields.
P_S_1XX = 16  # responses by class: 1xx .. 5xx at P_S_1XX + 0 .. 4 (stream: 2xx/4xx/5xx)
P_S_TOTAL = 21
P_S_SENT = 22  # bytes to the upstream (zones: to the client)
P_S_RECEIVED = 23  # bytes from the upstream (zones: from the client)
P_S_HEADER_MS = 24  # sum of header times (stream: connect times); count in P_S_HEADER_N
P_S_HEADER_N = 25
P_S_RESPONSE_MS = 26  # sum of response times (stream: session times); count in P_S_RESPONSE_N
P_S_RESPONSE_N = 27
P_S_DOWNTIME_MS = 28  # accumulated time unavailable
P_S_FIRST_BYTE_MS = 29  # stream: sum of first-byte times (count: P_S_HEADER_N)
P_S_PROCESSING = 30  # zones: requests in progress
P_S_DISCARDED = 31  # zones: requests answered without a response body sent (nginx "discarded")
P_S_HIST = 32  # response-time histogram, one word per bucket of HIST_BOUNDS_MS (+Inf last)
HIST_BOUNDS_MS: Final = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
P_S_CODES = P_S_HIST + len(HIST_BOUNDS_MS) + 1  # 44: counts for CODES, in order
CODES: Final = (
    200,
    201,
    204,
    206,
    301,
    302,
    304,
    307,
    308,
    400,
    401,
    403,
    404,
    405,
    408,
    413,
    429,
    499,
    500,
    502,
)
# Active health checks (health/): written by the prober process alone, under the lock.
# Balancers skip a peer whose P_HC_STATE is not HC_UP, in lists whose upstream is checked.
P_HC_STATE = P_S_CODES + len(CODES)  # 64: HC_UP, HC_CHECKING or HC_UNHEALTHY
P_HC_CHECKS = 65  # probes made
P_HC_FAILS = 66  # probes failed
P_HC_UNHEALTHY = 67  # times it became unhealthy
P_HC_LAST = 68  # last probe: 0 none yet, 1 passed, 2 failed
P_HC_DOWNSTART_MS = 69  # when it left HC_UP (ms since epoch), 0 while up
HC_UP: Final = 0
HC_CHECKING: Final = 1
HC_UNHEALTHY: Final = 2
assert P_HC_DOWNSTART_MS < PEER_WORDS

USED_PEER: Final = 1
USED_ZONE: Final = 2

ROW_HEADER_WORDS: Final = 16
(
    R_PID,
    R_GENERATION,
    R_SLOT,
    R_HEARTBEAT_NS,
    R_STARTED_MS,
    R_ACCEPTED,  # connections accepted by this worker (written by it alone)
    R_DROPPED,
    R_ACTIVE,  # client connections open now
    R_IDLE,  # of which waiting for a request
    R_DRAINING,  # 1 while the worker shuts down
    R_PARKED,  # of the idle ones, parked without a greenlet (http/connection.py rule 6)
    R_HTTP_REQUESTS,  # http requests this worker began (NGINX Plus /workers; one writer)
    R_STREAM_SESSIONS,  # stream sessions this worker began (one writer)
) = range(13)

DEFAULT_ROWS: Final = 128  # up to 64 workers, with room for an old and a new generation
DEFAULT_SIZE: Final = 8 * 1024 * 1024  # ~2900 peer/zone slots with 128 rows


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
