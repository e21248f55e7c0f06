"""What a forked child owns: one typed spec per child, and descriptor hygiene after fork.

``fork()`` copies every descriptor the master holds: every generation's listeners, the
ones a reload removed (kept until the old workers exit), other workers' readiness pipes,
the master's wakeup pipe and zone lock. A child that keeps a listening socket keeps its
address bound and its accept queue reachable whoever else closes it (issue 12: after
moving a listener from P1 to P2, the new workers held P1 in LISTEN, connections to P1
hung and moving back to P1 failed with EADDRINUSE). So what a child inherits is opt-in.

Rules:
1. The master builds one frozen spec per child before fork (``WorkerSpec`` for a worker,
   ``ProberSpec`` for the health prober, ``UpgradeSpec`` for the binary-upgrade child)
   naming every descriptor the child owns.
2. The first thing a child does, before importing or running anything else, is
   ``enter_child(spec.keep_fds(), ...)``: stop the master's signal wakeup fd, detach the
   master's socket objects (so a later garbage collection can never close a reused
   descriptor number), then close every descriptor not in the spec (``/proc/self/fd``).
3. Workers never talk to systemd: no notify socket is passed (the master opens one per
   message, ``systemd.notify``) and ``$NOTIFY_SOCKET`` is dropped from the child's
   environment. ``$LISTEN_FDS`` was already unset by the master.
4. The zone: the spec keeps the memfd (``Zone.fd``: the worker opens its own lock
   descriptor from it) and the duplicate Python's ``mmap`` holds internally (it closes
   that number when the mapping is closed, so it must stay ours); not the master's lock
   descriptor, whose flock owner is the master's.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prefork_lb.config.model import Config
from prefork_lb.master import systemd
from prefork_lb.zone.zone import Zone

Key = tuple[str, str, int]  # ListenConfig.key: (family, host, port)
STDIO = frozenset({0, 1, 2})


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything one worker owns; the child closes every other inherited descriptor."""

    config: Config
    generation: int
    slot: int  # the worker's index in its generation (0 .. workers-1)
    master_pid: int
    # (address, listening fd) pairs. One pair per address with a shared socket; with
    # ``reuseport`` a worker serves every slot socket i with i % workers == slot, so an
    # address can appear more than once (never a bound socket without an acceptor).
    listeners: tuple[tuple[Key, int], ...]
    zone: Zone
    zone_fds: tuple[int, ...]  # zone_descriptors(zone): the memfd and the mapping's duplicate
    zone_row: int
    peer_slots: Mapping[str, int]
    ready_fd: int  # write end of the readiness pipe; one byte "R" when serving
    log_fds: tuple[int, ...]  # the error log's descriptors (stdio included when used)
    # proxy_cache_path indexes by zone name (cache/index.py): anonymous shared mappings, no descriptor
    cache_indexes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # limit_req / limit_conn tables (limits/table.py): anonymous shared mappings, no descriptor
    limit_tables: Mapping[tuple[int, str], Any] = field(default_factory=lambda: MappingProxyType({}))

    def keep_fds(self) -> frozenset[int]:
        return STDIO | {self.ready_fd, *self.zone_fds, *self.log_fds, *(fd for _, fd in self.listeners)}


@dataclass(frozen=True, slots=True)
class ProberSpec:
    """The health prober (health/prober.py): the zone and the logs, no listener, no row."""

    config: Config
    master_pid: int
    zone: Zone
    zone_fds: tuple[int, ...]
    peer_slots: Mapping[str, int]
    reloaded: bool  # started by a reload: checks that are not persistent start over
    log_fds: tuple[int, ...]

    def keep_fds(self) -> frozenset[int]:
        return STDIO | {*self.zone_fds, *self.log_fds}


@dataclass(frozen=True, slots=True)
class UpgradeSpec:
    """What the binary-upgrade child passes across exec: the zone and current listeners."""

    zone_fd: int
    listener_fds: tuple[int, ...]

    def keep_fds(self) -> frozenset[int]:
        return STDIO | {self.zone_fd, *self.listener_fds}  # exec closes the mapping anyway

    def env_value(self) -> str:
        """``PREFORK_LB_INHERIT``: "zone=<fd>;sockets=<fd>,<fd>..."."""
        return f"zone={self.zone_fd};sockets={','.join(map(str, self.listener_fds))}"


def error_log_fds() -> tuple[int, ...]:
    """The descriptors the ``prefork_lb`` loggers write to (a child keeps logging)."""
    fds: set[int] = set()
    for handler in logging.getLogger("prefork_lb").handlers:
        fd = getattr(handler, "fd", None)  # log.ReopenableFileHandler
        if fd is None:
            stream = getattr(handler, "stream", None)  # logging.StreamHandler (before setup)
            try:
                fd = stream.fileno() if stream is not None else None
            except (OSError, ValueError, AttributeError):
                fd = None
        if isinstance(fd, int) and fd >= 0:
            fds.add(fd)
    return tuple(sorted(fds))


def zone_descriptors(zone: Zone) -> tuple[int, ...]:
    """The descriptors of the zone's memfd in this process except the master's lock fd
    (rule 4): ``Zone.fd`` and the duplicate its ``mmap`` keeps (Python 3.11 does not
    expose it, so it is found by inode)."""
    want = os.fstat(zone.fd)
    lock_fd = zone._lock_fd  # the one descriptor of that file a child must not keep
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd == lock_fd:
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # the descriptor listdir itself used
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            fds.append(fd)
    return tuple(sorted(fds))


def enter_child(keep: frozenset[int], master_sockets: Iterable[socket.socket]) -> None:
    """Rule 2, in a freshly forked child: nothing but ``keep`` stays open."""
    signal.set_wakeup_fd(-1)  # before its pipe is closed: a signal must not write to a reused fd
    for sock in master_sockets:
        sock.detach()  # the number may be closed below (or kept for the spec): never close it via GC
    close_inherited(keep)
    systemd.forget_notify_socket()  # rule 3


def close_inherited(keep: frozenset[int]) -> None:
    """Close every open descriptor of this process that is not in ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep:
            continue
        try:
            os.close(fd)
        except OSError:
            pass  # the descriptor listdir itself used, already closed
