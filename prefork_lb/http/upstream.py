"""Upstream connections and the per-worker keep-alive pool (gevent I/O).

Rules (nginx's keepalive module, shared/reference/nginx-semantics.md section 7):
1. The balancer picks the peer first; the pool is then searched, most recent first, for an
   idle connection to that address. The pool never influences balancing.
2. At most ``keepalive`` idle connections per worker per upstream group (LRU eviction).
   Active connections are not limited.
3. A connection goes back to the pool only after a clean, fully read response whose
   upstream allows keep-alive, while ``requests < keepalive_requests`` and its age is
   within ``keepalive_time``; idle connections are closed after ``keepalive_timeout``.
4. Bytes that arrive beyond a response make the connection unusable (never pooled), and
   a pooled connection that becomes readable while idle (stray bytes, a late HEAD/204
   body, EOF, RST) is closed, never reused: nginx closes a cached connection on any read
   event. Two guards, so that no client ever receives bytes meant for nobody (or for
   another client): an idle read watcher closes it the moment anything arrives, and
   ``get`` peeks (one non-blocking MSG_PEEK recv) at every reuse, for bytes that arrived
   in the same loop iteration as the reuse.
5. Connections are pooled under ``conn.key``: the address for plain HTTP, a key of address,
   TLS settings and server name for TLS (upstream_tls.py rule 3).
"""

from __future__ import annotations

import socket as stdsocket
from collections.abc import Callable
from typing import Any, Final, TypeVar

from gevent import socket
from gevent.event import Event

from prefork_lb.config.model import Address, UpstreamConfig
from prefork_lb.netio import peek_readable

T = TypeVar("T")
RECV_SIZE: Final = 65536


class UpstreamConnection:
    __slots__ = ("addr", "created", "idle_since", "key", "requests", "reused", "sock")

    def __init__(self, sock: socket.socket, addr: str, now: float) -> None:
        # a gevent socket, or an upstream_tls.TlsSocket of the same shape (rule 5 there)
        self.sock: Any = sock
        self.addr = addr
        self.key = addr  # rule 5
        self.created = now
        self.idle_since = now
        self.requests = 0
        self.reused = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def open_connection(address: Address, timeout_s: float, now: float) -> UpstreamConnection:
    """Connect with ``timeout_s``; raises OSError (refused, unreachable) or socket.timeout."""
    if address.family == "unix":
        sock = socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        target: object = address.host
    else:
        family = stdsocket.AF_INET6 if address.family == "inet6" else stdsocket.AF_INET
        sock = socket.socket(family, stdsocket.SOCK_STREAM)
        sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
        target = (address.host, address.port)
    sock.settimeout(timeout_s or None)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return UpstreamConnection(sock, address.text, now)


class RequestQueue:
    """NGINX Plus's ``queue``: requests wait while every usable server is at max_conns.

    Bounded per worker (``size``); a waiter is woken by releases in this worker and looks
    again every ``POLL_S`` for releases in other workers. Full queue or timeout: 502.
    """

    POLL_S: Final = 0.02
    __slots__ = ("_event", "size", "timeout_s", "waiting")

    def __init__(self, size: int, timeout_s: float) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self.waiting = 0
        self._event = Event()

    def wait(self, attempt: Callable[[], T | None], clock: Callable[[], float]) -> T | None:
        """Call ``attempt`` until it returns a value or the timeout passes; None if full."""
        if self.waiting >= self.size:
            return None
        self.waiting += 1
        deadline = clock() + self.timeout_s
        try:
            while True:
                left = deadline - clock()
                if left <= 0:
                    return None
                self._event.wait(min(self.POLL_S, left))
                got = attempt()
                if got is not None:
                    return got
        finally:
            self.waiting -= 1

    def notify(self) -> None:
        if self.waiting:
            event, self._event = self._event, Event()
            event.set()


class KeepalivePool:
    """Idle connections of one upstream group in one worker.

    ``idle`` keeps every idle connection in the order it went idle (the LRU for eviction
    and the sweep); ``by_addr`` keeps each peer's idle connections, most recent last, so
    ``get`` costs the same whatever the number of peers and idle connections (a linear
    scan cost ~250 us per request with 2000 peers and a pool as large).
    """

    __slots__ = ("by_addr", "capacity", "idle", "max_age_s", "max_requests", "timeout_s")

    def __init__(self, upstream: UpstreamConfig) -> None:
        self.capacity = upstream.keepalive
        self.max_requests = upstream.keepalive_requests
        self.timeout_s = upstream.keepalive_timeout_s
        self.max_age_s = upstream.keepalive_time_s
        self.idle: dict[UpstreamConnection, None] = {}  # oldest first (insertion order)
        self.by_addr: dict[str, list[UpstreamConnection]] = {}

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self.idle)

    def get(self, key: str, now: float) -> UpstreamConnection | None:
        """An idle connection pooled under ``key`` (rule 5: the address, for plain HTTP)."""
        stack = self.by_addr.get(key)
        while stack:
            conn = stack.pop()
            del self.idle[conn]
            conn.sock._read_event.stop()
            if now - conn.idle_since > self.timeout_s:
                conn.close()
                continue
            if peek_readable(conn.sock) is not None:  # rule 4: bytes, EOF or RST
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def put(self, conn: UpstreamConnection, now: float) -> None:
        """Keep ``conn`` if rule 3 allows; otherwise close it."""
        if not self.capacity or conn.requests >= self.max_requests or now - conn.created > self.max_age_s:
            conn.close()
            return
        conn.idle_since = now
        idle = self.idle
        idle[conn] = None
        stack = self.by_addr.get(conn.key)
        if stack is None:
            self.by_addr[conn.key] = [conn]
        else:
            stack.append(conn)
        # rule 4: anything arriving while idle closes it (the watcher costs no syscall while
        # the fd stays in libev's epoll set from the response's own reads)
        conn.sock._read_event.start(self._readable_while_idle, conn)
        if len(idle) > self.capacity:
            self._evict(next(iter(idle)))

    def _evict(self, conn: UpstreamConnection) -> None:
        """Take ``conn`` out of both indexes and close it."""
        del self.idle[conn]
        self.by_addr[conn.key].remove(conn)  # the oldest of its peer: found at once
        self._drop(conn)

    def _readable_while_idle(self, conn: UpstreamConnection) -> None:
        """libev callback (on the hub): an idle connection became readable; never reuse it."""
        if conn in self.idle:
            self._evict(conn)
        else:
            self._drop(conn)

    @staticmethod
    def _drop(conn: UpstreamConnection) -> None:
        conn.sock._read_event.stop()
        conn.close()

    def sweep(self, now: float) -> None:
        """Close idle connections past ``keepalive_timeout`` (called once a second)."""
        limit = now - self.timeout_s
        for conn in list(self.idle):  # oldest first: stop at the first one still fresh
            if conn.idle_since >= limit:
                break
            self._evict(conn)

    def close_all(self) -> None:
        for conn in self.idle:
            self._drop(conn)
        self.idle = {}
        self.by_addr = {}
