"""More clients than the worker's descriptors hold (worker/fdbudget.py).

Each accepted connection keeps a descriptor for its upstream leg, so what the worker
accepts it can serve; the other clients wait in the listen queue and are served when
connections close. Before, the worker accepted until accept() failed and then every
request found no descriptor to connect upstream with: 502 for all of them.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.backends import Backend, free_port
from tests.harness import LB, basic_config, request, upstream_block, wait_for
from tests.integration.test_stream import stream_config, stream_log, tcp_hello
from tests.stream_servers import TcpEcho

CLIENTS = 120


def test_http_clients_beyond_the_descriptor_limit_wait_and_all_get_200(tmp_path: Path) -> None:
    """Catches: with worker_rlimit_nofile = 128 and 120 concurrent slow requests, the worker
    accepted ~110 connections and then the upstream connect() failed with EMFILE: 502s.
    Now about 50 are accepted at a time (client + upstream descriptor each), every one of
    them gets 200, and the others are served after them, out of the listen queue."""
    port = free_port()
    with Backend() as b:
        conf = basic_config(port, upstream_block("backend", b.addrs), top_extra="worker_rlimit_nofile = 128")
        conf = conf.replace('proxy_read_timeout = "5s"', 'proxy_read_timeout = "60s"')
        with LB(tmp_path, conf, port) as lb:
            results: list[int | str] = [0] * CLIENTS

            def client(i: int) -> None:
                try:
                    results[i] = request(port, "GET", f"/?delay=300&i={i}", timeout_s=60)[0]
                except OSError as e:
                    results[i] = repr(e)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            assert results == [200] * CLIENTS
            assert b.stats(b.ports[0])["requests"] == CLIENTS  # each reached the backend once
            statuses = [line.split("|")[1] for line in lb.access_log(CLIENTS)]
            assert statuses == ["200"] * CLIENTS
            out = lb.output()
            paused = [x for x in out.splitlines() if "accepting paused" in x]
            assert paused and "[alert]" in paused[0]
            assert "open file resource limit: 128 is not enough" in paused[0]
            assert "Too many open files" not in out


def test_tcp_stream_clients_beyond_the_descriptor_limit_wait_and_are_served(tmp_path: Path) -> None:
    """Catches: the TCP stream listener accepted until EMFILE, so the upstream connect()
    of the last accepted connections failed and those clients were closed unserved (502).
    Now each accepted client gets the backend's greeting and the others wait in the listen
    queue until earlier ones close."""
    echo = TcpEcho()
    port, ready = free_port(), free_port()
    cfg = "worker_rlimit_nofile = 64\n" + stream_config(port, [echo.addr], http_port=ready)
    with LB(tmp_path, cfg, ready) as lb:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(60)]
        try:
            pending = set(clients)
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                readable, _, _ = select.select(list(pending), [], [], 1.0)
                for c in readable:
                    hello = c.makefile("rb").readline()
                    assert hello == f"{echo.port}\n".encode()  # never closed unserved
                    pending.discard(c)
                    c.close()  # makes room for one waiting in the listen queue
            assert not pending
        finally:
            for c in clients:
                c.close()
        out = lb.output()
        assert "open file resource limit: 64 is not enough" in out and "accepting paused" in out
        assert "Too many open files" not in out
    echo.close()


def second_free_descriptor(pid: int) -> int:
    """As a soft RLIMIT_NOFILE, leaves the process exactly one free descriptor (the kernel
    gives the lowest free number, and fails when none below the limit is free)."""
    used = {int(x) for x in os.listdir(f"/proc/{pid}/fd")}
    free = (n for n in range(max(used) + 3) if n not in used)
    next(free)
    return next(free)


@contextmanager
def one_free_descriptor(lb: LB) -> Iterator[None]:
    """Lower the only worker's soft RLIMIT_NOFILE under it (as `prlimit` does) so that it
    has exactly one free descriptor: the next accept() takes it, the upstream socket()
    fails. The limit is restored on leaving."""
    (worker,) = lb.workers()
    wait_for(
        lambda: all(c.status == psutil.CONN_LISTEN for c in worker.net_connections("tcp")),
        what="the readiness probe's connection closed",
    )
    soft, hard = worker.rlimit(psutil.RLIMIT_NOFILE)
    worker.rlimit(psutil.RLIMIT_NOFILE, (second_free_descriptor(worker.pid), hard))
    try:
        yield
    finally:
        worker.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))


def test_tcp_stream_socket_failure_is_500_and_not_charged_to_the_peer(tmp_path: Path) -> None:
    """Catches: an upstream socket() failing with EMFILE was charged to the peer as a
    connect failure (and retried on the next one, charged too): healthy backends were
    taken out of rotation for fail_timeout by the balancer's own lack of descriptors.
    nginx: `socket() failed` ends the session with 500 and charges nobody. Also caught:
    the worker opened the zone's lock descriptor at its first pick, so under EMFILE that
    pick raised in the handler (the worker now opens it at start). Here the
    worker's limit is lowered under it (as `prlimit` does) to leave exactly one free
    descriptor: accept() takes it, the upstream socket() fails."""
    a, b = TcpEcho(), TcpEcho()
    port, ready = free_port(), free_port()
    params = {x.addr: ', max_fails = 1, fail_timeout = "60s"' for x in (a, b)}
    with LB(tmp_path, stream_config(port, [a.addr, b.addr], params, http_port=ready), ready) as lb:
        with one_free_descriptor(lb):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                assert s.recv(100) == b""  # closed unserved: no descriptor for the upstream
        seen = {tcp_hello(port) for _ in range(4)}
        assert seen == {str(a.port), str(b.port)}  # neither peer was charged
        assert stream_log(tmp_path, 5)[0].split("|")[:3] == ["TCP", "500", a.addr]
        line = next(x for x in lb.output().splitlines() if "socket() failed" in x)
        assert "[alert]" in line and "(24: Too many open files) while connecting to upstream" in line
    a.close()
    b.close()


def test_http_upstream_socket_failure_is_500_and_not_charged_to_the_peer(tmp_path: Path) -> None:
    """Catches: an upstream socket() failing with EMFILE in the HTTP proxy was a connect
    failure: 502, charged to the peer (max_fails = 1 took it out for fail_timeout) and
    retried on the next peer, charged too. nginx: 500, nobody charged, no retry. The
    worker's limit is lowered under it to leave exactly one free descriptor: accept() takes
    it, the upstream socket() fails."""
    port = free_port()
    with Backend(count=2) as b:
        params = {x: ', max_fails = 1, fail_timeout = "60s"' for x in b.addrs}
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs, **params)), port) as lb:
            with one_free_descriptor(lb):
                status, _, _ = request(port, "GET", "/")
            assert status == 500
            seen = {request(port, "GET", "/")[1]["x-port"] for _ in range(4)}
            assert seen == {a.split(":")[1] for a in b.addrs}  # neither peer was charged
            line = next(x for x in lb.output().splitlines() if "socket() failed" in x)
            assert "[alert]" in line and "(24: Too many open files) while connecting to upstream" in line
