"""Socket reads and writes for the gevent shell, with nginx's per-operation timeouts.

Rules:
1. The sockets are gevent sockets (upstream connections) or ``ClientSocket`` (accepted
   HTTP clients); either way the real socket (``sock._sock``) is always non-blocking:
   every operation is first one plain syscall, and only EAGAIN leads to a wait on the
   socket's own read/write watcher. gevent's ``recv``/``sendall`` are bypassed
   on the hot path because with a timeout they build a ``gevent.Timeout`` per wait
   (measured with a gevent socketpair ping-pong: 19.8 us per round trip with gevent's
   timeouts, 11.9 us with one libev timer per wait; rule 2 has since shared the timer).
2. A timeout covers one wait, as nginx's ``*_timeout`` directives cover "two successive
   read or write operations", not the whole transfer. It is raised as ``TimeoutError`` in
   the waiting greenlet when that wait passes its deadline (``timeout_s`` after it began),
   and never outside a wait. ``timeout_s`` of 0 (or None) means no deadline. The deadlines
   of a greenlet share one lazily re-armed libev timer (``_Deadline``), libev's "be smart
   about timeouts" pattern: a keep-alive request's two waits cost no timer allocation.
3. Closing the socket in another greenlet wakes the waiter with an error (gevent sockets
   and ``ClientSocket.close`` cancel the waits), so a closed connection never hangs here.
4. This module touches gevent internals (``_sock``, ``_read_event``, ``_write_event``,
   ``hub``); the proxy tests exercise all of them, so a gevent upgrade that moves them
   fails loudly.
5. A ``ClientSocket``'s read watcher stays started between its waits (libev changes the
   epoll set when a watcher's fd goes from watched to unwatched and back across a loop
   iteration: one ``epoll_ctl`` per keep-alive request when it was stopped during the
   upstream wait). Readable while nobody waits (pipelined bytes, EOF), it stops itself, so
   a level-triggered fd never spins the loop; the next wait starts it again.
"""

from __future__ import annotations

import _socket
import socket as stdsocket
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

from gevent import getcurrent

_PEEK_FLAGS: Final = stdsocket.MSG_PEEK | stdsocket.MSG_DONTWAIT
# Rule 2: a deadline timer that fires this close to its deadline counts as on time (libev
# arms it from the loop's cached time, which can be a little behind the clock).
_SLACK_S: Final = 0.002
_ATTR: Final = "_netio_deadline"
_READY: Final = object()  # what a readable ClientSocket switches into its reader


class _Deadline:
    """Rule 2: one greenlet's timeout for its socket waits, on one lazily armed libev timer.

    A wait sets ``deadline``; the timer is re-armed only when it would fire after that
    deadline (or is not running). When it fires it throws ``TimeoutError`` into the
    greenlet if a wait is past its deadline, re-arms for a wait still running, and
    otherwise stops and lets go of the greenlet (which keeps no timer while it does not
    wait). Per wait that is a clock read and two stores, where a timer per wait cost
    an allocation, a start and a close.
    """

    __slots__ = ("armed_at", "deadline", "glet", "timer")

    def __init__(self, glet: Any) -> None:
        self.glet = glet
        self.deadline = 0.0  # of the wait in progress; 0 while not waiting
        self.armed_at = 0.0  # when the timer fires; 0 while it does not run
        self.timer: Any = None

    def arm(self, loop: Any, after_s: float, at: float) -> None:
        if self.timer is not None:
            self.timer.close()
        timer = self.timer = loop.timer(after_s)
        timer.start(self.fire)
        self.armed_at = at

    def fire(self) -> None:
        """libev callback, on the hub."""
        deadline = self.deadline
        if not deadline:  # not waiting: stop until the next wait
            self.release()
            return
        left_s = deadline - monotonic()
        if left_s > _SLACK_S:  # the wait started after the timer was armed
            self.arm(self.timer.loop, left_s, deadline)
            return
        self.armed_at = 0.0
        self.glet.throw(TimeoutError)

    def release(self) -> None:
        """Stop the timer and break the greenlet <-> deadline cycle."""
        self.armed_at = 0.0
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        glet = self.glet
        if glet.__dict__.get(_ATTR) is self:
            del glet.__dict__[_ATTR]


def release_deadline() -> None:
    """The current greenlet does no more socket waits (its connection closed or parked)."""
    deadline: _Deadline | None = getcurrent().__dict__.get(_ATTR)
    if deadline is not None:
        deadline.release()


def _block(sock: Any, watcher: Any) -> None:
    if type(sock) is ClientSocket and watcher is sock._read_event:
        sock.block_read()
    else:
        sock.hub.wait(watcher)


def _wait(sock: Any, watcher: Any, timeout_s: float | None) -> None:
    if not timeout_s:
        _block(sock, watcher)
        return
    hub = sock.hub
    glet = getcurrent()
    attrs = glet.__dict__
    dl: _Deadline | None = attrs.get(_ATTR)
    if dl is None:
        dl = attrs[_ATTR] = _Deadline(glet)
    deadline = monotonic() + timeout_s
    if not dl.armed_at or deadline < dl.armed_at:
        dl.arm(hub.loop, timeout_s, deadline)
    dl.deadline = deadline
    try:
        _block(sock, watcher)
    finally:
        dl.deadline = 0.0


