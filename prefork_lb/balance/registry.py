"""Balancing methods by config name (``method = "..."`` in an upstream)."""

from __future__ import annotations

from collections.abc import Callable

from prefork_lb.balance.base import Balancer, KeyCompiler, NoServers
from prefork_lb.balance.hash import ConsistentHash, Hash
from prefork_lb.balance.ip_hash import IpHash
from prefork_lb.balance.least_conn import LeastConn
from prefork_lb.balance.least_time import LeastTime
from prefork_lb.balance.peers import PeerGroup
from prefork_lb.balance.random import Random
from prefork_lb.balance.round_robin import RoundRobin
from prefork_lb.config.model import UpstreamConfig

Factory = Callable[[PeerGroup, UpstreamConfig, KeyCompiler | None], Balancer]


def _hash(group: PeerGroup, upstream: UpstreamConfig, compile_key: KeyCompiler | None) -> Balancer:
    if compile_key is None:
        raise ValueError(f'upstream "{upstream.name}": method "hash" needs the context\'s key compiler')
    return (ConsistentHash if upstream.consistent else Hash)(group, upstream, compile_key)


METHODS: dict[str, Factory] = {
    "round_robin": lambda group, upstream, _: RoundRobin(group),
    "least_conn": lambda group, upstream, _: LeastConn(group, upstream),
    "ip_hash": lambda group, upstream, _: IpHash(group, upstream),
    "hash": _hash,
    "random": lambda group, upstream, _: Random(group, upstream),
    "least_time": lambda group, upstream, _: LeastTime(group, upstream),
}
# Methods that pick among primary servers only (nginx rejects "backup" with them).
NO_BACKUP = frozenset({"ip_hash", "hash", "random"})
# slow_start ramps the smooth round-robin weights (Angie's formula).
SLOW_START = frozenset({"round_robin"})


def make_balancer(
    upstream: UpstreamConfig, group: PeerGroup, compile_key: KeyCompiler | None = None
) -> Balancer:
    """``compile_key`` compiles a ``hash`` key with the variables of the upstream's context
    (http's ``compile_template``, the stream one's ``compile_stream_template``). A group
    without servers (every one deleted by the API) gets ``NoServers`` whatever the method."""
    if not upstream.servers:
        return NoServers(group)
    return METHODS[upstream.method](group, upstream, compile_key)
