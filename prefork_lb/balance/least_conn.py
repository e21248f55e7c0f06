"""least_conn, exactly nginx's ``ngx_http_upstream_get_least_conn_peer``.

Pick the usable peer with the lowest ``conns / weight`` (cross-multiplied, integers);
when several tie, smooth weighted round robin among the tied peers only, starting from the
first of them (nginx's tie-break; the cw/ew state is the zone's, so it persists across
requests and workers). ``conns`` is global through the zone. A single-server group uses
the round-robin path, as nginx does.

Both passes work on one integer key per position (``least_pick``): ``conns * (lcm of the
weights // weight)``, so "lower ratio" is "lower key" and the first lowest key is nginx's
choice (its strict ``<`` keeps the earliest); unusable positions get ``PeerTable.high``.
With ``table.LEAST_MIN`` peers or more the keys come from one bulk read; shorter lists
take nginx's loop as written (``least_conn_rows``), over the zone words. With the compiled
loops built (``native.py``) every list takes that loop in C (``_pickloop.least_conn``).
"""

from __future__ import annotations

import operator

from prefork_lb.balance.base import NoRelease, RequestKey
from prefork_lb.balance.peers import Peer, PeerGroup, PeerList, Selection, take
from prefork_lb.balance.round_robin import pick_round_robin
from prefork_lb.balance.table import PeerTable
from prefork_lb.config.model import UpstreamConfig
from prefork_lb.zone import layout as L


class LeastConn(NoRelease):
    __slots__ = ("group",)

    def __init__(self, group: PeerGroup, upstream: UpstreamConfig | None = None) -> None:
        self.group = group

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None:
        group = self.group
        if group.single:
            return pick_round_robin(group, sel, now_s)
        peer = least_conn_pick(sel.current, sel.tried, now_s)
        if peer is None and sel.switch_to_backup():
            peer = least_conn_pick(sel.current, sel.tried, now_s)
        return None if peer is None else take(sel, peer, now_s)


def least_conn_pick(plist: PeerList, tried: int, now_s: int) -> Peer | None:
    table = plist.table
    if table.native is not None:
        i = table.native.least_conn(table.mv, table.cfg, tried, now_s)
    elif table.bulk_least:
        keys = table.read(L.P_CONNS)
        skip = table.unusable(tried, now_s, keys)
        if not table.uniform:
            keys = list(map(operator.mul, keys, table.mult))
        high = table.high
        for i in skip:
            keys[i] = high
        i = least_pick(table, keys)
    else:
        i = least_conn_rows(table, tried, now_s)
    return None if i < 0 else plist.peers[i]


def least_conn_rows(table: PeerTable, tried: int, now_s: int) -> int:
    """nginx's loop as written, ``Peer.usable`` inlined, over the zone words (short lists)."""
    mv = table.mv
    fails_, checked_, conns_, hc_ = L.P_FAILS, L.P_CHECKED, L.P_CONNS, L.P_HC_STATE
    tied: list[int] = []
    best_conns = best_weight = 0
    for i, b, bit, weight, max_fails, fail_timeout, max_conns, hc in table.rows:  # down peers left out
        if (
            tried & bit
            or (max_fails and mv[b + fails_] >= max_fails and now_s - mv[b + checked_] <= fail_timeout)
            or (hc and mv[b + hc_])
        ):
            continue
        conns = mv[b + conns_]
        if max_conns and conns >= max_conns:
            continue
        if not tied or conns * best_weight < best_conns * weight:
            tied = [i]
            best_conns, best_weight = conns, weight
        elif conns * best_weight == best_conns * weight:
            tied.append(i)
    if len(tied) > 1:
        return table.smooth_among(tied)
    return tied[0] if tied else -1


def least_pick(table: PeerTable, keys: list[int]) -> int:
    """The position nginx picks given one key per position; -1 when none is usable."""
    if not keys:
        return -1
    low = min(keys)
    if low == table.high:
        return -1
    first = keys.index(low)
    count = keys.count(low)
    return first if count == 1 else table.tie_break(keys, low, count, first)
