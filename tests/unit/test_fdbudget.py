"""The worker's connection and descriptor budget (worker/fdbudget.py), sans-IO."""

from __future__ import annotations

from prefork_lb.worker.fdbudget import SPARE, STREAM_COST, UDP_COST, Budget, Throttle


def test_each_connection_keeps_a_descriptor_for_its_upstream_leg() -> None:
    b = Budget(worker_connections=1000)
    b.limit_descriptors(nofile=128, in_use=12, pooled=8)
    assert b.max_descriptors == 128 - 12 - SPARE - 8
    accepted = 0
    while b.fits(STREAM_COST):
        paused = b.opened(STREAM_COST)
        accepted += 1
    assert paused and b.paused
    assert accepted == b.max_descriptors // STREAM_COST
    assert b.full_reason()[0] == "nofile"
    assert b.closed(STREAM_COST) and not b.paused  # the first close resumes accepting
    assert not b.closed(STREAM_COST)  # already accepting


def test_udp_sessions_share_worker_connections() -> None:
    b = Budget(worker_connections=3)
    assert not b.opened(UDP_COST)
    assert not b.opened(UDP_COST)
    assert b.opened(STREAM_COST)  # the third connection fills worker_connections
    assert not b.fits(UDP_COST)
    kind, message, args = b.full_reason()
    assert (kind, message % args) == ("worker_connections", "3 worker_connections are not enough")
    assert b.closed(UDP_COST) and b.fits(UDP_COST)


def test_a_tiny_limit_still_serves_one_connection_at_a_time() -> None:
    b = Budget(worker_connections=1024)
    b.limit_descriptors(nofile=20, in_use=15, pooled=0)
    assert b.fits(STREAM_COST)
    assert b.opened(STREAM_COST) and not b.fits(STREAM_COST)


def test_capacity_warning_only_when_worker_connections_cannot_fit() -> None:
    b = Budget(worker_connections=100)
    b.limit_descriptors(nofile=1024, in_use=20, pooled=0)
    assert b.capacity_warning() is None
    b = Budget(worker_connections=1024)
    b.limit_descriptors(nofile=1024, in_use=20, pooled=0)
    warning = b.capacity_warning()
    assert warning is not None and "1024 worker_connections exceed open file resource limit: 1024" in warning


def test_throttle_once_per_interval_per_kind() -> None:
    t = Throttle(1.0)
    assert t.due("accept", 10.0)
    assert not t.due("accept", 10.5)
    assert t.due("udp", 10.5)
    assert t.due("accept", 11.0)
