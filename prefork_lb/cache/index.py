"""The shared cache index: one anonymous MAP_SHARED mapping per keys_zone (nginx's rbtree + LRU).

Created by the master before it forks anything that uses it (``IndexSet``), inherited by
fork like the limit tables (limits/table.py): no descriptor, so the children's descriptor
hygiene (master/spec.py) leaves it alone. Viewed as int64 words (``memoryview.cast("q")``):

    header  HEADER_WORDS words (H_*): magic, version, slots, max entries, the lock word,
            entries, size (bytes on disk), cold, counters for the status API
    nodes   ``slots`` nodes of NODE_WORDS words (N_*), open addressing on md5

Sizing: NODE_WORDS = 12 (96 bytes a node) and at most 3/4 of the slots used (linear probing
stays short), so a MB of keys_zone holds 8192 keys: nginx's "about 8000 keys per MB".

Rules:
1. Every read-modify-write of a node or of the header's entries/size/counters holds the
   index lock. Its kind follows the shared zone's: with the compiled extension a futex word
   in our own header (``H_LOCK``, balance/_pickloop.c: a waiter takes it over from a dead
   holder after 10 ms), else the zone's own flock lock (``Zone.lock``), which the kernel
   releases when a holder dies. Critical sections are loads and stores over one probe
   sequence (a few microseconds), never I/O: file opens, reads, unlinks happen after.
2. A node is keyed by the md5 of the cache key (two words ``N_K0``/``N_K1``) and marked used
   by ``N_FLAGS & F_USED``. Deletion shifts the following cluster back (no tombstones), so a
   lookup stops at the first unused slot.
3. Node state (nginx's split): ``F_EXISTS`` (a complete file is on disk, ``N_FS_SIZE``
   bytes counted in ``H_SIZE``), ``F_UPDATING`` with ``N_LOCK_UNTIL_MS`` (someone fetches
   the key: the lock and the "updating" of nginx; a holder that died or hangs holds it at
   most until then: nginx's lock_age), ``N_USES``, ``N_ACCESS_MS`` (last use: the LRU order
   and, plus ``inactive``, the expiry). ``N_LOCK_PID`` is the holder: when the master reaps
   a dead worker it clears that worker's key locks at once (``release_locks_of``).
   Freshness (valid until, ETag...) is in the file header (cache/entry.py); ``N_VALID_MS``
   is a copy for the manager and the API. ``N_VERSION`` identifies the node's file: every
   change of it (commit, refresh, a dropped file) stores a new value from the header's
   ``H_GEN`` counter, never reused in the index's life (not even by a node made again for
   the same key after a purge), so a worker's memo of open entries (cache/store.py rule 8)
   sees a refresh, a new commit or a purge at its next lookup.
   ``N_ERROR`` with ``F_ERROR`` (differential scenario X22, nginx's ``node->error``): an upstream
   error status that ``proxy_intercept_errors`` handed to ``error_page`` with a validity,
   packed as ``valid_until_ms * ERROR_SCALE + status``; no file belongs to it (a file the
   node had stays on disk). ``use`` pays one flag check for it: while valid it reports the
   error as a node without a file (the error wins); once expired it clears it with
   ``F_EXISTS`` and ``uses`` (nginx's "renew": the lookup is a MISS, the next fill replaces
   the older file). A commit (``set_exists``, not the loader's) clears it: a BYPASS that
   stored a new answer ends it. The manager expires an error node by ``inactive`` like any
   other (no file to unlink); a purge removes it with the node.
4. Times are wall-clock milliseconds (``time.time()``): every process reads the same clock.
5. When every usable slot is taken, inserting removes the least recently used node among
   the next ``FORCE_SCAN`` slots that nobody is updating (nginx's forced expire); its md5 is
   returned so the caller unlinks the file outside the lock.
6. The unlocked reads (``is_updating``, the API's figures, the manager's scan) are single
   aligned 8-byte loads: a value may be a few microseconds old, never torn.
7. The status counters are lock-free per worker: a second anonymous mapping holds one row
   of ``ROW_STRIDE`` words per row of the shared zone (zone/layout.py worker rows); a worker
   adds to its own row only (``CacheZone(..., row=)``, one writer per row, plain stores), the
   API sums the header's words (processes without a row: tests, locked) and every row. A row
   is never cleared: a respawned worker that gets a row continues its counts, so the sums
   never go back (the zone's rows are folded by the master, these need not be).
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Callable
from typing import Any, Final

MAGIC: Final = 0x706C6263_61636865  # "plbcache"
VERSION: Final = 1
HEADER_WORDS: Final = 64
(
    H_MAGIC,
    H_VERSION,
    H_SLOTS,
    H_MAX_ENTRIES,
    H_LOCK,  # futex word (low 32 bits)
    H_ENTRIES,  # used nodes
    H_SIZE,  # sum of N_FS_SIZE over nodes with F_EXISTS
    H_COLD,  # 1 until the loader has read the directory
    H_LOADED,  # files the loader indexed
    H_UNLOCKS,  # bumped by every unlock (waiters may watch it)
    H_EVICTED,  # nodes removed by the manager or a forced expire
    H_CREATED_MS,
    H_PURGES,
    H_GEN,  # bumped by every change of a node's file (N_VERSION takes the new value)
) = range(14)
H_COUNTERS: Final = 16  # STATUSES x COUNTER_WORDS words from here
STATUSES: Final = ("hit", "stale", "updating", "revalidated", "miss", "expired", "bypass")
COUNTER_WORDS: Final = 4  # responses, bytes, responses_written, bytes_written
C_RESPONSES, C_BYTES, C_WRITTEN, C_BYTES_WRITTEN = range(4)
ROW_WORDS: Final = len(STATUSES) * COUNTER_WORDS  # a worker's counters (rule 7)
ROW_STRIDE: Final = 32  # 256 bytes: rows of different workers never share a cache line

NODE_WORDS: Final = 12
(
    N_K0, N_K1, N_FLAGS, N_USES, N_LOCK_UNTIL_MS, N_VALID_MS, N_ACCESS_MS, N_FS_SIZE, N_LOCK_PID, N_VERSION,
    N_ERROR,
) = range(11)  # fmt: skip
ERROR_SCALE: Final = 1000  # N_ERROR = valid_until_ms * ERROR_SCALE + status (rule 3)
F_USED: Final = 1
F_EXISTS: Final = 2
F_UPDATING: Final = 4
F_ERROR: Final = 8  # N_ERROR holds a remembered error (rule 3)
LOAD_FACTOR_NUM, LOAD_FACTOR_DEN = 3, 4
FORCE_SCAN: Final = 32


def counter_index(status: str) -> int:
    return H_COUNTERS + STATUSES.index(status) * COUNTER_WORDS


COUNTER_BASE: Final = {status: counter_index(status) for status in STATUSES}  # once per response


def slots_for(size_bytes: int) -> int:
    return max(8, (size_bytes // 8 - HEADER_WORDS) // NODE_WORDS)


_QQ: Final = struct.Struct("<qq")


def md5_words(md5: bytes) -> tuple[int, int]:
    k0, k1 = _QQ.unpack_from(md5)
    return k0, k1


def words_md5(k0: int, k1: int) -> bytes:
    return k0.to_bytes(8, "little", signed=True) + k1.to_bytes(8, "little", signed=True)


def _load_native() -> Any:
    from prefork_lb.zone import zone as _zone_mod

    return _zone_mod._native


class NodeView:
    """A snapshot of one node (returned by ``CacheIndex`` calls, read under the lock)."""

    __slots__ = ("error", "exists", "fs_size", "lock_until_ms", "updating", "uses", "valid_ms", "version")

    def __init__(
        self,
        flags: int,
        uses: int,
        lock_until_ms: int,
        valid_ms: int,
        fs_size: int,
        version: int = 0,
        error: int = 0,
    ) -> None:
        self.version = version
        self.error = error  # a remembered upstream error status, while valid (rule 3), else 0
        self.exists = bool(flags & F_EXISTS)
        self.updating = bool(flags & F_UPDATING)
        self.uses = uses
        self.lock_until_ms = lock_until_ms
        self.valid_ms = valid_ms
        self.fs_size = fs_size


class CacheIndex:
    """One keys_zone's shared table. ``fallback_lock``: the shared zone, whose flock lock
    guards this index when the futex lock is not available (rule 1)."""

    def __init__(
        self, size_bytes: int, fallback_lock: Any = None, lock: str | None = None, rows: int = 0
    ) -> None:
        self.size = size_bytes
        self._mmap = mmap.mmap(-1, size_bytes)  # anonymous, MAP_SHARED: shared with every fork
        self.mv = memoryview(self._mmap).cast("q")
        self.rows = rows  # rule 7
        self._rows_mmap = mmap.mmap(-1, max(1, rows) * ROW_STRIDE * 8)
        self.rows_mv = memoryview(self._rows_mmap).cast("q")
        self.slots = slots_for(size_bytes)
        self.max_entries = self.slots * LOAD_FACTOR_NUM // LOAD_FACTOR_DEN
        mv = self.mv
        mv[H_MAGIC] = MAGIC
        mv[H_VERSION] = VERSION
        mv[H_SLOTS] = self.slots
        mv[H_MAX_ENTRIES] = self.max_entries
        mv[H_COLD] = 1
        native = _load_native()
        use_futex = native is not None and lock != "flock"
        if use_futex:
            addr = native.lock_address(mv, 8 * H_LOCK)
            self.lock: Callable[[], Any] = lambda: native.zone_lock(addr)
            self.unlock: Callable[[], Any] = lambda: native.zone_unlock(addr)
            self._break: Callable[[int], Any] = lambda pid: native.break_lock(addr, pid)
        else:
            if fallback_lock is None:
                raise ValueError("without the compiled extension the index needs the zone's lock")
            self.lock = fallback_lock.lock
            self.unlock = fallback_lock.unlock
            self._break = lambda pid: None
        self.lock_kind = "futex" if use_futex else "flock"

    def close(self) -> None:
        self.lock = self.unlock = lambda: None
        self.mv.release()
        self._mmap.close()
        self.rows_mv.release()
        self._rows_mmap.close()

    def break_dead_holder(self, pid: int) -> None:
        """The master, after reaping a child: free the lock if that child died holding it."""
        self._break(pid)

    # ---- probing (under the lock) ----

    def _home(self, k0: int) -> int:
        return (k0 & 0x7FFFFFFFFFFFFFFF) % self.slots

    def _find(self, k0: int, k1: int) -> int:
        """The node's word index, or -1."""
        mv, slots = self.mv, self.slots
        i = self._home(k0)
        for _ in range(slots):
            base = HEADER_WORDS + i * NODE_WORDS
            if not mv[base + N_FLAGS] & F_USED:
                return -1
            if mv[base + N_K0] == k0 and mv[base + N_K1] == k1:
                return base
            i = i + 1 if i + 1 < slots else 0
        return -1

    def _find_or_insert(self, k0: int, k1: int, now_ms: int) -> tuple[int, bytes | None]:
        """Under the lock: the key's node, made when absent (``_insert``'s pair)."""
        base = self._find(k0, k1)
        if base >= 0:
            return base, None
        return self._insert(k0, k1, now_ms)

    def _insert(self, k0: int, k1: int, now_ms: int) -> tuple[int, bytes | None]:
        """A new node (the key is known absent): (word index, md5 of a node forced out or None).
        Index -1 when nothing could be made room for (everything near is updating)."""
        mv = self.mv
        evicted: bytes | None = None
        if mv[H_ENTRIES] >= self.max_entries:
            evicted = self._force_expire(self._home(k0))
            if evicted is None:
                return -1, None
        i = self._home(k0)
        slots = self.slots
        while mv[HEADER_WORDS + i * NODE_WORDS + N_FLAGS] & F_USED:
            i = i + 1 if i + 1 < slots else 0
        base = HEADER_WORDS + i * NODE_WORDS
        for w in range(NODE_WORDS):
            mv[base + w] = 0
        mv[base + N_K0] = k0
        mv[base + N_K1] = k1
        mv[base + N_FLAGS] = F_USED
        mv[base + N_ACCESS_MS] = now_ms
        mv[H_ENTRIES] += 1
        return base, evicted

    def _force_expire(self, start: int) -> bytes | None:
        """Rule 5: drop the least recently used node near ``start`` nobody is updating."""
        mv, slots = self.mv, self.slots
        best, best_ms = -1, 0
        i = start
        for _ in range(min(FORCE_SCAN, slots)):
            base = HEADER_WORDS + i * NODE_WORDS
            flags = mv[base + N_FLAGS]
            if flags & F_USED and not flags & F_UPDATING and (best < 0 or mv[base + N_ACCESS_MS] < best_ms):
                best, best_ms = base, mv[base + N_ACCESS_MS]
            i = i + 1 if i + 1 < slots else 0
        if best < 0:
            return None
        md5 = words_md5(mv[best + N_K0], mv[best + N_K1])
        self._delete(best)
        mv[H_EVICTED] += 1
        return md5

    def _delete(self, base: int) -> None:
        """Remove the node at ``base`` and shift its cluster back (rule 2)."""
        mv, slots = self.mv, self.slots
        if mv[base + N_FLAGS] & F_EXISTS:
            mv[H_SIZE] -= mv[base + N_FS_SIZE]
        mv[H_ENTRIES] -= 1
        hole = (base - HEADER_WORDS) // NODE_WORDS
        i = hole
        while True:
            i = i + 1 if i + 1 < slots else 0
            b = HEADER_WORDS + i * NODE_WORDS
            if not mv[b + N_FLAGS] & F_USED:
                break
            home = self._home(mv[b + N_K0])
            # move i into the hole unless its home lies cyclically in (hole, i]
            if (hole < i and hole < home <= i) or (hole > i and (home > hole or home <= i)):
                continue
            hb = HEADER_WORDS + hole * NODE_WORDS
            mv[hb : hb + NODE_WORDS] = mv[b : b + NODE_WORDS]
            hole = i
        hb = HEADER_WORDS + hole * NODE_WORDS
        for w in range(NODE_WORDS):
            mv[hb + w] = 0

    # ---- operations (each takes the lock once) ----

    def use(self, md5: bytes, now_ms: int) -> tuple[NodeView, bytes | None]:
        """A lookup: find or make the node, count a use, stamp the access time. Returns the
        node's state and the md5 of a node forced out to make room (unlink its file)."""
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            base, evicted = self._find_or_insert(k0, k1, now_ms)
            if base < 0:
                return NodeView(0, 1, 0, 0, 0), None
            mv[base + N_USES] += 1
            mv[base + N_ACCESS_MS] = now_ms
            flags = mv[base + N_FLAGS]
            if flags & F_ERROR:  # rule 3 (the one check a node without an error pays)
                return self._error_view(base, now_ms), evicted
            view = NodeView(
                flags,
                mv[base + N_USES],
                mv[base + N_LOCK_UNTIL_MS],
                mv[base + N_VALID_MS],
                mv[base + N_FS_SIZE],
                mv[base + N_VERSION],
            )
        finally:
            self.unlock()
        return view, evicted

    def _error_view(self, base: int, now_ms: int) -> NodeView:
        """Rule 3, under the lock: the remembered error while valid (reported as a node
        without a file: the lookup opens nothing), else cleared with the node's older file
        and its uses (nginx's renew) and the node as it is then."""
        mv = self.mv
        word = mv[base + N_ERROR]
        if word // ERROR_SCALE >= now_ms:
            return NodeView(F_USED, mv[base + N_USES], 0, 0, 0, 0, word % ERROR_SCALE)
        mv[base + N_ERROR] = 0
        mv[base + N_USES] = 1
        if mv[base + N_FLAGS] & F_EXISTS:  # older than the error: not served
            mv[H_SIZE] -= mv[base + N_FS_SIZE]
            mv[base + N_FS_SIZE] = 0
            mv[H_GEN] += 1
            mv[base + N_VERSION] = mv[H_GEN]
        mv[base + N_FLAGS] &= ~(F_EXISTS | F_ERROR)
        return NodeView(
            mv[base + N_FLAGS],
            1,
            mv[base + N_LOCK_UNTIL_MS],
            mv[base + N_VALID_MS],
            0,
            mv[base + N_VERSION],
        )

    def peek(self, md5: bytes) -> NodeView | None:
        """The node's state without counting a use (tests, the API)."""
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            base = self._find(k0, k1)
            if base < 0:
                return None
            return NodeView(
                mv[base + N_FLAGS],
                mv[base + N_USES],
                mv[base + N_LOCK_UNTIL_MS],
                mv[base + N_VALID_MS],
                mv[base + N_FS_SIZE],
                mv[base + N_VERSION],
                mv[base + N_ERROR] % ERROR_SCALE,
            )
        finally:
            self.unlock()

    def error_until_ms(self, md5: bytes) -> int:
        """When the key's remembered error ends (0: none; tests, the API)."""
        k0, k1 = md5_words(md5)
        self.lock()
        try:
            base = self._find(k0, k1)
            return 0 if base < 0 else self.mv[base + N_ERROR] // ERROR_SCALE
        finally:
            self.unlock()

    def set_error(self, md5: bytes, status: int, valid_until_ms: int, now_ms: int) -> bytes | None:
        """Remember an intercepted upstream error (rule 3; nginx's ``ngx_http_file_cache_free``
        with ``c->error``): the next lookups report ``status`` until ``valid_until_ms``.
        Returns a forced-out md5 (unlink its file)."""
        if not 0 < status < ERROR_SCALE or valid_until_ms < now_ms:
            return None
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            base, evicted = self._find_or_insert(k0, k1, now_ms)
            if base < 0:
                return None
            mv[base + N_ERROR] = valid_until_ms * ERROR_SCALE + status
            mv[base + N_FLAGS] |= F_ERROR
        finally:
            self.unlock()
        return evicted

    def try_lock(self, md5: bytes, now_ms: int, lock_age_ms: int, pid: int = 0) -> bool:
        """Mark the key updating unless another holder's lock is live (rule 3)."""
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            # a forced-out file stays: the loader drops it, the next lookup of its key is a miss
            base, _ = self._find_or_insert(k0, k1, now_ms)
            if base < 0:
                return True  # no room to record a lock: go upstream unlocked (never block)
            flags = mv[base + N_FLAGS]
            if flags & F_UPDATING and mv[base + N_LOCK_UNTIL_MS] > now_ms:
                return False
            mv[base + N_FLAGS] = flags | F_UPDATING
            mv[base + N_LOCK_UNTIL_MS] = now_ms + lock_age_ms
            mv[base + N_LOCK_PID] = pid
            return True
        finally:
            self.unlock()

    def release(self, md5: bytes) -> None:
        """Clear updating (the waiters see it at their next look)."""
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            base = self._find(k0, k1)
            if base >= 0:
                mv[base + N_FLAGS] &= ~F_UPDATING
                mv[base + N_LOCK_UNTIL_MS] = 0
                mv[base + N_LOCK_PID] = 0
            mv[H_UNLOCKS] += 1
        finally:
            self.unlock()

    def release_locks_of(self, pid: int) -> int:
        """A process died (the master, at reap): clear the key locks it held, so the requests
        waiting on them go on now instead of at lock_age. Scans without the lock (rule 6),
        clears under it, re-checking each node. Returns how many were cleared."""
        if pid <= 0:
            return 0
        mv = self.mv
        start = HEADER_WORDS + N_LOCK_PID
        pids = mv[start : HEADER_WORDS + self.slots * NODE_WORDS : NODE_WORDS].tolist()
        held = [HEADER_WORDS + i * NODE_WORDS for i, p in enumerate(pids) if p == pid]
        if not held:
            return 0
        cleared = 0
        self.lock()
        try:
            for base in held:
                if mv[base + N_LOCK_PID] == pid and mv[base + N_FLAGS] & F_UPDATING:
                    mv[base + N_FLAGS] &= ~F_UPDATING
                    mv[base + N_LOCK_UNTIL_MS] = 0
                    mv[base + N_LOCK_PID] = 0
                    cleared += 1
            mv[H_UNLOCKS] += 1
        finally:
            self.unlock()
        return cleared

    def is_locked(self, md5: bytes, now_ms: int) -> bool:
        """Unlocked read (rule 6): is someone's lock on the key still live?"""
        k0, k1 = md5_words(md5)
        mv = self.mv
        i = self._home(k0)
        for _ in range(self.slots):
            base = HEADER_WORDS + i * NODE_WORDS
            flags = mv[base + N_FLAGS]
            if not flags & F_USED:
                return False
            if mv[base + N_K0] == k0 and mv[base + N_K1] == k1:
                return bool(flags & F_UPDATING) and mv[base + N_LOCK_UNTIL_MS] > now_ms
            i = i + 1 if i + 1 < self.slots else 0
        return False

    def set_exists(
        self, md5: bytes, fs_size: int, valid_ms: int, now_ms: int, only_new: bool = False
    ) -> bytes | None:
        """A complete file is on disk (commit, refresh, the loader). ``only_new``: the loader,
        which must not override what a worker recorded meanwhile. Returns a forced-out md5."""
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            base, evicted = self._find_or_insert(k0, k1, now_ms)
            if base < 0:
                return None
            flags = mv[base + N_FLAGS]
            if flags & F_EXISTS:
                if only_new:
                    return evicted
                mv[H_SIZE] -= mv[base + N_FS_SIZE]
            if only_new:
                mv[base + N_FLAGS] = flags | F_EXISTS
            else:  # a newer answer than a remembered error (rule 3)
                mv[base + N_FLAGS] = (flags | F_EXISTS) & ~F_ERROR
                mv[base + N_ERROR] = 0
            mv[base + N_FS_SIZE] = fs_size
            mv[base + N_VALID_MS] = valid_ms
            mv[H_SIZE] += fs_size
            mv[H_GEN] += 1
            mv[base + N_VERSION] = mv[H_GEN]
        finally:
            self.unlock()
        return evicted

    def set_valid(self, md5: bytes, valid_ms: int) -> None:
        k0, k1 = md5_words(md5)
        self.lock()
        try:
            base = self._find(k0, k1)
            if base >= 0:
                mv = self.mv
                mv[base + N_VALID_MS] = valid_ms
                mv[H_GEN] += 1
                mv[base + N_VERSION] = mv[H_GEN]
        finally:
            self.unlock()

    def clear_exists(self, md5: bytes) -> None:
        """The file is gone or bad (a lookup found it missing, corrupt or for another key)."""
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            base = self._find(k0, k1)
            if base >= 0 and mv[base + N_FLAGS] & F_EXISTS:
                mv[H_SIZE] -= mv[base + N_FS_SIZE]
                mv[base + N_FLAGS] &= ~F_EXISTS
                mv[base + N_FS_SIZE] = 0
                mv[H_GEN] += 1
                mv[base + N_VERSION] = mv[H_GEN]
        finally:
            self.unlock()

    def remove(
        self, md5: bytes, now_ms: int = 0, unless_accessed_after_ms: int | None = None, force: bool = False
    ) -> bool:
        """Drop the node (the manager's eviction, a purge). Not while someone updates it
        (unless ``force``: a purge), nor when it was used after ``unless_accessed_after_ms``
        (the manager decided on an older snapshot). True if removed: unlink the file after."""
        k0, k1 = md5_words(md5)
        mv = self.mv
        self.lock()
        try:
            base = self._find(k0, k1)
            if base < 0:
                return False
            if not force and mv[base + N_FLAGS] & F_UPDATING and mv[base + N_LOCK_UNTIL_MS] > now_ms:
                return False
            if unless_accessed_after_ms is not None and mv[base + N_ACCESS_MS] > unless_accessed_after_ms:
                return False
            self._delete(base)
            mv[H_EVICTED] += 0 if force else 1
            return True
        finally:
            self.unlock()

    def clear(self) -> list[bytes]:
        """Purge everything: every node goes (updating ones too). Returns the md5s that had files."""
        mv = self.mv
        out = []
        self.lock()
        try:
            for i in range(self.slots):
                base = HEADER_WORDS + i * NODE_WORDS
                if mv[base + N_FLAGS] & F_EXISTS:
                    out.append(words_md5(mv[base + N_K0], mv[base + N_K1]))
            mv[HEADER_WORDS : HEADER_WORDS + self.slots * NODE_WORDS] = memoryview(
                bytes(8 * self.slots * NODE_WORDS)
            ).cast("q")
            mv[H_ENTRIES] = 0
            mv[H_SIZE] = 0
            mv[H_PURGES] += 1
        finally:
            self.unlock()
        return out

    def row_counters(self, row: int) -> int | None:
        """Rule 7: the offset in ``rows_mv`` of worker row ``row``'s counters (None: no row,
        count under the lock with ``count``)."""
        return row * ROW_STRIDE if 0 <= row < self.rows else None

    def count(self, status: str, nbytes: int, written: bool = False) -> None:
        """Count under the lock in the header's words (a process without a row, rule 7)."""
        base = COUNTER_BASE[status]
        mv = self.mv
        self.lock()
        try:
            if written:
                mv[base + C_WRITTEN] += 1
                mv[base + C_BYTES_WRITTEN] += nbytes
            else:
                mv[base + C_RESPONSES] += 1
                mv[base + C_BYTES] += nbytes
        finally:
            self.unlock()

    # ---- unlocked figures (rule 6) ----

    @property
    def cold(self) -> bool:
        return bool(self.mv[H_COLD])

    def set_cold(self, cold: bool) -> None:
        self.mv[H_COLD] = 1 if cold else 0

    @property
    def entries(self) -> int:
        return int(self.mv[H_ENTRIES])

    @property
    def size_on_disk(self) -> int:
        return int(self.mv[H_SIZE])

    def counters(self) -> dict[str, tuple[int, int, int, int]]:
        """The header's words plus every worker row's (rule 7), unlocked."""
        mv, rmv = self.mv, self.rows_mv
        end = self.rows * ROW_STRIDE
        words = [int(mv[H_COUNTERS + i]) + sum(rmv[i:end:ROW_STRIDE]) for i in range(ROW_WORDS)]
        out = {}
        for n, status in enumerate(STATUSES):
            b = n * COUNTER_WORDS
            out[status] = (words[b], words[b + 1], words[b + 2], words[b + 3])
        return out

    def snapshot(self) -> list[tuple[tuple[int, int], int, int, int, int]]:
        """Every used node: ((k0, k1), flags, access_ms, fs_size, lock_until_ms), read
        without the lock (the manager decides on it, then re-checks each removal under the
        lock); ``words_md5(k0, k1)`` is the md5. Strided column reads: about 30 ms for a
        10 MB zone (109k slots, 20k used) on the 2-core test box."""
        mv = self.mv
        end = HEADER_WORDS + self.slots * NODE_WORDS

        def column(field: int) -> list[int]:
            return mv[HEADER_WORDS + field : end : NODE_WORDS].tolist()

        flags = column(N_FLAGS)
        used = [i for i, f in enumerate(flags) if f & F_USED]
        if not used:
            return []
        k0, k1, access, size, lock = (
            column(f) for f in (N_K0, N_K1, N_ACCESS_MS, N_FS_SIZE, N_LOCK_UNTIL_MS)
        )
        return [((k0[i], k1[i]), flags[i], access[i], size[i], lock[i]) for i in used]


