"""Socket reads and writes for the gevent shell, with nginx's per-operation timeouts.

Rules:
1. The sockets are gevent sockets (upstream connections) or ``ClientSocket`` (accepted
   HTTP clients); either way the real socket (``sock._sock``) is always non-blocking:
   every operation is first one plain syscall, and only EAGAIN leads to a wait on the
   socket's own read/write watcher. gevent's ``recv``/``sendall`` are bypassed
   on the hot path because with a timeout they build a ``gevent.Timeout`` per wait
   (measured with a gevent socketpair ping-pong: 19.8 us per round trip with gevent's
   timeouts, 11.9 us with one libev timer per wait as here).
2. A timeout covers one wait, as nginx's ``*_timeout`` directives cover "two successive
   read or write operations", not the whole transfer. It is raised as ``TimeoutError`` in
   the waiting greenlet by a libev timer that is stopped when the wait ends, however it
   ends. ``timeout_s`` of 0 (or None) means no deadline.
3. Closing the socket in another greenlet wakes the waiter with an error (gevent sockets
   and ``ClientSocket.close`` cancel the watchers), so a closed connection never hangs here.
4. This module touches gevent internals (``_sock``, ``_read_event``, ``_write_event``,
   ``hub``); the proxy tests exercise all of them, so a gevent upgrade that moves them
   fails loudly.
"""

from __future__ import annotations

import _socket
import socket as stdsocket
from typing import Any, Final

from gevent import getcurrent

_PEEK_FLAGS: Final = stdsocket.MSG_PEEK | stdsocket.MSG_DONTWAIT


def _wait(sock: Any, watcher: Any, timeout_s: float | None) -> None:
    hub = sock.hub
    if not timeout_s:
        hub.wait(watcher)
        return
    timer = hub.loop.timer(timeout_s)
    timer.start(getcurrent().throw, TimeoutError)
    try:
        hub.wait(watcher)
    finally:
        timer.close()


def recv(sock: Any, size: int, timeout_s: float | None, wait_first: bool = False) -> bytes:
    """Up to ``size`` bytes (b"" at EOF); ``TimeoutError`` if nothing came within ``timeout_s``.

    ``wait_first``: the caller knows nothing can be there yet (a response right after its
    request was sent), so the first recv() would only fail with EAGAIN: wait first.
    """
    raw = sock._sock
    if wait_first:
        _wait(sock, sock._read_event, timeout_s)
    while True:
        try:
            data: bytes = raw.recv(size)
            return data
        except BlockingIOError:
            pass
        _wait(sock, sock._read_event, timeout_s)


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

    __slots__ = ("_read_event", "_sock", "_write_event", "hub")

    def __init__(self, raw: _socket.socket, hub: Any) -> None:
        self._sock = raw
        self.hub = hub
        fd = raw.fileno()
        loop = hub.loop
        self._read_event = loop.io(fd, 1)
        self._write_event = loop.io(fd, 2)

    def fileno(self) -> int:
        return self._sock.fileno()

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        hub = self.hub
        for watcher in (self._read_event, self._write_event):
            if watcher.callback is not None:  # someone waits: wake it with EBADF, as gevent does
                hub.cancel_wait(watcher, OSError(9, "File descriptor was closed in another greenlet"))
            watcher.close()
        self._sock.close()
