"""UDP stream proxying (libev watchers in the hub), nginx's semantics (spec section 8).

Rules:
1. A session is keyed by the client address on one listening socket (per worker); later
   datagrams from that address join it. Each session picks one peer (UDP never retries)
   and talks to it from a connected UDP socket of its own; replies go back to the client
   from the listening socket.
2. ``proxy_responses N``: the session ends once it has relayed N replies per client
   datagram; if ``proxy_timeout`` passes with fewer, it ends with 502 and the peer is
   charged a failure. Without it the session ends only at ``proxy_timeout`` (status 200).
   ``proxy_timeout`` is inactivity: a datagram either way restarts it.
3. ``proxy_requests N``: after N client datagrams the binding ends; the next datagram from
   that client starts a new session (and a new balancing decision).
4. An ICMP "port unreachable" from the peer (ECONNREFUSED on the connected socket) charges
   a failure and, as nginx does, sends the client an empty datagram.
5. The table holds at most ``udp_sessions`` sessions per listener; the oldest is ended to
   make room, so a flood of source ports cannot grow memory without bound.
6. A session takes a connection and a descriptor from the worker's budget
   (worker/fdbudget.py) through ``admit``/``release``: with no room, or when ``socket()``
   fails anyway (EMFILE, ENFILE, ENOBUFS, ENOMEM), the datagram that would open it is
   dropped, the error logged at alert at most once a second, and the listener keeps
   serving: sessions that end make room again (nginx refuses new sessions while full).
7. No greenlet per session or per listener: one io watcher reads the listener, one per
   session reads its upstream socket, all sockets are non-blocking C sockets (a reply
   that finds a full socket buffer is dropped, as UDP may), and one timer per listener
   ends idle sessions (``active`` is kept in order of last activity). Measured
   (loadtest/udp_session_memory.py): 1.15 KiB of worker RSS per open session, against
   10.5 KiB with a greenlet and a gevent socket each. Errors inside a callback are
   logged, never raised into the hub.
"""

from __future__ import annotations

import _socket
import errno
import logging
import socket as stdsocket
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from prefork_lb.balance.peers import Peer, Selection, new_selection
from prefork_lb.log import ALERT
from prefork_lb.stream.session import Session, StreamAttempt
from prefork_lb.worker.fdbudget import RESOURCE_ERRORS, UDP_COST, alert

if TYPE_CHECKING:
    from prefork_lb.stream.runtime import StreamServerRuntime

MAX_DATAGRAM: Final = 65535
BATCH: Final = 64  # datagrams read per wake-up of one socket: the others get their turn
PAUSE_S: Final = 0.5  # after a receive error on the listener other than EAGAIN
_REPORTED_ONCE: Final = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)

log = logging.getLogger("prefork_lb.error")


class UdpSession:
    __slots__ = (
        "addr",
        "attempt",
        "last_s",
        "peer",
        "requests",
        "responses",
        "sel",
        "session",
        "sock",
        "watcher",
    )

    def __init__(
        self, addr: Any, session: Session, sel: Selection, peer: Peer, sock: _socket.socket, now: float
    ) -> None:
        self.addr = addr
        self.session = session
        self.sel = sel
        self.peer = peer
        self.sock = sock
        self.attempt = session.attempts[-1]
        self.requests = 0
        self.responses = 0
        self.last_s = now  # last datagram either way (proxy_timeout is inactivity)
        self.watcher: Any = None


