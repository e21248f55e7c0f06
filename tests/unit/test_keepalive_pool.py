"""The keep-alive pool's rule 4 (http/upstream.py): an idle connection that becomes readable
is closed, never handed out again. Real sockets on loopback, the real gevent hub."""

from __future__ import annotations

import socket as stdsocket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from gevent import socket

from prefork_lb.http.upstream import KeepalivePool, UpstreamConnection
from prefork_lb.netio import recv, send_all


@pytest.fixture
def server() -> Iterator[Any]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


def pair(srv: Any) -> tuple[Any, Any]:
    client = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    peer.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)  # a late write arrives now
    return client, peer


def make_pool() -> KeepalivePool:
    upstream = SimpleNamespace(
        keepalive=4, keepalive_requests=1000, keepalive_timeout_s=60.0, keepalive_time_s=3600.0
    )
    return KeepalivePool(upstream)  # type: ignore[arg-type]


def wait_until(predicate: Any) -> None:
    with gevent.Timeout(5):
        while not predicate():
            gevent.sleep(0.001)


def exchange(conn: UpstreamConnection, peer: Any) -> None:
    send_all(conn.sock, b"req", 1)
    assert peer.recv(16) == b"req"
    peer.sendall(b"resp")
    assert recv(conn.sock, 16, 1, True) == b"resp"


@pytest.mark.parametrize("late", [b"STRAY", b""])
def test_idle_connection_that_becomes_readable_is_closed(server: Any, late: bytes) -> None:
    """Stray bytes or EOF while idle: dropped at once by the idle watcher, even after the
    connection was reused (the watcher is re-armed on every put)."""
    pool = make_pool()
    client, peer = pair(server)
    conn = UpstreamConnection(client, "a", 0.0)
    for _ in range(3):  # reuse a few times first
        exchange(conn, peer)
        pool.put(conn, 0.0)
        got = pool.get("a", 0.0)
        assert got is conn
    exchange(conn, peer)
    pool.put(conn, 0.0)
    if late:
        peer.sendall(late)
    else:
        peer.shutdown(stdsocket.SHUT_WR)
    wait_until(lambda: conn.sock.fileno() == -1)  # closed by the idle watcher, no get needed
    assert len(pool) == 0
    assert pool.get("a", 0.0) is None
    peer.close()


def test_get_peeks_even_before_the_watcher_ran(server: Any) -> None:
    """Bytes that arrived in the same loop iteration as the reuse are caught by the peek."""
    pool = make_pool()
    client, peer = pair(server)
    conn = UpstreamConnection(client, "a", 0.0)
    exchange(conn, peer)
    pool.put(conn, 0.0)
    peer.sendall(b"STRAY")
    # no yield to the hub between the write and the get: only the peek can see it
    assert pool.get("a", 0.0) is None
    assert conn.sock.fileno() == -1
    peer.close()


def test_clean_idle_connection_is_reused_and_fd_reuse_keeps_watching(server: Any) -> None:
    """A connection closed by the watcher frees its fd; the next connection on the same fd
    number is watched too."""
    pool = make_pool()
    client, peer = pair(server)
    first = UpstreamConnection(client, "a", 0.0)
    exchange(first, peer)
    pool.put(first, 0.0)
    peer.sendall(b"STRAY")
    wait_until(lambda: first.sock.fileno() == -1)
    client2, peer2 = pair(server)
    second = UpstreamConnection(client2, "a", 0.0)
    exchange(second, peer2)
    pool.put(second, 0.0)
    assert pool.get("a", 0.0) is second
    exchange(second, peer2)
    pool.put(second, 0.0)
    peer2.sendall(b"STRAY")
    wait_until(lambda: second.sock.fileno() == -1)
    peer.close()
    peer2.close()


def test_lru_eviction_per_address_reuse_and_sweep(server: Any) -> None:
    """Rules 1-3 over the two indexes: the most recent idle connection of the asked peer is
    reused, the oldest idle connection of any peer is evicted at capacity, and the sweep
    closes exactly those idle past keepalive_timeout."""
    pool = make_pool()  # capacity 4, keepalive_timeout 60 s
    conns = {}
    peers = []
    for i, addr in enumerate(["a", "b", "a", "c", "b"]):
        client, peer = pair(server)
        peers.append(peer)
        conns[i] = UpstreamConnection(client, addr, float(i))
        pool.put(conns[i], float(i))
    assert len(pool) == 4
    assert conns[0].sock.fileno() == -1  # the oldest ("a" at t=0) was evicted and closed
    assert pool.get("a", 5.0) is conns[2]
    assert pool.get("a", 5.0) is None
    assert pool.get("b", 5.0) is conns[4]  # most recent first
    pool.put(conns[4], 10.0)
    pool.sweep(65.0)  # b@1 and c@3 are past the 60 s timeout, b@10 is not
    assert len(pool) == 1
    assert pool.get("b", 65.0) is conns[4]
    for c in conns.values():
        c.close()
    for p in peers:
        p.close()
