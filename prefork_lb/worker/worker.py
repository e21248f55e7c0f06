"""A worker process: gevent is imported here, after fork, never in the master.

Life of a worker:
1. Created by ``os.fork`` in the master with one ``WorkerSpec`` (master/spec.py): the
   Config already parsed, the listening sockets it serves, its zone row, its readiness
   pipe; every other inherited descriptor was closed before this module runs. It
   restores default signal dispositions, raises its file limit, imports what it needs,
   builds its runtime tables (opening access logs), then drops privileges when ``user``
   is set and the master is root (before the hub runs or any connection is accepted),
   names itself with setproctitle and starts one accept loop per listening socket (with
   ``reuseport``, possibly several slot sockets of one address).
2. Writes one byte to its readiness pipe, so the master knows it serves (a reload retires
   the old generation only after every new worker is ready).
3. Signals (run in the hub, never in handler context): QUIT graceful stop, TERM/INT fast
   stop, USR1 reopen logs; HUP/USR2/WINCH ignored.
4. Graceful stop: close this worker's copies of the listeners (the master keeps the
   queues), mark the runtime draining so responses carry ``Connection: close``, answer the
   next request of every keep-alive connection that sends one (with ``Connection:
   close``), close connections idle for ``DRAIN_IDLE_CLOSE_S`` with nothing pending, wait
   for in-flight requests, then exit; after ``worker_shutdown_timeout`` (if set) whatever
   is still open is closed.
5. Exits by itself if the master disappears (parent pid changes).

One test-only switch lives here: ``PREFORK_LB_TEST_BROKEN_REUSEPORT=1`` makes the worker
bind its own SO_REUSEPORT sockets (gunicorn's design, which loses queued connections), for
``loadtest/reload_under_load.sh --lb broken`` (``master/listeners.py`` rule 4 says why it
must stay in the processes under test); it is read once at start, never per request.

Exit codes: 0 normal, 3 failed to boot (the master does not respawn in a loop on it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket as stdsocket
import sys
from typing import TYPE_CHECKING, Any

from prefork_lb.log import ALERT
from prefork_lb.worker.fdbudget import STREAM_COST, Budget

if TYPE_CHECKING:
    from prefork_lb.master.spec import WorkerSpec

EXIT_BOOT_FAILED = 3
Key = tuple[str, str, int]
# Draining: keep-alive connections idle this long with no request pending are closed; any
# other connection gets its next response with "Connection: close" first.
DRAIN_IDLE_CLOSE_S = 1.0


def run_worker(spec: WorkerSpec) -> int:
    from prefork_lb.signals import MASTER_SIGNALS

    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        worker = Worker(spec)
    except Exception as e:
        logging.getLogger("prefork_lb.error").critical("worker failed to start: %r", e)
        return EXIT_BOOT_FAILED
    return worker.run(spec.ready_fd)


def _drop_privileges(config: Any, zone: Any) -> None:
    """After everything the worker needs is imported and opened (modules, access logs, the
    zone's lock descriptor, which /proc refuses once the process is no longer dumpable),
    before the hub runs or any connection is accepted."""
    from prefork_lb.worker import privileges

    if config.user is None or os.getuid() != 0:
        return
    if zone is not None:
        zone.lock()  # opens this process's own lock descriptor
        zone.unlock()
    uid, gid = privileges.resolve(config.user, config.group)
    privileges.drop(uid, gid)


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        import gevent
        import gevent.event
        import gevent.pool
        import gevent.server
        import gevent.socket
        import psutil  # noqa: F401 - import as root: /api/9/prefork/workers reads it after the drop
        from setproctitle import setproctitle

        from prefork_lb.http import status_pages  # noqa: F401 - import as root (importlib.resources)
        from prefork_lb.http.connection import ClientConnection  # noqa: F401 - import as root
        from prefork_lb.http.runtime import build_runtime
        from prefork_lb.worker import privileges

        config = spec.config
        if config.worker_rlimit_nofile:
            refused = privileges.raise_nofile(config.worker_rlimit_nofile)
            if refused:
                logging.getLogger("prefork_lb.error").log(ALERT, "%s", refused)
        self.config = config
        self.generation = generation = spec.generation
        self.slot = slot = spec.slot
        self.master_pid = spec.master_pid
        self.gevent = gevent
        self.stop_event = gevent.event.Event()
        self.graceful = True
        self.zone: Any = spec.zone
        self.row = spec.zone_row
        from prefork_lb.zone import layout as ZL

        self.parked_cell = ZL.row_base(self.row, self.zone.peers) + ZL.R_PARKED
        slots = dict(spec.peer_slots)
        self.runtime = build_runtime(
            config, self.zone, slots, self.row, dict(spec.limit_tables), spec.servers
        )
        if spec.cache_indexes:  # proxy_cache_path zones (cache/store.py); none: nothing to do
            from prefork_lb.cache.store import open_zones

            self.runtime.caches = open_zones(config.http.cache_paths, dict(spec.cache_indexes), self.row)
            from prefork_lb.http.runtime import attach_cache_plans

            attach_cache_plans(self.runtime)  # issue 18: each proxy_cache location's plan
        from prefork_lb.stream.runtime import build_stream_runtime

        self.streams = build_stream_runtime(
            config, self.zone, slots, self.row, self.runtime.access_logs, spec.servers
        )
        self.runtime.streams = self.streams
        self.server_table = spec.servers  # issue 19: zombies swept by housekeeping
        from prefork_lb.balance.members import refresh

        for up in self.runtime.upstreams.values():
            refresh(up)  # runtime server lists (members.py): the table, not the config
        for st in self.streams.values():
            refresh(st.upstream)
        self.udp: list[Any] = []  # UdpListener
        self.stream_sessions: set[Any] = set()
        if "GEVENT_LOOP" not in os.environ:
            # Measured (loadtest/cpu_per_request.sh, 3 A/B pairs): libev's C extension costs
            # 82-87 us of worker CPU per proxied request, libuv (cffi) 163-168 us.
            gevent.config.loop = "libev-cext"
        gevent.get_hub()  # created (not run) as root: gevent imports its loop module lazily
        _drop_privileges(config, self.zone)
        self.connections: set[Any] = set()
        # connections accepted and not yet closed (HTTP, parked too, and TCP) and UDP sessions
        self.budget = Budget(config.worker_connections)
        self.runners: Any = None  # Runners: connection greenlets, reused (runners.py)
        self.servers: list[Any] = []
        self.share: Any = None  # FairShare with several workers (acceptor.py rule 1)
        self.sockets = [(key, stdsocket.socket(fileno=fd)) for key, fd in spec.listeners]
        from prefork_lb.config.http2 import http2_keys

        self.http2_keys = http2_keys(config.http.servers)  # issue 20
        self.title = f"prefork-lb: worker process #{slot} gen {generation}"
        setproctitle(self.title)

    def run(self, ready_fd: int) -> int:
        gevent = self.gevent
        from prefork_lb.log import reopen_error_log
        from prefork_lb.worker.acceptor import SHARED_BATCH, Acceptor
        from prefork_lb.worker.share import FairShare

        hub = gevent.get_hub()
        share = self.share = None
        if self.zone is not None and self.config.workers > 1:
            share = FairShare(self.zone.mv, self.zone.rows, self.zone.peers, self.row, self.config.workers)
            self.share = share
        self.clock = hub.loop.now
        # Connection greenlets are raw greenlets (gevent.spawn_raw): a Group's bookkeeping
        # was 8% of the worker's samples with Connection: close clients. worker_connections
        # counts connections (parked ones included, which have no greenlet), see
        # _spawn_connection; shutdown waits for that count to reach zero. A finished one
        # waits for the next connection (runners.py: close 15-20% less CPU per request).
        from prefork_lb.worker.runners import Runners

        self.runners = Runners(hub, gevent.spawn_raw)
        if os.environ.get(BROKEN_REUSEPORT_ENV) == "1":
            self.sockets = _bind_own_reuseport(list(self.runtime.routers))
        for key, sock in self.sockets:
            router = self.runtime.routers.get(key)
            stream_rt = self.streams.get(key)
            if router is None and stream_rt is None:
                continue
            # Measured (loadtest/anchors.sh, wrk -c50, 2 workers): gevent's default of 100
            # accepts per wake-up let one worker take every connection of a burst and left
            # the other idle (~5.5k vs ~10.8k req/s, bimodal). One accept per wake-up shares
            # a burst between the workers woken by the shared socket (gunicorn does the same).
            # More per wake-up only while this worker holds no more than its share (share.py).
            max_accept, batch = 100, None
            if self.config.workers > 1:
                max_accept, batch = 1, None
                if share is not None:
                    max_accept, batch = SHARED_BATCH, share.below
            lsock = stdsocket.socket(fileno=os.dup(sock.fileno()))
            lsock.setblocking(False)
            if stream_rt is not None and key[0].endswith("-udp"):
                self._serve_udp(lsock, key, stream_rt)
                continue
            if key[0] != "unix":  # accepted sockets inherit it: no setsockopt per connection
                lsock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
            if router is not None:
                accepted = self._http_accepted(key, router)
            else:
                accepted = self._tcp_accepted(key, stream_rt)
            acceptor = Acceptor(lsock, hub, accepted, self._full, max_accept, batch)
            acceptor.start_accepting()
            self.servers.append(acceptor)
        for _, sock in self.sockets:
            sock.close()  # only the worker's inherited copies; the master keeps its own
        gevent.signal_handler(signal.SIGQUIT, self._stop, True)
        gevent.signal_handler(signal.SIGTERM, self._stop, False)
        gevent.signal_handler(signal.SIGINT, self._stop, False)
        gevent.signal_handler(signal.SIGUSR1, self._reopen, reopen_error_log)
        for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_IGN)
        self._limit_descriptors()
        housekeeping = gevent.spawn(self._housekeeping)
        try:
            os.write(ready_fd, b"R")
            os.close(ready_fd)
        except OSError:
            pass
        self.stop_event.wait()
        housekeeping.kill()
        self._shutdown()
        self.runtime.access_logs.close_all()
        for up in self.runtime.upstreams.values():
            up.pool.close_all()
        return 0

    def _limit_descriptors(self) -> None:
        """Everything the worker keeps open is open now: what is left of the soft limit is
        for connections (fdbudget.py rule 2)."""
        import resource

        from prefork_lb.worker.fdbudget import open_descriptors

        if self.zone is not None:  # its lock descriptor now, not at the first pick (maybe at EMFILE)
            self.zone.lock()
            self.zone.unlock()
        pooled = sum(up.pool.capacity for up in self.runtime.upstreams.values())
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            return
        self.budget.limit_descriptors(nofile, open_descriptors(), pooled)
        warning = self.budget.capacity_warning()
        if warning:
            logging.getLogger("prefork_lb.error").warning("%s", warning)

    def _http_accepted(self, key: tuple[str, str, int], router: Any) -> Any:
        """The acceptor's callback: count the connection, serve it in a new greenlet."""
        handle = self._handler(key, router)
        spawn = self._spawn_connection

        def accepted(raw: Any, address: Any) -> None:
            spawn(handle, raw, address)

        return accepted

    def _handler(self, key: tuple[str, str, int], router: Any) -> Any:
        lt = self.config.tls.get(key)
        if lt is not None:
            return self._tls_handler(key, router, lt)
        from prefork_lb.http.connection import ClientConnection
        from prefork_lb.http.exchange import ConnectionInfo
        from prefork_lb.netio import ClientSocket

        runtime = self.runtime
        connections = self.connections
        clock = self.clock
        family, host, port = key
        counter = [self.slot << 40]
        mv = runtime.zone.mv
        accepted, active = runtime.accepted_cell, runtime.active_cell

        hub = self.gevent.get_hub()
        if key in self.http2_keys:  # issue 20: h2c by prior knowledge, else HTTP/1.1
            return self._h2c_handler(key, router)

        def handle(raw: Any, address: Any) -> None:
            counter[0] += 1
            try:
                if family == "unix":
                    remote, rport = "unix:", 0
                else:
                    remote, rport = address[0], address[1]
                info = ConnectionInfo(remote, rport, host, port, counter[0])
                conn = ClientConnection(ClientSocket(raw, hub), info, router, runtime, clock)
            except BaseException:
                raw.close()
                self._connection_closed()
                raise
            conn.parkable = True
            connections.add(conn)
            mv[accepted] += 1
            mv[active] += 1
            self._serve(conn)

        return handle

    def _reading_handler(self, key: tuple[str, str, int], open_conn: Any) -> Any:
        """The accept shell of an address that reads before it knows the connection class
        (the TLS handshake, the h2c preface): ``open_conn(sock, info)`` runs in the
        connection's greenlet and returns the connection, or None when the client is gone
        (its socket is closed and the counts undone here)."""
        from prefork_lb.http.exchange import ConnectionInfo
        from prefork_lb.netio import ClientSocket

        runtime = self.runtime
        connections = self.connections
        family, host, port = key
        counter = [self.slot << 40]
        mv = runtime.zone.mv
        accepted, active = runtime.accepted_cell, runtime.active_cell
        hub = self.gevent.get_hub()

        def handle(raw: Any, address: Any) -> None:
            counter[0] += 1
            remote, rport = ("unix:", 0) if family == "unix" else (address[0], address[1])
            try:
                sock = ClientSocket(raw, hub)
            except BaseException:
                raw.close()
                self._connection_closed()
                raise
            mv[accepted] += 1
            mv[active] += 1
            conn: Any = None
            try:
                conn = open_conn(sock, ConnectionInfo(remote, rport, host, port, counter[0]))
            finally:
                if conn is None:
                    sock.close()
                    mv[active] -= 1
                    self._connection_closed()
            if conn is None:
                return
            conn.parkable = True
            connections.add(conn)
            self._serve(conn)

        return handle

    def _h2c_handler(self, key: tuple[str, str, int], router: Any) -> Any:
        """A plain address with HTTP/2 (http/h2/accept.py rule 2): the preface is sniffed
        in the connection's greenlet, then ``H2Session`` or ``ClientConnection``."""
        from prefork_lb.http.connection import ClientConnection
        from prefork_lb.http.h2.accept import sniff_preface
        from prefork_lb.http.h2.connection import H2Session

        runtime = self.runtime
        clock = self.clock
        timeout_s = router.default.client_header_timeout_s
        spawn = self.runners.spawn

        def open_conn(sock: Any, info: Any) -> Any:
            found = sniff_preface(sock, timeout_s)
            if found is None:
                return None
            h2, initial = found
            if h2:
                session = H2Session(sock, info, router, runtime, clock, spawn)
                session.initial = initial
                return session
            conn = ClientConnection(sock, info, router, runtime, clock)
            if initial:
                conn.reader.feed(initial)
            return conn

        return self._reading_handler(key, open_conn)

    def _tls_handler(self, key: tuple[str, str, int], router: Any, lt: Any) -> Any:
        """An HTTP connection on a TLS address: the handshake (tls/io.py) in the connection's
        greenlet, then ``TlsConnection`` (tls/connection.py), or ``H2Session`` for ALPN h2."""
        from prefork_lb.tls.connection import TlsConnection
        from prefork_lb.tls.info import tls_info
        from prefork_lb.tls.io import accept_tls

        runtime = self.runtime
        clock = self.clock
        timeout_s = router.default.client_header_timeout_s
        verify = lt.verify_client
        h2 = key in self.http2_keys
        if h2:
            from prefork_lb.http.h2.accept import is_h2_tls
            from prefork_lb.http.h2.connection import H2Session

        def open_conn(sock: Any, info: Any) -> Any:
            done = accept_tls(sock, lt.context, timeout_s, info.remote_addr)
            if done is False:
                return None
            if done is not True:
                info.tls = tls_info(done, verify != "off")
            if h2 and done is not True and is_h2_tls(done):  # issue 20: ALPN h2
                return H2Session(sock, info, router, runtime, clock, self.runners.spawn, verify)
            conn = TlsConnection(sock, info, router, runtime, clock)
            conn.setup(done is True, verify)
            return conn

        return self._reading_handler(key, open_conn)

    def _serve(self, conn: Any) -> None:
        """Run ``conn`` in this greenlet until it ends, or park it (connection.py rule 6)."""
        parked = False
        try:
            parked = conn.serve()
        finally:
            if parked:
                self._park(conn)
            else:
                self._connection_ended(conn)

    def _connection_ended(self, conn: Any) -> None:
        self.runtime.zone.mv[self.runtime.active_cell] -= 1
        self.connections.discard(conn)
        self._connection_closed()

    def _park(self, conn: Any) -> None:
        """Watch a parked connection without a greenlet: readable -> serve it again in a new
        greenlet; its idle timeout -> close it quietly, as the waiting greenlet would have."""
        from prefork_lb.netio import release_deadline

        release_deadline()  # this greenlet ends here: its socket-wait timer goes (netio rule 2)
        loop = self.gevent.get_hub().loop
        sock = conn.sock  # a ClientSocket: its own read watcher, never stopped (netio rule 5)
        expiry = loop.timer(max(0.0, conn.park_deadline - self.clock()))
        mv, parked = self.zone.mv, self.parked_cell
        mv[parked] += 1  # the row's parked count: observable in the zone (one writer)

        def wake() -> None:
            expiry.close()
            mv[parked] -= 1
            conn.unpark()
            self.runners.spawn(self._serve, conn)

        def expire() -> None:
            sock.watch_readable(None)
            expiry.close()
            mv[parked] -= 1
            conn.unpark()
            conn.close()
            self._connection_ended(conn)

        sock.watch_readable(wake)
        expiry.start(expire)

    def _spawn_connection(self, handle: Any, *args: Any) -> None:
        """The acceptors' spawn: counts the connection and pauses accepting when the budget
        (worker_connections, descriptors) has no room for another (connections, not
        greenlets: parked ones count too)."""
        if self.budget.opened(STREAM_COST):
            self._pause_accepting()
        self.runners.spawn(handle, *args)

    def _full(self) -> bool:
        return self.budget.paused

    def _pause_accepting(self) -> None:
        from prefork_lb.worker.fdbudget import alert

        for server in self.servers:
            server.stop_accepting()
        kind, message, args = self.budget.full_reason()
        alert(kind + " accept", message + ", accepting paused", *args)

    def _connection_closed(self, cost: int = STREAM_COST) -> None:
        if self.budget.closed(cost) and not self.runtime.draining:
            for server in self.servers:
                server.start_accepting()

    def _udp_opened(self, cost: int) -> bool:
        """A UDP session may start (UdpListener's ``admit``): False, and logged, when full."""
        from prefork_lb.worker.fdbudget import alert

        budget = self.budget
        if not budget.fits(cost):
            kind, message, args = budget.full_reason()
            alert(kind + " udp", message + ", UDP session dropped", *args)
            return False
        if budget.opened(cost):
            self._pause_accepting()
        return True

    def _tcp_accepted(self, key: tuple[str, str, int], rt: Any) -> Any:
        """The acceptor's callback for a TCP stream listener."""
        handle = self._tcp_handler(key, rt)
        spawn = self._spawn_connection

        def accepted(raw: Any, address: Any) -> None:
            spawn(handle, raw, address)

        return accepted

    def _tcp_handler(self, key: tuple[str, str, int], rt: Any) -> Any:
        from gevent.socket import socket as gsocket

        from prefork_lb.stream.session import Session
        from prefork_lb.stream.tcp import TcpSession

        clock = self.clock
        sessions = self.stream_sessions
        counter = [(self.slot << 40) + (1 << 39)]
        keepalive = any(lc.so_keepalive for lc in rt.config.listen if lc.key == key)
        lt = self.config.tls.get(key)
        if lt is not None:
            from gevent.ssl import SSLSocket

            from prefork_lb.tls.info import tls_info
            from prefork_lb.tls.io import handshake_stream

            verify = lt.verify_client

            handshake_s = rt.config.ssl_handshake_timeout_s
        preread_s = rt.config.preread_timeout_s if rt.config.ssl_preread else 0.0
        if preread_s:
            from prefork_lb.tls.io import preread_stream

        def handle(raw: Any, address: Any) -> None:
            counter[0] += 1
            sock: Any = raw
            try:
                sock = gsocket(raw.family, raw.type, 0, raw.detach())
                if keepalive:
                    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_KEEPALIVE, 1)
                if lt is not None:
                    ctx = lt.context
                    sock = SSLSocket(sock, server_side=True, do_handshake_on_connect=False, _context=ctx)
                session = Session("TCP", address[0], address[1], key[1], key[2], counter[0], clock())
                tcp = TcpSession(sock, session, rt, clock)
            except BaseException:
                sock.close()
                self._connection_closed()
                raise
            sessions.add(tcp)
            rt.begin()
            try:
                if lt is not None:  # nginx: the handshake comes before the upstream is picked
                    if not handshake_stream(sock, handshake_s, address[0]):
                        session.status = 500  # nginx finalizes a failed handshake with 500
                        return
                    tcp.tls = True
                    session.tls = tls_info(sock, verify != "off")
                    if verify == "on" and not session.tls.has_client_cert:
                        logging.getLogger("prefork_lb.error").info(
                            "client sent no required SSL certificate while SSL handshaking, client: %s",
                            address[0],
                        )
                        session.status = 400  # nginx's stream module: 400, no upstream
                        return
                if preread_s:  # tcp.py rule 7: before the upstream is picked
                    found = preread_stream(sock, preread_s)
                    if found is None:
                        return  # nginx: a preread that ends without a hello ends the session
                    tcp.first, session.preread = found
                tcp.run()
            finally:
                sessions.discard(tcp)
                session.end_time = clock()
                tcp.close()
                rt.end(session)
                self._connection_closed()

        return handle

    def _serve_udp(self, sock: Any, key: tuple[str, str, int], rt: Any) -> None:
        from prefork_lb.stream.udp import UdpListener

        counter = [(self.slot << 40) + (3 << 38)]

        def next_id() -> int:
            counter[0] += 1
            return counter[0]

        listener = UdpListener(
            sock, rt, self.gevent.get_hub().loop, key, next_id, self._udp_opened, self._connection_closed
        )
        listener.start()
        self.udp.append(listener)

    def _stop(self, graceful: bool) -> None:
        self.graceful = self.graceful and graceful
        self.stop_event.set()

    def _reopen(self, reopen_error_log: Any) -> None:
        reopen_error_log()
        self.runtime.access_logs.reopen_all()

    def _housekeeping(self) -> None:
        gevent = self.gevent
        while True:
            if self.zone is not None:
                self.zone.heartbeat(self.row)  # proves the hub is not blocked
            if self.share is not None:
                self.share.refresh()  # siblings respawned or draining
            gevent.sleep(1.0)
            now = self.clock()
            for up in self.runtime.upstreams.values():
                up.pool.sweep(now)
            table = self.server_table
            if table is not None and table.pending_zombies() and self.zone is not None:
                with self.zone:  # deleted servers whose last request ended (zone/servers.py rule 5)
                    table.sweep(self.zone)
            self.runtime.access_logs.flush_expired()  # its own clock: time.monotonic()
            if os.getppid() != self.master_pid:
                self._stop(True)

    def _shutdown(self) -> None:
        gevent = self.gevent
        from setproctitle import setproctitle

        setproctitle(self.title + " (shutting down)")
        if self.zone is not None:
            from prefork_lb.zone import layout as ZL

            self.zone.mv[ZL.row_base(self.row, self.zone.peers) + ZL.R_DRAINING] = 1
        for server in self.servers:
            server.close()
        for listener in self.udp:
            listener.stop()
        self.runtime.draining = True
        if not self.graceful:
            self._close_all()
            return
        timeout = self.config.worker_shutdown_timeout_s
        deadline = self.clock() + timeout if timeout else None
        while self.connections or self.stream_sessions or any(lst.active for lst in self.udp):
            now = self.clock()
            if not self.graceful or (deadline is not None and now >= deadline):
                self._close_all()
                break
            for conn in list(self.connections):
                conn.close_if_idle(DRAIN_IDLE_CLOSE_S, now)
            gevent.sleep(0.05)
        deadline = self.clock() + 1.0  # aborted connections finish their logging
        while self.budget.connections > 0 and self.clock() < deadline:
            gevent.sleep(0.02)

    def _close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        for tcp in list(self.stream_sessions):
            tcp._abort()
        for listener in self.udp:
            listener.close_all()


