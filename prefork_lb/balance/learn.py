"""sticky learn: the server-wide session table (sans-IO loads and stores on shared words).

The table is a ``limits.table.LimitTable`` of kind ``KIND_STICKY``: one anonymous
``MAP_SHARED`` mapping the master creates before it forks the workers (``TableSet``; the
config lists it in ``HttpConfig.limit_zone_sizes``), so every worker sees a session the
moment another one learned it, and the master keeps the table across reloads while a
config still names the zone with the same size (limits/table.py rule 5).

    header  limits.table.HEADER_WORDS words; H_EVICTIONS counts LRU evictions
    entries buckets x WAYS entries of ENTRY_WORDS words: E_KEY session key, E_VALUE the
            bound server's key (``sid_key``), E_LAST_MS last use (ms), spare

Rules:
1. Entries are read and written only under the shared zone's lock (the proxy's pick and
   release critical sections); these functions do no I/O and allocate nothing but ints.
2. A session is keyed by ``session_key``: 63 bits of the MD5 of its value (nginx stores
   md5(session) too), never 0 (0 marks a free entry); the server by ``sid_key``, 63 bits of
   the MD5 of its server identifier. Both are stable across processes, reloads and binary
   upgrades (no per-interpreter hash seed), so a reload that keeps a server keeps its
   sessions, and a session naming a server the config no longer has is simply unbound.
3. An entry not used for ``timeout`` is dead: a lookup frees it and reports a miss; a store
   reuses it. ``lookup`` refreshes the last-use time (expiry is "without use", as nginx).
4. Set-associative, 8 ways: a session lives in bucket ``key % buckets``. A store takes the
   session's own entry, else a free or dead one, else evicts the bucket's least recently
   used entry and counts it in ``H_EVICTIONS`` (the API reports it).
5. Capacity: 32 bytes per session, 8 ways: ``capacity(size)`` = 32,760 sessions per MiB
   (nginx: about 4,000 per MB, as its docs say), so a zone sized for nginx holds at least as
   many sessions here.
"""

from __future__ import annotations

import hashlib
from typing import Final

from prefork_lb.limits.table import E_KEY, E_LAST_MS, E_VALUE, ENTRY_WORDS, HEADER_WORDS, MIN_SIZE, WAYS

KIND_STICKY: Final = 3
H_EVICTIONS: Final = 4  # a header word the limit kinds leave unused
MIN_BYTES: Final = MIN_SIZE
_MASK: Final = (1 << 63) - 1


def md5_key(data: bytes) -> int:
    """63 bits of MD5, never 0 (rule 2)."""
    return (int.from_bytes(hashlib.md5(data).digest()[:8], "little") & _MASK) or 1


def session_key(value: str) -> int:
    return md5_key(value.encode("latin-1"))


def capacity(size_bytes: int) -> int:
    """Sessions a table of ``size_bytes`` holds (rule 5)."""
    return (size_bytes // 8 - HEADER_WORDS) // (WAYS * ENTRY_WORDS) * WAYS


def _bucket(buckets: int, key: int) -> int:
    return HEADER_WORDS + (key % buckets) * WAYS * ENTRY_WORDS


def lookup(mv: memoryview, buckets: int, key: int, now_ms: int, timeout_ms: int) -> int:
    """The ``sid_key`` bound to session ``key``, or 0 (unknown or expired: rule 3)."""
    i = _bucket(buckets, key)
    for e in range(i, i + WAYS * ENTRY_WORDS, ENTRY_WORDS):
        if mv[e + E_KEY] == key:
            if now_ms - mv[e + E_LAST_MS] > timeout_ms:
                mv[e + E_KEY] = 0
                return 0
            mv[e + E_LAST_MS] = now_ms
            return mv[e + E_VALUE]
    return 0


def store(mv: memoryview, buckets: int, key: int, sid: int, now_ms: int, timeout_ms: int) -> bool:
    """Bind session ``key`` to server ``sid``; True when an entry was evicted for it (rule 4)."""
    i = _bucket(buckets, key)
    free = -1
    oldest = i
    oldest_ms = mv[i + E_LAST_MS]
    for e in range(i, i + WAYS * ENTRY_WORDS, ENTRY_WORDS):
        k = mv[e + E_KEY]
        if k == key:
            mv[e + E_VALUE] = sid
            mv[e + E_LAST_MS] = now_ms
            return False
        last = mv[e + E_LAST_MS]
        if free < 0 and (k == 0 or now_ms - last > timeout_ms):
            free = e
        if last < oldest_ms:
            oldest, oldest_ms = e, last
    evicted = free < 0
    e = oldest if evicted else free
    mv[e + E_KEY] = key
    mv[e + E_VALUE] = sid
    mv[e + E_LAST_MS] = now_ms
    if evicted:
        mv[H_EVICTIONS] += 1
    return evicted


def evictions(mv: memoryview) -> int:
    return int(mv[H_EVICTIONS])


def live(mv: memoryview, buckets: int, now_ms: int, timeout_ms: int) -> int:
    """Sessions not expired (the API's count: a scan of two strided slices, ~1 ms per MiB;
    read without the lock, so a store racing with it may be counted or not)."""
    end = HEADER_WORDS + buckets * WAYS * ENTRY_WORDS
    keys = mv[HEADER_WORDS + E_KEY : end : ENTRY_WORDS].tolist()
    lasts = mv[HEADER_WORDS + E_LAST_MS : end : ENTRY_WORDS].tolist()
    oldest = now_ms - timeout_ms
    return sum(1 for k, t in zip(keys, lasts, strict=True) if k and t >= oldest)
