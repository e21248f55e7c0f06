"""Idle keep-alive connections parked without a greenlet (http/connection.py rule 6).

A connection idle for PARK_AFTER_S between requests is watched by the worker's loop alone;
these tests wait past that point and check that such a connection is served again, times
out on schedule, counts against worker_connections and is closed by a graceful drain.
Waiting longer than PARK_AFTER_S cannot fail on a slow machine: parking only happens later.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from prefork_lb.http.connection import PARK_AFTER_S
from tests.backends import Backend, free_port
from tests.harness import LB, basic_config, upstream_block, wait_for

PARKED_S = PARK_AFTER_S + 0.5
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


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
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs), port):
        sock = connect(port)
        for _ in range(3):
            sock.sendall(GET)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(PARKED_S)
        # pipelined requests right after a resume are all answered, in order
        sock.sendall(GET + GET)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.close()


def test_a_parked_connection_closes_at_its_keepalive_timeout_not_later(tmp_path: Path) -> None:
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs, keepalive_timeout="2500ms"), port):
        sock = connect(port)
        sock.sendall(GET)
        read_response(sock)
        answered = time.monotonic()
        wait_for(lambda: closed_by_peer(sock), what="parked connection closed at keepalive_timeout")
        waited = time.monotonic() - answered
        assert waited >= 2.4  # the time spent before parking counts, and nothing closes early
        sock.close()


def test_parked_connections_count_against_worker_connections(tmp_path: Path) -> None:
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs, top="worker_connections = 2"), port):
        first, second = connect(port), connect(port)
        for sock in (first, second):
            sock.sendall(GET)
            read_response(sock)
        time.sleep(PARKED_S)
        third = connect(port)  # completes in the listen backlog; the worker does not accept it
        third.sendall(GET)
        third.settimeout(1.0)
        try:
            early = third.recv(1)
        except TimeoutError:
            early = b""
        assert early == b"", "a third connection was served with worker_connections = 2"
        first.close()  # frees a connection: accepting resumes
        third.settimeout(10)
        assert read_response(third).startswith(b"HTTP/1.1 200")
        second.sendall(GET)  # the parked one still works
        assert read_response(second).startswith(b"HTTP/1.1 200")
        second.close()
        third.close()


def test_a_graceful_reload_closes_parked_connections_and_retires_the_worker(tmp_path: Path) -> None:
    port = free_port()
    with Backend() as b, LB(tmp_path, config(port, b.addrs), port) as lb:
        sock = connect(port)
        sock.sendall(GET)
        read_response(sock)
        time.sleep(PARKED_S)
        (old,) = lb.workers()
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: closed_by_peer(sock), what="parked connection closed by the drain")
        wait_for(lambda: not old.is_running() or old.status() == "zombie", what="old worker gone")
        fresh = connect(port)
        fresh.sendall(GET)
        assert read_response(fresh).startswith(b"HTTP/1.1 200")
        fresh.close()
        sock.close()
