"""TCP stream proxying (gevent I/O), nginx's ``ngx_stream_proxy_module`` semantics.

Rules (shared/reference/nginx-semantics.md section 8):
1. The balancing decision happens at accept. A connect failure (refused, unreachable,
   timeout) charges the peer a failure (even with ``proxy_next_upstream = false``) and,
   when next-upstream is on and tries and ``proxy_next_upstream_timeout`` allow, moves on
   to the next peer. Once connected there is no retry.
2. Bytes are relayed both ways; each direction ends on its own: EOF from one side is
   passed on as a half-close (``shutdown(SHUT_WR)``) to the other, and the session ends
   when both directions are done.
3. ``proxy_timeout`` is inactivity: the session ends when neither direction moved data for
   that long.
4. Session status: 200 once connected; 502 when no upstream could be reached.
5. A connect that fails for lack of a local resource (EMFILE, ENFILE, ENOBUFS, ENOMEM from
   socket()) is not the peer's failure: as nginx, status 500, the peer is not charged and
   not retried, and the error is logged at alert at most once a second. The worker's
   budget (worker/fdbudget.py) keeps a descriptor for every accepted connection, so this
   happens only when the limit changed under the worker.
6. A TLS-terminated client (``listen ... ssl``; the handshake is done before ``run``, in
   the worker) is relayed in plaintext to the upstream. The client's EOF (close_notify
   or a TCP FIN) half-closes the upstream as rule 2; the upstream's EOF sends the client
   close_notify and ends the session (a TLS connection cannot be half-closed at the TCP
   level and keep reading through OpenSSL).
7. ``ssl_preread``: the worker reads the client's first bytes until its TLS ClientHello is
   complete (tls/preread.py; at most 16 KiB, within ``preread_timeout``) before the
   upstream is picked, so ``hash = "$ssl_preread_server_name"`` routes by SNI; those
   bytes go to the upstream first, unchanged (TLS is not terminated).
8. ``proxy_ssl = true``: TLS to the upstream (stream/upstream_tls.py): the handshake is
   part of connecting (a failure is charged and retried like a connect failure), and the
   client's EOF is not passed on to a TLS upstream (no half-close in TLS).
"""

from __future__ import annotations

import socket as stdsocket
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent import socket

from prefork_lb.balance.peers import new_selection
from prefork_lb.http.upstream import open_connection
from prefork_lb.stream.session import Session, StreamAttempt
from prefork_lb.stream.upstream_tls import HANDSHAKING
from prefork_lb.worker.fdbudget import RESOURCE_ERRORS, alert

if TYPE_CHECKING:
    from prefork_lb.stream.runtime import StreamServerRuntime

# Read size, measured with iperf3 through the relay beside nginx's stream module
# (loadtest/stream_bench.sh, 3 rounds, 2 cores): 256 KiB ~1.0x nginx (9.6-10.2 Gbit/s),
# 1 MiB ~1.2x (12.3-13.2 vs 9.8-10.9 Gbit/s); 64 KiB was slower (6.8). A read allocates
# only for its duration (the bytes object shrinks to what arrived), so idle connections
# hold no buffer; proxy_buffer_size can only raise it.
MIN_READ = 1048576


