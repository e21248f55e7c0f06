"""Binary upgrade (SIGUSR2), as nginx: a new master inherits the sockets and the zone.

Rules:
1. USR2 renames the pid file to ``.oldbin`` and fork+execs a new master that inherits the
   listening sockets and the zone through ``INHERIT_ENV`` (``zone=<fd>;sockets=<fd>,...``);
   the child closes every other inherited descriptor first (``spec.py`` rule 2). Both
   generations serve.
2. Ignored while stopping, while an upgrade runs, or while the master that started us is
   still alive (one upgrade at a time, as nginx).
3. WINCH retires the old master's workers (it keeps its sockets); QUIT to the old master
   commits. Rollback: HUP to the old master respawns its workers, QUIT to the new one; when
   the new master exits, the old one renames ``.oldbin`` back.

The master is seen through the ``Master`` protocol below: exactly what an upgrade touches
(``arbiter.Master`` satisfies it), so this module does not import the arbiter.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Protocol

from prefork_lb.config.model import Config
from prefork_lb.master.listeners import ListenerSet
from prefork_lb.master.pidfile import write_pidfile
from prefork_lb.master.procs import EXIT_BOOT_FAILED, alive
from prefork_lb.master.spec import STDIO, UpgradeSpec, enter_child
from prefork_lb.signals import MASTER_SIGNALS
from prefork_lb.zone.zone import Zone

log = logging.getLogger("prefork_lb.error")

INHERIT_ENV = "PREFORK_LB_INHERIT"  # binary upgrade: "zone=<fd>;sockets=<fd>,<fd>..."


class Master(Protocol):
    """What a binary upgrade reads and changes of the master (``arbiter.Master``)."""

    config: Config
    stopping: str | None
    upgrade_pid: int  # the new master, while it runs
    parent_master: int  # the old master that started us, 0 if none
    zone: Zone
    listeners: ListenerSet

    def all_sockets(self) -> list[socket.socket]: ...


def start_upgrade(master: Master) -> None:
    """Rules 1 and 2: exec a new master that inherits our sockets and the zone."""
    if master.stopping or master.upgrade_pid:
        log.warning("binary upgrade already in progress or stopping, USR2 ignored")
        return
    if master.parent_master and alive(master.parent_master):
        log.warning("the previous master is still running, USR2 ignored")
        return
    log.log(25, "signal %d (SIGUSR2) received, upgrading the binary", signal.SIGUSR2)
    pid_path = master.config.pid_path
    try:
        os.replace(pid_path, pid_path + ".oldbin")
    except OSError as e:
        log.error("rename() %s to %s.oldbin failed: %s; upgrade aborted", pid_path, pid_path, e.strerror)
        return
    spec = UpgradeSpec(master.zone.fd, tuple(s.fileno() for s in master.listeners.all_sockets()))
    argv = [sys.executable, "-m", "prefork_lb", *sys.argv[1:]]
    env = dict(os.environ, **{INHERIT_ENV: spec.env_value()})
    pid = os.fork()
    if pid == 0:
        try:
            enter_child(spec.keep_fds(), master.all_sockets())  # spec.py rule 2
            for fd in spec.keep_fds() - STDIO:
                os.set_inheritable(fd, True)
            for sig in MASTER_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(EXIT_BOOT_FAILED)
    master.upgrade_pid = pid
    log.log(25, "started new master process %d", pid)


def upgrade_exited(master: Master, status: int) -> None:
    """Rule 3: the new master is gone, we are the master again (nginx renames .oldbin back)."""
    log.log(
        25,
        "new master process %d exited with code %d",
        master.upgrade_pid,
        os.waitstatus_to_exitcode(status),
    )
    master.upgrade_pid = 0
    pid_path = master.config.pid_path
    try:
        os.replace(pid_path + ".oldbin", pid_path)
    except OSError:
        write_pidfile(pid_path)


def parse_inherit(spec: str) -> tuple[int, list[int]]:
    """``INHERIT_ENV``'s value: (zone fd, listening socket fds)."""
    parts = dict(item.split("=", 1) for item in spec.split(";") if "=" in item)
    sockets = [int(fd) for fd in parts.get("sockets", "").split(",") if fd]
    return int(parts["zone"]), sockets
