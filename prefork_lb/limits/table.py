"""Shared limit tables: limit_req / limit_conn state for one zone, shared by all workers.

A table is one anonymous ``MAP_SHARED`` mapping (``mmap.mmap(-1, size)``) the master
creates before it forks the workers that use it, viewed as little-endian int64 words
(``memoryview.cast("q")``). It has no descriptor, so the child's descriptor hygiene
(master/spec.py) leaves it alone, and it lives as long as some process maps it.

    header  HEADER_WORDS words: MAGIC, KIND, buckets, ways
    entries buckets x WAYS entries of ENTRY_WORDS words: key hash, value, last_ms, spare

Rules:
1. Entries are read and written only while holding the shared zone's lock (the caller's
   job: ``limits/engine.py`` takes it once per request for all of a location's limits).
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
4. limit_req values are nginx's: ``excess`` in milli-requests, times in ms from
   ``CLOCK_MONOTONIC`` (system-wide, so every worker reads the same clock).
5. The master keeps a table across reloads while the new config has a zone of the same
   kind, name and size (``TableSet``): state survives a reload (nginx keeps its shm zone
   the same way).
"""

from __future__ import annotations

import mmap
from typing import Final

MAGIC: Final = 0x706C626C696D6974  # "plblimit"
KIND_REQ: Final = 1
KIND_CONN: Final = 2
HEADER_WORDS: Final = 8
H_MAGIC, H_KIND, H_BUCKETS, H_WAYS = range(4)
WAYS: Final = 8
ENTRY_WORDS: Final = 4
E_KEY, E_VALUE, E_LAST_MS = range(3)
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


def conn_acquire(mv: memoryview, buckets: int, h: int, limit: int, now_ms: int) -> int:
    """limit_conn: the entry index counting this request, -1 over the limit, -2 no room."""
    base = _bucket_base(buckets, h)
    free = -1
    for i in range(base, base + WAYS * ENTRY_WORDS, ENTRY_WORDS):
        k = mv[i]
        if k == h:
            n = mv[i + E_VALUE]
            if n >= limit:
                return -1
            mv[i + E_VALUE] = n + 1
            mv[i + E_LAST_MS] = now_ms
            return i
        if free < 0 and (k == 0 or mv[i + E_VALUE] <= 0):
            free = i
    if free < 0:
        return -2
    mv[free + E_KEY] = h
    mv[free + E_VALUE] = 1
    mv[free + E_LAST_MS] = now_ms
    return free


def conn_release(mv: memoryview, h: int, index: int) -> None:
    """The request counted at ``index`` ended (the entry cannot move while it counts)."""
    if mv[index + E_KEY] == h and mv[index + E_VALUE] > 0:
        mv[index + E_VALUE] -= 1


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

    def prune(self, zones: dict[tuple[int, str], int]) -> None:
        """After a reload committed: drop the master's mapping of the tables the running
        config does not use (old workers keep their own mappings until they exit)."""
        for key in list(self.tables):
            if zones.get(key[:2]) != key[2]:
                self.tables.pop(key).close()
