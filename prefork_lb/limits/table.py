"""Shared limit tables: limit_req / limit_conn state for one zone, shared by all workers.

A table is one anonymous ``MAP_SHARED`` mapping (``mmap.mmap(-1, size)``) the master
creates before it forks the workers that use it, viewed as little-endian int64 words
(``memoryview.cast("q")``). It has no descriptor, so the child's descriptor hygiene
(master/spec.py) leaves it alone, and it lives as long as some process maps it.

    header  HEADER_WORDS words: MAGIC, KIND, buckets, ways, a word of balance/learn.py,
            3 spare, then the zone's decision counters (C_*, rule 7)
    entries buckets x WAYS entries of ENTRY_WORDS words: key hash, value, last_ms, spare

Rules:
1. Entries are read and written only while holding the shared zone's lock (the caller's
   job: ``limits/engine.py`` takes it once per request for all of a location's limits),
   except a limit_conn release and repair (rule 6).
   The functions here are sans-IO loads and stores: no logging, no syscall, no allocation
   beyond small ints, so the critical section is a few microseconds.
2. A key is its 64-bit ``hash()`` (never 0: 0 marks a free entry). ``hash`` of bytes/str is
   seeded per interpreter, and every worker is forked from the master, so all processes
   sharing a table hash alike. A table does not cross a binary upgrade (exec): the new
   master starts with empty tables.
3. Set-associative: a key lives in one bucket of ``WAYS`` entries (``hash % buckets``).
   limit_req: a free entry, else one whose bucket has drained (its state equals a new
   one's), else the least recently used entry of the bucket is taken over (nginx also
   evicts its oldest state by force when the zone is full). limit_conn: a free entry or
   one counting 0 connections; with none, the request is rejected (nginx: "could not
   allocate node", the limit's status).
6. limit_conn counts per (key, worker row): a key's count is the sum of its entries in
   the bucket (one per worker counting it; the scan reads all ``WAYS`` entries anyway),
   and a worker changes only its own entry; another worker takes over an entry only once
   it counts 0. So a release needs no lock (``conn_release``: an 8-byte store to an entry
   only its worker writes while it counts; a worker's greenlets never run concurrently),
   and when a worker dies, the master zeroes its entries the same way (``conn_repair``)
   and the limit stays exact; nginx leaks a crashed worker's counts.
4. limit_req values are nginx's: ``excess`` in milli-requests, times in ms from
   ``CLOCK_MONOTONIC`` (system-wide, so every worker reads the same clock).
5. The master keeps a table across reloads while the new config has a zone of the same
   kind, name and size (``TableSet``): state survives a reload (nginx keeps its shm zone
   the same way).
7. Decision counters (NGINX Plus's ``/api/N/http/limit_reqs`` and ``limit_conns``, read by
   ``limits/status.py``) live in the table's header: one increment of one word per zone per
   decision, made by ``limits/engine.py`` under the lock it already holds, so they are exact
   across workers, survive a reload with the table (rule 5) and cost nothing where no limit
   is configured. A reset (``reset_counters``) zeroes them under the same lock.
"""

from __future__ import annotations

import mmap
from typing import Final

MAGIC: Final = 0x706C626C696D6974  # "plblimit"
KIND_REQ: Final = 1
KIND_CONN: Final = 2
HEADER_WORDS: Final = 16
H_MAGIC, H_KIND, H_BUCKETS, H_WAYS = range(4)
# rule 7: per-zone decision counters (limit_conn uses PASSED, REJECTED, REJECTED_DRY_RUN)
C_PASSED, C_DELAYED, C_REJECTED, C_DELAYED_DRY_RUN, C_REJECTED_DRY_RUN = range(8, 13)
REQ_COUNTERS: Final = (
    ("passed", C_PASSED),
    ("delayed", C_DELAYED),
    ("rejected", C_REJECTED),
    ("delayed_dry_run", C_DELAYED_DRY_RUN),
    ("rejected_dry_run", C_REJECTED_DRY_RUN),
)
CONN_COUNTERS: Final = (
    ("passed", C_PASSED),
    ("rejected", C_REJECTED),
    ("rejected_dry_run", C_REJECTED_DRY_RUN),
)
WAYS: Final = 8
ENTRY_WORDS: Final = 4
E_KEY, E_VALUE, E_LAST_MS, E_ROW = range(4)  # E_ROW: limit_conn, the counting worker's row + 1
MIN_SIZE: Final = 8 * (HEADER_WORDS + WAYS * ENTRY_WORDS)


