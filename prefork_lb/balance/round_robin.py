"""Smooth weighted round robin, exactly nginx's ``ngx_http_upstream_get_peer``.

Weights 5,1,1 give ``a a b a c a a``; ties go to the earliest peer (strict ``>``). The
state (current and effective weights) is per worker, as in nginx without ``zone``.
"""

from __future__ import annotations

from prefork_lb.balance.peers import Peer, PeerGroup, PeerList, Selection, take
from prefork_lb.http.exchange import Exchange


class RoundRobin:
    __slots__ = ("group",)

    def __init__(self, group: PeerGroup) -> None:
        self.group = group

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
