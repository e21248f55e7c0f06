"""The I/O of an accepted TLS connection (gevent shell), on netio's ``ClientSocket``.

Design (why not ssl.MemoryBIO + SSLObject): the connection keeps netio's ClientSocket,
its two watchers and its timeout rules; only ``ClientSocket._sock`` changes, from the
plain socket to ``TlsRaw``, which reads and writes through OpenSSL on the same
non-blocking descriptor and turns "want read/want write" into ``BlockingIOError``. So
``netio.recv``/``send_all`` and the whole HTTP path run unchanged (one SSL_read or
SSL_write first, a watcher wait only on EAGAIN), and the plain path pays nothing. A
MemoryBIO layer would add a copy and a Python call per read and per write, where
SSL_read/SSL_write on the descriptor do the syscall in C.

Rules:
1. ``accept_tls`` waits for the first byte (``client_header_timeout``) and peeks at it: a
   TLS handshake record (0x16, or an SSLv2-style header with the top bit set) is a
   handshake, anything else is plain HTTP sent to the TLS port (nginx answers it 400 "The
   plain HTTP request was sent to HTTPS port" once the request head is read).
2. The whole handshake is bounded by ``client_header_timeout`` from the accept: a client
   stalling mid-handshake is closed when it expires. A failed handshake (garbage, an
   unknown protocol, an untrusted client certificate) is logged at info, as nginx's
   "SSL_do_handshake() failed", and costs nothing but this greenlet.
3. OpenSSL reads exactly one record per SSL_read (no read-ahead) and a read asks for more
   than a record holds, so nothing decrypted waits inside OpenSSL while the descriptor is
   not readable: netio's "wait first" and parking (which watch the descriptor) stay right.
   ``recv(1, MSG_PEEK)`` (``netio.peek_readable``) reports OpenSSL's pending bytes first.
4. A want-write during a read (or want-read during a write; renegotiation, which TLS 1.3
   does not have) is waited on as the operation's own direction.
5. ``close`` sends close_notify once (one non-blocking SSL_shutdown, the reply is not
   awaited), then closes the descriptor.
"""

from __future__ import annotations

import _socket
import logging
import socket
import ssl
from time import monotonic
from typing import Any, Final

from prefork_lb.netio import ClientSocket, wait_readable, wait_writable

log = logging.getLogger("prefork_lb.error")

_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT
_WANT: Final = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_EOF: Final = (ssl.SSLZeroReturnError, ssl.SSLEOFError)


class TlsRaw:
    """``ClientSocket._sock`` for a TLS connection: the calls netio makes on a raw socket."""

    __slots__ = ("_read", "_write", "closed", "sslsock")

    def __init__(self, sslsock: ssl.SSLSocket) -> None:
        self.sslsock = sslsock
        obj = sslsock._sslobj  # type: ignore[attr-defined]  # the C object: no Python layer per call
        self._read = obj.read
        self._write = obj.write
        self.closed = False

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags:  # netio.peek_readable
            if self.sslsock.pending():
                return b"\x17"
            data: bytes = _socket.socket.recv(self.sslsock, 1, flags | _PEEK)
            return data
        try:
            out: bytes = self._read(size)
            return out
        except _WANT:
            raise BlockingIOError from None
        except _EOF:
            return b""
        except ssl.SSLError as e:
            if e.errno == ssl.SSL_ERROR_EOF:  # EOF without close_notify (ragged): an EOF
                return b""
            raise

    def send(self, data: bytes | memoryview) -> int:
        try:
            sent: int = self._write(data)
            return sent
        except _WANT:
            raise BlockingIOError from None

    def fileno(self) -> int:
        return self.sslsock.fileno()

    def shutdown(self, how: int) -> None:
        _socket.socket.shutdown(self.sslsock, how)  # the TCP socket: SSLSocket's drops OpenSSL's state

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sslsock._sslobj.shutdown()  # type: ignore[attr-defined]  # rule 5
            except (OSError, ValueError):
                pass
        self.sslsock.close()


def accept_tls(
    csock: ClientSocket, ctx: ssl.SSLContext, timeout_s: float, client: str
) -> ssl.SSLSocket | bool:
    """Rules 1 and 2: the handshaken SSLSocket (now ``csock._sock`` is a ``TlsRaw``), True
    for plain HTTP on the TLS port (``csock`` unchanged), False when the connection ends."""
    raw = csock._sock
    deadline = monotonic() + timeout_s
    while True:
        try:
            first = raw.recv(1, _PEEK)
            break
        except BlockingIOError:
            pass
        except OSError:
            return False
        left_s = deadline - monotonic()
        if left_s <= 0:
            return False
        try:
            wait_readable(csock, left_s)
        except OSError:  # TimeoutError included: closed as nginx does, silently
            return False
    if not first:
        return False
    if first[0] != 0x16 and not first[0] & 0x80:
        return True
    sock = socket.socket(raw.family, raw.type, 0, raw.detach())
    try:
        sslsock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError:
        sock.close()
        return False
    sslsock.setblocking(False)
    tls = TlsRaw(sslsock)
    csock._sock = tls  # type: ignore[assignment]
    while True:
        try:
            sslsock.do_handshake()
            return sslsock
        except ssl.SSLWantReadError:
            wait = wait_readable
        except ssl.SSLWantWriteError:
            wait = wait_writable
        except ssl.SSLError as e:
            log.info("SSL_do_handshake() failed (%s) while SSL handshaking, client: %s", _text(e), client)
            return False
        except OSError:
            return False
        left_s = deadline - monotonic()
        if left_s <= 0:
            return False
        try:
            wait(csock, left_s)
        except TimeoutError:
            log.info("client timed out while SSL handshaking, client: %s", client)
            return False
        except OSError:
            return False


def _text(e: ssl.SSLError) -> str:
    reason = e.reason or ""
    lib = e.library or "SSL"
    return f"{lib}: {reason}" if reason else str(e)


def handshake_stream(sock: Any, timeout_s: float, client: str) -> bool:
    """A stream (gevent ``SSLSocket``) server handshake within ``timeout_s``; False, logged
    at info, when it fails."""
    sock.settimeout(timeout_s)
    try:
        sock.do_handshake()
        return True
    except ssl.SSLError as e:
        log.info("SSL_do_handshake() failed (%s) while SSL handshaking, client: %s", _text(e), client)
    except TimeoutError:
        log.info("client timed out while SSL handshaking, client: %s", client)
    except OSError:
        pass
    return False


def preread_stream(sock: Any, timeout_s: float) -> tuple[bytes, Any] | None:
    """``ssl_preread`` on a stream client (a gevent socket): (the bytes read, what their
    ClientHello says) once the hello is complete, not TLS, or 16 KiB long; None when the
    client closed, failed or sent no complete hello within ``timeout_s`` (nginx ends the
    session then). tcp.py rule 7 sends the bytes upstream first."""
    from prefork_lb.tls.preread import NOT_TLS, PREREAD_BUFFER_BYTES, preread

    data = b""
    deadline = monotonic() + timeout_s
    while True:
        left_s = deadline - monotonic()
        if left_s <= 0:
            return None
        sock.settimeout(left_s)
        try:
            chunk = sock.recv(PREREAD_BUFFER_BYTES - len(data))
        except OSError:  # TimeoutError included
            return None
        if not chunk:
            return None
        data += chunk
        found = preread(data)
        if found is not None:
            return data, found
        if len(data) >= PREREAD_BUFFER_BYTES:
            return data, NOT_TLS