class UdpListener:
    def __init__(
        self,
        sock: stdsocket.socket,
        rt: StreamServerRuntime,
        loop: Any,
        key: tuple[str, str, int],
        next_id: Callable[[], int],
        admit: Callable[[int], bool],
        release: Callable[[int], object],
    ) -> None:
        """``sock``: the non-blocking listening socket; ``admit(cost)``/``release(cost)``:
        the worker's budget (rule 6)."""
        self.sock = sock
        self.rt = rt
        self.loop = loop
        self.clock: Callable[[], float] = loop.now
        self.family = stdsocket.AF_INET6 if key[0].startswith("inet6") else stdsocket.AF_INET
        self.server_addr, self.server_port = key[1], key[2]
        self.next_id = next_id
        self.admit = admit
        self.release = release
        self.sessions: dict[Any, UdpSession] = {}  # by client address, oldest first
        self.active: dict[UdpSession, None] = {}  # not yet ended, least recently active first
        self._watcher: Any = None
        self._timer: Any = None
        self._stopped = False

    # ---- the listening socket ----

    def start(self) -> None:
        self._watcher = self.loop.io(self.sock.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        sessions = self.sessions
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as e:
                if self._stopped:
                    return
                if e.errno in _REPORTED_ONCE:
                    continue  # an ICMP error for an earlier reply, consumed by this call
                alert("udp recvmsg", "recvmsg() failed (%s: %s) on a UDP listener", e.errno, e.strerror)
                self._pause()
                return
            try:
                state = sessions.get(addr)
                if state is None:
                    state = self._open(addr)
                    if state is None:
                        continue
                self._forward(state, data)
            except Exception:
                _unexpected()

    def _pause(self) -> None:
        """A receive error that is not EAGAIN: wait a little instead of spinning on it."""
        self._watcher.stop()
        timer = self.loop.timer(PAUSE_S)

        def resume() -> None:
            timer.close()
            if not self._stopped:
                self._watcher.start(self._readable)

        timer.start(resume)

    def _open(self, addr: Any) -> UdpSession | None:
        rt = self.rt
        sessions = self.sessions
        limit = rt.config.udp_sessions
        while len(sessions) >= limit:
            self._finish(next(iter(sessions.values())), False)  # the oldest ends now (200)
        if not self.admit(UDP_COST):
            return None  # the budget is full: dropped and logged (rule 6)
        now = self.clock()
        session = Session("UDP", addr[0], addr[1], self.server_addr, self.server_port, self.next_id(), now)
        rt.begin()
        sel = new_selection(rt.upstream.group, 1)
        peer = rt.upstream.pick(sel, session, now)
        if peer is None:
            session.attempts.append(StreamAttempt(rt.upstream.group.name))
            session.status = 502
            rt.log_error(
                'no live upstreams while connecting to upstream, upstream: "%s"', rt.upstream.group.name
            )
            self._end_unstarted(session)
            return None
        session.attempts.append(StreamAttempt(peer.addr, connect_time_s=0.0))
        address = peer.server.address
        family = stdsocket.AF_INET6 if address.family == "inet6" else stdsocket.AF_INET
        try:
            up = _socket.socket(family, stdsocket.SOCK_DGRAM)
        except OSError as e:
            # nginx: socket() failed -> 500, the peer is not charged
            session.status = 500
            message = (
                "socket() failed (%s: %s) while connecting to upstream, "
                'udp client: %s, server: %s:%s, upstream: "%s"'
            )
            args = (e.errno, e.strerror, addr[0], self.server_addr, self.server_port, peer.addr)
            if e.errno in RESOURCE_ERRORS:
                alert("udp socket", message, *args)
            else:
                log.log(ALERT, message, *args)
            rt.upstream.release(sel, peer, False, self.clock())
            self._end_unstarted(session)
            return None
        try:
            up.setblocking(False)
            up.connect((address.host, address.port))
        except OSError as e:
            up.close()
            session.status = 502
            rt.log_error(
                "connect() to %s failed (%s: %s) while connecting to upstream", peer.addr, e.errno, e.strerror
            )
            rt.upstream.release(sel, peer, True, self.clock())
            self._end_unstarted(session)
            return None
        state = UdpSession(addr, session, sel, peer, up, now)
        sessions[addr] = state
        self.active[state] = None
        watcher = state.watcher = self.loop.io(up.fileno(), 1)
        watcher.start(self._upstream_readable, state)
        if self._timer is None:
            self._arm(now + rt.config.proxy_timeout_s)
        return state

    def _end_unstarted(self, session: Session) -> None:
        session.end_time = self.clock()
        self.release(UDP_COST)
        self.rt.end(session)

    def _forward(self, state: UdpSession, data: bytes) -> None:
        state.requests += 1
        n = len(data)
        state.session.bytes_received += n
        self._touch(state)
        try:
            state.sock.send(data)
            state.attempt.bytes_sent += n
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:  # the ICMP error of an earlier datagram surfaced here
                self._refused(state, e)
                return
            # else a full socket buffer: the datagram is lost, as UDP may lose it
        limit = self.rt.config.proxy_requests
        if limit and state.requests >= limit and self.sessions.get(state.addr) is state:
            del self.sessions[state.addr]  # still waits for replies; new datagrams: new session

    # ---- the sessions' upstream sockets ----

    def _upstream_readable(self, state: UdpSession) -> None:
        try:
            self._relay_replies(state)
        except Exception:
            _unexpected()

    def _relay_replies(self, state: UdpSession) -> None:
        expected = self.rt.config.proxy_responses
        recv = state.sock.recv
        attempt = state.attempt
        for _ in range(BATCH):
            try:
                data = recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as e:
                self._refused(state, e)
                return
            if attempt.first_byte_time_s is None:
                attempt.first_byte_time_s = self.clock() - state.session.start_time
            attempt.bytes_received += len(data)
            self._reply(state, data)
            state.responses += 1
            if expected and state.responses >= expected * state.requests:
                self._finish(state, False)  # nginx's "udp done"
                return
            self._touch(state)

    def _refused(self, state: UdpSession, e: OSError) -> None:
        """ICMP port unreachable (or another error on the connected socket): the peer is
        charged and the client gets an empty datagram (rule 4)."""
        self.rt.log_error(
            "recv() failed (%s: %s) while proxying, upstream: %s", e.errno, e.strerror, state.peer.addr
        )
        self._reply(state, b"")
        self._finish(state, True)

    def _reply(self, state: UdpSession, data: bytes) -> None:
        try:
            self.sock.sendto(data, state.addr)
            state.session.bytes_sent += len(data)
        except OSError:
            pass  # full buffer or the listener closed: lost, as UDP may

    def _touch(self, state: UdpSession) -> None:
        state.last_s = self.clock()
        active = self.active
        del active[state]
        active[state] = None

    # ---- ends ----

    def _arm(self, at: float) -> None:
        timer = self._timer = self.loop.timer(max(0.0, at - self.clock()))
        timer.start(self._expire)

    def _expire(self) -> None:
        """The timer: end every session idle for proxy_timeout, then wait for the next."""
        self._timer.close()
        self._timer = None
        try:
            config = self.rt.config
            timeout = config.proxy_timeout_s
            expected = config.proxy_responses
            active = self.active
            now = self.clock()
            while active:
                state = next(iter(active))
                if state.last_s + timeout > now:
                    self._arm(state.last_s + timeout)
                    return
                failed = bool(expected and state.responses < expected * state.requests)
                if failed:
                    state.session.status = 502
                    self.rt.log_error(
                        "upstream timed out while proxying udp session, upstream: %s", state.peer.addr
                    )
                self._finish(state, failed)
        except Exception:
            _unexpected()

    def _finish(self, state: UdpSession, failed: bool) -> None:
        if state not in self.active:
            return
        del self.active[state]
        if self.sessions.get(state.addr) is state:
            del self.sessions[state.addr]
        state.watcher.close()
        state.sock.close()
        now = self.clock()
        state.attempt.session_time_s = now - state.session.start_time
        state.session.end_time = now
        try:
            self.rt.upstream.release(state.sel, state.peer, failed, now, state.attempt)
        finally:
            self.release(UDP_COST)
            self.rt.end(state.session)

    def stop(self) -> None:
        """Graceful stop: no new datagrams; sessions in flight finish on their own."""
        self._stopped = True
        if self._watcher is not None:
            self._watcher.close()
        try:
            self.sock.close()
        except OSError:
            pass

    def close_all(self) -> None:
        """Fast stop: every session ends now (logged as 200)."""
        for state in list(self.active):
            self._finish(state, False)
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def _unexpected() -> None:
    log.log(ALERT, "unexpected error in a UDP session: %s", traceback.format_exc().replace("\n", " | "))