class LimitTable:
    """One zone's shared table (created by the master, inherited by fork)."""

    __slots__ = ("_mmap", "buckets", "kind", "mv", "size")

    def __init__(self, kind: int, size: int) -> None:
        if size < MIN_SIZE:
            raise ValueError(f"size {size} is below the minimum {MIN_SIZE} bytes")
        self.kind = kind
        self.size = size
        self._mmap = mmap.mmap(-1, size)  # anonymous, MAP_SHARED: shared with every fork
        self.mv = memoryview(self._mmap).cast("q")
        self.buckets = (size // 8 - HEADER_WORDS) // (WAYS * ENTRY_WORDS)
        self.mv[H_MAGIC] = MAGIC
        self.mv[H_KIND] = kind
        self.mv[H_BUCKETS] = self.buckets
        self.mv[H_WAYS] = WAYS

    @property
    def capacity(self) -> int:
        return self.buckets * WAYS

    def close(self) -> None:
        self.mv.release()
        self._mmap.close()


def counters(mv: memoryview, kind: int) -> dict[str, int]:
    """NGINX Plus's document of one zone (rule 7): aligned 8-byte loads, no lock."""
    return {name: int(mv[word]) for name, word in (REQ_COUNTERS if kind == KIND_REQ else CONN_COUNTERS)}


def reset_counters(mv: memoryview) -> None:
    """Zero a zone's counters (rule 7: under the zone lock, as the increments)."""
    for word in range(C_PASSED, C_REJECTED_DRY_RUN + 1):
        mv[word] = 0


def key_hash(key: str) -> int:
    h = hash(key)
    return h if h else 1


def _bucket_base(buckets: int, h: int) -> int:
    return HEADER_WORDS + (h % buckets) * (WAYS * ENTRY_WORDS)


def req_check(
    mv: memoryview, buckets: int, h: int, now_ms: int, rate_mrps: int, burst_m: int
) -> tuple[int, int, int]:
    """nginx's leaky bucket (ngx_http_limit_req_lookup), under the lock, not committed:
    (entry index, new excess, -1 if rejected else 0). Reject leaves the state untouched."""
    base = _bucket_base(buckets, h)
    free = -1
    drained = -1
    oldest = -1
    oldest_ms = 0
    for i in range(base, base + WAYS * ENTRY_WORDS, ENTRY_WORDS):
        k = mv[i]
        if k == h:
            ms = now_ms - mv[i + E_LAST_MS]
            if ms < -60000:
                ms = 1
            elif ms < 0:
                ms = 0
            excess = mv[i + E_VALUE] - rate_mrps * ms // 1000 + 1000
            if excess < 0:
                excess = 0
            return i, excess, (-1 if excess > burst_m else 0)
        if k == 0:
            if free < 0:
                free = i
        elif free < 0 and drained < 0:
            last = mv[i + E_LAST_MS]
            if mv[i + E_VALUE] - rate_mrps * (now_ms - last) // 1000 <= 0:
                drained = i
            elif oldest < 0 or last < oldest_ms:
                oldest, oldest_ms = i, last
    i = free if free >= 0 else drained if drained >= 0 else oldest
    return -1 - i, 0, 0  # a new state: excess 0, passes (negative index: not yet owned)


def req_commit(mv: memoryview, h: int, index: int, excess: int, now_ms: int) -> None:
    if index < 0:
        index = -1 - index
        mv[index + E_KEY] = h
    mv[index + E_VALUE] = excess
    mv[index + E_LAST_MS] = now_ms


def conn_acquire(mv: memoryview, buckets: int, h: int, limit: int, now_ms: int, row1: int) -> int:
    """limit_conn for the worker of row ``row1 - 1`` (rule 6): the entry index counting this
    request, -1 over the limit, -2 no room."""
    base = _bucket_base(buckets, h)
    free = -1
    mine = -1
    total = 0
    for i in range(base, base + WAYS * ENTRY_WORDS, ENTRY_WORDS):
        k = mv[i]
        if k == h:
            n = mv[i + E_VALUE]
            total += n
            if mv[i + E_ROW] == row1:
                mine = i
            elif n <= 0 and free < 0:
                free = i
        elif free < 0 and (k == 0 or mv[i + E_VALUE] <= 0):
            free = i
    if total >= limit:
        return -1
    if mine >= 0:
        mv[mine + E_VALUE] += 1
        mv[mine + E_LAST_MS] = now_ms
        return mine
    if free < 0:
        return -2
    mv[free + E_KEY] = h
    mv[free + E_VALUE] = 1
    mv[free + E_LAST_MS] = now_ms
    mv[free + E_ROW] = row1
    return free


def conn_release(mv: memoryview, h: int, index: int) -> None:
    """The request counted at ``index`` ended (the entry cannot move while it counts)."""
    if mv[index + E_KEY] == h and mv[index + E_VALUE] > 0:
        mv[index + E_VALUE] -= 1


def conn_repair(mv: memoryview, row1: int) -> int:
    """The worker of row ``row1 - 1`` died: zero its counts (rule 6). Returns how many
    requests it still had counted. Master only, after the worker was reaped."""
    rows = mv[HEADER_WORDS + E_ROW :: ENTRY_WORDS].tolist()
    dropped = 0
    for n, r in enumerate(rows):
        if r == row1:
            i = HEADER_WORDS + n * ENTRY_WORDS
            count = mv[i + E_VALUE]
            if count > 0:
                dropped += count
                mv[i + E_VALUE] = 0
    return dropped


class TableSet:
    """The master's tables by (kind, name, size): rule 5. Keyed with the size, so a failed
    reload (the old generation keeps running, and respawning) never swaps a table under it."""

    def __init__(self) -> None:
        self.tables: dict[tuple[int, str, int], LimitTable] = {}

    def for_zones(self, zones: dict[tuple[int, str], int]) -> dict[tuple[int, str], LimitTable]:
        """The tables for (kind, name) -> size, created on first use. Called before the
        fork of the workers that use them; tables no config uses go in ``prune``."""
        out: dict[tuple[int, str], LimitTable] = {}
        for (kind, name), size in zones.items():
            table = self.tables.get((kind, name, size))
            if table is None:
                table = self.tables[(kind, name, size)] = LimitTable(kind, size)
            out[(kind, name)] = table
        return out

    def repair(self, row: int) -> int:
        """A worker with zone row ``row`` was reaped: drop what it counted (rule 6)."""
        return sum(conn_repair(t.mv, row + 1) for t in self.tables.values() if t.kind == KIND_CONN)

    def prune(self, zones: dict[tuple[int, str], int]) -> None:
        """After a reload committed: drop the master's mapping of the tables the running
        config does not use (old workers keep their own mappings until they exit)."""
        for key in list(self.tables):
            if zones.get(key[:2]) != key[2]:
                self.tables.pop(key).close()
