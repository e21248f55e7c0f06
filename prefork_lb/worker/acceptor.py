"""Accepting client connections on one inherited listening socket (gevent shell).

Rules:
1. One libev io watcher on the listening socket; each wake-up accepts at most
   ``max_accept`` connections and hands each one, non-blocking, to
   ``on_accept(raw_socket, address)``, which must not block. With several workers
   (worker.py) the first accept of a wake-up is unconditional and each further one (up to
   ``SHARED_BATCH``) only while ``batch(accepted_so_far)`` says this worker holds no more
   connections than its share (share.py): a burst of long-lived connections still spreads
   evenly, and a worker below its share takes several short-lived ones per wake-up.
2. ``full()`` is asked before every accept: when the worker's budget (fdbudget.py:
   worker_connections, and descriptors for the connection and its upstream leg) has no
   room, the watcher stops until ``start_accepting()`` is called again; the connections
   wait in the kernel's listen queue.
3. EAGAIN ends the batch (another worker took it); ECONNABORTED and friends skip one
   connection; anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM: the budget's count was
   wrong) is logged like nginx's "accept() failed (24: Too many open files)" at alert, at
   most once per second, and accepting pauses for ``PAUSE_S`` rather than spinning.
4. ``close()`` stops watching and closes this worker's copy of the socket only; the
   master keeps the listening socket (and its queue) open.
"""

from __future__ import annotations

import _socket
import errno
import socket
from collections.abc import Callable
from typing import Any, Final

from prefork_lb.worker.fdbudget import alert

PAUSE_S: Final = 0.5
SHARED_BATCH: Final = 4  # max_accept with several workers and a share check (docs/performance.md)
_SKIP: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})


class Acceptor:
    __slots__ = (
        "_closed",
        "_family",
        "_paused",
        "_watcher",
        "batch",
        "full",
        "hub",
        "max_accept",
        "on_accept",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        hub: Any,
        on_accept: Callable[[_socket.socket, Any], None],
        full: Callable[[], bool],
        max_accept: int,
        batch: Callable[[int], bool] | None = None,
    ) -> None:
        self.sock = sock
        self.hub = hub
        self.on_accept = on_accept
        self.full = full
        self.max_accept = max_accept
        self.batch = batch
        self._family = sock.family
        self._watcher = hub.loop.io(sock.fileno(), 1)
        self._paused: Any = None
        self._closed = False

    def start_accepting(self) -> None:
        if not self._closed and not self._watcher.active and self._paused is None:
            self._watcher.start(self._ready)

    def stop_accepting(self) -> None:
        self._watcher.stop()

    def close(self) -> None:
        self._closed = True
        self._watcher.close()
        if self._paused is not None:
            self._paused.close()
            self._paused = None
        self.sock.close()

    def _ready(self) -> None:
        accept = self.sock._accept  # type: ignore[attr-defined]  # (fd, address), no socket object
        family = self._family
        batch = self.batch
        for i in range(self.max_accept):
            if i and batch is not None and not batch(i):
                return
            if self.full():
                self.stop_accepting()
                return
            try:
                fd, address = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _SKIP:
                    continue
                alert("accept", "accept() failed (%s: %s)", e.errno, e.strerror)
                self._pause()
                return
            # the C socket type: socket.socket adds a Python __init__ and close() per connection
            raw = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
            raw.setblocking(False)
            self.on_accept(raw, address)

    def _pause(self) -> None:
        self._watcher.stop()
        timer = self._paused = self.hub.loop.timer(PAUSE_S)

        def resume() -> None:
            timer.close()
            self._paused = None
            if not self.full():
                self.start_accepting()

        timer.start(resume)
