"""least_conn, exactly nginx's ``ngx_http_upstream_get_least_conn_peer``.

Pick the usable peer with the lowest ``conns / weight`` (cross-multiplied, integers);
when several tie, smooth weighted round robin among the tied peers only, starting from the
first of them (nginx's tie-break; the cw/ew state is the zone's, so it persists across
requests and workers). ``conns`` is global through the zone. A single-server group uses
the round-robin path, as nginx does.
"""

from __future__ import annotations

from collections.abc import Callable

from prefork_lb.balance.peers import Peer, PeerGroup, PeerList, Selection, take
from prefork_lb.balance.round_robin import pick_round_robin
from prefork_lb.config.model import UpstreamConfig
from prefork_lb.http.exchange import Exchange


class LeastConn:
    __slots__ = ("group",)

    def __init__(self, group: PeerGroup, upstream: UpstreamConfig | None = None) -> None:
        self.group = group

    def pick(self, sel: Selection, ex: Exchange | None, now_s: int) -> Peer | None:
        group = self.group
        if group.single:
            return pick_round_robin(group, sel, now_s)
        peer = least_conn_pick(sel.current, sel.tried, now_s)
        if peer is None and sel.switch_to_backup():
            peer = least_conn_pick(sel.current, sel.tried, now_s)
        return None if peer is None else take(sel, peer, now_s)


def least_conn_pick(plist: PeerList, tried: int, now_s: int) -> Peer | None:
    best: Peer | None = None
    best_conns = 0
    many = False
    for peer in plist.peers:
        if tried & (1 << peer.index) or not peer.usable(now_s):
            continue
        conns = peer.conns
        if best is None or conns * best.weight < best_conns * peer.weight:
            best, best_conns, many = peer, conns, False
        elif conns * best.weight == best_conns * peer.weight:
            many = True
    if best is None or not many:
        return best
    weight = best.weight
    return tie_break(plist, best, tried, now_s, lambda p: p.conns * weight == best_conns * p.weight)


def tie_break(plist: PeerList, first: Peer, tried: int, now_s: int, tied: Callable[[Peer], bool]) -> Peer:
    """Smooth WRR among the peers ``tied`` accepts, from ``first`` on (least_conn, least_time)."""
    best = first
    total = 0
    for peer in plist.peers[first.index :]:
        if tried & (1 << peer.index) or not peer.usable(now_s) or not tied(peer):
            continue
        ew = peer.effective_weight
        peer.current_weight += ew
        total += ew
        if ew < peer.weight:
            peer.effective_weight = ew + 1
        if peer.current_weight > best.current_weight:
            best = peer
    best.current_weight -= total
    return best
