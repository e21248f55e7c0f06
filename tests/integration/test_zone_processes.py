"""Shared state across real worker processes: the zone, seen from outside."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from tests.backends import Backend, free_port
from tests.harness import LB, ZoneReader, basic_config, request, upstream_block, wait_for


def test_round_robin_order_is_global_across_four_workers(tmp_path: Path) -> None:
    # nginx scenario 3 (with zone): aabacaa x 3 whichever worker accepts each connection
    with Backend(count=3) as b:
        a, bb, c = b.addrs
        port = free_port()
        up = upstream_block("backend", [a, bb, c], **{a: ", weight = 5"})
        with LB(tmp_path, basic_config(port, up, workers=4), port):
            ports = [request(port, "GET", "/")[1]["x-port"] for _ in range(21)]
    letter = {str(p): "abc"[i] for i, p in enumerate(b.ports)}
    assert "".join(letter[p] for p in ports) == "aabacaa" * 3


def _quiet_request(port: int, path: str) -> None:
    try:
        request(port, "GET", path)
    except OSError:
        pass  # the worker serving it may be killed on purpose


def _hold(port: int, count: int, backend: Backend, path: str = "/?delay=3000") -> list[threading.Thread]:
    threads = []
    base = sum(backend.stats(p)["open"] for p in backend.ports)
    for i in range(count):
        t = threading.Thread(target=_quiet_request, args=(port, path), daemon=True)
        t.start()
        threads.append(t)
        wait_for(
            lambda i=i: sum(backend.stats(p)["open"] for p in backend.ports) >= base + i + 1,
            what=f"held request {i}",
        )
    return threads


def test_least_conn_counts_are_global(tmp_path: Path) -> None:
    with Backend(count=2) as b:
        port = free_port()
        up = upstream_block("backend", b.addrs, extra='method = "least_conn"')
        with LB(tmp_path, basic_config(port, up, workers=2), port) as lb:
            threads = _hold(port, 6, b)
            zone = ZoneReader(lb.master_pid)
            wait_for(lambda: zone.total_conns() == 6, what="6 active connections in the zone")
            # per worker counts would send each worker's first requests to the same peer;
            # global counts split the six held requests exactly 3:3
            assert [b.stats(p)["open"] for p in b.ports] == [3, 3]
            per_worker = [zone.row_active(zone.row_of(w.pid) or 0) for w in lb.workers()]
            assert sum(per_worker) == 6
            for t in threads:
                t.join(15)
            wait_for(lambda: zone.total_conns() == 0, what="connections released")


def test_master_repairs_counts_of_a_killed_worker(tmp_path: Path) -> None:
    with Backend(count=2) as b:
        port = free_port()
        up = upstream_block("backend", b.addrs, extra='method = "least_conn"')
        with LB(tmp_path, basic_config(port, up, workers=2), port) as lb:
            _hold(port, 6, b, "/?delay=4000")
            zone = ZoneReader(lb.master_pid)
            wait_for(lambda: zone.total_conns() == 6, what="6 active connections")
            rows = {w.pid: zone.row_of(w.pid) for w in lb.workers()}
            victim = max(rows, key=lambda pid: zone.row_active(rows[pid] or 0))
            held_by_victim = zone.row_active(rows[victim] or 0)
            assert held_by_victim > 0
            import os

            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: zone.total_conns() == 6 - held_by_victim, what="repaired counts")
            wait_for(lambda: zone.row_of(victim) is None, what="the dead worker's row released")
            wait_for(lambda: zone.total_conns() == 0, timeout_s=20, what="the survivor's requests to finish")


def test_reload_keeps_failure_state_of_surviving_peers(tmp_path: Path) -> None:
    with Backend(count=2) as b:
        port = free_port()
        dead = f"127.0.0.1:{free_port()}"
        a, c = b.addrs
        servers = [dead, a]
        up = upstream_block("backend", servers, **{dead: ', fail_timeout = "60s"'})
        with LB(tmp_path, basic_config(port, up, workers=2), port) as lb:
            assert request(port, "GET", "/first")[0] == 200
            request(port, "GET", "/second")
            lines = lb.access_log(2)
            assert any(dead in line for line in lines)  # the dead server was tried once
            old = {w.pid for w in lb.workers()}
            up2 = upstream_block("backend", [dead, a, c], **{dead: ', fail_timeout = "60s"'})
            lb.conf.write_text(basic_config(port, up2, workers=2))
            lb.signal("reload")
            wait_for(
                lambda: old.isdisjoint(w.pid for w in lb.workers()) and len(lb.workers()) == 2,
                what="new generation",
            )
            for i in range(6):
                assert request(port, "GET", f"/after{i}")[0] == 200
            after = [line for line in lb.access_log(8) if "/after" in line]
    # nginx resets peer state on reload and would try the dead server again; we keep it
    assert len(after) == 6 and not any(dead in line for line in after)


def test_queue_waits_for_max_conns_instead_of_502(tmp_path: Path) -> None:
    with Backend(count=1) as b:
        port = free_port()
        up = upstream_block(
            "backend",
            b.addrs,
            extra='queue = { size = 1, timeout = "10s" }',
            **{b.addrs[0]: ", max_conns = 1"},
        )
        with LB(tmp_path, basic_config(port, up), port) as lb:
            _hold(port, 1, b, "/?delay=3000")  # the only server is now at max_conns
            results: list[int] = []
            queued = threading.Thread(target=lambda: results.append(request(port, "GET", "/queued")[0]))
            queued.start()
            wait_for(lambda: "request queued" in lb.output(), what="the second request to wait in the queue")
            # the queue (size 1) is full: a third request gets 502 at once
            assert request(port, "GET", "/overflow")[0] == 502
            queued.join(15)
            assert results == [200]  # waited for the held request to finish, then served
            lines = lb.access_log(3)
            assert any("/overflow" in line and "|502|" in line for line in lines)
