"""Smooth weighted round robin, exactly nginx's ``ngx_http_upstream_get_peer``.

Weights 5,1,1 give ``a a b a c a a``; ties go to the earliest peer (strict ``>``). The
state (current and effective weights) is per worker, as in nginx without ``zone``. Worker
slot i starts i steps into the cycle (``advance``), so N workers do not all send their
first requests to the same peer; each worker still follows nginx's order from there, and
worker 0 (the only one with ``workers = 1``) matches nginx exactly.
"""

from __future__ import annotations

from prefork_lb.balance.peers import Peer, PeerGroup, PeerList, Selection, take
from prefork_lb.http.exchange import Exchange


class RoundRobin:
    __slots__ = ("group",)

    def __init__(self, group: PeerGroup, worker_slot: int = 0) -> None:
        self.group = group
        if worker_slot and not group.single:
            advance(group, worker_slot)

    def pick(self, sel: Selection, ex: Exchange | None, now_s: int) -> Peer | None:
        group = self.group
        if group.single:
            only = group.primary.peers[0]
            if only.down or (only.max_conns and only.conns >= only.max_conns):
                return None
            return take(sel, only, now_s)
        peer = smooth_pick(sel.current, sel.tried, now_s)
        if peer is None and sel.switch_to_backup():
            peer = smooth_pick(sel.current, sel.tried, now_s)
        return None if peer is None else take(sel, peer, now_s)


def advance(group: PeerGroup, steps: int) -> None:
    """Move the cycle ``steps`` picks ahead without booking anything (worker start only)."""
    for _ in range(steps % max(1, group.primary.total_weight)):
        smooth_pick(group.primary, 0, 0)


def smooth_pick(plist: PeerList, tried: int, now_s: int) -> Peer | None:
    best: Peer | None = None
    total = 0
    for peer in plist.peers:
        if tried & (1 << peer.index) or not peer.usable(now_s):
            continue
        ew = peer.effective_weight
        peer.current_weight += ew
        total += ew
        if ew < peer.weight:
            peer.effective_weight = ew + 1
        if best is None or peer.current_weight > best.current_weight:
            best = peer
    if best is not None:
        best.current_weight -= total
    return best
