"""Peer groups on a zone of their own, for the balancer unit tests.

Production builds every group on the master's zone with the slots it assigned
(``PeerGroup.build(upstream, zone, slots, row)``); a test that needs one group alone gets a
zone just big enough for it, its peers initialised as the master would (slots 0..n-1).
"""

from __future__ import annotations

from prefork_lb.balance.peers import PeerGroup
from prefork_lb.config.model import UpstreamConfig
from prefork_lb.zone.zone import Zone


def private_group(upstream: UpstreamConfig) -> PeerGroup:
    zone = Zone.for_peers(len(upstream.servers))
    slots = list(range(len(upstream.servers)))
    with zone:
        for slot, server in zip(slots, upstream.servers, strict=True):
            zone.init_peer(slot, server.weight)
    return PeerGroup.build(upstream, zone, slots)
