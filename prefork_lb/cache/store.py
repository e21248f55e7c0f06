"""The worker-side cache store: one ``CacheZone`` per keys_zone (issue 18).

The request path (http/cache_path.py) sees the cache only through this module:

    zone = runtime.caches["mycache"]               # CacheZone, built at worker start
    found = zone.lookup(key, now_ms)               # counts a use, opens and verifies the file
    found.md5, found.uses, found.updating          # updating: another request's lock is live
    found.entry                                    # Entry | None (missing, corrupt, truncated,
                                                   # another key: all None, never served)
    entry.status, entry.head, entry.meta           # EntryMeta: valid_until_ms, etag, ...
    entry.fd, entry.body_offset, entry.body_length # sendfile; or entry.read(n) / entry.pread(n, pos)
                                                   # (fd -1: a small body held in memory, rule 8)
    entry.close()                                  # always (a with-block works too)
    zone.try_lock(md5, now_ms, lock_age_ms)        # True: we fetch; False: someone else does
    zone.wait_unlocked(md5, timeout_s)             # gevent: True as soon as it is unlocked
    zone.unlock(md5)                               # after commit or abort (or lock_age ends it)
    w = zone.writer(key, meta, head, status="miss") # EntryWriter | None (unwritable, disk full)
    w.write(chunk); w.commit(expected_length=None)  # -> bool; or w.abort()
    zone.refresh(md5, meta)                        # REVALIDATED: new freshness, same body
    zone.remember_error(md5, status, valid_until_ms) # an intercepted upstream error (rule 9)
    found.error                                    # ... reported by the lookups while valid
    zone.count("hit", nbytes)                      # hit/stale/updating/revalidated/miss/expired/bypass
                                                   # (lock-free: own counter row, index.py rule 7)

Rules:
1. Nothing here raises into the request path on a filesystem problem: an unreadable file is
   a miss, an unwritable directory or a full disk gives no writer (or a writer that stops
   storing), logged at most once a minute per zone and worker, and the request is served
   uncached.
2. Index operations take the index lock once each and never span I/O (cache/index.py
   rule 1): opening, reading, writing and unlinking happen outside it.
3. ``commit`` renames the temp file into place, then records the node as existing with its
   size on disk; it does not unlock (the caller unlocks, so waiters wake after the entry is
   visible). ``abort`` unlinks the temp file: no partial entry ever exists.
4. The lock is nginx's ``proxy_cache_lock`` plus ``lock_age``: ``try_lock`` fails only while
   another holder's lock is live (``lock_until_ms``), so a worker that died or hangs holding
   it blocks the key at most ``lock_age_ms``.
5. Waking waiters: ``wait_unlocked`` looks at the node every ``WAIT_POLL_S`` (1 ms at first,
   doubling to 5 ms) in a gevent sleep, an unlocked 8-byte load each time; so a waiter
   wakes at most 5 ms after ``unlock`` ran in any worker (nginx polls every 500 ms). A
   cross-process notification (eventfd, pipe) cannot broadcast to every waiting worker
   without a descriptor per worker in the spec; at 5 ms the polling costs ~200 loads a
   second per waiting request, only while it waits.
6. While the index is cold (the loader has not read the directory yet, after a restart or
   a binary upgrade), a lookup of a key the index does not know opens its file anyway and
   records it when it is valid: HITs survive a restart from the first request.
7. Purge: ``purge_key`` removes one key's node and file; ``purge_prefix`` reads the key of
   every file (a key ending in ``*`` in the API) and removes those that match; ``purge_all``
   empties the index and removes every file. The file walks call ``pause()`` every
   ``PURGE_BATCH`` files (gevent.sleep(0) in a worker) so a large purge never stalls the
   worker's other connections, and never hold the index lock across I/O.
8. Open-entry memo (nginx's open_file_cache, always on): a worker keeps the entries its
   lookups verified, by md5, with the index node's ``version`` (cache/index.py rule 3): a
   HIT on a known entry is ``index.use`` plus a dict lookup, no open/pread/fstat/parse.
   Bodies up to ``MEMO_BODY_MAX`` are kept in memory (no descriptor); larger entries keep
   their descriptor (at most ``MEMO_FDS_MAX``) for sendfile. A commit, refresh, purge or
   dropped file changes or removes the node, so the next lookup sees it and opens the file
   again; ``purge_all`` and evictions (the header's purge/evicted counters) empty the memo at
   the next lookup, so unlinked files are not held open. Writes to a cache file by anything
   but the store (editing it in place by hand) are not seen while the memo holds it. A
   file that fails while served (``Entry.invalidate``) is dropped. Bounded by
   ``MEMO_MAX`` entries and ``MEMO_BYTES_MAX`` bytes, oldest first out.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from prefork_lb.cache.entry import (
    TMP_DIR,
    Entry,
    EntryError,
    EntryMeta,
    EntryWriter,
    Shared,
    entry_path,
    open_checked,
    open_entry,
    read_prefix,
    rewrite_meta,
)
from prefork_lb.cache.index import (
    C_BYTES,
    C_BYTES_WRITTEN,
    C_RESPONSES,
    C_WRITTEN,
    COUNTER_WORDS,
    H_EVICTED,
    H_PURGES,
    STATUSES,
    CacheIndex,
)
from prefork_lb.config.model import CachePathConfig

log = logging.getLogger("prefork_lb.error")

ERROR_LOG_INTERVAL_S: Final = 60.0
WAIT_POLL_S: Final = (0.001, 0.005)  # first and longest poll interval (rule 5)
PURGE_BATCH: Final = 200
MEMO_MAX: Final = 1024  # entries a worker keeps open per zone (rule 8)
MEMO_FDS_MAX: Final = 64  # of which holding a descriptor (bodies over MEMO_BODY_MAX)
MEMO_BODY_MAX: Final = 32 * 1024  # bodies up to this are kept in memory (cache_serve.SENDFILE_MIN)
MEMO_BYTES_MAX: Final = 16 << 20  # bodies in memory, per zone and worker
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def key_md5(key: bytes) -> bytes:
    return hashlib.md5(key, usedforsecurity=False).digest()


@dataclass(slots=True)
class Lookup:
    md5: bytes
    uses: int  # this key's uses, this one included (proxy_cache_min_uses)
    updating: bool  # another request holds the key's lock (live)
    entry: Entry | None  # a complete, verified file for this key, or None
    error: int = 0  # a remembered intercepted upstream error (rule 9): entry is None


class CacheWriter:
    """``EntryWriter`` plus the index update on commit (rule 3)."""

    __slots__ = ("_counted", "_status", "_w", "md5", "zone")

    def __init__(self, zone: CacheZone, md5: bytes, w: EntryWriter, status: str) -> None:
        self.zone = zone
        self.md5 = md5
        self._w = w
        self._status = status
        self._counted = False

    @property
    def failed(self) -> bool:
        return self._w.failed

    @property
    def body_length(self) -> int:
        return self._w.body_length

    def write(self, chunk: bytes | memoryview) -> None:
        self._w.write(chunk)

    def commit(self, expected_length: int | None = None) -> bool:
        """Rename into place and record it; False if nothing was stored (a write failed, or
        the body is not ``expected_length`` bytes long: the upstream died mid-body)."""
        w = self._w
        size = w.finish(expected_length)
        if size < 0:
            if w.error is not None:
                self.zone._fs_error("write", w.error)
            return False
        evicted = self.zone.index.set_exists(self.md5, size, w.meta.valid_until_ms, _now_ms())
        if evicted is not None:
            self.zone._unlink_md5(evicted)
        if self._status in ("miss", "expired", "bypass"):
            self.zone.count_written(self._status, w.body_length)
        return True

    def abort(self) -> None:
        self._w.abort()


class CacheZone:
    """One keys_zone in one process (a worker, the manager, tests)."""

    def __init__(self, config: CachePathConfig, index: CacheIndex, row: int = -1) -> None:
        self.name = config.name
        self.config = config
        self.index = index
        self.root = config.path
        self.levels = config.levels
        self._last_error_s = -ERROR_LOG_INTERVAL_S
        self._memo: dict[bytes, Shared] = {}  # rule 8
        self._memo_fds = 0
        self._memo_bytes = 0
        self._memo_epoch = -1
        # index.py rule 7: this worker's counter row (lock-free), else the locked header words
        rbase = index.row_counters(row)
        self._rows_mv = index.rows_mv if rbase is not None else None
        self._cbase = {s: (rbase or 0) + n * COUNTER_WORDS for n, s in enumerate(STATUSES)}

    def path_of(self, md5: bytes) -> str:
        return entry_path(self.root, self.levels, md5)

    # ---- lookup and lock ----

    def lookup(self, key: bytes, now_ms: int) -> Lookup:
        md5 = key_md5(key)
        view, evicted = self.index.use(md5, now_ms)
        if evicted is not None:
            self._unlink_md5(evicted)
        entry = None
        if not view.exists:
            if view.error:  # rule 9 (an error is reported as a node without a file)
                return Lookup(md5, view.uses, False, None, view.error)
            if md5 in self._memo:  # purged or dropped: not held open
                self._forget(md5)
        if view.exists:
            memo = self._memo
            mv = self.index.mv
            epoch = mv[H_PURGES] + mv[H_EVICTED]
            if epoch != self._memo_epoch:
                self._forget_all()
                self._memo_epoch = epoch
            shared = memo.get(md5)
            if shared is not None:
                if shared.version == view.version and not shared.dropped and shared.parsed.key == key:
                    return Lookup(
                        md5, view.uses, view.updating and view.lock_until_ms > now_ms, shared.borrow()
                    )
                self._forget(md5)
            entry, bad = open_checked(self.path_of(md5), key)
            if entry is None and bad:  # a REVALIDATED rewrite in place may race: look again
                entry, bad = open_checked(self.path_of(md5), key)
            if entry is None and bad:
                self.index.clear_exists(md5)  # gone, corrupt, truncated or another key's
            elif entry is not None and view.version:
                entry = self._remember(md5, entry, view.version)
        elif self.index.cold:  # rule 6
            entry = open_entry(self.path_of(md5), key)
            if entry is not None:
                size = os.fstat(entry.fd).st_size
                gone = self.index.set_exists(
                    md5, (size + 4095) // 4096 * 4096, entry.meta.valid_until_ms, now_ms
                )
                if gone is not None:
                    self._unlink_md5(gone)
        updating = view.updating and view.lock_until_ms > now_ms
        return Lookup(md5, view.uses, updating, entry)

    def _remember(self, md5: bytes, entry: Entry, version: int) -> Entry | None:
        """Rule 8: keep ``entry`` (just opened and verified) in the memo; the caller gets a
        borrowed entry instead. None when its body could not be read (as a miss)."""
        try:
            shared = Shared.adopt(entry, version, MEMO_BODY_MAX)
        except OSError:
            return None
        memo = self._memo
        while memo and (
            len(memo) >= MEMO_MAX
            or (shared.body is None and self._memo_fds >= MEMO_FDS_MAX)
            or (shared.body is not None and self._memo_bytes + len(shared.body) > MEMO_BYTES_MAX)
        ):
            self._forget(next(iter(memo)))
        memo[md5] = shared
        if shared.body is None:
            self._memo_fds += 1
        else:
            self._memo_bytes += len(shared.body)
        return shared.borrow()

    def _forget(self, md5: bytes) -> None:
        shared = self._memo.pop(md5, None)
        if shared is None:
            return
        if shared.body is None:
            self._memo_fds -= 1
        else:
            self._memo_bytes -= len(shared.body)
        shared.drop()

    def _forget_all(self) -> None:
        for md5 in list(self._memo):
            self._forget(md5)

    def try_lock(self, md5: bytes, now_ms: int, lock_age_ms: int) -> bool:
        return self.index.try_lock(md5, now_ms, lock_age_ms, _pid)

    def unlock(self, md5: bytes) -> None:
        self.index.release(md5)

    def is_locked(self, md5: bytes, now_ms: int) -> bool:
        return self.index.is_locked(md5, now_ms)

    def wait_unlocked(self, md5: bytes, timeout_s: float) -> bool:
        """Rule 5 (gevent): True as soon as nobody holds a live lock on ``md5``, False when
        ``timeout_s`` passed first."""
        import gevent

        deadline = time.monotonic() + timeout_s
        delay, longest = WAIT_POLL_S
        while True:
            if not self.index.is_locked(md5, _now_ms()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            gevent.sleep(min(delay, left))
            delay = min(delay * 2, longest)

    # ---- storing ----

    def writer(self, key: bytes, meta: EntryMeta, head: bytes, status: str = "miss") -> CacheWriter | None:
        """A writer for ``key``'s new entry, None when it cannot be stored (rule 1).
        ``status``: the request's cache status, for the *_written counters."""
        md5 = key_md5(key)
        try:
            w = EntryWriter(self.root, self.path_of(md5), key, meta, head, _now_ms())
        except OSError as e:
            self._fs_error("create a temp file in", e)
            return None
        except EntryError:
            return None  # an ETag or Vary too long to store: served uncached
        return CacheWriter(self, md5, w, status)

    def refresh(self, md5: bytes, meta: EntryMeta, key: bytes | None = None) -> bool:
        """REVALIDATED: new freshness and validators for the stored entry, same body
        (``key``: also check the file is that key's). False if the file is gone or bad."""
        ok = rewrite_meta(self.path_of(md5), key, meta)
        if ok:
            self.index.set_valid(md5, meta.valid_until_ms)
        return ok

    def remember_error(self, md5: bytes, status: int, valid_until_ms: int) -> None:
        """Rule 9: lookups of ``md5`` report ``status`` until ``valid_until_ms``."""
        evicted = self.index.set_error(md5, status, valid_until_ms, _now_ms())
        if evicted is not None:
            self._unlink_md5(evicted)

    def count(self, status: str, nbytes: int) -> None:
        """One response served with ``status`` (one of ``STATUSES``), ``nbytes`` body bytes:
        in the worker's own counter row, no lock (index.py rule 7)."""
        base = self._cbase.get(status)
        if base is None:
            return
        rmv = self._rows_mv
        if rmv is not None:
            rmv[base + C_RESPONSES] += 1
            rmv[base + C_BYTES] += nbytes
        else:
            self.index.count(status, nbytes)

    def count_written(self, status: str, nbytes: int) -> None:
        """One response of ``status`` stored (the *_written counters)."""
        rmv = self._rows_mv
        if rmv is not None:
            base = self._cbase[status]
            rmv[base + C_WRITTEN] += 1
            rmv[base + C_BYTES_WRITTEN] += nbytes
        else:
            self.index.count(status, nbytes, written=True)

    # ---- removal ----

    def _unlink_md5(self, md5: bytes) -> None:
        try:
            os.unlink(self.path_of(md5))
        except OSError:
            pass

    def purge_key(self, key: bytes) -> bool:
        """Remove one key's entry (True if there was a node or a file)."""
        md5 = key_md5(key)
        removed = self.index.remove(md5, force=True)
        try:
            os.unlink(self.path_of(md5))
            return True
        except OSError:
            return removed

    def purge_prefix(self, prefix: bytes, pause: Callable[[], None] = lambda: None) -> int:
        """Remove every entry whose key starts with ``prefix`` (rule 7). Returns how many."""
        removed = 0
        for n, (path, md5) in enumerate(self.files()):
            if n % PURGE_BATCH == PURGE_BATCH - 1:
                pause()
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                key = read_prefix(fd).key
            except (OSError, EntryError):
                continue
            finally:
                os.close(fd)
            if key.startswith(prefix):
                self.index.remove(md5, force=True)
                try:
                    os.unlink(path)
                    removed += 1
                except OSError:
                    pass
        return removed

    def purge_all(self, pause: Callable[[], None] = lambda: None) -> int:
        """Empty the cache (rule 7): every node, every file. Returns the files removed."""
        self.index.clear()
        removed = 0
        for n, (path, _) in enumerate(self.files()):
            if n % PURGE_BATCH == PURGE_BATCH - 1:
                pause()
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
        return removed

    def files(self) -> Iterator[tuple[str, bytes]]:
        """Every entry file under the levels (path, md5); temp files and strays are skipped."""
        yield from walk_entries(self.root, self.levels)

    # ---- errors (rule 1) ----

    def _fs_error(self, what: str, e: OSError) -> None:
        now_s = time.monotonic()
        if now_s - self._last_error_s < ERROR_LOG_INTERVAL_S:
            return
        self._last_error_s = now_s
        log.error(
            'cache "%s": cannot %s "%s" (%d: %s); serving uncached (logged once a minute)',
            self.name,
            what,
            self.root,
            e.errno or errno.EIO,
            e.strerror,
        )


