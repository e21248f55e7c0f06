"""Reload (SIGHUP): a new generation of workers with a new config, or none at all.

Rules:
1. The new config is loaded with the same code as ``-t`` (and the startup checks run);
   on any error the old config keeps running, untouched.
2. Peer slots are assigned and new listeners are bound before forking; a failure undoes
   both (the slot table is restored from its snapshot).
3. The new generation must report ready (one byte "R" on its readiness pipe, within
   ``READY_TIMEOUT_S``) before the old one is told to quit. If it does not, it is killed,
   the listeners only it wanted are closed, the slots are restored, and the old
   generation keeps serving.
4. Listeners the new config dropped are closed, and retired peer slots released, only
   once every worker of an older generation is gone: they still serve from them.

The master is seen through the ``Master`` protocol below: exactly what a reload touches
(``arbiter.Master`` satisfies it), so this module does not import the arbiter.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from typing import Protocol

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config
from prefork_lb.log import setup_error_log
from prefork_lb.master.listeners import BindError, Listener, ListenerSet
from prefork_lb.master.pidfile import write_pidfile
from prefork_lb.master.procs import WorkerProc, kill
from prefork_lb.zone import layout as ZL
from prefork_lb.zone.slots import RowTable, SlotTable
from prefork_lb.zone.zone import Zone, ZoneFullError

log = logging.getLogger("prefork_lb.error")

READY_TIMEOUT_S = 10.0


class Master(Protocol):
    """What a reload reads and changes of the master (``arbiter.Master``)."""

    config: Config
    config_path: str
    prefix: str | None
    generation: int
    peer_slots: dict[str, int]
    listeners: ListenerSet
    slots: SlotTable
    rows: RowTable
    zone: Zone
    workers: dict[int, WorkerProc]
    respawn_at: dict[int, float]
    retired: list[tuple[int, list[Listener]]]

    def spawn(self, slot: int, config: Config, generation: int, peer_slots: dict[str, int]) -> WorkerProc: ...

    def signal_all(self, sig: int, generation: int | None = None) -> None: ...

    def prepare_logs(self, config: Config) -> None: ...


def reload(master: Master) -> bool:
    """Rules 1-3; True once the new generation serves and the old one was told to quit."""
    try:
        config = load_config(master.config_path, master.prefix)
    except ConfigError as e:
        log.error("%s; reload aborted, still running the previous configuration", e)
        return False
    for note in config.notes:  # an nginx.conf's conversion report
        log.warning("%s", note)
    from prefork_lb.preflight import StartupError, check_startup

    try:
        check_startup(config)  # log files, pid directory: the checks of -t and startup
    except StartupError as e:
        log.error("%s; reload aborted, still running the previous configuration", e)
        return False
    old_generation = master.generation
    generation = old_generation + 1
    if config.zone_size_bytes != master.config.zone_size_bytes:
        log.warning("zone_size changes take effect only after a restart")
    snapshot = master.slots.snapshot()
    try:
        peer_slots = master.slots.assign(config, generation)
    except ZoneFullError as e:
        log.error("%s; reload aborted, still running the previous configuration", e)
        return False
    try:
        removed = master.listeners.sync(config, config.workers)
    except BindError as e:
        master.slots.restore(snapshot, master.config)
        log.error("%s; reload aborted, still running the previous configuration", e)
        return False
    master.prepare_logs(config)
    if (
        config.error_log_path != master.config.error_log_path
        or config.error_log_level != master.config.error_log_level
    ):
        setup_error_log(config.error_log_path, config.error_log_level)
    new = [master.spawn(slot, config, generation, peer_slots) for slot in range(config.workers)]
    if not wait_ready(new):
        log.error(
            "new worker processes did not become ready; reload aborted, "
            "still running the previous configuration"
        )
        for proc in new:
            proc.quitting = True
            kill(proc.pid, signal.SIGKILL)
        for lst in removed:  # the old generation still uses these: put them back
            master.listeners.by_key[lst.config.key] = lst
        # ...and nobody serves the addresses only the new config wanted: close them,
        # or clients would wait in an accept queue that no worker drains.
        for lst in master.listeners.sync(master.config, master.config.workers):
            lst.close()
        master.slots.restore(snapshot, master.config)
        return False
    master.config = config
    master.generation = generation
    master.peer_slots = peer_slots
    master.zone.add(ZL.H_RELOADS)
    master.zone.set(ZL.H_GENERATION, generation)
    master.zone.set(ZL.H_LOAD_MS, int(time.time() * 1000))
    master.respawn_at.clear()
    master.signal_all(signal.SIGQUIT, old_generation)
    for proc in master.workers.values():
        if proc.generation < generation:
            proc.quitting = True
    if removed:
        master.retired.append((old_generation, removed))
    write_pidfile(config.pid_path)
    log.log(25, "reconfigured: generation %d, %d worker(s)", generation, config.workers)
    return True


def wait_ready(procs: list[WorkerProc]) -> bool:
    """Rule 3: every one of ``procs`` reported ready within ``READY_TIMEOUT_S``."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = {p.ready_fd: p for p in procs}
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            readable, _, _ = select.select(list(waiting), [], [], min(left, 0.2))
        except InterruptedError:
            continue
        for fd in readable:
            proc = waiting.pop(fd)
            data = b""
            try:
                data = os.read(fd, 1)
            except OSError:
                pass
            os.close(fd)
            proc.ready_fd = -1
            if data != b"R":
                return False  # exited before becoming ready
            proc.ready = True
    return True


def release_retired_slots(master: Master) -> None:
    """Rule 4, for peer slots."""
    oldest = min((p.generation for p in master.workers.values()), default=None)
    master.slots.release_retired(oldest, master.rows.foreign_live())


def close_retired_listeners(master: Master) -> None:
    """Rule 4, for listeners."""
    keep = []
    for generation, lists in master.retired:
        if any(p.generation <= generation for p in master.workers.values()):
            keep.append((generation, lists))
        else:
            for lst in lists:
                lst.close()
    master.retired = keep
