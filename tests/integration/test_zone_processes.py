"""Shared state across real worker processes: the zone, seen from outside."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import pytest

from tests.backends import Backend, GatedBackend, free_port
from tests.harness import LB, ZoneReader, basic_config, request, upstream_block, wait_for


def pid_config(port: int, up: str, workers: int, **kw: str) -> str:
    """``basic_config`` whose access log also names the worker (``$pid``) and whose proxy
    waits for as long as a test holds a request (a held request must not become a 504)."""
    return (
        basic_config(port, up, workers=workers, **kw)
        .replace("$upstream_connect_time'", "$upstream_connect_time|$pid'")
        .replace('proxy_read_timeout = "5s"', 'proxy_read_timeout = "60s"')
    )


def logged(lb: LB, count: int) -> list[list[str]]:
    """The first ``count`` access log lines, split: request, status, upstream_addr,
    upstream_status, upstream_connect_time, pid."""
    return [line.split("|") for line in lb.access_log(count)[:count]]


def sequential_until_workers(lb: LB, path: str, workers: int, batch: int = 7) -> list[dict[str, str]]:
    """Sequential requests (new connection each), ``batch`` at a time, until the access log
    shows that at least ``workers`` different workers served them: which worker accepts a
    connection is the kernel's choice, so a cross-worker test must see that it crossed."""
    heads: list[dict[str, str]] = []

    def crossed() -> bool:
        for _ in range(batch):
            status, headers, _ = request(lb.port, "GET", path)
            assert status == 200
            heads.append(headers)
        return len({line[-1] for line in logged(lb, len(heads))}) >= workers

    wait_for(crossed, what=f"requests served by {workers} workers")
    return heads


