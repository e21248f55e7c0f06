"""Listening sockets, owned by the master for its whole life (plain stdlib, no gevent).

Rules:
1. Only the master binds. Workers inherit the sockets across fork and never close the
   master's copy, so an exiting worker never destroys an accept queue (with SO_REUSEPORT,
   closing a socket resets the connections queued on it; see
   shared/reference/process-model-zone-and-style.md section A.3).
2. Default: one socket per address, shared by every worker. ``reuseport`` on a listen
   entry: one SO_REUSEPORT socket per worker slot, all opened by the master (nginx's
   clones). Slots are never closed while running: closing one resets its queue.
   Every bound socket has an acceptor: with K slot sockets and N workers, worker w
   accepts on every socket i with i % N == w, so after ``workers`` shrinks the surviving
   workers serve the orphaned slots too (the kernel keeps hashing new connections onto
   all K sockets; a socket nobody accepts from would hang them, issue 12).
3. On reload, sockets are matched by (family, host, port) and kept (same fd); new addresses
   are bound; removed ones are closed only after the old workers have exited.
4. One deliberately broken mode stays in production code: with
   ``PREFORK_LB_TEST_BROKEN_REUSEPORT=1`` the master binds nothing and each worker binds
   its own SO_REUSEPORT socket (``worker.py``), gunicorn's ``reuse_port`` design, which
   loses the connections queued on a closing socket. ``loadtest/reload_under_load.sh
   --lb broken`` runs it to prove its harness detects lost connections; it must live in
   the processes under test, and it is read once per ``sync``, never per request.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass, field

from prefork_lb.config.model import Config, ListenConfig

log = logging.getLogger("prefork_lb.error")
Key = tuple[str, str, int]


class BindError(Exception):
    pass


@dataclass(slots=True)
class Listener:
    config: ListenConfig
    sockets: list[socket.socket] = field(default_factory=list)  # 1, or one per slot

    def for_worker(self, worker: int, workers: int) -> list[socket.socket]:
        """The sockets worker ``worker`` of ``workers`` accepts on (rule 2)."""
        if len(self.sockets) == 1:
            return list(self.sockets)
        return [s for i, s in enumerate(self.sockets) if i % workers == worker]

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []


def bind_one(lc: ListenConfig) -> socket.socket:
    addr = lc.address
    if addr.family == "unix":
        _remove_stale_unix(addr.host)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = addr.host
    else:
        family = socket.AF_INET6 if addr.family == "inet6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM if lc.udp else socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if lc.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        target = (addr.host, addr.port)
    try:
        sock.bind(target)
        if not lc.udp:
            sock.listen(lc.backlog)
    except OSError as e:
        sock.close()
        why = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise BindError(f"bind() to {addr.text} failed ({e.errno}: {why})") from None
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _remove_stale_unix(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def wanted_listens(config: Config) -> dict[Key, ListenConfig]:
    """One ListenConfig per address, preferring a ``reuseport`` entry."""
    wanted: dict[Key, ListenConfig] = {}
    for lc in config.all_listens():
        have = wanted.get(lc.key)
        if have is None or (lc.reuseport and not have.reuseport):
            wanted[lc.key] = lc
    return wanted


class ListenerSet:
    """Every listening socket the master holds, keyed by address."""

    def __init__(self) -> None:
        self.by_key: dict[Key, Listener] = {}

    def sync(self, config: Config, workers: int) -> list[Listener]:
        """Bind what ``config`` adds; return listeners it no longer uses (close them later).

        All-or-nothing: if a new address cannot be bound, the sockets bound by this call are
        closed again and BindError is raised, leaving the set as it was.
        """
        if os.environ.get("PREFORK_LB_TEST_BROKEN_REUSEPORT") == "1":
            return []  # test-only broken mode: workers bind their own sockets (worker.py)
        wanted = wanted_listens(config)
        added: list[Key] = []
        grown: list[tuple[Key, int]] = []
        try:
            for key, lc in wanted.items():
                current = self.by_key.get(key)
                if current is None:
                    count = workers if lc.reuseport else 1
                    self.by_key[key] = Listener(lc, [bind_one(lc) for _ in range(count)])
                    added.append(key)
                elif lc.reuseport and current.config.reuseport and len(current.sockets) < workers:
                    before = len(current.sockets)
                    current.sockets += [bind_one(lc) for _ in range(workers - before)]
                    grown.append((key, before))
        except BindError:
            for key in added:
                self.by_key.pop(key).close()
            for key, before in grown:
                extra = self.by_key[key].sockets[before:]
                del self.by_key[key].sockets[before:]
                for s in extra:
                    s.close()
            raise
        removed = [self.by_key.pop(k) for k in list(self.by_key) if k not in wanted]
        return removed

    def adopt(self, sockets: dict[Key, socket.socket], wanted: dict[Key, ListenConfig]) -> None:
        """Pre-bound sockets (systemd socket activation), used instead of binding; call
        before the first ``sync``, which then binds only what is still missing."""
        for key, sock in sockets.items():
            self.by_key[key] = Listener(wanted[key], [sock])

    def adopt_slots(self, sockets: dict[Key, list[socket.socket]], wanted: dict[Key, ListenConfig]) -> None:
        """Sockets inherited from the previous master (binary upgrade), every reuseport slot
        included; call before the first ``sync``."""
        for key, socks in sockets.items():
            self.by_key[key] = Listener(wanted[key], list(socks))

    def for_worker(self, worker: int, workers: int) -> list[tuple[Key, socket.socket]]:
        """(address, socket) pairs worker ``worker`` of ``workers`` accepts on; an address
        repeats when the worker serves several reuseport slots."""
        return [(key, s) for key, lst in self.by_key.items() for s in lst.for_worker(worker, workers)]

    def all_sockets(self) -> list[socket.socket]:
        return [s for lst in self.by_key.values() for s in lst.sockets]

    def close_all(self) -> None:
        for lst in self.by_key.values():
            lst.close()
        self.by_key = {}
