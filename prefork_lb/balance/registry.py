"""Balancing methods by config name (``method = "..."`` in an upstream)."""

from __future__ import annotations

from collections.abc import Callable

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.hash import ConsistentHash, Hash
from prefork_lb.balance.ip_hash import IpHash
from prefork_lb.balance.least_conn import LeastConn
from prefork_lb.balance.least_time import LeastTime
from prefork_lb.balance.peers import PeerGroup
from prefork_lb.balance.random import Random
from prefork_lb.balance.round_robin import RoundRobin
from prefork_lb.config.model import UpstreamConfig

METHODS: dict[str, Callable[[PeerGroup, UpstreamConfig], Balancer]] = {
    "round_robin": lambda group, upstream: RoundRobin(group),
    "least_conn": LeastConn,
    "ip_hash": IpHash,
    "hash": lambda group, upstream: (ConsistentHash if upstream.consistent else Hash)(group, upstream),
    "random": Random,
    "least_time": LeastTime,
}
# Methods that pick among primary servers only (nginx rejects "backup" with them).
NO_BACKUP = frozenset({"ip_hash", "hash", "random"})
# slow_start ramps the smooth round-robin weights (Angie's formula).
SLOW_START = frozenset({"round_robin"})


def make_balancer(upstream: UpstreamConfig, group: PeerGroup) -> Balancer:
    return METHODS[upstream.method](group, upstream)
