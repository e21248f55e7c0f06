"""The interface every balancing method implements (one module per method).

A method is constructed once per worker per upstream group and answers ``pick`` for one
attempt of one request. It must call ``peers.take`` on the peer it returns, and return
None when no peer is usable (nginx's BUSY: "no live upstreams"). Releasing a peer and
failure accounting are shared (``peers.free``), never method-specific.
"""

from __future__ import annotations

from typing import Protocol

from prefork_lb.balance.peers import Peer, PeerGroup, Selection
from prefork_lb.http.exchange import Exchange


class Balancer(Protocol):
    group: PeerGroup

    def pick(self, sel: Selection, ex: Exchange | None, now_s: int) -> Peer | None: ...
