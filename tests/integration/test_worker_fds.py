"""Children own only what their spec names (master/spec.py): no listener survives a reload
in a process that does not serve it (issue 12, defect 1)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psutil

from tests.backends import Backend, free_port
from tests.harness import LB, ZoneReader, accepts, basic_config, refused, request, upstream_block, wait_for


def tcp_ports_held(pid: int) -> list[int]:
    """Local ports of every TCP socket in /proc/<pid>/fd (psutil maps the socket inodes
    through /proc/net/tcp{,6}), listening or not."""
    try:
        return [c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.laddr]
    except psutil.NoSuchProcess:
        return []


def fds_of(pid: int) -> dict[int, str]:
    fd_dir = f"/proc/{pid}/fd"
    out = {}
    for name in os.listdir(fd_dir):
        try:
            out[int(name)] = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            pass
    return out


def live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_removed_listener_is_refused_held_by_nobody_and_can_come_back(tmp_path: Path) -> None:
    """Listen on P1, reload to P2: P1 is refused at once (not queued), no process holds a
    socket on P1, and a second reload back to P1 binds it again.

    Catches: workers inheriting every descriptor of the master (the old code: the new
    generation kept the retired P1 socket in LISTEN, connects to P1 were queued and hung,
    and the reload back to P1 failed with EADDRINUSE, "reload aborted")."""
    p1, p2 = free_port(), free_port()
    with Backend(count=1) as b:
        cfg = basic_config(p1, upstream_block("backend", b.addrs), workers=2)
        with LB(tmp_path, cfg, p1) as lb:
            first = {w.pid for w in lb.workers()}
            lb.conf.write_text(cfg.replace(f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"))
            assert lb.signal("reload").returncode == 0
            wait_for(
                lambda: len(lb.workers()) == 2 and first.isdisjoint(w.pid for w in lb.workers()),
                what="the old generation to exit",
            )
            wait_for(lambda: refused(p1), what="P1 to be refused")
            second = [w.pid for w in lb.workers()]
            for pid in second:
                held = tcp_ports_held(pid)
                assert p1 not in held, f"worker {pid} holds a socket on P1: {fds_of(pid)}"
                assert held.count(p2) == 1  # and the one it serves
            assert p1 not in tcp_ports_held(lb.master_pid)
            assert request(p2, "GET", "/")[0] == 200

            lb.conf.write_text(cfg)  # back to P1
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: "reconfigured: generation 3" in lb.output(), what="the second reload")
            assert "reload aborted" not in lb.output()
            assert request(p1, "GET", "/")[0] == 200
            wait_for(lambda: refused(p2), what="P2 to be refused")


def test_workers_hold_only_what_their_spec_names(tmp_path: Path) -> None:
    """A worker's descriptors: stdio, the error log, the zone memfd (and the mapping's own
    duplicate, and with the flock lock the worker's own lock descriptor, opened at start so
    that a pick never needs a descriptor; the futex lock needs none), its access log, its
    listener, and gevent's loop; none of the master's pipes (wakeup, other workers'
    readiness pipes) and no memfd lock descriptor of the master.

    Catches: a child that closes only its own listener copies and leaves the rest open
    (the old code: every worker held the master's wakeup pipe and the readiness pipes of
    the workers forked before it)."""
    port = free_port()
    with Backend(count=1) as b:
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs), workers=3), port) as lb:
            zone = ZoneReader(lb.master_pid)
            # the memfd and the mapping's duplicate; with flock, the worker's own lock fd too
            zone_fds = 2 if zone.mv[zone.L.H_LOCK_KIND] == zone.L.LOCK_FUTEX else 3
            for w in lb.workers():
                fds = fds_of(w.pid)
                pipes = [t for t in fds.values() if t.startswith("pipe:")]
                stdio_pipes = {fds.get(1), fds.get(2)}
                assert all(p in stdio_pipes for p in pipes), fds  # the harness's stdout only
                assert sum("prefork-lb-zone" in t for t in fds.values()) == zone_fds, fds
                assert tcp_ports_held(w.pid) == [port]


def test_binary_upgrade_child_inherits_only_the_current_listeners(tmp_path: Path) -> None:
    """USR2 while a reload's old generation still drains (so the master still holds the
    retired P1 socket): the new master gets P2 and the zone, not P1; after the old master
    quits, P1 is refused.

    Catches: fork+exec passing every inheritable descriptor (the old code: retired
    listeners are inheritable, so the new master kept P1 bound forever, unserved)."""
    p1, p2 = free_port(), free_port()
    with Backend(count=1) as b:
        cfg = basic_config(p1, upstream_block("backend", b.addrs))
        with LB(tmp_path, cfg, p1) as lb:
            old = lb.master_pid
            slow: list[int] = []
            held = threading.Thread(target=lambda: slow.append(request(p1, "GET", "/?delay=3000")[0]))
            held.start()
            wait_for(lambda: b.stats()["open"] >= 1, what="a slow request in flight on P1")
            lb.conf.write_text(cfg.replace(f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"))
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: accepts(p2), what="P2")
            assert p1 in tcp_ports_held(old)  # retired, still held while the old worker drains
            new = lb.binary_upgrade(old, workers=1)
            try:
                assert p1 not in tcp_ports_held(new), fds_of(new)
                assert tcp_ports_held(new) == [p2]
                held.join(15)
                assert slow == [200]  # the draining worker finished its request
                os.kill(old, signal.SIGQUIT)
                assert lb.proc is not None and lb.proc.wait(timeout=20) == 0
                wait_for(lambda: refused(p1), what="P1 to be refused")
                assert request(p2, "GET", "/")[0] == 200
            finally:
                if live(new):
                    os.kill(new, signal.SIGQUIT)
                    wait_for(lambda: not live(new), what="the new master to exit")
