"""UDP stream proxying (gevent I/O), nginx's semantics (spec section 8).

Rules:
1. A session is keyed by the client address on one listening socket (per worker); later
   datagrams from that address join it. Each session picks one peer (UDP never retries)
   and talks to it from a connected UDP socket of its own; replies go back to the client
   from the listening socket.
2. ``proxy_responses N``: the session ends once it has relayed N replies per client
   datagram; if ``proxy_timeout`` passes with fewer, it ends with 502 and the peer is
   charged a failure. Without it the session ends only at ``proxy_timeout`` (status 200).
3. ``proxy_requests N``: after N client datagrams the binding ends; the next datagram from
   that client starts a new session (and a new balancing decision).
4. An ICMP "port unreachable" from the peer (ECONNREFUSED on the connected socket) charges
   a failure and, as nginx does, sends the client an empty datagram.
5. The table holds at most ``udp_sessions`` sessions per listener; the oldest is ended to
   make room, so a flood of source ports cannot grow memory without bound.
6. One greenlet reads the listener; one per session reads its upstream socket: a busy
   session never stalls the others.
"""

from __future__ import annotations

import socket as stdsocket
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket

from prefork_lb.balance.peers import Peer, Selection, new_selection
from prefork_lb.stream.session import Session, StreamAttempt

if TYPE_CHECKING:
    from prefork_lb.stream.runtime import StreamServerRuntime

MAX_DATAGRAM = 65535


class UdpSession:
    __slots__ = (
        "addr",
        "attempt",
        "closed",
        "peer",
        "reader",
        "requests",
        "responses",
        "sel",
        "session",
        "sock",
    )

    def __init__(self, addr: Any, session: Session, sel: Selection, peer: Peer, sock: socket.socket) -> None:
        self.addr = addr
        self.session = session
        self.sel = sel
        self.peer = peer
        self.sock = sock
        self.attempt = session.attempts[-1]
        self.requests = 0
        self.responses = 0
        self.closed = False  # no new client datagrams join it (proxy_requests reached)
        self.reader: gevent.Greenlet | None = None


class UdpListener:
    def __init__(
        self,
        sock: socket.socket,
        rt: StreamServerRuntime,
        clock: Callable[[], float],
        key: tuple[str, str, int],
        next_id: Callable[[], int],
    ) -> None:
        self.sock = sock
        self.rt = rt
        self.clock = clock
        self.family = stdsocket.AF_INET6 if key[0].startswith("inet6") else stdsocket.AF_INET
        self.server_addr, self.server_port = key[1], key[2]
        self.next_id = next_id
        self.sessions: OrderedDict[Any, UdpSession] = OrderedDict()
        self.active: set[UdpSession] = set()

    def serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except OSError:
                return  # closed on shutdown
            state = self.sessions.get(addr)
            if state is None:
                state = self._open(addr)
                if state is None:
                    continue
            self._forward(state, data)

    def _open(self, addr: Any) -> UdpSession | None:
        rt = self.rt
        limit = rt.config.udp_sessions
        while len(self.sessions) >= limit:
            _, oldest = self.sessions.popitem(last=False)
            oldest.closed = True
            if oldest.reader is not None:
                oldest.reader.kill(block=False)  # ends it now (logged as 200)
        now = self.clock()
        session = Session("UDP", addr[0], addr[1], self.server_addr, self.server_port, self.next_id(), now)
        rt.begin()
        sel = new_selection(rt.upstream.group, 1)
        peer = rt.upstream.pick(sel, session, now)
        if peer is None:
            session.attempts.append(StreamAttempt(rt.upstream.group.name))
            session.status = 502
            session.end_time = self.clock()
            rt.log_error(
                'no live upstreams while connecting to upstream, upstream: "%s"', rt.upstream.group.name
            )
            rt.end(session)
            return None
        session.attempts.append(StreamAttempt(peer.addr, connect_time_s=0.0))
        address = peer.server.address
        up = socket.socket(
            stdsocket.AF_INET6 if address.family == "inet6" else stdsocket.AF_INET, stdsocket.SOCK_DGRAM
        )
        up.connect((address.host, address.port))
        state = UdpSession(addr, session, sel, peer, up)
        self.sessions[addr] = state
        self.active.add(state)
        state.reader = gevent.spawn(self._read_upstream, state)
        return state

    def _forward(self, state: UdpSession, data: bytes) -> None:
        state.requests += 1
        n = len(data)
        state.session.bytes_received += n
        try:
            state.sock.send(data)
            state.attempt.bytes_sent += n
        except OSError:
            pass  # ICMP errors surface on the reader side
        limit = self.rt.config.proxy_requests
        if limit and state.requests >= limit:
            state.closed = True
            if self.sessions.get(state.addr) is state:
                del self.sessions[state.addr]

    def _read_upstream(self, state: UdpSession) -> None:
        rt = self.rt
        expected = rt.config.proxy_responses
        state.sock.settimeout(rt.config.proxy_timeout_s)
        failed = False
        start = state.session.start_time
        try:
            while True:
                try:
                    data = state.sock.recv(MAX_DATAGRAM)
                except TimeoutError:
                    if expected and state.responses < expected * state.requests:
                        failed = True
                        state.session.status = 502
                        rt.log_error(
                            "upstream timed out while proxying udp session, upstream: %s", state.peer.addr
                        )
                    break
                except ConnectionRefusedError:
                    failed = True  # ICMP port unreachable: charged; the client gets an empty datagram
                    rt.log_error(
                        "recv() failed (111: Connection refused) while proxying, upstream: %s",
                        state.peer.addr,
                    )
                    self._reply(state, b"")
                    break
                if state.attempt.first_byte_time_s is None:
                    state.attempt.first_byte_time_s = self.clock() - start
                state.attempt.bytes_received += len(data)
                self._reply(state, data)
                state.responses += 1
                if expected and state.responses >= expected * state.requests:
                    break  # nginx's "udp done"
        finally:
            self._finish(state, failed)

    def _reply(self, state: UdpSession, data: bytes) -> None:
        try:
            self.sock.sendto(data, state.addr)
            state.session.bytes_sent += len(data)
        except OSError:
            pass

    def _finish(self, state: UdpSession, failed: bool) -> None:
        if self.sessions.get(state.addr) is state:
            del self.sessions[state.addr]
        self.active.discard(state)
        now = self.clock()
        state.attempt.session_time_s = now - state.session.start_time
        state.session.end_time = now
        self.rt.upstream.release(state.sel, state.peer, failed, now, state.attempt)
        try:
            state.sock.close()
        except OSError:
            pass
        self.rt.end(state.session)

    def stop(self) -> None:
        """Graceful stop: no new datagrams; sessions in flight finish on their own."""
        try:
            self.sock.close()
        except OSError:
            pass
