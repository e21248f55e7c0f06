"""``random`` and ``random two`` (least_conn between two picks), as nginx.

A pick is ``randrange(total_weight)`` mapped through cumulative weights (static weights,
down peers included). ``random``: pick until a usable peer; ``two``: the first usable pick
A, then picks until a usable B != A, then A if ``B.conns * A.weight > A.conns * B.weight``
else B (ties go to the second pick); conns are global through the zone. Every pick counts
toward nginx's limit of 20, after which the request falls back to round robin. Each worker
seeds its own generator, so only distributions are reproducible, as in nginx.
"""

from __future__ import annotations

import bisect
import itertools
import random as _random

from prefork_lb.balance.base import NoRelease, RequestKey
from prefork_lb.balance.ip_hash import MAX_TRIES
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, take
from prefork_lb.balance.round_robin import pick_round_robin
from prefork_lb.config.model import UpstreamConfig


class Random(NoRelease):
    __slots__ = ("bounds", "group", "rng", "total", "two")

    def __init__(self, group: PeerGroup, upstream: UpstreamConfig) -> None:
        self.group = group
        self.two = upstream.random_two
        self.rng = _random.Random()
        weights = [p.weight for p in group.primary.peers]
        self.bounds = list(itertools.accumulate(weights))  # peer i covers [bounds[i-1], bounds[i])
        self.total = self.bounds[-1] if self.bounds else 0

    def _peek(self) -> Peer:
        x = self.rng.randrange(self.total)
        return self.group.primary.peers[bisect.bisect_right(self.bounds, x)]

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None:
        group = self.group
        peers = group.primary.peers
        if sel.hash_tries > MAX_TRIES or group.single or (self.two and len(peers) < 2):
            return pick_round_robin(group, sel, now_s)
        first: Peer | None = None
        while True:
            peer = self._peek()
            if not sel.tried & (1 << peer.index) and peer.usable(now_s) and peer is not first:
                if not self.two:
                    return take(sel, peer, now_s)
                if first is None:
                    first = peer
                else:
                    chosen = first if peer.conns * first.weight > first.conns * peer.weight else peer
                    return take(sel, chosen, now_s)
            sel.hash_tries += 1
            if sel.hash_tries > MAX_TRIES:
                return pick_round_robin(group, sel, now_s)
