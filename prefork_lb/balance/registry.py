"""Balancing methods by config name (``method = "..."`` in an upstream)."""

from __future__ import annotations

from collections.abc import Callable

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.peers import PeerGroup
from prefork_lb.balance.round_robin import RoundRobin

METHODS: dict[str, Callable[[PeerGroup, int], Balancer]] = {
    "round_robin": RoundRobin,
}


def make_balancer(method: str, group: PeerGroup, worker_slot: int = 0) -> Balancer:
    return METHODS[method](group, worker_slot)
