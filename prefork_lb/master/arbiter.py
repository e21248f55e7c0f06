"""The master process: owns config, sockets and workers; plain Python, never imports gevent.

Rules:
1. A signal handler only records the signal (and the wakeup fd wakes the loop); the loop
   acts, logs and forks. Nothing is logged from handler context.
2. Signals as nginx: HUP reload, QUIT graceful stop, TERM/INT fast stop, USR1 reopen logs
   (forwarded to workers), CHLD reap and respawn.
3. Reload (HUP) is ``reload.py``: the old config keeps running unless the new generation
   reports ready; its rules are in that module's header.
4. A worker that dies unexpectedly is respawned at once; if workers keep dying within a
   second of starting, respawns back off (up to 5 s) so a crash loop cannot spin.
5. Fast stop sends TERM, then KILL after ``FAST_STOP_GRACE_S``.
6. Each child gets one frozen spec of what it owns (``spec.py``: config, listener fds,
   zone, row, readiness pipe, log fds) and closes every other inherited descriptor first
   thing after fork, so no worker keeps a listener a reload removed.
7. The master creates the shared zone before the first fork and keeps it for its life:
   it assigns each peer a slot (kept across reloads while the peer exists) and each worker
   a row (claimed before fork, released and repaired when the worker is reaped). The
   limit_req/limit_conn tables (limits/table.py) are created before the fork of the first
   worker that uses them and kept across reloads while a zone keeps its kind, name, size.
8. Binary upgrade (USR2, then WINCH and QUIT, or HUP to roll back) is ``upgrade.py``.
   WINCH retires this master's workers and keeps its sockets; HUP after WINCH spawns them
   again with the config this master has.
9. With active health checks configured, one health prober (health/prober.py) runs beside
   the workers: started once the first generation is ready, replaced after every
   successful reload (the old one is stopped first), respawned when it dies (peer states
   live in the zone, so nothing is lost), stopped with the workers (and by WINCH: after a
   binary upgrade the new master's prober takes over; HUP after WINCH starts ours again).
10. With ``[http.proxy_cache_paths]`` configured, the master creates one shared index per
   keys_zone before forking the workers that use it (cache/index.py ``IndexSet``: kept across
   reloads while the zone keeps its name, path, levels and size) and runs one cache manager
   process (master/cachemanager.py, supervised exactly as the prober of rule 9).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket as stdsocket
import time
from types import MappingProxyType

from prefork_lb.cache.index import IndexSet
from prefork_lb.config.model import Config
from prefork_lb.limits.table import TableSet
from prefork_lb.log import reopen_error_log
from prefork_lb.master import systemd
from prefork_lb.master.cachemanager import CacheManagerProc
from prefork_lb.master.listeners import Listener, ListenerSet, wanted_listens
from prefork_lb.master.pidfile import remove_pidfile, write_pidfile
from prefork_lb.master.procs import EXIT_BOOT_FAILED, WorkerProc, kill
from prefork_lb.master.reload import (
    READY_TIMEOUT_S,
    close_retired_listeners,
    release_retired_slots,
    reload,
    wait_ready,
)
from prefork_lb.master.spec import ProberSpec, WorkerSpec, enter_child, error_log_fds, zone_descriptors
from prefork_lb.master.upgrade import parse_inherit, start_upgrade, upgrade_exited
from prefork_lb.signals import MASTER_SIGNALS
from prefork_lb.zone import layout as ZL
from prefork_lb.zone.slots import RowTable, SlotTable
from prefork_lb.zone.zone import Zone

log = logging.getLogger("prefork_lb.error")

HANDLED = MASTER_SIGNALS
FAST_STOP_GRACE_S = 5.0


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
        self.prober_pid = 0  # the health prober (rule 9), 0 when none runs
        self.prober_started = 0.0
        self.prober_respawn_at = 0.0  # monotonic time of a due respawn, 0 when none is due
        self.prober_stopping: set[int] = set()  # probers told to stop (reload, shutdown)
        self.limit_tables = TableSet()  # limit_req/limit_conn state (rule 7), kept across reloads
        self.cache_manager = CacheManagerProc()  # rule 10
        if inherited:
            zone_fd, sockets = parse_inherit(inherited)
            self.zone = Zone(zone_fd, os.fstat(zone_fd).st_size)
            self._adopt_sockets(sockets)
        else:
            self.zone = Zone.create(config.zone_size_bytes)
        self.slots = SlotTable(self.zone)
        if inherited:
            self.slots.adopt(config)
        self.rows = RowTable(self.zone)
        self.peer_slots = self.slots.assign(config, 1)
        self.cache_indexes = IndexSet(self.zone)  # proxy_cache_path indexes (rule 10)
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

    def prepare_logs(self, config: Config) -> None:
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
        self.prepare_logs(self.config)
        write_pidfile(self.config.pid_path)
        log.log(25, "prefork-lb started, %d worker(s)", self.config.workers)
        try:
            self.generation = 1
            first = [self.spawn(slot) for slot in range(self.config.workers)]
            if not wait_ready(first):
                log.critical("worker processes failed to start")
                self._kill_all(signal.SIGKILL)
                self.stopping = "fast"
                self._loop()
                return 1
            log.log(25, "%d worker process(es) ready", len(first))
            self.spawn_prober(reloaded=False)
            self.cache_manager.start(self)
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
            close_retired_listeners(self)
            release_retired_slots(self)
            if self.stopping:
                manager = self.cache_manager.running  # rule 10: it exits with the workers
                if not self.workers and not self.prober_pid and not self.prober_stopping and not manager:
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
        start_upgrade(self)

    def handle_winch(self) -> None:
        """Retire our workers but keep the sockets (after USR2, before committing)."""
        log.log(
            25, "signal %d (SIGWINCH) received, gracefully shutting down worker processes", signal.SIGWINCH
        )
        self.winched = True
        self.respawn_at.clear()
        self.signal_all(signal.SIGQUIT)
        self.stop_prober()  # the new master probes now
        self.cache_manager.stop()

    def handle_hup(self) -> None:
        if self.stopping:
            return
        if self.winched:  # binary upgrade rollback: workers again, with the config we have
            log.log(25, "signal %d (SIGHUP) received, starting worker processes again", signal.SIGHUP)
            self.winched = False
            self.generation += 1
            for slot in range(self.config.workers):
                self.spawn(slot)
            self.spawn_prober(reloaded=False)
            self.cache_manager.start(self)
            return
        log.log(25, "signal %d (SIGHUP) received, reconfiguring", signal.SIGHUP)
        systemd.reloading()
        try:
            ok = reload(self)
            if ok:
                self.stop_prober()
                self.spawn_prober(reloaded=True)
                self.cache_manager.stop()
                self.cache_manager.start(self)
            self.limit_tables.prune(self.config.http.limit_zone_sizes())  # the config that runs now
            self.cache_indexes.prune(self.config.http.cache_paths)
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
        self.signal_all(signal.SIGQUIT)
        self.stop_prober()
        self.cache_manager.stop()
        self._stop_listening()

    def handle_term(self) -> None:
        log.log(25, "signal %d (SIGTERM) received, exiting", signal.SIGTERM)
        self._fast_stop()

    def handle_int(self) -> None:
        log.log(25, "signal %d (SIGINT) received, exiting", signal.SIGINT)
        self._fast_stop()

    def handle_usr1(self) -> None:
        log.log(25, "signal %d (SIGUSR1) received, reopening logs", signal.SIGUSR1)
        self.prepare_logs(self.config)  # first: files we create go to the worker user
        reopen_error_log()
        self.signal_all(signal.SIGUSR1)
        if self.prober_pid:
            kill(self.prober_pid, signal.SIGUSR1)

    def _fast_stop(self) -> None:
        if self.stopping is None:
            systemd.stopping()
        if self.stopping != "fast":
            self.stopping = "fast"
            self.stop_deadline = time.monotonic() + FAST_STOP_GRACE_S
        self.respawn_at.clear()
        self.signal_all(signal.SIGTERM)
        self.stop_prober()
        self.cache_manager.stop()
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

    def spawn(
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
            cache_indexes=MappingProxyType(self.cache_indexes.for_paths(config.http.cache_paths)),
            limit_tables=MappingProxyType(self.limit_tables.for_zones(config.http.limit_zone_sizes())),
        )
        pid = os.fork()
        if pid == 0:  # the worker; never returns
            enter_child(spec.keep_fds(), self.all_sockets())  # spec.py rule 2: before anything else
            from prefork_lb.worker.worker import worker_main

            worker_main(spec)
        os.close(w)
        self.rows.bind(row, pid)
        proc = WorkerProc(pid, slot, generation, config, time.monotonic(), r, row)
        self.workers[pid] = proc
        log.log(25, "start worker process %d", pid)
        return proc

    # ---- the health prober (rule 9) ----

    def spawn_prober(self, reloaded: bool) -> None:
        self.prober_respawn_at = 0.0
        if not self.config.health_checks() or self.prober_pid or self.stopping:
            return
        spec = ProberSpec(
            config=self.config,
            master_pid=os.getpid(),
            zone=self.zone,
            zone_fds=zone_descriptors(self.zone),
            peer_slots=MappingProxyType(dict(self.peer_slots)),
            reloaded=reloaded,
            log_fds=error_log_fds(),
        )
        self.zone.set(ZL.H_PROBER_HEARTBEAT_NS, time.monotonic_ns())
        pid = os.fork()
        if pid == 0:  # the prober; never returns
            enter_child(spec.keep_fds(), self.all_sockets())
            from prefork_lb.health.prober import prober_main

            prober_main(spec)
        self.prober_pid = pid
        self.prober_started = time.monotonic()
        log.log(25, "start health prober process %d", pid)

    def stop_prober(self) -> None:
        if self.prober_pid:
            kill(self.prober_pid, signal.SIGTERM)
            self.prober_stopping.add(self.prober_pid)
            self.prober_pid = 0
        self.prober_respawn_at = 0.0

    def _prober_exited(self, pid: int, status: int) -> None:
        self.zone.break_dead_holder(pid)  # killed inside its critical section
        code = os.waitstatus_to_exitcode(status)
        if pid in self.prober_stopping:
            self.prober_stopping.discard(pid)
            log.log(25, "health prober process %d exited with code %d", pid, code)
            return
        self.prober_pid = 0
        how = f"signal {-code}" if code < 0 else f"code {code}"
        log.error("health prober process %d exited on %s", pid, how)
        if self.stopping:
            return
        quick = time.monotonic() - self.prober_started < 1.0
        self.prober_respawn_at = time.monotonic() + (1.0 if quick else 0.0)

    def all_sockets(self) -> list[stdsocket.socket]:
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
                upgrade_exited(self, status)
                continue
            if pid == self.prober_pid or pid in self.prober_stopping:
                self._prober_exited(pid, status)
                continue
            if self.cache_manager.reaped(self, pid, status):
                continue
            proc = self.workers.pop(pid, None)
            if proc is None:
                continue
            self.rows.release(pid)  # zero its row, recount peer connections from live rows
            self.cache_indexes.break_dead_holder(pid)  # killed inside an index critical section
            dropped = self.limit_tables.repair(proc.row)  # what its requests held in limit_conn
            if dropped and not (proc.quitting or self.stopping):
                log.warning("worker process %d held %d limit_conn count(s), released", pid, dropped)
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
        if self.prober_pid and time.monotonic() - self.prober_started > boot_s:
            age_ns = now_ns - int(self.zone.mv[ZL.H_PROBER_HEARTBEAT_NS])
            if age_ns > timeout_ns:
                log.error(
                    "health prober process %d is not responding (no heartbeat for %.1fs), killing it",
                    self.prober_pid,
                    age_ns / 1e9,
                )
                kill(self.prober_pid, signal.SIGKILL)
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
                kill(proc.pid, signal.SIGKILL)

    def _respawn_due(self) -> None:
        if self.stopping or self.winched:
            return
        now = time.monotonic()
        if self.prober_respawn_at and self.prober_respawn_at <= now:
            self.spawn_prober(reloaded=False)
            self.zone.add(ZL.H_RESPAWNED)
        if self.cache_manager.respawn_due(self):
            self.zone.add(ZL.H_RESPAWNED)
        for slot, when in list(self.respawn_at.items()):
            if when <= now:
                del self.respawn_at[slot]
                self.spawn(slot)
                self.zone.add(ZL.H_RESPAWNED)

    def signal_all(self, sig: int, generation: int | None = None) -> None:
        for proc in self.workers.values():
            if generation is None or proc.generation == generation:
                if sig in (signal.SIGQUIT, signal.SIGTERM):
                    proc.quitting = True
                kill(proc.pid, sig)

    def _kill_all(self, sig: int) -> None:
        for proc in self.workers.values():
            kill(proc.pid, sig)
        for pid in self.prober_stopping:  # a prober told to stop before it reset its handlers
            kill(pid, sig)
        self.cache_manager.kill_stopping(sig)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]