def wait_readable(sock: Any, timeout_s: float | None) -> None:
    """One wait for ``sock`` to be readable (rule 2's timeout); for callers that read
    through something else (tls/io.py's handshake)."""
    _wait(sock, sock._read_event, timeout_s)


def wait_writable(sock: Any, timeout_s: float | None) -> None:
    _wait(sock, sock._write_event, timeout_s)


def recv(sock: Any, size: int, timeout_s: float | None, wait_first: bool = False) -> bytes:
    """Up to ``size`` bytes (b"" at EOF); ``TimeoutError`` if nothing came within ``timeout_s``.

    ``wait_first``: the caller knows nothing can be there yet (a response right after its
    request was sent), so the first recv() would only fail with EAGAIN: wait first.
    """
    raw = sock._sock
    watcher = sock._read_event
    if wait_first:
        _wait(sock, watcher, timeout_s)
    while True:
        try:
            data: bytes = raw.recv(size)
            return data
        except BlockingIOError:
            pass
        _wait(sock, watcher, timeout_s)


def send_all(sock: Any, data: bytes, timeout_s: float | None) -> None:
    """Send all of ``data``; ``TimeoutError`` if the peer took nothing for ``timeout_s``.

    Responses and request heads nearly always fit the socket buffer, so this is one send().
    """
    raw = sock._sock
    try:
        sent: int = raw.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    while view:
        _wait(sock, sock._write_event, timeout_s)
        try:
            sent = raw.send(view)
        except BlockingIOError:
            continue
        view = view[sent:]


def peek_readable(sock: Any) -> bytes | None:
    """Without blocking or consuming: None if nothing is there to read, else the first byte
    (b"" for EOF or an error)."""
    try:
        data: bytes = sock._sock.recv(1, _PEEK_FLAGS)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    return data


class ClientSocket:
    """An accepted client connection for the HTTP path: the real non-blocking socket plus
    the two watchers ``recv``/``send_all`` wait on, and nothing else.

    A gevent socket costs ~3 us to build and ~5 us to close in Python (its reference
    counting of makefile() users, timeouts, detaching); with ``Connection: close`` clients
    that is per request. Only the owning greenlet (or the worker's park watcher) closes it;
    another greenlet ends a connection with ``shutdown``, which wakes the owner.
    """

    __slots__ = ("_on_readable", "_read_event", "_reader", "_sock", "_write_event", "hub")

    def __init__(self, raw: _socket.socket, hub: Any) -> None:
        self._sock = raw
        self.hub = hub
        fd = raw.fileno()
        loop = hub.loop
        self._read_event = loop.io(fd, 1)
        self._write_event = loop.io(fd, 2)
        self._reader: Any = None  # the greenlet blocked in block_read, if any
        self._on_readable: Callable[[], None] | None = None  # while parked (watch_readable)

    def block_read(self) -> None:
        """Wait until readable, leaving the read watcher started afterwards (rule 5)."""
        self._reader = getcurrent()
        watcher = self._read_event
        if not watcher.active:
            watcher.start(self._readable)
        try:
            if self.hub.switch() is not _READY:
                raise RuntimeError("unexpected switch into a greenlet waiting for a socket")
        finally:
            self._reader = None

    def watch_readable(self, callback: Callable[[], None] | None) -> None:
        """For a parked connection (no greenlet): ``callback()`` once, on the hub, when the
        socket becomes readable; None cancels. The same watcher as the waits, left started
        (rule 5), so parking and resuming do not change the epoll set either."""
        self._on_readable = callback
        if callback is not None and not self._read_event.active:
            self._read_event.start(self._readable)

    def _readable(self) -> None:
        """libev callback, on the hub."""
        reader = self._reader
        if reader is None:
            callback = self._on_readable
            if callback is not None:
                self._on_readable = None
                callback()
                return
            self._read_event.stop()  # nobody waits: or the level-triggered fd fires every iteration
            return
        self._reader = None
        reader.switch(_READY)

    def _cancel_read(self, reader: Any) -> None:
        if self._reader is reader:  # still blocked here: wake it with EBADF, as gevent does
            reader.throw(OSError(9, "File descriptor was closed in another greenlet"))

    def fileno(self) -> int:
        return self._sock.fileno()

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        """Called by the owning greenlet (which then waits no more: its deadline timer goes
        too) or, for a parked connection, on the hub."""
        hub = self.hub
        self._on_readable = None
        reader = self._reader
        if reader is not None and reader is not getcurrent():
            hub.loop.run_callback(self._cancel_read, reader)
        self._read_event.close()
        watcher = self._write_event
        if watcher.callback is not None:  # someone waits: wake it with EBADF, as gevent does,
            # closing the watcher only then (closed first, the waiter was never woken)
            hub.cancel_wait(watcher, OSError(9, "File descriptor was closed in another greenlet"), True)
        else:
            watcher.close()
        self._sock.close()
        release_deadline()