class IndexSet:
    """The master's indexes by ``CachePathConfig.index_key`` (kept across reloads while a
    zone keeps its name, path, levels and size; a changed one gets a new, cold index)."""

    def __init__(self, fallback_lock: Any = None, rows: int | None = None) -> None:
        self.fallback_lock = fallback_lock
        # rule 7: a counter row per worker row of the shared zone (the fallback lock's owner)
        self.rows = rows if rows is not None else int(getattr(fallback_lock, "rows", 0))
        self.indexes: dict[tuple[str, str, tuple[int, ...], int], CacheIndex] = {}

    def for_paths(self, paths: dict[str, Any]) -> dict[str, CacheIndex]:
        out: dict[str, CacheIndex] = {}
        for name, cp in paths.items():
            index = self.indexes.get(cp.index_key)
            if index is None:
                index = self.indexes[cp.index_key] = CacheIndex(
                    cp.keys_zone_bytes, self.fallback_lock, rows=self.rows
                )
                index.mv[H_CREATED_MS] = _now_ms()
            out[name] = index
        return out

    def prune(self, paths: dict[str, Any]) -> None:
        keep = {cp.index_key for cp in paths.values()}
        for key in list(self.indexes):
            if key not in keep:
                self.indexes.pop(key).close()

    def break_dead_holder(self, pid: int) -> None:
        """A child died: free the index lock if it held it, then the key locks it held."""
        for index in self.indexes.values():
            index.break_dead_holder(pid)
            index.release_locks_of(pid)


def _now_ms() -> int:
    return int(time.time() * 1000)
