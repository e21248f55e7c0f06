"""The shared-memory zone: one memfd mapping shared by the master and every worker.

Layout and rules: ``zone/layout.py``. The memfd is created by the master before the first
fork and survives reloads (its fd can also cross exec for a binary upgrade).

The lock is one of two kinds, chosen by the master that creates the zone and recorded in
its header (``H_LOCK_KIND``), so every process sharing the zone (a binary upgrade's new
master and workers too) uses the same one:

- ``LOCK_FUTEX`` (when the C extension ``balance/_pickloop.c`` is built and
  ``PREFORK_LB_PURE`` is not set): a futex word in the header holding the holder's pid.
  Uncontended, a lock/unlock pair is two atomic instructions and no syscall (flock: two
  syscalls, ~0.7 us a pair). A holder killed inside its critical section cannot lock the
  others out: a waiter looks at the holder every 10 ms of waiting and takes the lock over
  from a dead (or zombie) holder, and the master breaks a dead worker's hold when it
  repairs its row. A process without the extension cannot attach to such a zone
  (``ZoneLockUnavailable``: a binary upgrade to a pure build is refused, never unlocked).
  Unlike ``flock`` (one owner per open file description) it is not re-entrant: never lock
  while holding it (signal handlers included; the master's only record the signal).
- ``LOCK_FLOCK`` (pure builds, and zones made before the kind word existed): ``flock`` on
  an open file description of the memfd that belongs to one process: after fork each
  process opens ``/proc/self/fd/<memfd>`` again, so workers do not share one lock owner.
  The kernel releases a dead holder's lock (measured: 0.8 us per lock/unlock pair).

Critical sections are a few dozen loads and stores and never span I/O; a waiting worker
blocks its hub for at most that long. Which fd (or pid) is "ours" is reset by an at-fork
hook in the child, not checked with ``getpid()`` per lock: on this Python that is a
syscall, three per proxied request.

Only tests use three members today, none of them per request: ``lock_kind`` and
``lock_holder`` state the lock's observable state in the zone's own terms (so no test
decodes the header word), and ``for_peers`` / ``create(lock=...)`` size a zone for a few
peers and choose its lock kind (the flock tests run on a compiled build too).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from prefork_lb.zone import layout as L


class ZoneFullError(Exception):
    pass


class ZoneLockUnavailable(Exception):
    """The zone uses the futex lock and this process has no compiled extension."""


class ZoneVersionError(Exception):
    """An inherited zone (binary upgrade) has another layout version than this build."""


def _load_native() -> Any:
    if os.environ.get("PREFORK_LB_PURE", "") not in ("", "0"):
        return None
    try:
        from prefork_lb.balance import _pickloop
    except ImportError:
        return None
    return _pickloop


_native = _load_native()
if _native is not None:
    _zone_lock: Callable[[int], bool] = _native.zone_lock
    _zone_unlock: Callable[[int], None] = _native.zone_unlock


_zones: weakref.WeakSet[Zone] = weakref.WeakSet()


def _forget_lock_fds() -> None:
    """In a forked child: the inherited lock fd shares the parent's lock owner; the next
    lock() opens the child's own (the inherited one stays open, CLOEXEC, as before)."""
    for zone in _zones:
        zone._lock_fd = -1


os.register_at_fork(after_in_child=_forget_lock_fds)


