"""The cache manager process: the cache loader pass, then nginx's cache manager (issue 18).

One process per master, forked and supervised like the health prober (master/cachemanager.py),
only when some ``[http.proxy_cache_paths]`` is configured. Plain Python (no gevent: it
serves nothing, it only walks directories and removes files).

Rules:
1. Loader: at start, every index that is still cold (new: a first start, a restart, a binary
   upgrade's new master, a reload that changed the zone's size) is rebuilt from its
   directory: each file named like an entry at the ``levels`` depth is opened and verified
   (cache/entry.py rule 1) and recorded as existing with its size and validity, as last used
   now (nginx: expire = now + inactive); a bad file is removed. Temp files whose writer
   process is gone are removed. Then the index is marked warm (``cold: false`` in the API).
   A node a worker recorded meanwhile is left as it is (``set_exists(only_new=True)``).
   An index kept across a reload is warm and not loaded again.
2. Manager: every ``PERIOD_S`` (1 s) each zone's size and free space are checked; a zone
   short of either, or not scanned for ``inactive / 10`` (1 to 10 s; nginx's manager wakes
   at most every 10 s), is scanned without the lock (cache/index.py rule 6) and nodes are
   removed: those unused for ``inactive``; then, least recently used first, while the
   files exceed ``max_size`` or the filesystem has less than ``min_free`` free. A node
   someone holds the lock of is never removed, and each removal re-checks under the lock
   that the node was
   not used since the scan (``remove(unless_accessed_after_ms=...)``). Files are unlinked
   after the lock is released.
3. The process exits on TERM/QUIT/INT, and by itself when the master is gone (its parent
   pid changes); USR1 reopens the error log. It drops privileges like a worker.
4. Nothing here raises out of a pass: an unreadable directory or a failing unlink is logged
   (at most once a minute per zone) and the next pass tries again.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from prefork_lb.cache.entry import TMP_DIR, EntryError, fs_size, read_prefix
from prefork_lb.cache.index import F_EXISTS, F_UPDATING, H_LOADED, CacheIndex, words_md5
from prefork_lb.cache.store import CacheZone
from prefork_lb.config.model import CachePathConfig

log = logging.getLogger("prefork_lb.error")

PERIOD_S: Final = 1.0
K = TypeVar("K")
ERROR_LOG_INTERVAL_S: Final = 60.0


def load_zone(zone: CacheZone, now_ms: int) -> tuple[int, int]:
    """Rule 1 for one zone: (files indexed, bad files removed). Marks the index warm."""
    loaded = removed = 0
    index = zone.index
    for path, md5 in zone.files():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            parsed = read_prefix(fd)
            size = os.fstat(fd).st_size
            if size != parsed.body_offset + parsed.body_length:
                raise EntryError("truncated")
        except (OSError, EntryError):
            parsed = None
        finally:
            os.close(fd)
        if parsed is None:
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
            continue
        gone = index.set_exists(md5, fs_size(size), parsed.meta.valid_until_ms, now_ms, only_new=True)
        if gone is not None:
            zone._unlink_md5(gone)
        loaded += 1
    _clean_tmp(os.path.join(zone.root, TMP_DIR))
    index.mv[H_LOADED] = loaded
    index.set_cold(False)
    return loaded, removed


def _clean_tmp(tmp: str) -> None:
    """Temp files ``<md5>.<pid>.<n>`` whose writer process no longer exists."""
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        parts = name.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        try:
            os.unlink(os.path.join(tmp, name))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def plan_removals(
    nodes: list[tuple[K, int, int, int, int]],
    now_ms: int,
    inactive_ms: int,
    max_size: int,
    size_now: int,
    need_free: int,
) -> list[tuple[K, int, int]]:
    """Rule 2, sans-IO: which nodes to remove, in order: (key, access_ms, fs_size).
    ``nodes`` is ``CacheIndex.snapshot()``; ``need_free``: bytes to free for min_free.
    Inactive nodes first (in node order), then least recently used files while the size
    or the free space is short (sorted only then)."""
    out: list[tuple[K, int, int]] = []
    keep: list[tuple[K, int, int, int, int]] = []
    size = size_now
    cutoff = now_ms - inactive_ms
    for n in nodes:
        if n[1] & F_UPDATING and n[4] > now_ms:
            continue  # someone fetches it
        if n[2] <= cutoff:
            nbytes = n[3] if n[1] & F_EXISTS else 0
            out.append((n[0], n[2], nbytes))
            size -= nbytes
            need_free -= nbytes
        elif n[1] & F_EXISTS:
            keep.append(n)
    if (max_size and size > max_size) or need_free > 0:
        keep.sort(key=lambda n: n[2])  # least recently used first
        for n in keep:
            if not ((max_size and size > max_size) or need_free > 0):
                break
            out.append((n[0], n[2], n[3]))
            size -= n[3]
            need_free -= n[3]
    return out


class Manager:
    """The manager's state for every zone (rule 2)."""

    def __init__(self, zones: list[CacheZone]) -> None:
        self.zones = zones
        self._last_error_s: dict[str, float] = {}
        self._scanned_ms: dict[str, int] = {}

    def load(self) -> None:
        for zone in self.zones:
            if not zone.index.cold:
                continue
            t0 = time.monotonic()
            loaded, removed = load_zone(zone, _now_ms())
            log.log(
                25,
                'cache "%s": loader indexed %d file(s) in %.3fs%s',
                zone.name,
                loaded,
                time.monotonic() - t0,
                f", removed {removed} bad file(s)" if removed else "",
            )

    def run_once(self) -> int:
        """One pass over every zone; returns how many entries were removed."""
        total = 0
        for zone in self.zones:
            try:
                total += self.manage(zone)
            except OSError as e:
                self._error(zone, e)
        return total

    def manage(self, zone: CacheZone) -> int:
        """One zone's pass: the full scan runs when the size or the free space is short, and
        otherwise every ``inactive / 10`` (between 1 and 10 s: nginx's manager wakes at
        most every 10 s), so a large idle zone is not scanned every second."""
        cp: CachePathConfig = zone.config
        index: CacheIndex = zone.index
        now_ms = _now_ms()
        need_free = 0
        if cp.min_free_bytes:
            st = os.statvfs(cp.path)
            need_free = cp.min_free_bytes - st.f_bavail * st.f_frsize
        short = (cp.max_size_bytes and index.size_on_disk > cp.max_size_bytes) or need_free > 0
        every_ms = int(min(10.0, max(PERIOD_S, cp.inactive_s / 10)) * 1000)
        if not short and now_ms - self._scanned_ms.get(zone.name, 0) < every_ms:
            return 0
        self._scanned_ms[zone.name] = now_ms
        plan = plan_removals(
            index.snapshot(),
            now_ms,
            int(cp.inactive_s * 1000),
            cp.max_size_bytes,
            index.size_on_disk,
            need_free,
        )
        removed = 0
        for (k0, k1), access_ms, _ in plan:
            md5 = words_md5(k0, k1)
            if index.remove(md5, now_ms, unless_accessed_after_ms=access_ms):
                removed += 1
                try:
                    os.unlink(zone.path_of(md5))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    self._error(zone, e)
        return removed

    def _error(self, zone: CacheZone, e: OSError) -> None:
        now_s = time.monotonic()
        if now_s - self._last_error_s.get(zone.name, -ERROR_LOG_INTERVAL_S) < ERROR_LOG_INTERVAL_S:
            return
        self._last_error_s[zone.name] = now_s
        log.error(
            'cache "%s": cache manager: %s (%d: %s)', zone.name, zone.root, e.errno or errno.EIO, e.strerror
        )


