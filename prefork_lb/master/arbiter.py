"""The master process: owns config, sockets and workers; plain Python, never imports gevent.

Rules:
1. A signal handler only records the signal (and the wakeup fd wakes the loop); the loop
   acts, logs and forks. Nothing is logged from handler context.
2. Signals as nginx: HUP reload, QUIT graceful stop, TERM/INT fast stop, USR1 reopen logs
   (forwarded to workers), CHLD reap and respawn.
3. Reload: the new config is loaded with the same code as ``-t``; on any error the old
   config keeps running. New listeners are bound before forking; the new generation must
   report ready before the old one is told to quit; if it fails to become ready, it is
   stopped and the old generation keeps serving. Listeners the new config dropped are
   closed once the old workers are gone.
4. A worker that dies unexpectedly is respawned at once; if workers keep dying within a
   second of starting, respawns back off (up to 5 s) so a crash loop cannot spin.
5. Fast stop sends TERM, then KILL after ``FAST_STOP_GRACE_S``.
6. Each child gets one frozen spec of what it owns (``spec.py``: config, listener fds,
   zone, row, readiness pipe, log fds) and closes every other inherited descriptor first
   thing after fork, so no worker keeps a listener a reload removed.
7. The master creates the shared zone before the first fork and keeps it for its life:
   it assigns each peer a slot (kept across reloads while the peer exists) and each worker
   a row (claimed before fork, released and repaired when the worker is reaped).
8. Binary upgrade, as nginx: USR2 renames the pid file to ``.oldbin`` and fork+execs a new
   master that inherits the listening sockets and the zone (``PREFORK_LB_INHERIT``); both
   generations serve. WINCH retires the old master's workers (it keeps its sockets); QUIT
   to the old master commits. Rollback: HUP to the old master respawns its workers, QUIT
   to the new one; when the new master exits, the old one renames ``.oldbin`` back.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket as stdsocket
import time
from dataclasses import dataclass
from types import MappingProxyType

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config
from prefork_lb.log import reopen_error_log, setup_error_log
from prefork_lb.master import systemd
from prefork_lb.master.listeners import BindError, Listener, ListenerSet, wanted_listens
from prefork_lb.master.pidfile import remove_pidfile, write_pidfile
from prefork_lb.master.spec import (
    STDIO,
    UpgradeSpec,
    WorkerSpec,
    enter_child,
    error_log_fds,
    zone_descriptors,
)
from prefork_lb.signals import MASTER_SIGNALS
from prefork_lb.zone import layout as ZL
from prefork_lb.zone.slots import RowTable, SlotTable
from prefork_lb.zone.zone import Zone, ZoneFullError

log = logging.getLogger("prefork_lb.error")

HANDLED = MASTER_SIGNALS
INHERIT_ENV = "PREFORK_LB_INHERIT"  # binary upgrade: "zone=<fd>;sockets=<fd>,<fd>..."
READY_TIMEOUT_S = 10.0
FAST_STOP_GRACE_S = 5.0
EXIT_BOOT_FAILED = 3


@dataclass(slots=True)
class WorkerProc:
    pid: int
    slot: int
    generation: int
    config: Config
    started: float
    ready_fd: int  # read end of the readiness pipe; -1 once ready
    row: int = -1  # zone row
    ready: bool = False
    quitting: bool = False


class Master:
    def __init__(
        self, config: Config, config_path: str, prefix: str | None, inherited: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.prefix = prefix
        self.listeners = ListenerSet()
        self.workers: dict[int, WorkerProc] = {}
        self.generation = 0
        self.pending: list[int] = []
        self.stopping: str | None = None  # "graceful" | "fast"
        self.stop_deadline = 0.0
        self.respawn_delay_s = 0.0
        self.respawn_at: dict[int, float] = {}  # slot -> when to respawn
        self.retired: list[tuple[int, list[Listener]]] = []  # (generation, listeners to close)
        self.wakeup_r = -1
        self.upgrade_pid = 0  # the new master started by USR2, while it runs
        self.parent_master = os.getppid() if inherited else 0  # the old master, after USR2
        self.winched = False  # WINCH: no workers, keep the sockets (binary upgrade step)
        if inherited:
            zone_fd, sockets = _parse_inherit(inherited)
            self.zone = Zone(zone_fd, os.fstat(zone_fd).st_size)
            self._adopt_sockets(sockets)
        else:
            self.zone = Zone.create(config.zone_size_bytes)
        self.slots = SlotTable(self.zone)
        if inherited:
            self.slots.adopt(config)
        self.rows = RowTable(self.zone)
        self.peer_slots = self.slots.assign(config, 1)
        now_ms = int(time.time() * 1000)
        if not inherited:
            self.zone.set(ZL.H_START_MS, now_ms)
        self.zone.set(ZL.H_LOAD_MS, now_ms)
        self.zone.set(ZL.H_GENERATION, 1)

    def _adopt_sockets(self, sockets: list[int]) -> None:
        wanted = wanted_listens(self.config)
        objs = [stdsocket.socket(fileno=fd) for fd in sockets]
        for obj in objs:
            obj.set_inheritable(True)
        self.listeners.adopt_slots(systemd.adopt_slots(objs, wanted), wanted)

    # ---- startup ----

    def bind(self) -> None:
        self.listeners.sync(self.config, self.config.workers)

    def _prepare_logs(self, config: Config) -> None:
        """Log files we create belong to the worker user, so workers can reopen them
        (log.prepare_log_files: never a file we did not create, never through a symlink)."""
        if config.user is not None and os.getuid() == 0:
            from prefork_lb.log import prepare_log_files
            from prefork_lb.worker.privileges import resolve

            uid, gid = resolve(config.user, config.group)
            for warning in prepare_log_files(config.log_paths(), uid, gid):
                log.warning("%s", warning)
        elif config.user is not None:
            log.warning('the "user" key makes sense only if the master runs as root, ignored')

    def run(self) -> int:
        from setproctitle import setproctitle

        setproctitle(f"prefork-lb: master process {' '.join(_argv())}")
        self._install_signals()
        self._prepare_logs(self.config)
        write_pidfile(self.config.pid_path)
        log.log(25, "prefork-lb started, %d worker(s)", self.config.workers)
        try:
            self.generation = 1
            first = [self._spawn(slot) for slot in range(self.config.workers)]
            if not self._wait_ready(first):
                log.critical("worker processes failed to start")
                self._kill_all(signal.SIGKILL)
                self.stopping = "fast"
                self._loop()
                return 1
            log.log(25, "%d worker process(es) ready", len(first))
            systemd.ready(f"{len(first)} worker(s), generation 1")
            return self._loop()
        finally:
            self.listeners.close_all()
            remove_pidfile(self.config.pid_path)
            remove_pidfile(self.config.pid_path + ".oldbin")

    def _install_signals(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup_r = r
        signal.set_wakeup_fd(w)
        for sig in HANDLED:
            signal.signal(sig, self._record)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _record(self, signum: int, frame: object) -> None:
        self.pending.append(signum)  # rule 1: record only

    # ---- the loop ----

    def _loop(self) -> int:
        while True:
            self._wait(1.0)
            for signum in self._take_signals():
                self._dispatch(signum)
            self._reap()
            self._check_heartbeats()
            self._respawn_due()
            self._close_retired_listeners()
            self._release_retired_slots()
            if self.stopping:
                if not self.workers:
                    log.log(25, "exit")
                    return 0
                if self.stopping == "fast" and time.monotonic() > self.stop_deadline:
                    self._kill_all(signal.SIGKILL)

    def _wait(self, timeout_s: float) -> None:
        if self.pending:
            return
        try:
            select.select([self.wakeup_r], [], [], timeout_s)
        except InterruptedError:
            pass
        try:
            while os.read(self.wakeup_r, 512):
                pass
        except OSError:
            pass

    def _take_signals(self) -> list[int]:
        taken, self.pending = self.pending, []
        return taken

    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name
        handler = getattr(self, "handle_" + name[3:].lower(), None)
        if handler is not None:
            handler()

    def handle_chld(self) -> None:
        pass  # reaping happens every pass of the loop

    def handle_usr2(self) -> None:
        """Binary upgrade: exec a new master that inherits our sockets and the zone."""
        if self.stopping or self.upgrade_pid:
            log.warning("binary upgrade already in progress or stopping, USR2 ignored")
            return
        if self.parent_master and _alive(self.parent_master):
            log.warning("the previous master is still running, USR2 ignored")
            return
        log.log(25, "signal %d (SIGUSR2) received, upgrading the binary", signal.SIGUSR2)
        pid_path = self.config.pid_path
        try:
            os.replace(pid_path, pid_path + ".oldbin")
        except OSError as e:
            log.error("rename() %s to %s.oldbin failed: %s; upgrade aborted", pid_path, pid_path, e.strerror)
            return
        spec = UpgradeSpec(self.zone.fd, tuple(s.fileno() for s in self.listeners.all_sockets()))
        import sys

        argv = [sys.executable, "-m", "prefork_lb", *sys.argv[1:]]
        env = dict(os.environ, **{INHERIT_ENV: spec.env_value()})
        pid = os.fork()
        if pid == 0:
            try:
                enter_child(spec.keep_fds(), self._all_sockets())  # spec.py rule 2
                for fd in spec.keep_fds() - STDIO:
                    os.set_inheritable(fd, True)
                for sig in HANDLED:
                    signal.signal(sig, signal.SIG_DFL)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(EXIT_BOOT_FAILED)
        self.upgrade_pid = pid
        log.log(25, "started new master process %d", pid)

    def handle_winch(self) -> None:
        """Retire our workers but keep the sockets (after USR2, before committing)."""
        log.log(
            25, "signal %d (SIGWINCH) received, gracefully shutting down worker processes", signal.SIGWINCH
        )
        self.winched = True
        self.respawn_at.clear()
        self._signal_all(signal.SIGQUIT)

    def handle_hup(self) -> None:
        if self.stopping:
            return
        if self.winched:  # binary upgrade rollback: workers again, with the config we have
            log.log(25, "signal %d (SIGHUP) received, starting worker processes again", signal.SIGHUP)
            self.winched = False
            self.generation += 1
            for slot in range(self.config.workers):
                self._spawn(slot)
            return
        log.log(25, "signal %d (SIGHUP) received, reconfiguring", signal.SIGHUP)
        systemd.reloading()
        try:
            ok = self.reload()
        finally:
            systemd.ready()  # also after an aborted reload: the old generation still serves
        systemd.status(
            f"generation {self.generation}, {self.config.workers} worker(s)"
            if ok
            else "reload failed, previous configuration running"
        )

    def handle_quit(self) -> None:
        log.log(25, "signal %d (SIGQUIT) received, shutting down gracefully", signal.SIGQUIT)
        if self.stopping is None:
            systemd.stopping()
        self.stopping = self.stopping or "graceful"
        self.respawn_at.clear()
        self._signal_all(signal.SIGQUIT)
        self._stop_listening()

    def handle_term(self) -> None:
        log.log(25, "signal %d (SIGTERM) received, exiting", signal.SIGTERM)
        self._fast_stop()

    def handle_int(self) -> None:
        log.log(25, "signal %d (SIGINT) received, exiting", signal.SIGINT)
        self._fast_stop()

    def handle_usr1(self) -> None:
        log.log(25, "signal %d (SIGUSR1) received, reopening logs", signal.SIGUSR1)
        self._prepare_logs(self.config)  # first: files we create go to the worker user
        reopen_error_log()
        self._signal_all(signal.SIGUSR1)

    def _fast_stop(self) -> None:
        if self.stopping is None:
            systemd.stopping()
        if self.stopping != "fast":
            self.stopping = "fast"
            self.stop_deadline = time.monotonic() + FAST_STOP_GRACE_S
        self.respawn_at.clear()
        self._signal_all(signal.SIGTERM)
        self._stop_listening()

    def _stop_listening(self) -> None:
        """Stopping: new connections are refused at once instead of waiting in a queue
        nobody will serve (nginx does the same). After a binary upgrade the new master
        holds its own descriptors, so its queues are not affected."""
        self.listeners.close_all()
        for _, lists in self.retired:
            for lst in lists:
                lst.close()
        self.retired = []

    # ---- workers ----

    def _spawn(
        self,
        slot: int,
        config: Config | None = None,
        generation: int | None = None,
        peer_slots: dict[str, int] | None = None,
    ) -> WorkerProc:
        config = config or self.config
        generation = generation or self.generation
        row = self.rows.claim(generation, slot)
        r, w = os.pipe2(os.O_CLOEXEC)
        spec = WorkerSpec(
            config=config,
            generation=generation,
            slot=slot,
            master_pid=os.getpid(),
            listeners=tuple(
                (key, sock.fileno()) for key, sock in self.listeners.for_worker(slot, config.workers)
            ),
            zone=self.zone,
            zone_fds=zone_descriptors(self.zone),
            zone_row=row,
            peer_slots=MappingProxyType(peer_slots or self.peer_slots),
            ready_fd=w,
            log_fds=error_log_fds(),
        )
        pid = os.fork()
        if pid == 0:  # the worker; never returns
            enter_child(spec.keep_fds(), self._all_sockets())  # spec.py rule 2: before anything else
            from prefork_lb.worker.worker import worker_main

            worker_main(spec)
        os.close(w)
        self.rows.bind(row, pid)
        proc = WorkerProc(pid, slot, generation, config, time.monotonic(), r, row)
        self.workers[pid] = proc
        log.log(25, "start worker process %d", pid)
        return proc

    def _all_sockets(self) -> list[stdsocket.socket]:
        """Every socket object the master holds (current and retired listeners)."""
        retired = [s for _, lists in self.retired for lst in lists for s in lst.sockets]
        return self.listeners.all_sockets() + retired

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.upgrade_pid:
                self._upgrade_child_exited(status)
                continue
            proc = self.workers.pop(pid, None)
            if proc is None:
                continue
            self.rows.release(pid)  # zero its row, recount peer connections from live rows
            if proc.ready_fd >= 0:
                os.close(proc.ready_fd)
                proc.ready_fd = -1
            code = os.waitstatus_to_exitcode(status)
            if proc.quitting or self.stopping:
                log.log(25, "worker process %d exited with code %d", pid, code)
                continue
            how = f"signal {-code}" if code < 0 else f"code {code}"
            log.error("worker process %d exited on %s", pid, how)
            if proc.generation != self.generation:
                continue
            if code == EXIT_BOOT_FAILED and not proc.ready:
                log.critical("worker process %d failed to start; not respawning", pid)
                if not any(w.generation == self.generation for w in self.workers.values()):
                    self.stopping = "fast"
                continue
            quick = time.monotonic() - proc.started < 1.0
            self.respawn_delay_s = min(5.0, max(0.1, self.respawn_delay_s * 2)) if quick else 0.0
            self.respawn_at[proc.slot] = time.monotonic() + self.respawn_delay_s

    def _check_heartbeats(self) -> None:
        """A worker whose hub has not run for worker_heartbeat_timeout is killed (and, being
        reaped, respawned). Its housekeeping greenlet stamps the zone row every second."""
        timeout_ns = int(self.config.worker_heartbeat_timeout_s * 1e9)
        if not timeout_ns:
            return
        now_ns = time.monotonic_ns()
        boot_s = READY_TIMEOUT_S + self.config.worker_heartbeat_timeout_s
        for proc in self.workers.values():
            if proc.quitting or time.monotonic() - proc.started < boot_s:
                continue
            age_ns = now_ns - self.zone.heartbeat_ns(proc.row)
            if age_ns > timeout_ns:
                log.error(
                    "worker process %d is not responding (no heartbeat for %.1fs), killing it",
                    proc.pid,
                    age_ns / 1e9,
                )
                _kill(proc.pid, signal.SIGKILL)

    def _upgrade_child_exited(self, status: int) -> None:
        """The new master is gone: we are the master again (nginx renames .oldbin back)."""
        log.log(
            25,
            "new master process %d exited with code %d",
            self.upgrade_pid,
            os.waitstatus_to_exitcode(status),
        )
        self.upgrade_pid = 0
        pid_path = self.config.pid_path
        try:
            os.replace(pid_path + ".oldbin", pid_path)
        except OSError:
            write_pidfile(pid_path)

    def _respawn_due(self) -> None:
        if self.stopping or self.winched:
            return
        now = time.monotonic()
        for slot, when in list(self.respawn_at.items()):
            if when <= now:
                del self.respawn_at[slot]
                self._spawn(slot)
                self.zone.add(ZL.H_RESPAWNED)

    def _signal_all(self, sig: int, generation: int | None = None) -> None:
        for proc in self.workers.values():
            if generation is None or proc.generation == generation:
                if sig in (signal.SIGQUIT, signal.SIGTERM):
                    proc.quitting = True
                _kill(proc.pid, sig)

    def _kill_all(self, sig: int) -> None:
        for proc in self.workers.values():
            _kill(proc.pid, sig)

    # ---- reload ----

    def reload(self) -> bool:
        try:
            config = load_config(self.config_path, self.prefix)
        except ConfigError as e:
            log.error("%s; reload aborted, still running the previous configuration", e)
            return False
        from prefork_lb.preflight import StartupError, check_startup

        try:
            check_startup(config)  # log files, pid directory: the checks of -t and startup
        except StartupError as e:
            log.error("%s; reload aborted, still running the previous configuration", e)
            return False
        old_generation = self.generation
        generation = old_generation + 1
        if config.zone_size_bytes != self.config.zone_size_bytes:
            log.warning("zone_size changes take effect only after a restart")
        snapshot = self.slots.snapshot()
        try:
            peer_slots = self.slots.assign(config, generation)
        except ZoneFullError as e:
            log.error("%s; reload aborted, still running the previous configuration", e)
            return False
        try:
            removed = self.listeners.sync(config, config.workers)
        except BindError as e:
            self.slots.restore(snapshot)
            log.error("%s; reload aborted, still running the previous configuration", e)
            return False
        self._prepare_logs(config)
        if (
            config.error_log_path != self.config.error_log_path
            or config.error_log_level != self.config.error_log_level
        ):
            setup_error_log(config.error_log_path, config.error_log_level)
        new = [self._spawn(slot, config, generation, peer_slots) for slot in range(config.workers)]
        if not self._wait_ready(new):
            log.error(
                "new worker processes did not become ready; reload aborted, "
                "still running the previous configuration"
            )
            for proc in new:
                proc.quitting = True
                _kill(proc.pid, signal.SIGKILL)
            for lst in removed:  # the old generation still uses these: put them back
                self.listeners.by_key[lst.config.key] = lst
            # ...and nobody serves the addresses only the new config wanted: close them,
            # or clients would wait in an accept queue that no worker drains.
            for lst in self.listeners.sync(self.config, self.config.workers):
                lst.close()
            self.slots.restore(snapshot)
            return False
        self.config = config
        self.generation = generation
        self.peer_slots = peer_slots
        self.zone.add(ZL.H_RELOADS)
        self.zone.set(ZL.H_GENERATION, generation)
        self.zone.set(ZL.H_LOAD_MS, int(time.time() * 1000))
        self.respawn_at.clear()
        self._signal_all(signal.SIGQUIT, old_generation)
        for proc in self.workers.values():
            if proc.generation < generation:
                proc.quitting = True
        if removed:
            self.retired.append((old_generation, removed))
        write_pidfile(config.pid_path)
        log.log(25, "reconfigured: generation %d, %d worker(s)", generation, config.workers)
        return True

    def _wait_ready(self, procs: list[WorkerProc]) -> bool:
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

    def _release_retired_slots(self) -> None:
        oldest = min((p.generation for p in self.workers.values()), default=None)
        self.slots.release_retired(oldest, self.rows.foreign_live())

    def _close_retired_listeners(self) -> None:
        keep = []
        for generation, lists in self.retired:
            if any(p.generation <= generation for p in self.workers.values()):
                keep.append((generation, lists))
            else:
                for lst in lists:
                    lst.close()
        self.retired = keep


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _parse_inherit(spec: str) -> tuple[int, list[int]]:
    parts = dict(item.split("=", 1) for item in spec.split(";") if "=" in item)
    sockets = [int(fd) for fd in parts.get("sockets", "").split(",") if fd]
    return int(parts["zone"]), sockets


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as e:
        if e.errno != errno.ESRCH:
            raise


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]