class TcpSession:
    """One client connection: pick, connect (with retries), relay, log."""

    __slots__ = ("activity", "client", "clock", "first", "rt", "session", "tls", "upstream")

    def __init__(
        self, client: socket.socket, session: Session, rt: StreamServerRuntime, clock: Callable[[], float]
    ) -> None:
        self.client = client
        self.session = session
        self.rt = rt
        self.clock = clock
        self.upstream: socket.socket | None = None
        self.activity = clock()
        self.tls = False  # the client side is a TLS-terminated gevent SSLSocket (rule 6)
        self.first = b""  # rule 7: client bytes read by ssl_preread, sent upstream first

    def run(self) -> None:
        rt, session = self.rt, self.session
        group = rt.upstream.group
        sel = new_selection(group, rt.config.proxy_next_upstream_tries)
        start = self.clock()
        while True:
            now = self.clock()
            peer = rt.upstream.pick(sel, session, now)
            if peer is None:
                session.attempts.append(StreamAttempt(group.name))
                session.status = 502
                rt.log_error('no live upstreams while connecting to upstream, upstream: "%s"', group.name)
                return
            attempt = StreamAttempt(peer.addr)
            session.attempts.append(attempt)
            phase = "connecting to upstream"
            conn = None
            try:
                conn = open_connection(peer.server.address, rt.config.proxy_connect_timeout_s, now)
                if rt.upstream_tls is not None:  # rule 8
                    phase = HANDSHAKING
                    conn.sock = rt.upstream_tls.wrap(conn.sock, peer.addr, rt.config.proxy_connect_timeout_s)
            except OSError as e:
                attempt.session_time_s = self.clock() - now
                if conn is not None:
                    conn.close()
                if conn is None and e.errno in RESOURCE_ERRORS:  # rule 5
                    rt.upstream.release(sel, peer, False, self.clock())
                    alert(
                        "tcp socket",
                        "socket() failed (%s: %s) while connecting to upstream, client: %s, server: %s:%s, "
                        'upstream: "%s"',
                        e.errno,
                        e.strerror,
                        session.remote_addr,
                        session.server_addr,
                        session.server_port,
                        peer.addr,
                    )
                    session.status = 500
                    return
                rt.upstream.release(sel, peer, True, self.clock())
                what = "connect()" if conn is None else "SSL_do_handshake()"
                rt.log_error("%s failed (%s) while %s, upstream: %s", what, e, phase, peer.addr)
                timeout = rt.config.proxy_next_upstream_timeout_s
                if (
                    rt.config.proxy_next_upstream
                    and sel.tries > 0
                    and not (timeout and self.clock() - start >= timeout)
                ):
                    continue
                session.status = 502
                return
            attempt.connect_time_s = self.clock() - now
            self.upstream = conn.sock
            try:
                self._relay(attempt, now)
            finally:
                attempt.session_time_s = self.clock() - now
                rt.upstream.release(sel, peer, False, self.clock(), attempt)
                if rt.upstream_tls is not None:  # rule 8: the session for the next connection
                    rt.upstream_tls.keep_session(peer.addr, conn.sock)
            return

    def _relay(self, attempt: StreamAttempt, start: float) -> None:
        assert self.upstream is not None
        timeout = self.rt.config.proxy_timeout_s
        size = max(self.rt.config.proxy_buffer_size_bytes, MIN_READ)
        self.client.settimeout(timeout)
        self.upstream.settimeout(timeout)
        if self.first:  # rule 7
            try:
                self.upstream.sendall(self.first)
            except OSError:
                self._abort()
                return
            self.session.bytes_received += len(self.first)
            attempt.bytes_sent += len(self.first)
            self.first = b""
        up = gevent.spawn(self._pump, self.client, self.upstream, size, True, attempt, start)
        try:
            self._pump(self.upstream, self.client, size, False, attempt, start)
            up.join()
        finally:
            up.kill()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        size: int,
        to_upstream: bool,
        attempt: StreamAttempt,
        start: float,
    ) -> None:
        session = self.session
        timeout = self.rt.config.proxy_timeout_s
        while True:
            try:
                data = src.recv(size)
            except TimeoutError:
                if self.clock() - self.activity < timeout:
                    continue  # the other direction is busy: the session is not idle
                self._abort()
                return
            except OSError:
                self._abort()
                return
            if not data:
                if self.tls and not to_upstream:  # rule 6
                    try:
                        dst._sslobj.shutdown()  # close_notify, not awaited
                    except (OSError, ValueError, AttributeError):
                        pass
                    self._abort()
                    return
                if to_upstream and self.rt.upstream_tls is not None:
                    return  # rule 8: no half-close in TLS; the upstream's side goes on
                try:
                    dst.shutdown(stdsocket.SHUT_WR)  # half-close, the other way keeps going
                except OSError:
                    pass
                return
            self.activity = self.clock()
            n = len(data)
            if to_upstream:
                session.bytes_received += n
                attempt.bytes_sent += n
            else:
                if attempt.first_byte_time_s is None:
                    attempt.first_byte_time_s = self.activity - start
                session.bytes_sent += n
                attempt.bytes_received += n
            try:
                dst.sendall(data)
            except OSError:
                self._abort()
                return

    def _abort(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                try:
                    sock.shutdown(stdsocket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
