"""Accepting several connections per wake-up only while this worker holds no more than its
share (worker/share.py, worker/acceptor.py rule 1): a real zone and a real listening socket,
the acceptor's wake-up called directly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from prefork_lb.worker.acceptor import SHARED_BATCH, Acceptor
from prefork_lb.worker.share import FairShare
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone


@pytest.fixture
def zone() -> Iterator[Zone]:
    z = Zone.create(size=L.size_for(4, 8), rows=8)
    yield z
    z.close()


def live(z: Zone, row: int, generation: int, active: int, pid: int = 100) -> None:
    z.claim_row(row, generation, row)
    z.set_row_pid(row, pid + row)
    z.mv[L.row_base(row, z.peers) + L.R_ACTIVE] = active


def test_share_counts_live_siblings_of_this_generation_only(zone: Zone) -> None:
    """Rows of an old generation, draining rows and free rows are not siblings: counting
    them would let a new worker batch while it holds more than the others of its kind."""
    live(zone, 0, 2, active=10)
    live(zone, 1, 2, active=10)
    live(zone, 2, 1, active=0)  # old generation, still draining its connections
    live(zone, 3, 2, active=0)
    zone.mv[L.row_base(3, zone.peers) + L.R_DRAINING] = 1
    share = FairShare(zone.mv, zone.rows, zone.peers, 0, workers=2)
    assert share.siblings == 2
    assert share.below(0)  # 10 of 20: the mean
    assert not share.below(1)  # 11 of 21
    zone.mv[L.row_base(1, zone.peers) + L.R_ACTIVE] = 14
    assert share.below(4) and not share.below(5)  # 14 of 28 is the mean, 15 of 29 above it
    live(zone, 4, 2, active=6)  # a third sibling is found at the next refresh
    assert share.siblings == 2
    share.refresh()
    share.workers = 3
    assert share.siblings == 3 and share.below(0) and not share.below(1)  # 10 of 30, 11 of 31


def test_a_sibling_not_started_yet_holds_none(zone: Zone) -> None:
    """Catches: a worker that finds no sibling row (the master forks them one after the
    other) taking itself for the only one and batching a whole burst until the next
    refresh, a second later."""
    live(zone, 5, 1, active=3)
    share = FairShare(zone.mv, zone.rows, zone.peers, 5, workers=2)
    assert share.siblings == 1
    assert not share.below(0)  # 3 of 3, with 2 workers configured: above its share
    zone.mv[L.row_base(5, zone.peers) + L.R_ACTIVE] = 0
    assert share.below(0) and not share.below(1)


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    lsock.setblocking(False)
    clients = [socket.create_connection(lsock.getsockname()) for _ in range(2 * SHARED_BATCH + 1)]
    yield lsock, clients
    for c in clients:
        c.close()
    lsock.close()


def wake(acceptor: Acceptor) -> None:
    acceptor._ready()


def test_a_worker_over_its_share_takes_one_connection_per_wake_up(
    zone: Zone, listener: tuple[socket.socket, list[socket.socket]]
) -> None:
    """Catches: a fixed batch per wake-up (the old max_accept 4) that lets the busier
    worker take a burst of long-lived connections, and a batch that ignores its share."""
    lsock, _ = listener
    live(zone, 0, 1, active=3)
    live(zone, 1, 1, active=3)
    share = FairShare(zone.mv, zone.rows, zone.peers, 0, workers=2)
    taken: list[Any] = []

    def accepted(raw: Any, address: Any) -> None:
        taken.append(raw)

    acceptor = Acceptor(lsock, gevent.get_hub(), accepted, lambda: False, SHARED_BATCH, share.below)
    try:
        wake(acceptor)  # 3 of 6: at its share, one connection, then 4 of 7 is above it
        assert len(taken) == 1
        zone.mv[L.row_base(1, zone.peers) + L.R_ACTIVE] = 20  # the sibling is much busier
        wake(acceptor)
        assert len(taken) == 1 + SHARED_BATCH
        zone.mv[L.row_base(0, zone.peers) + L.R_ACTIVE] = 21  # now this one is
        wake(acceptor)
        assert len(taken) == 2 + SHARED_BATCH
    finally:
        for raw in taken:
            raw.close()
        acceptor.close()