class Zone:
    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._mmap = mmap.mmap(fd, size)
        self.mv = memoryview(self._mmap).cast("q")
        if self.mv[L.H_MAGIC] != L.MAGIC or self.mv[L.H_VERSION] != L.VERSION:
            version = self.mv[L.H_VERSION]
            self.mv.release()
            self._mmap.close()
            raise ZoneVersionError(
                f"the inherited zone has layout version {version}, this build uses {L.VERSION}: "
                "restart instead of a binary upgrade"
            )
        self.rows = self.mv[L.H_ROWS]
        self.peers = self.mv[L.H_PEERS]
        self._lock_fd = -1
        self._lock_addr = 0
        self._setup_lock()
        _zones.add(self)

    def _setup_lock(self) -> None:
        kind = self.mv[L.H_LOCK_KIND]
        if kind == L.LOCK_FLOCK:
            return
        if kind != L.LOCK_FUTEX:
            raise ZoneLockUnavailable(f"unknown zone lock kind {kind}")
        if _native is None:
            raise ZoneLockUnavailable(
                "the zone uses the compiled futex lock and this build has no _pickloop "
                "(PREFORK_LB_PURE is set or the C extension was not built)"
            )
        self._lock_addr = _native.lock_address(self.mv, 8 * L.H_LOCK)

    @property
    def lock_kind(self) -> str:
        return "futex" if self._lock_addr else "flock"

    @classmethod
    def create(cls, size: int = L.DEFAULT_SIZE, rows: int = L.DEFAULT_ROWS, lock: str | None = None) -> Zone:
        """``lock``: "futex" or "flock"; by default the futex lock when the extension is there."""
        peers = L.peer_capacity(size, rows)
        if peers < 1:
            raise ZoneFullError(f"zone_size {size} is too small for {rows} worker rows")
        fd = os.memfd_create("prefork-lb-zone", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        zone = cls.__new__(cls)
        zone.fd = fd
        zone.size = size
        zone._mmap = mmap.mmap(fd, size)
        zone.mv = memoryview(zone._mmap).cast("q")
        mv = zone.mv
        mv[L.H_MAGIC] = L.MAGIC
        mv[L.H_VERSION] = L.VERSION
        mv[L.H_ROWS] = rows
        mv[L.H_PEERS] = peers
        mv[L.H_SIZE] = size
        if lock is None:
            lock = "flock" if _native is None else "futex"
        mv[L.H_LOCK_KIND] = L.LOCK_FUTEX if lock == "futex" else L.LOCK_FLOCK
        zone.rows = rows
        zone.peers = peers
        zone._lock_fd = -1
        zone._lock_addr = 0
        zone._setup_lock()
        _zones.add(zone)
        return zone

    @classmethod
    def for_peers(cls, peers: int, rows: int = 1, lock: str | None = None) -> Zone:
        """A zone just big enough for ``peers`` (tests: see the module header)."""
        return cls.create(L.size_for(max(1, peers), rows), rows, lock)

    # ---- the lock ----

    def _ensure_lock_fd(self) -> int:
        if self._lock_fd < 0:  # first use in this process (e.g. after fork): own lock owner
            self._lock_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
        return self._lock_fd

    def lock(self) -> None:
        addr = self._lock_addr
        if addr:
            _zone_lock(addr)  # True: taken over from a dead holder; the master recounts its row
            return
        fd = self._lock_fd
        fcntl.flock(fd if fd >= 0 else self._ensure_lock_fd(), fcntl.LOCK_EX)

    def unlock(self) -> None:
        addr = self._lock_addr
        if addr:
            _zone_unlock(addr)
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def lock_holder(self) -> int:
        """The futex lock's holder pid, 0 when free (or with the flock kind)."""
        return int(self.mv[L.H_LOCK]) & 0x3FFFFFFF if self._lock_addr else 0

    def __enter__(self) -> Zone:
        self.lock()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unlock()

    # ---- peer slots (master, under the lock) ----

    def init_peer(self, slot: int, weight: int, key_hash: int = 0, used: int = L.USED_PEER) -> None:
        base = L.peer_base(slot)
        mv = self.mv
        for i in range(L.PEER_WORDS):
            mv[base + i] = 0
        mv[base + L.P_USED] = used
        mv[base + L.P_KEY_HASH] = key_hash
        mv[base + L.P_EW] = weight
        mv[base + L.P_RT_MS] = -1
        for row in range(self.rows):
            mv[L.active_index(row, self.peers, slot)] = 0
            mv[L.inflight_index(row, self.peers, slot)] = 0

    def reweigh_peer(self, slot: int, weight: int) -> None:
        base = L.peer_base(slot)
        if self.mv[base + L.P_EW] > weight:
            self.mv[base + L.P_EW] = weight

    def free_peer(self, slot: int) -> None:
        self.mv[L.peer_base(slot) + L.P_USED] = 0

    # ---- worker rows (master) ----

    def claim_row(self, row: int, generation: int, worker_slot: int) -> None:
        """Before fork (the child may count at once); the pid is filled in after fork."""
        base = L.row_base(row, self.peers)
        mv = self.mv
        for i in range(L.row_words(self.peers)):
            mv[base + i] = 0
        mv[base + L.R_PID] = -1  # live, pid not known yet
        mv[base + L.R_GENERATION] = generation
        mv[base + L.R_SLOT] = worker_slot
        mv[base + L.R_STARTED_MS] = int(time.time() * 1000)
        mv[base + L.R_HEARTBEAT_NS] = time.monotonic_ns()

    def release_row(self, row: int) -> None:
        """After a worker died: drop its row and recount every peer's connections (and
        least_time's in-flight start times) from the live rows, exact wherever it was killed."""
        pid = int(self.mv[L.row_base(row, self.peers) + L.R_PID])
        if self._lock_addr and pid > 0 and _native is not None:
            _native.break_lock(self._lock_addr, pid)  # killed inside the critical section
        with self:
            base = L.row_base(row, self.peers)
            self.mv[L.H_ACCEPTED_GONE] += self.mv[base + L.R_ACCEPTED]  # counters never go back
            self.mv[L.H_DROPPED_GONE] += self.mv[base + L.R_DROPPED]
            for i in range(L.row_words(self.peers)):
                self.mv[base + i] = 0
            self._recount()

    def break_dead_holder(self, pid: int) -> None:
        """After a child without a row (the health prober) died: free the lock if it held it."""
        if self._lock_addr and pid > 0 and _native is not None:
            _native.break_lock(self._lock_addr, pid)

    def _recount(self) -> None:
        mv, peers = self.mv, self.peers
        live = [r for r in range(self.rows) if mv[L.row_base(r, peers) + L.R_PID]]
        for slot in range(peers):
            base = L.peer_base(slot)
            if mv[base + L.P_USED] == L.USED_PEER:  # zone slots' row cells count "processing"
                mv[base + L.P_CONNS] = sum(mv[L.active_index(r, peers, slot)] for r in live)
                mv[base + L.P_INFLIGHT_MS] = sum(mv[L.inflight_index(r, peers, slot)] for r in live)

    def add(self, word: int, value: int = 1) -> None:
        """Master counters in the header (respawns, reloads)."""
        with self:
            self.mv[word] += value

    def set(self, word: int, value: int) -> None:
        self.mv[word] = value

    def set_row_pid(self, row: int, pid: int) -> None:
        self.mv[L.row_base(row, self.peers) + L.R_PID] = pid

    def heartbeat(self, row: int) -> None:
        self.mv[L.row_base(row, self.peers) + L.R_HEARTBEAT_NS] = time.monotonic_ns()

    def heartbeat_ns(self, row: int) -> int:
        return int(self.mv[L.row_base(row, self.peers) + L.R_HEARTBEAT_NS])

    def peer_word(self, slot: int, field: int) -> int:
        return int(self.mv[L.peer_base(slot) + field])

    def row_pid(self, row: int) -> int:
        return int(self.mv[L.row_base(row, self.peers) + L.R_PID])

    def close(self) -> None:
        self._lock_addr = 0
        self.mv.release()
        self._mmap.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        os.close(self.fd)