# Test-only: reproduce the gunicorn reuse_port design, where every worker binds its own
# SO_REUSEPORT socket and closes it when it exits, losing the connections queued on it.
# loadtest/reload_under_load.sh uses it to prove the harness can detect lost connections.
BROKEN_REUSEPORT_ENV = "PREFORK_LB_TEST_BROKEN_REUSEPORT"


def _bind_own_reuseport(keys: list[Key]) -> list[tuple[Key, stdsocket.socket]]:
    own = []
    for family, host, port in keys:
        if family == "unix":
            continue
        s = stdsocket.socket(stdsocket.AF_INET6 if family == "inet6" else stdsocket.AF_INET)
        s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
        s.bind((host, port))
        s.listen(128)
        s.setblocking(False)
        own.append(((family, host, port), s))
    return own


def worker_main(spec: WorkerSpec) -> None:
    """Entry point after fork: never returns into the master's code."""
    code = EXIT_BOOT_FAILED
    profile_dir = os.environ.get("PREFORK_LB_PROFILE_DIR")
    try:
        if profile_dir:  # developer aid: cProfile per worker, written at exit (see docs)
            import cProfile

            profiler = cProfile.Profile()
            code = profiler.runcall(run_worker, spec)
            profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))
        else:
            code = run_worker(spec)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
