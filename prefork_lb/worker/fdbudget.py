"""This worker's budget of connections and file descriptors (sans-IO but for the log
and one read of /proc at start).

Rules:
1. Every client connection (HTTP, parked keep-alive ones included, TCP stream) and every UDP
   session takes one of ``worker_connections``, as a UDP session takes a connection in
   nginx.
2. Descriptors: the soft RLIMIT_NOFILE read when the worker starts serving, less the
   descriptors open at that moment (listeners, zone, logs, the event loop: counted once),
   less ``SPARE`` for short-lived ones (a log reopen), less the capacity of the idle
   keep-alive pools (the sum of ``keepalive`` over the HTTP upstream groups), is what
   connections may use. An HTTP or TCP stream connection costs ``STREAM_COST`` = 2: its
   own descriptor and one kept for its upstream leg, so a request in flight always has a
   descriptor to connect with (nginx counts a proxied connection twice in
   worker_connections too). A UDP session costs 1 (its upstream socket; the client side
   is the listener).
3. ``fits`` is two integer compares and the counters move at accept and close only:
   nothing per request.
4. Full: the acceptors stop (clients wait in the kernel's listen queue) and a datagram
   that would open a UDP session is dropped; the first close under both limits resumes
   accepting. The reason goes to the error log at ``alert``, at most once per
   ``LOG_INTERVAL_S`` per kind of message (``Throttle``), as do the resource errors
   (EMFILE, ENFILE, ENOBUFS, ENOMEM) the accept and UDP loops catch when the count was
   wrong (another process lowered the limit, descriptors opened outside the count).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Final

from prefork_lb.log import ALERT

log = logging.getLogger("prefork_lb.error")

STREAM_COST: Final = 2  # an HTTP or TCP stream connection and its upstream leg
UDP_COST: Final = 1  # a UDP session's upstream socket
SPARE: Final = 16  # short-lived descriptors outside the count (log reopen, resolver)
LOG_INTERVAL_S: Final = 1.0
# the kernel is out of something: drop this one, keep serving, say so (rate limited)
RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Throttle:
    """Says whether a message of one kind may be logged now: once per ``interval_s``."""

    __slots__ = ("_last", "interval_s")

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def due(self, kind: str, now_s: float) -> bool:
        last = self._last.get(kind)
        if last is not None and now_s - last < self.interval_s:
            return False
        self._last[kind] = now_s
        return True


_throttle = Throttle()


def alert(kind: str, message: str, *args: object) -> None:
    """Log ``message % args`` at alert unless a message of this ``kind`` was logged within
    ``LOG_INTERVAL_S`` (a flood of failures must not become a flood of log lines; the
    message is only formatted when it is logged)."""
    if _throttle.due(kind, time.monotonic()):
        log.log(ALERT, message, *args)


class Budget:
    """Counts connections and their descriptors against the two limits (rules 1-3)."""

    __slots__ = ("connections", "descriptors", "max_connections", "max_descriptors", "nofile", "paused")

    def __init__(self, worker_connections: int) -> None:
        self.max_connections = worker_connections
        self.max_descriptors = 1 << 62  # until ``limit_descriptors`` (the worker's start)
        self.nofile = 0
        self.connections = 0
        self.descriptors = 0
        self.paused = False  # the acceptors are stopped

    def limit_descriptors(self, nofile: int, in_use: int, pooled: int) -> None:
        """``nofile``: the soft RLIMIT_NOFILE; ``in_use``: descriptors open now; ``pooled``:
        idle upstream connections the keep-alive pools may hold. Never below one
        connection: a worker that can hold one at a time still serves."""
        self.nofile = nofile
        self.max_descriptors = max(STREAM_COST, nofile - in_use - SPARE - pooled)

    def fits(self, cost: int) -> bool:
        return self.connections < self.max_connections and self.descriptors + cost <= self.max_descriptors

    def opened(self, cost: int) -> bool:
        """Count a new connection (already accepted) or UDP session; True when accepting
        must pause now (no room for another HTTP/TCP connection)."""
        self.connections += 1
        self.descriptors += cost
        if not self.paused and not self.fits(STREAM_COST):
            self.paused = True
            return True
        return False

    def closed(self, cost: int) -> bool:
        """Uncount one; True when accepting may resume now."""
        self.connections -= 1
        self.descriptors -= cost
        if self.paused and self.fits(STREAM_COST):
            self.paused = False
            return True
        return False

    def full_reason(self) -> tuple[str, str, tuple[int, ...]]:
        """(kind, message, args) saying which limit is full (formatted only if logged)."""
        if self.connections >= self.max_connections:
            return "worker_connections", "%d worker_connections are not enough", (self.max_connections,)
        return (
            "nofile",
            "open file resource limit: %d is not enough: %d connections use or keep %d of the %d "
            "descriptors left for connections (one per connection, one per upstream leg)",
            (self.nofile, self.connections, self.descriptors, self.max_descriptors),
        )

    def capacity_warning(self) -> str | None:
        """nginx's start-up warning when worker_connections cannot all fit."""
        fit = self.max_descriptors // STREAM_COST
        if fit >= self.max_connections:
            return None
        return (
            f"{self.max_connections} worker_connections exceed open file resource limit: {self.nofile} "
            f"(room for {fit} connections with their upstream descriptors; raise worker_rlimit_nofile)"
        )


def open_descriptors() -> int:
    """Descriptors this process has open (once, at start: a directory read of /proc)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    except OSError:
        return 64  # no /proc: a generous guess for listeners, logs, zone and loop