def walk_entries(root: str, levels: tuple[int, ...]) -> Iterator[tuple[str, bytes]]:
    """(path, md5) of every file named like an entry at the right depth under ``root``."""

    def walk(path: str, depth: int) -> Iterator[tuple[str, bytes]]:
        try:
            it = os.scandir(path)
        except OSError:
            return
        with it:
            for de in it:
                name = de.name
                if depth < len(levels):
                    if len(name) == levels[depth] and _is_hex(name) and de.is_dir(follow_symlinks=False):
                        yield from walk(de.path, depth + 1)
                elif len(name) == 32 and _is_hex(name) and de.is_file(follow_symlinks=False):
                    yield de.path, bytes.fromhex(name)

    yield from walk(root, 0)


_HEX = frozenset("0123456789abcdef")


def _is_hex(name: str) -> bool:
    return all(c in _HEX for c in name)


def open_zones(
    paths: dict[str, CachePathConfig], indexes: dict[str, Any], row: int = -1
) -> dict[str, CacheZone]:
    """The worker's zones from its config and the indexes its spec inherited; ``row``: the
    worker's row of the shared zone, its counter row (index.py rule 7)."""
    return {name: CacheZone(cp, indexes[name], row) for name, cp in paths.items() if name in indexes}


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["TMP_DIR", "CacheWriter", "CacheZone", "Entry", "EntryMeta", "Lookup", "key_md5", "open_zones"]
