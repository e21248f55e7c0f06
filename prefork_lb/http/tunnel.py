"""WebSocket / Upgrade tunnels: after an upstream 101, bytes both ways (gevent I/O).

Rules (shared/reference/nginx-semantics-2.md section 4):
1. A tunnel starts only when the client asked to upgrade (``Connection: upgrade`` and
   ``Upgrade``), the proxy sent an Upgrade upstream (headers.py rule 8: with no config at
   all, or with nginx's canonical ``proxy_set_header`` lines) and the upstream answered
   101. A 101 nobody asked for stays what it was: an invalid response, 502 (proxy.py).
2. The client gets ``HTTP/1.1 101``, our ``Server`` and ``Date``, ``Connection: upgrade``
   and then the upstream's fields with the upstream's ``Upgrade`` kept (nginx's order);
   bytes that came with either head (the upstream's after its 101, the client's after its
   request) are relayed first.
3. Two greenlets: the connection's own carries upstream -> client, one spawned greenlet
   carries client -> upstream. Each direction ends on its own: EOF is passed on as a
   half-close (``shutdown(SHUT_WR)``) and the tunnel ends when both directions did
   (stream/tcp.py does the same; nginx instead ends the whole tunnel once either side's
   EOF is flushed, which a WebSocket close handshake never notices but a raw Upgrade
   protocol that half-closes would). One greenlet waiting on both sockets would stall a
   direction while the other is blocked writing (a client that sends without reading
   would wait for itself); two cost ~10 KiB more per open tunnel and no syscall.
4. Timeouts as nginx: one idle timer of ``proxy_read_timeout``, re-armed by traffic in
   either direction (shared ``activity``); blocked writes use ``proxy_send_timeout``
   (upstream) and ``send_timeout`` (client). Any timeout or error closes both sockets
   (``shutdown(SHUT_RDWR)``) with no close frame, as nginx: the WebSocket client sees 1006.
5. The upstream connection is never pooled afterwards and the client connection ends with
   the tunnel. The peer stays held (max_conns, the status API's active count) and the
   connection counts as active until the tunnel ends; a draining worker keeps open tunnels
   until they end or ``worker_shutdown_timeout`` aborts them (``abort``).
6. The access log line is written when the tunnel ends: status 101, ``$bytes_sent`` and
   ``$body_bytes_sent`` include what went to the client through the tunnel,
   ``$request_time`` covers its whole life, ``$upstream_bytes_*`` both directions.
"""

from __future__ import annotations

import logging
import socket as stdsocket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from prefork_lb.http.headers import _RESPONSE_DROP, DATES, SERVER_HEADER, status_line
from prefork_lb.http.upstream import RECV_SIZE
from prefork_lb.netio import recv, release_deadline, send_all

if TYPE_CHECKING:
    from prefork_lb.http.exchange import Attempt, Exchange
    from prefork_lb.http.response import ResponseHead

log = logging.getLogger("prefork_lb.error")


def switch_head(resp: ResponseHead, now: float) -> bytes:
    """Rule 2: the 101 head sent to the client (sans-IO)."""
    parts = [status_line(101, resp.reason), SERVER_HEADER, DATES.field(now), b"Connection: upgrade\r\n"]
    drop = (_RESPONSE_DROP | resp.connection_tokens) - {b"upgrade"}
    for name, value in resp.headers:
        if name.lower() not in drop:
            parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


class Tunnel:
    """One upgraded connection: the client socket, the upstream socket, two pumps."""

    __slots__ = (
        "activity",
        "attempt",
        "client",
        "client_send_s",
        "clock",
        "ex",
        "failed",
        "idle_s",
        "upstream",
        "upstream_addr",
        "upstream_send_s",
    )

    def __init__(
        self,
        client: Any,
        upstream: Any,
        upstream_addr: str,
        ex: Exchange,
        attempt: Attempt,
        idle_s: float,
        client_send_s: float,
        upstream_send_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.client = client  # a netio.ClientSocket (or gevent socket)
        self.upstream = upstream  # a gevent socket
        self.upstream_addr = upstream_addr
        self.ex = ex
        self.attempt = attempt
        self.idle_s = idle_s
        self.client_send_s = client_send_s
        self.upstream_send_s = upstream_send_s
        self.clock = clock
        self.activity = clock()
        self.failed = False

    def run(self, head: bytes, from_upstream: bytes, from_client: bytes) -> None:
        """Send the 101 head, relay until both directions ended (or a failure aborted)."""
        ex, attempt = self.ex, self.attempt
        try:
            send_all(self.client, head + from_upstream, self.client_send_s)
        except OSError:  # TimeoutError included
            self.abort()
            return
        ex.bytes_sent += len(head) + len(from_upstream)
        ex.body_bytes_sent += len(from_upstream)
        if from_client:
            try:
                send_all(self.upstream, from_client, self.upstream_send_s)
            except OSError:
                self.abort()
                return
            attempt.bytes_sent += len(from_client)
        other = gevent.spawn(self._pump_to_upstream)
        try:
            self._pump(self.upstream, self.client, self.client_send_s, True)
            other.join()
        finally:
            other.kill()

    def _pump_to_upstream(self) -> None:
        try:
            self._pump(self.client, self.upstream, self.upstream_send_s, False)
        finally:
            release_deadline()  # this greenlet waits no more (netio rule 2)

    def _pump(self, src: Any, dst: Any, send_s: float, to_client: bool) -> None:
        ex, attempt, idle_s, clock = self.ex, self.attempt, self.idle_s, self.clock
        wait_first = False
        while not self.failed:
            try:
                left_s = self.activity + idle_s - clock() if idle_s else None
                if left_s is not None and left_s <= 0:
                    raise TimeoutError
                data = recv(src, RECV_SIZE, left_s, wait_first)
            except TimeoutError:
                if idle_s and clock() - self.activity < idle_s:
                    continue  # the other direction moved: not idle (rule 4)
                if not self.failed:
                    self._log_upstream_timeout()
                self.abort()
                return
            except OSError:
                self.abort()
                return
            if not data:
                try:
                    dst.shutdown(stdsocket.SHUT_WR)  # half-close; the other way keeps going
                except OSError:
                    pass
                return
            self.activity = clock()
            n = len(data)
            wait_first = n < RECV_SIZE  # the socket is drained: a recv() now would be EAGAIN
            try:
                send_all(dst, data, send_s)
            except TimeoutError:
                if not self.failed:
                    if to_client:  # send_timeout: the client stopped reading
                        log.info(
                            "client timed out (110: Connection timed out) while proxying upgraded connection"
                        )
                    else:
                        self._log_upstream_timeout()
                self.abort()
                return
            except OSError:
                self.abort()
                return
            if to_client:
                ex.bytes_sent += n
                ex.body_bytes_sent += n
                attempt.bytes_received += n
            else:
                attempt.bytes_sent += n

    def _log_upstream_timeout(self) -> None:
        log.error(
            "upstream timed out (110: Connection timed out) while proxying upgraded connection, upstream: %s",
            self.upstream_addr,
        )

    def abort(self) -> None:
        """Rule 4/5: end both directions now (a failure, or the worker's shutdown timeout)."""
        self.failed = True
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(stdsocket.SHUT_RDWR)
            except OSError:
                pass