def test_round_robin_order_is_global_across_four_workers(tmp_path: Path) -> None:
    """nginx scenario 3 (with zone): aabacaa, repeated, whichever worker accepts each
    connection (the log shows at least two workers took part).

    Catches: round robin's current weights kept per worker (``smooth_rows`` reading and
    writing a process-local ``cw`` instead of the zone word)."""
    with Backend(count=3) as b:
        a, bb, c = b.addrs
        port = free_port()
        up = upstream_block("backend", [a, bb, c], **{a: ", weight = 5"})
        with LB(tmp_path, pid_config(port, up, workers=4), port) as lb:
            heads = sequential_until_workers(lb, "/", workers=2)
    letter = {str(p): "abc"[i] for i, p in enumerate(b.ports)}
    assert "".join(letter[h["x-port"]] for h in heads) == "aabacaa" * (len(heads) // 7)


def hold_one(lb: LB, backend: Backend) -> tuple[socket.socket, int]:
    """A request the backend never answers (``hang=1``), held open by the test; returns the
    client socket and the pid of the worker proxying it (seen in the zone's rows)."""
    client = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
    client.sendall(b"GET /held?hang=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: sum(backend.stats(p)["requests"] for p in backend.ports) == 1, what="the held request")
    zone = ZoneReader(lb.master_pid)

    def holder() -> int | None:
        for w in lb.workers():
            row = zone.row_of(w.pid)
            if row is not None and zone.row_active(row) == 1:
                return int(w.pid)
        return None

    return client, int(wait_for(holder, what="the worker holding the request"))


def held_elsewhere(directory: Path, backend: Backend, up: str) -> tuple[int, list[list[str]]]:
    """Two workers; hold one request on the first peer, then send short requests until the
    *other* worker served at least two of them. Returns the holder and the short requests'
    log lines.

    Each short request starts once the zone counts only the held request again: the worker
    that served the previous one releases its peer just after the response reaches the
    client, and on a busy machine the next request can be picked in between (then a and b
    both count 1 and the tie-break may choose a, which is right, not a bug)."""
    port = free_port()
    with LB(directory, pid_config(port, up, workers=2), port) as lb:
        client, holder = hold_one(lb, backend)
        zone = ZoneReader(lb.master_pid)
        try:
            assert [backend.stats(p)["requests"] for p in backend.ports] == [1, 0]
            count = 0

            def other_worker_served_two() -> bool:
                nonlocal count
                for _ in range(4):
                    wait_for(lambda: zone.total_conns() == 1, what="only the held request counted")
                    assert request(lb.port, "GET", "/short")[0] == 200
                    count += 1
                return sum(1 for line in logged(lb, count) if line[-1] != str(holder)) >= 2

            wait_for(other_worker_served_two, what="the other worker to serve short requests")
            return holder, logged(lb, count)
        finally:
            client.close()


def test_least_conn_counts_are_global(tmp_path: Path) -> None:
    """One request held on peer a by one worker; every later request, from either worker,
    goes to b, because a's connection count is global (1 against 0). With per-worker counts
    the other worker sees 0/0 and its tie-break round robin sends every other request to a.

    Catches: least_conn comparing the worker's own share (its zone row) instead of the
    peer's global ``conns``."""
    with Backend(count=2) as b:
        up = upstream_block("backend", b.addrs, extra='method = "least_conn"')
        holder, lines = held_elsewhere(tmp_path, b, up)
    assert {line[2] for line in lines} == {b.addrs[1]}, lines
    assert any(line[-1] != str(holder) for line in lines)


def test_least_time_learns_through_the_proxy_and_releases_inflight(tmp_path: Path) -> None:
    """least_time ``header inflight`` behind a real worker: the proxy's release
    (``Balancer.release`` in the critical section of ``peers.free``) feeds each peer's
    average from the measured header time and undoes the in-flight start of every request.
    Peer a answers after 200 ms: its average is at least 200 (every measurement is); b's is
    learned too (the second request goes to b, whose unknown average counts as 0); once no
    request is in flight, no peer keeps an in-flight start or a connection.

    Passes on the old code too (the release moved, its effect did not); mutation caught:
    the proxy not calling ``release`` (averages stay -1, in-flight starts pile up)."""
    port = free_port()
    with Backend(count=2) as b:
        up = upstream_block("backend", b.addrs, extra='method = "least_time"\nleast_time = "header inflight"')
        with LB(tmp_path, basic_config(port, up), port) as lb:
            for _ in range(4):
                assert request(lb.port, "GET", f"/?delay=200&delayport={b.ports[0]}")[0] == 200
            zone = ZoneReader(lb.master_pid)
            L = zone.L
            slots = zone.used_slots()
            assert len(slots) == 2
            wait_for(lambda: zone.total_conns() == 0, what="every peer released")
            assert [zone.peer(s, L.P_INFLIGHT_MS) for s in slots] == [0, 0]
            averages = sorted(zone.peer(s, L.P_RT_MS) for s in slots)
            assert averages[0] >= 0 and averages[1] >= 200, averages


def test_max_conns_is_global_across_workers(tmp_path: Path) -> None:
    """a has max_conns = 1 and one worker holds a request on it: round robin from either
    worker skips a and sends everything to b.

    Catches: max_conns compared with the worker's own share of a's connections (the other
    worker would see a free and alternate a, b)."""
    with Backend(count=2) as b:
        up = upstream_block("backend", b.addrs, **{b.addrs[0]: ", max_conns = 1"})
        holder, lines = held_elsewhere(tmp_path, b, up)
    assert {line[2] for line in lines} == {b.addrs[1]}, lines
    assert any(line[-1] != str(holder) for line in lines)


def gated_config(port: int, up: str, workers: int) -> str:
    """``basic_config`` with a read timeout no held request reaches (the gate decides)."""
    cfg = basic_config(port, up, workers=workers)
    return cfg.replace('proxy_read_timeout = "5s"', 'proxy_read_timeout = "60s"')


def status_of(port: int, path: str, results: list[int | None]) -> None:
    try:
        results.append(request(port, "GET", path, timeout_s=60)[0])
    except OSError:
        results.append(None)  # the worker serving it was killed on purpose


def start_held(
    port: int, gates: list[GatedBackend], count: int, results: list[int | None]
) -> list[threading.Thread]:
    """``count`` requests, each started once the previous one reached a gate."""
    threads = []
    for i in range(count):
        t = threading.Thread(target=status_of, args=(port, f"/held{i}", results), daemon=True)
        t.start()
        threads.append(t)
        wait_for(lambda i=i: sum(g.arrived for g in gates) == i + 1, what=f"held request {i}")
    return threads


def test_master_repairs_counts_of_a_killed_worker(tmp_path: Path) -> None:
    """SIGKILL a worker holding requests: the master recounts the peers' global ``conns``
    from the live rows (the victim's share is gone at once, the survivor's stays exact
    while its requests are still held at the gate), and frees the victim's row.

    Catches: ``Zone.release_row`` not recounting (the killed worker's connections would
    stay counted until the master restarts)."""
    with GatedBackend() as g1, GatedBackend() as g2:
        port = free_port()
        up = upstream_block("backend", [g1.addr, g2.addr], extra='method = "least_conn"')
        with LB(tmp_path, gated_config(port, up, workers=2), port) as lb:
            results: list[int | None] = []
            threads = start_held(port, [g1, g2], 6, results)
            zone = ZoneReader(lb.master_pid)
            wait_for(lambda: zone.total_conns() == 6, what="6 active connections")
            rows = {w.pid: zone.row_of(w.pid) for w in lb.workers()}
            victim = max(rows, key=lambda pid: zone.row_active(rows[pid] or 0))
            held_by_victim = zone.row_active(rows[victim] or 0)
            assert held_by_victim > 0
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: zone.row_of(victim) is None, what="the dead worker's row released")
            assert zone.total_conns() == 6 - held_by_victim  # nothing finished: the gates are shut
            g1.release()
            g2.release()
            for t in threads:
                t.join(30)
            wait_for(lambda: zone.total_conns() == 0, what="the survivor's requests to finish")
    assert sorted(results, key=str) == [200] * (6 - held_by_victim) + [None] * held_by_victim


def test_reload_keeps_failure_state_of_surviving_peers(tmp_path: Path) -> None:
    """Catches: a reload that resets the failure state of peers it keeps (``PeerSlots.assign``
    zeroing ``fails`` of a surviving slot, as nginx does without a zone)."""
    with Backend(count=2) as b:
        port = free_port()
        dead = f"127.0.0.1:{free_port()}"
        a, c = b.addrs
        servers = [dead, a]
        up = upstream_block("backend", servers, **{dead: ', fail_timeout = "60s"'})
        with LB(tmp_path, basic_config(port, up, workers=2), port) as lb:
            assert request(port, "GET", "/first")[0] == 200
            assert request(port, "GET", "/second")[0] == 200
            # (two workers log independently: the lines may come in either order)
            addrs = {line.split("|")[0]: line.split("|")[2] for line in lb.access_log(2)}
            # the dead server was tried once (and failed over to a), then left alone
            assert addrs == {"GET /first HTTP/1.1": f"{dead}, {a}", "GET /second HTTP/1.1": a}
            old = {w.pid for w in lb.workers()}
            up2 = upstream_block("backend", [dead, a, c], **{dead: ', fail_timeout = "60s"'})
            lb.conf.write_text(basic_config(port, up2, workers=2))
            assert lb.signal("reload").returncode == 0
            wait_for(
                lambda: old.isdisjoint(w.pid for w in lb.workers()) and len(lb.workers()) == 2,
                what="new generation",
            )
            for i in range(6):
                assert request(port, "GET", f"/after{i}")[0] == 200
            after = [line.split("|")[2] for line in lb.access_log(8) if "/after" in line]
    # nginx resets peer state on reload and would try the dead server again; we keep it:
    # the six requests go to a and c only, alternating
    assert sorted(after) == sorted([a, c] * 3)


def test_queue_waits_for_max_conns_instead_of_502(tmp_path: Path) -> None:
    """The only server is at max_conns (one request held at the gate): the next request
    waits in the queue (without reaching the server), a third finds the queue full (502),
    and once the gate opens the queued one is served.

    Catches: no queue (the second request would be a 502 at once, never logged as
    queued); a queue without a size limit (no 502 for the third); max_conns not applied
    (the queued request would reach the server while the first is held)."""
    with GatedBackend() as gate:
        port = free_port()
        up = upstream_block(
            "backend",
            [gate.addr],
            extra='queue = { size = 1, timeout = "30s" }',
            **{gate.addr: ", max_conns = 1"},
        )
        with LB(tmp_path, gated_config(port, up, workers=1), port) as lb:
            results: list[int | None] = []
            threads = start_held(port, [gate], 1, results)  # the only server is now at max_conns
            queued = threading.Thread(target=status_of, args=(port, "/queued", results))
            queued.start()
            wait_for(lambda: "request queued" in lb.output(), what="the second request to wait in the queue")
            # the queue (size 1) is full: a third request gets 502 at once
            assert request(port, "GET", "/overflow")[0] == 502
            assert gate.arrived == 1  # neither the queued nor the rejected one reached the server
            gate.release()
            for t in [*threads, queued]:
                t.join(30)
            assert results == [200, 200]  # held, then the queued one, served after it
            assert gate.arrived == 2
            lines = lb.access_log(3)
            assert any("/overflow" in line and "|502|" in line for line in lines)


def test_a_lock_holder_killed_in_its_critical_section_does_not_stop_the_workers(tmp_path: Path) -> None:
    """A process SIGKILLed while it holds the zone's futex lock (as a worker killed between
    lock and unlock): the workers take the lock over and keep serving, and the lock word
    no longer names the dead process.

    Catches: a userspace zone lock without the dead-holder take-over (every worker would
    wait on the word forever and the request would time out)."""
    native = pytest.importorskip("prefork_lb.balance._pickloop")
    if os.environ.get("PREFORK_LB_PURE", "") not in ("", "0"):
        pytest.skip("pure build: the zone uses flock, released by the kernel")
    import mmap

    from prefork_lb.zone import layout as L

    with Backend(count=1) as b:
        port = free_port()
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs), workers=2), port) as lb:
            assert request(port, "GET", "/")[0] == 200
            zone = ZoneReader(lb.master_pid)
            assert zone.mv[L.H_LOCK_KIND] == L.LOCK_FUTEX
            fd_dir = f"/proc/{lb.master_pid}/fd"
            name = next(n for n in os.listdir(fd_dir) if "prefork-lb-zone" in os.readlink(f"{fd_dir}/{n}"))
            r, w = os.pipe()
            holder = os.fork()
            if holder == 0:  # never returns into pytest
                try:
                    fd = os.open(f"{fd_dir}/{name}", os.O_RDWR)
                    mv = memoryview(mmap.mmap(fd, os.fstat(fd).st_size)).cast("q")
                    native.zone_lock(native.lock_address(mv, 8 * L.H_LOCK))
                    os.write(w, b"L")
                    os.kill(os.getpid(), signal.SIGKILL)  # inside the critical section
                finally:
                    os._exit(1)
            os.close(w)
            try:
                assert os.read(r, 1) == b"L"
            finally:
                os.waitpid(holder, 0)
                os.close(r)
            for _ in range(4):  # new connections: whichever worker accepts must get the lock
                assert request(port, "GET", "/", timeout_s=20)[0] == 200
            assert int(zone.mv[L.H_LOCK]) & 0x3FFFFFFF != holder
