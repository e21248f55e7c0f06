"""UDP sessions against the worker's limits (stream/udp.py rule 6, worker/fdbudget.py).

A flood of source ports must never take the UDP listener down: sessions beyond
worker_connections or the descriptor budget are dropped (logged at alert, at most once a
second), a socket() that fails anyway is caught, and the listener serves again as soon as
sessions end.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psutil

from tests.backends import free_port
from tests.harness import LB, wait_for
from tests.integration.test_stream import stream_config, stream_log, udp_ask
from tests.stream_servers import UdpEcho


def flood(port: int, count: int) -> list[socket.socket]:
    """``count`` clients, one datagram each from its own source port (kept open, so each
    address stays one session)."""
    clients = []
    for i in range(count):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(f"flood{i}".encode(), ("127.0.0.1", port))
        clients.append(c)
    return clients


def served(port: int, data: bytes, echo: UdpEcho) -> bool:
    answer = udp_ask(port, data, timeout_s=0.5)
    return answer == f"{echo.port} ".encode() + data


def test_udp_sessions_beyond_worker_connections_are_dropped_until_sessions_end(tmp_path: Path) -> None:
    """Catches: UDP sessions were not counted in worker_connections (the flood opened 30
    sessions with worker_connections = 8) and nothing was logged. nginx: a UDP session
    takes a connection; with none free it logs "worker_connections are not enough" and
    drops the datagram."""
    echo = UdpEcho(hold=True)  # answers nothing until released: the sessions stay open
    port, http_port = free_port(), free_port()
    cfg = stream_config(
        port,
        [echo.addr],
        listen_extra=" udp",
        http_port=http_port,
        server_extra="proxy_responses = 1",
    ).replace('proxy_timeout = "5s"', 'proxy_timeout = "60s"')
    cfg = "worker_connections = 8\n" + cfg
    with LB(tmp_path, cfg, http_port) as lb:
        clients = flood(port, 30)
        try:
            dropped = "8 worker_connections are not enough, UDP session dropped"
            wait_for(lambda: dropped in lb.output() or len(echo.peers) > 8, what="the drop logged")
            assert len(echo.peers) <= 8  # one per connection slot; the rest were dropped
            wait_for(lambda: len(echo.peers) >= 7, what="the admitted sessions at the backend")
            assert "[alert]" in next(x for x in lb.output().splitlines() if dropped in x)
            echo.release()  # every held session gets its reply: proxy_responses ends them
            wait_for(lambda: served(port, b"fresh", echo), what="a new client served again")
        finally:
            for c in clients:
                c.close()
        lines = stream_log(tmp_path, len(echo.peers) - 1)
        assert all(line.startswith("UDP|200|") for line in lines)
    echo.close()


def test_udp_flood_beyond_the_descriptor_limit_recovers_after_proxy_timeout(tmp_path: Path) -> None:
    """Catches: with a low descriptor limit socket() raised EMFILE inside the listener's
    loop, the loop ended silently and UDP on that worker was dead until a restart. Now
    sessions stop at the descriptor budget (the rest are dropped, logged at alert) and
    the listener serves again once the flood's sessions reach proxy_timeout."""
    echo = UdpEcho()
    port, http_port = free_port(), free_port()
    cfg = stream_config(port, [echo.addr], listen_extra=" udp", http_port=http_port).replace(
        'proxy_timeout = "5s"', 'proxy_timeout = "1s"'
    )
    cfg = "worker_rlimit_nofile = 64\n" + cfg
    with LB(tmp_path, cfg, http_port) as lb:
        clients = flood(port, 200)  # no proxy_responses: each session lingers for proxy_timeout
        try:
            wait_for(lambda: served(port, b"fresh", echo), what="a new client served again")
        finally:
            for c in clients:
                c.close()
        assert len(echo.peers) < 200
        out = lb.output()
        assert "[alert]" in next(x for x in out.splitlines() if "UDP session dropped" in x)
        assert "open file resource limit: 64 is not enough" in out
        assert "Too many open files" not in out and "unexpected error" not in out
    echo.close()


def test_udp_socket_failure_is_caught_and_the_listener_keeps_serving(tmp_path: Path) -> None:
    """Catches: socket() failing with EMFILE (here the worker's limit is lowered under it,
    as `prlimit` does, so the budget counted from the start-up limit is wrong) killed the
    listener's loop. Now the session ends with 500 as in nginx (peer not charged), nginx's
    "socket() failed" line is logged at alert, and new clients are served once descriptors
    are free again."""
    echo = UdpEcho()
    port, http_port = free_port(), free_port()
    cfg = stream_config(port, [echo.addr], listen_extra=" udp", http_port=http_port).replace(
        'proxy_timeout = "5s"', 'proxy_timeout = "1s"'
    )
    with LB(tmp_path, cfg, http_port) as lb:
        (worker,) = lb.workers()
        hard = worker.rlimit(psutil.RLIMIT_NOFILE)[1]
        worker.rlimit(psutil.RLIMIT_NOFILE, (worker.num_fds() + 5, hard))
        clients = flood(port, 40)
        try:
            wait_for(lambda: served(port, b"fresh", echo), what="a new client served again")
        finally:
            for c in clients:
                c.close()
        failure = "socket() failed (24: Too many open files) while connecting to upstream, udp client"
        assert "[alert]" in next(x for x in lb.output().splitlines() if failure in x)
        assert any(x.startswith("UDP|500|") for x in stream_log(tmp_path, 1))
        assert "unexpected error" not in lb.output()
    echo.close()