def run_manager(config: Any, indexes: Mapping[str, CacheIndex], master_pid: int, zone: Any) -> int:
    """The process body (after fork and descriptor hygiene): rule 3."""
    from prefork_lb.log import reopen_error_log
    from prefork_lb.signals import MASTER_SIGNALS

    stop: list[int] = []
    reopen: list[int] = []
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
        signal.signal(sig, lambda s, f: stop.append(s))
    signal.signal(signal.SIGUSR1, lambda s, f: reopen.append(s))
    try:
        from setproctitle import setproctitle

        setproctitle("prefork-lb: cache manager process")
        zones = [
            CacheZone(cp, indexes[name]) for name, cp in config.http.cache_paths.items() if name in indexes
        ]
        _drop_privileges(config, zone)
    except Exception as e:
        log.critical("cache manager failed to start: %r", e)
        return 3
    manager = Manager(zones)
    manager.load()
    while not stop:
        if os.getppid() != master_pid:
            return 0
        if reopen:
            reopen.clear()
            reopen_error_log()
        manager.run_once()
        deadline = time.monotonic() + PERIOD_S
        while not stop and time.monotonic() < deadline:
            time.sleep(0.05)  # a stop signal is seen within 50 ms
    return 0


def _drop_privileges(config: Any, zone: Any) -> None:
    from prefork_lb.worker import privileges

    if config.user is None or os.getuid() != 0:
        return
    if zone is not None:
        zone.lock()  # opens this process's own lock descriptor (the flock index lock uses it)
        zone.unlock()
    uid, gid = privileges.resolve(config.user, config.group)
    privileges.drop(uid, gid)


def _now_ms() -> int:
    return int(time.time() * 1000)
