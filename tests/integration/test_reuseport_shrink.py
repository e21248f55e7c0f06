"""``reuseport`` slots after ``workers`` changes: every bound slot socket keeps an acceptor
(listeners.py rule 2; issue 12, defect 2)."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from pathlib import Path

import psutil

from tests.backends import Backend, free_port
from tests.harness import LB, basic_config, upstream_block, wait_for

DEADLINE_S = 15.0


def answered(port: int, count: int) -> int:
    """Open ``count`` connections at once (each hashed by the kernel onto one of the slot
    sockets by its source port), send a request on each, and count the 200 responses that
    arrive before one shared deadline (hung connections cost one deadline, not one each)."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, b"")
        socks.append(s)
    got: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + DEADLINE_S
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            chunk = s.recv(65536)
            got[s] = got.get(s, b"") + chunk
            if not chunk:
                sel.unregister(s)
    for s in socks:
        s.close()
    return sum(data.startswith(b"HTTP/1.1 200") for data in got.values())


def slot_sockets(pid: int, port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
    )


def test_shrinking_workers_keeps_every_reuseport_slot_served_and_growing_back_works(tmp_path: Path) -> None:
    """3 workers on ``reuseport`` reloaded to 1: the 3 slot sockets stay bound (closing one
    would reset its queue), the one worker accepts on all of them, and 30 new connections
    are all answered; reloaded back to 3, each worker serves one slot again.

    Catches: a slot socket without an acceptor (the old code: worker 0 of 1 served slot 0
    only, the kernel kept hashing onto slots 1 and 2, and ~2/3 of the connections hung:
    7 and 9 of 30 answered in two runs)."""
    port = free_port()
    with Backend(count=1) as b:
        cfg = basic_config(port, upstream_block("backend", b.addrs), workers=3).replace(
            f'"127.0.0.1:{port}"', f'"127.0.0.1:{port} reuseport"'
        )
        with LB(tmp_path, cfg, port) as lb:
            assert slot_sockets(lb.master_pid, port) == 3
            first = {w.pid for w in lb.workers()}
            lb.conf.write_text(cfg.replace("workers = 3", "workers = 1"))
            assert lb.signal("reload").returncode == 0
            wait_for(
                lambda: len(lb.workers()) == 1 and lb.workers()[0].pid not in first,
                what="the old generation to exit",
            )
            assert slot_sockets(lb.master_pid, port) == 3
            assert slot_sockets(lb.workers()[0].pid, port) == 3
            assert answered(port, 30) == 30

            second = {w.pid for w in lb.workers()}
            lb.conf.write_text(cfg)
            assert lb.signal("reload").returncode == 0
            wait_for(
                lambda: len(lb.workers()) == 3 and second.isdisjoint(w.pid for w in lb.workers()),
                what="three new workers",
            )
            assert slot_sockets(lb.master_pid, port) == 3
            assert [slot_sockets(w.pid, port) for w in lb.workers()] == [1, 1, 1]
            assert answered(port, 30) == 30


def socket_inodes(pid: int) -> set[str]:
    fd_dir = f"/proc/{pid}/fd"
    links = set()
    for name in os.listdir(fd_dir):
        try:
            links.add(os.readlink(f"{fd_dir}/{name}"))
        except OSError:
            pass
    return {link for link in links if link.startswith("socket:")}


def test_binary_upgrade_adopts_every_reuseport_slot(tmp_path: Path) -> None:
    """USR2 with 2 ``reuseport`` slots: the new master holds the very same slot sockets
    (same inodes) as the old one, not slot 0 plus a freshly bound socket whose
    predecessor's queue is reset when the old master exits; after committing, 30 new
    connections are all answered.

    Catches: the new master adopting one inherited socket per address (the old code closed
    the other slots as "more than one socket for this address" and bound new ones)."""
    port = free_port()
    with Backend(count=1) as b:
        cfg = basic_config(port, upstream_block("backend", b.addrs), workers=2).replace(
            f'"127.0.0.1:{port}"', f'"127.0.0.1:{port} reuseport"'
        )
        with LB(tmp_path, cfg, port) as lb:
            old = lb.master_pid
            slots = socket_inodes(old)
            assert slot_sockets(old, port) == 2 and len(slots) == 2
            new = lb.binary_upgrade(old, workers=2)
            try:
                assert socket_inodes(new) == slots
                assert "more than one socket" not in lb.output()
                os.kill(old, signal.SIGQUIT)
                assert lb.proc is not None and lb.proc.wait(timeout=20) == 0
                assert answered(port, 30) == 30
            finally:
                if psutil.pid_exists(new):
                    os.kill(new, signal.SIGQUIT)
                    wait_for(
                        lambda: (
                            not psutil.pid_exists(new) or psutil.Process(new).status() == psutil.STATUS_ZOMBIE
                        ),
                        what="the new master to exit",
                    )
