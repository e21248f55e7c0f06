"""``least_time header|last_byte [inflight]`` (NGINX Plus; open-source nginx 1.31).

Each peer keeps a moving average of the measured time in the zone (``peers.record_time``:
the first value, then ``round(0.95 avg + 0.05 v)``). Per pick, for every usable peer:
``rt = avg``, halved once per ``fail_timeout + 1`` seconds elapsed since ``checked`` (so a
slow peer is tried again eventually); with ``inflight``, ``rt = max(rt, average age of its
in-flight requests)``; ``rt > 5000`` is capped at 5000 (it degenerates to least_conn),
else rounded up to the next 20 ms bucket (``rt += 20 - rt % 20``); then
``eta = rt * (1 + conns)``. The lowest ``eta / weight`` wins (cross-multiplied); ties go
to smooth weighted round robin among the tied peers, as in least_conn.
"""

from __future__ import annotations

from prefork_lb.balance.least_conn import tie_break
from prefork_lb.balance.peers import Peer, PeerGroup, PeerList, Selection, take
from prefork_lb.balance.round_robin import pick_round_robin
from prefork_lb.config.model import UpstreamConfig
from prefork_lb.http.exchange import Exchange
from prefork_lb.zone import layout as L


class LeastTime:
    __slots__ = ("group", "inflight", "measure")

    def __init__(self, group: PeerGroup, upstream: UpstreamConfig) -> None:
        self.group = group
        self.measure = upstream.least_time  # "header" | "last_byte"
        self.inflight = upstream.least_time_inflight

    def pick(self, sel: Selection, ex: Exchange | None, now_s: int) -> Peer | None:
        group = self.group
        if group.single:
            return pick_round_robin(group, sel, now_s)
        peer = self._pick(sel.current, sel.tried, now_s)
        if peer is None and sel.switch_to_backup():
            peer = self._pick(sel.current, sel.tried, now_s)
        if peer is None:
            return None
        if self.inflight:
            start = now_s * 1000  # the balancer's one clock: nginx-style cached seconds
            peer._mv[peer._b + L.P_INFLIGHT_MS] += start  # global sum of in-flight start times
            peer._mv[peer._i] += start  # this worker's share, for repair
            sel.start_ms = start
        return take(sel, peer, now_s)

    def eta(self, peer: Peer, now_s: int) -> int:
        rt = max(peer.rt_ms, 0)
        elapsed = now_s - peer.checked_s
        if elapsed > 0:
            rt >>= min(62, elapsed // (peer.fail_timeout_s + 1))
        conns = peer.conns
        if self.inflight and conns:
            age = now_s * 1000 - peer._mv[peer._b + L.P_INFLIGHT_MS] // conns
            rt = max(rt, age)
        rt = 5000 if rt > 5000 else rt + 20 - rt % 20
        return rt * (1 + conns)

    def _pick(self, plist: PeerList, tried: int, now_s: int) -> Peer | None:
        best: Peer | None = None
        best_eta = 0
        many = False
        etas: dict[int, int] = {}  # computed once: the tie-break reuses them (lock held)
        for peer in plist.peers:
            if tried & (1 << peer.index) or not peer.usable(now_s):
                continue
            eta = etas[peer.index] = self.eta(peer, now_s)
            if best is None or eta * best.weight < best_eta * peer.weight:
                best, best_eta, many = peer, eta, False
            elif eta * best.weight == best_eta * peer.weight:
                many = True
        if best is None or not many:
            return best
        weight = best.weight
        return tie_break(plist, best, tried, now_s, lambda p: etas[p.index] * weight == best_eta * p.weight)


def release_inflight(peer: Peer, sel: Selection) -> None:
    """Undo the in-flight start time booked by ``pick`` (called with ``free``)."""
    if sel.start_ms:
        peer._mv[peer._b + L.P_INFLIGHT_MS] -= sel.start_ms
        peer._mv[peer._i] -= sel.start_ms
        sel.start_ms = 0
