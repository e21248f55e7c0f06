"""The master's side of the cache manager process (cache/manager.py): spawn, stop, respawn.

Rules (the health prober's, arbiter.py rule 9):
1. Started only when some ``[http.proxy_cache_paths]`` is configured, once the first
   generation is ready; a successful reload stops it and starts one with the new config
   (which loads the indexes the reload made new); stopped with the workers (QUIT, TERM,
   WINCH: after a binary upgrade the new master's manager takes over; HUP after WINCH
   starts ours again).
2. A manager that dies is respawned (after 1 s if it died within a second of starting);
   the indexes live in the master's mappings, so nothing is lost. The master frees an index
   lock the dead manager held (``IndexSet.break_dead_holder``).
3. What the child keeps (spec.py rule 2): stdio, the error log, the zone's descriptors (the
   pure build's index lock is the zone's flock) and the indexes (anonymous mappings, no
   descriptor).

The master is seen through the ``Master`` protocol: exactly what this module touches.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any, Protocol

from prefork_lb.config.model import Config
from prefork_lb.master.procs import kill
from prefork_lb.master.spec import STDIO, enter_child, error_log_fds, zone_descriptors
from prefork_lb.zone.zone import Zone

log = logging.getLogger("prefork_lb.error")


class Master(Protocol):
    config: Config
    zone: Zone
    stopping: str | None
    cache_indexes: Any  # cache.index.IndexSet

    def all_sockets(self) -> list[socket.socket]: ...


class CacheManagerProc:
    """The manager process this master runs (0 when none) and those told to stop."""

    def __init__(self) -> None:
        self.pid = 0
        self.started = 0.0
        self.respawn_at = 0.0
        self.stopping: set[int] = set()

    @property
    def running(self) -> bool:
        return bool(self.pid or self.stopping)

    def start(self, master: Master) -> None:
        self.respawn_at = 0.0
        config = master.config
        if not config.http.cache_paths or self.pid or master.stopping:
            return
        indexes = master.cache_indexes.for_paths(config.http.cache_paths)
        keep = STDIO | set(zone_descriptors(master.zone)) | set(error_log_fds())
        master_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the manager; never returns
            code = 3
            try:
                enter_child(frozenset(keep), master.all_sockets())
                from prefork_lb.cache.manager import run_manager

                code = run_manager(config, indexes, master_pid, master.zone)
            finally:
                os._exit(code)
        self.pid = pid
        self.started = time.monotonic()
        log.log(25, "start cache manager process %d", pid)

    def stop(self) -> None:
        if self.pid:
            kill(self.pid, signal.SIGTERM)
            self.stopping.add(self.pid)
            self.pid = 0
        self.respawn_at = 0.0

    def reaped(self, master: Master, pid: int, status: int) -> bool:
        """True if ``pid`` was a cache manager (rule 2)."""
        if pid != self.pid and pid not in self.stopping:
            return False
        master.zone.break_dead_holder(pid)
        master.cache_indexes.break_dead_holder(pid)
        code = os.waitstatus_to_exitcode(status)
        if pid in self.stopping:
            self.stopping.discard(pid)
            log.log(25, "cache manager process %d exited with code %d", pid, code)
            return True
        self.pid = 0
        how = f"signal {-code}" if code < 0 else f"code {code}"
        log.error("cache manager process %d exited on %s", pid, how)
        if not master.stopping:
            quick = time.monotonic() - self.started < 1.0
            self.respawn_at = time.monotonic() + (1.0 if quick else 0.0)
        return True

    def respawn_due(self, master: Master) -> bool:
        if self.respawn_at and self.respawn_at <= time.monotonic():
            self.start(master)
            return True
        return False

    def kill_stopping(self, sig: int) -> None:
        for pid in self.stopping:
            kill(pid, sig)
