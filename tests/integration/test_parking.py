"""Idle keep-alive connections parked without a greenlet (http/connection.py rule 6).

A connection idle for PARK_AFTER_S between requests is watched by the worker's loop alone;
each worker counts its parked connections in its zone row (``R_PARKED``). These tests wait
for that count (never a fixed sleep) and then check that such a connection is served
again, times out on schedule, counts against worker_connections and is closed by a
graceful drain.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from prefork_lb.http.connection import PARK_AFTER_S
from tests.backends import Backend, free_port
from tests.harness import LB, ZoneReader, basic_config, upstream_block, wait_for

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def parked(zone: ZoneReader) -> int:
    """Parked connections of every worker, from the zone rows."""
    L = zone.L
    return sum(int(zone.mv[L.row_base(r, zone.peers) + L.R_PARKED]) for r in range(zone.rows))


def row_word(zone: ZoneReader, pid: int, word: int) -> int:
    row = zone.row_of(pid)
    assert row is not None
    return int(zone.mv[zone.L.row_base(row, zone.peers) + word])


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the listener on 127.0.0.1:port (for a
    listening socket, /proc/net/tcp's rx_queue is its current accept backlog)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on port {port}")


def config(port: int, addrs: list[str], keepalive_timeout: str = "30s", top: str = "") -> str:
    return basic_config(
        port,
        upstream_block("backend", addrs),
        top_extra=top,
        server_extra=f'keepalive_timeout = "{keepalive_timeout}"',
    )


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_parked_connection_is_served_again_many_times(tmp_path: Path) -> None:
    """Three times: the connection parks (the zone count says so), then its next request
    is answered; then pipelined requests right after a resume, in order.

    Mutations caught: ``conn.parkable = True`` made False in worker.py (never parks: the
    wait for the parked count times out); ``wake()`` not spawning ``_serve`` (a parked
    connection is never served again: the read times out)."""
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs), port) as lb:
        zone = ZoneReader(lb.master_pid)
        sock = connect(port)
        for _ in range(3):
            sock.sendall(GET)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            wait_for(lambda: parked(zone) == 1, what="the connection to be parked")
        sock.sendall(GET + GET)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.close()
        wait_for(lambda: parked(zone) == 0, what="the parked count to go back to 0")


def test_a_parked_connection_closes_at_its_keepalive_timeout_not_later(tmp_path: Path) -> None:
    """keepalive_timeout 2.5 s: the connection parks, then is closed no earlier than 2.5 s
    and no later than 3.3 s after the response, the time spent before parking included.

    The upper bound leaves a correct server 0.8 s of scheduling slack and is still below
    the 3.5 s at which a server that restarts the full timeout when it parks (after
    PARK_AFTER_S = 1 s) closes. Mutations caught: ``park_deadline = now + timeout`` made
    ``now + timeout + PARK_AFTER_S`` in connection.py (closed at 3.50 s: too late); the
    expiry timer never started in worker.py (never closed)."""
    assert PARK_AFTER_S == 1.0  # the bounds below are computed from it
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs, keepalive_timeout="2500ms"), port) as lb:
        zone = ZoneReader(lb.master_pid)
        sock = connect(port)
        sock.sendall(GET)
        read_response(sock)
        answered = time.monotonic()
        wait_for(lambda: parked(zone) == 1, what="the connection to be parked")
        wait_for(lambda: closed_by_peer(sock), timeout_s=3.3, what="the parked connection to close")
        waited = time.monotonic() - answered
        assert 2.4 <= waited <= 3.3, waited  # nothing closes it early, nor late
        wait_for(lambda: parked(zone) == 0, what="the parked count to go back to 0")
        sock.close()


def test_parked_connections_count_against_worker_connections(tmp_path: Path) -> None:
    """worker_connections = 2 and two parked connections: a third one stays in the accept
    queue (/proc/net/tcp) while the worker's loop keeps running (its heartbeat advances
    twice) and the worker's accepted count does not move; closing one parked connection
    lets the third be accepted and served, and the other parked one still works.

    Mutation caught: ``_park`` calling ``self._connection_closed()`` (parked connections
    not counted): the third connection is accepted at once, the queue never holds it."""
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs, top="worker_connections = 2"), port) as lb:
        zone = ZoneReader(lb.master_pid)
        (worker,) = lb.workers()
        first, second = connect(port), connect(port)
        for sock in (first, second):
            sock.sendall(GET)
            read_response(sock)
        wait_for(lambda: parked(zone) == 2, what="both connections to be parked")
        accepted = row_word(zone, worker.pid, zone.L.R_ACCEPTED)  # the harness's probe included
        third = connect(port)  # completes in the listen backlog
        third.sendall(GET)
        wait_for(lambda: accept_queue(port) == 1, what="the third connection in the accept queue")
        for _ in range(2):
            beat = row_word(zone, worker.pid, zone.L.R_HEARTBEAT_NS)
            wait_for(
                lambda beat=beat: row_word(zone, worker.pid, zone.L.R_HEARTBEAT_NS) > beat,
                what="a heartbeat of the worker's loop",
            )
        assert accept_queue(port) == 1  # the loop ran and still did not accept it
        assert row_word(zone, worker.pid, zone.L.R_ACCEPTED) == accepted
        first.close()  # frees a connection: accepting resumes
        assert read_response(third).startswith(b"HTTP/1.1 200")
        assert accept_queue(port) == 0
        second.sendall(GET)  # the parked one still works
        assert read_response(second).startswith(b"HTTP/1.1 200")
        second.close()
        third.close()


def test_a_graceful_reload_closes_parked_connections_and_retires_the_worker(tmp_path: Path) -> None:
    """A parked connection (zone count 1) is closed by the old worker's drain, the old
    worker exits long before the 30 s keepalive_timeout, and a new connection is served.

    Mutation caught: the drain loop in worker.py's ``_shutdown`` not calling
    ``close_if_idle``: the parked connection stays open and the old worker stays."""
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs), port) as lb:
        zone = ZoneReader(lb.master_pid)
        sock = connect(port)
        sock.sendall(GET)
        read_response(sock)
        wait_for(lambda: parked(zone) == 1, what="the connection to be parked")
        (old,) = lb.workers()
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: closed_by_peer(sock), what="parked connection closed by the drain")
        wait_for(lambda: not old.is_running() or old.status() == "zombie", what="old worker gone")
        assert parked(zone) == 0
        fresh = connect(port)
        fresh.sendall(GET)
        assert read_response(fresh).startswith(b"HTTP/1.1 200")
        fresh.close()
        sock.close()
