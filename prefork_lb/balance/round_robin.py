"""Smooth weighted round robin, exactly nginx's ``ngx_http_upstream_get_peer``.

Weights 5,1,1 give ``a a b a c a a``; ties go to the earliest peer (strict ``>``). The
weights live in the shared zone and every pick holds the zone lock, so the order is
nginx-with-``zone``'s global order across all workers (``aabacaa`` repeated).
With ``slow_start`` in the group, weights are scaled by the ramp percentage (Angie).

A whole peer list (``smooth_list``) is walked by ``_pickloop.smooth`` (``smooth_rows`` in
C, when built: ``native.py``), else by ``PeerTable.smooth`` (bulk reads, one ``map`` and one
``max``) from ``table.SMOOTH_MIN`` peers on, by ``smooth_rows`` (one loop over the zone
words, locals only) below that; ``smooth_pick`` walks any sequence of ``Peer`` objects (the
peers of one server string, for consistent hash). All four are the same pass: same choice,
same words written.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefork_lb.balance.base import NoRelease, RequestKey
from prefork_lb.balance.peers import Peer, PeerGroup, PeerList, Selection, take
from prefork_lb.balance.table import PeerTable
from prefork_lb.zone import layout as L


class RoundRobin(NoRelease):
    __slots__ = ("group",)

    def __init__(self, group: PeerGroup) -> None:
        self.group = group

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None:
        return pick_round_robin(self.group, sel, now_s)


def pick_round_robin(group: PeerGroup, sel: Selection, now_s: int) -> Peer | None:
    """The whole RR step; hash methods fall back to it (it can reach backups)."""
    if group.single:
        only = group.primary.peers[0]
        if (
            only.out
            or (only.max_conns and only.conns >= only.max_conns)
            or (only.hc and only._mv[only._b + L.P_HC_STATE])
        ):
            return None
        return take(sel, only, now_s)
    now_ms = now_s * 1000 if group.slow_start else 0
    peer = smooth_list(sel.current, sel.tried, now_s, now_ms, group.slow_start)
    if peer is None and sel.switch_to_backup():
        peer = smooth_list(sel.current, sel.tried, now_s, now_ms, group.slow_start)
    return None if peer is None else take(sel, peer, now_s)


def smooth_list(plist: PeerList, tried: int, now_s: int, now_ms: int, scaled: bool) -> Peer | None:
    """``smooth_pick`` over a whole list, through its table."""
    table = plist.table
    if table.native is not None:
        i = table.native.smooth(table.mv, table.cfg, tried, now_s, now_ms, scaled)
    elif table.bulk_smooth:
        i = table.smooth(table.unusable(tried, now_s), now_ms, scaled)
    else:
        i = smooth_rows(table, tried, now_s, now_ms, scaled)
    return None if i < 0 else plist.peers[i]


def smooth_rows(table: PeerTable, tried: int, now_s: int, now_ms: int, scaled: bool) -> int:
    """``smooth_pick`` with ``Peer.usable`` inlined: zone words by index, no attribute lookups."""
    mv = table.mv
    fails_, checked_, conns_, ew_, cw_ = L.P_FAILS, L.P_CHECKED, L.P_CONNS, L.P_EW, L.P_CW
    hc_ = L.P_HC_STATE
    best = -1
    best_cw = total = 0
    for i, b, bit, weight, max_fails, fail_timeout, max_conns, hc in table.rows:  # down peers left out
        if (
            tried & bit
            or (max_fails and mv[b + fails_] >= max_fails and now_s - mv[b + checked_] <= fail_timeout)
            or (max_conns and mv[b + conns_] >= max_conns)
            or (hc and mv[b + hc_])
        ):
            continue
        ew = mv[b + ew_]
        w = ew * table.peers[i].weight_pct(now_ms) if scaled else ew
        cw = mv[b + cw_] + w
        mv[b + cw_] = cw
        total += w
        if ew < weight:
            mv[b + ew_] = ew + 1
        if best < 0 or cw > best_cw:
            best, best_cw = i, cw
    if best >= 0:
        mv[table.bases[best] + cw_] = best_cw - total
    return best


def smooth_pick(
    peers: Sequence[Peer], tried: int, now_s: int, now_ms: int = 0, scaled: bool = False
) -> Peer | None:
    """nginx's selection pass over ``peers`` (a list, or the peers of one server string)."""
    best: Peer | None = None
    total = 0
    for peer in peers:
        if tried & (1 << peer.index) or not peer.usable(now_s):
            continue
        ew = peer.effective_weight
        w = ew * peer.weight_pct(now_ms) if scaled else ew
        cw = peer.current_weight + w
        peer.current_weight = cw
        total += w
        if ew < peer.weight:
            peer.effective_weight = ew + 1
        if best is None or cw > best.current_weight:
            best = peer
    if best is not None:
        best.current_weight -= total
    return best
