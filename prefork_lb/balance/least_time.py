"""``least_time header|last_byte [inflight]`` (NGINX Plus; open-source nginx 1.31).

Each peer keeps a moving average of the measured time in the zone (``peers.record_time``:
the first value, then ``round(0.95 avg + 0.05 v)``). Per pick, for every usable peer:
``rt = avg``, halved once per ``fail_timeout + 1`` seconds elapsed since ``checked`` (so a
slow peer is tried again eventually); with ``inflight``, ``rt = max(rt, average age of its
in-flight requests)``; ``rt > 5000`` is capped at 5000 (it degenerates to least_conn),
else rounded up to the next 20 ms bucket (``rt += 20 - rt % 20``); then
``eta = rt * (1 + conns)``. The lowest ``eta / weight`` wins (cross-multiplied); ties go
to smooth weighted round robin among the tied peers, as in least_conn.

A pick computes one key per position, ``eta * (lcm of the weights // weight)``, from bulk
reads of the list's words (``etas``; unusable positions get ``PeerTable.high``), then
chooses exactly as least_conn does (``least_conn.least_pick``). Short lists take nginx's
loop as written (``LeastTime.rows``); ``eta_of`` is the formula for one peer.

``release`` (``balance.base.Balancer``, under the zone lock with ``peers.free``) feeds a
completed attempt's header or last-byte time to the average and undoes the in-flight start
time its pick booked; a failed attempt only undoes the start time.
"""

from __future__ import annotations

from typing import ClassVar

from prefork_lb.balance.base import RequestKey
from prefork_lb.balance.least_conn import least_pick
from prefork_lb.balance.peers import Peer, PeerGroup, PeerList, Selection, record_time, take
from prefork_lb.balance.round_robin import pick_round_robin
from prefork_lb.balance.table import PeerTable
from prefork_lb.config.model import UpstreamConfig
from prefork_lb.zone import layout as L


class LeastTime:
    __slots__ = ("group", "inflight", "measure")
    releases: ClassVar[bool] = True

    def __init__(self, group: PeerGroup, upstream: UpstreamConfig) -> None:
        self.group = group
        self.measure = upstream.least_time  # "header" | "last_byte"
        self.inflight = upstream.least_time_inflight

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None:
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

    def release(
        self, peer: Peer, sel: Selection, header_time_s: float | None, response_time_s: float | None
    ) -> None:
        took = header_time_s if self.measure == "header" else response_time_s
        if took is not None:
            record_time(peer, int(took * 1000))
        release_inflight(peer, sel)

    def eta(self, peer: Peer, now_s: int) -> int:
        mv, b = peer._mv, peer._b
        period = peer.fail_timeout_s + 1
        sum_ms = mv[b + L.P_INFLIGHT_MS]
        return eta_of(
            mv[b + L.P_RT_MS], mv[b + L.P_CHECKED], mv[b + L.P_CONNS], sum_ms, period, now_s, self.inflight
        )

    def _pick(self, plist: PeerList, tried: int, now_s: int) -> Peer | None:
        table = plist.table
        if table.bulk_least:
            i = least_pick(table, self.etas(table, tried, now_s))
        else:
            i = self.rows(table, tried, now_s)
        return None if i < 0 else plist.peers[i]

    def etas(self, table: PeerTable, tried: int, now_s: int) -> list[int]:
        """``eta * mult`` per position, ``high`` where unusable (long lists: bulk reads)."""
        conns = table.read(L.P_CONNS)
        skip = table.unusable(tried, now_s, conns)
        rts = table.read(L.P_RT_MS)
        checked = table.read(L.P_CHECKED)
        inflight = self.inflight
        sums = table.read(L.P_INFLIGHT_MS) if inflight else conns
        now_ms = now_s * 1000
        keys = []
        # ``eta`` inlined: a call per peer would add ~80 us per pick at 1000 peers
        for rt, seen, c, sum_ms, period, mult in zip(
            rts, checked, conns, sums, table.periods, table.mult, strict=True
        ):
            if rt < 0:
                rt = 0
            elapsed = now_s - seen
            if elapsed > 0:
                rt >>= min(62, elapsed // period)
            if inflight and c:
                age = now_ms - sum_ms // c
                if age > rt:
                    rt = age
            rt = 5000 if rt > 5000 else rt + 20 - rt % 20
            keys.append(rt * (1 + c) * mult)
        high = table.high
        for i in skip:
            keys[i] = high
        return keys

    def rows(self, table: PeerTable, tried: int, now_s: int) -> int:
        """nginx's loop as written, ``Peer.usable`` inlined, over the zone words (short lists)."""
        mv = table.mv
        inflight = self.inflight
        tied: list[int] = []
        best_eta = best_weight = 0
        for i, b, bit, weight, max_fails, fail_timeout, max_conns, hc in table.rows:  # down peers left out
            if (
                tried & bit
                or (
                    max_fails
                    and mv[b + L.P_FAILS] >= max_fails
                    and now_s - mv[b + L.P_CHECKED] <= fail_timeout
                )
                or (hc and mv[b + L.P_HC_STATE])
            ):
                continue
            conns = mv[b + L.P_CONNS]
            if max_conns and conns >= max_conns:
                continue
            value = eta_of(
                mv[b + L.P_RT_MS],
                mv[b + L.P_CHECKED],
                conns,
                mv[b + L.P_INFLIGHT_MS],
                fail_timeout + 1,
                now_s,
                inflight,
            )
            if not tied or value * best_weight < best_eta * weight:
                tied = [i]
                best_eta, best_weight = value, weight
            elif value * best_weight == best_eta * weight:
                tied.append(i)
        if len(tied) > 1:
            return table.smooth_among(tied)
        return tied[0] if tied else -1


def eta_of(rt: int, checked_s: int, conns: int, sum_ms: int, period: int, now_s: int, inflight: bool) -> int:
    """One peer's eta from its words (``sum_ms``: P_INFLIGHT_MS, ``period``: fail_timeout + 1)."""
    rt = max(rt, 0)
    elapsed = now_s - checked_s
    if elapsed > 0:
        rt >>= min(62, elapsed // period)
    if inflight and conns:
        age = now_s * 1000 - sum_ms // conns
        rt = max(rt, age)
    rt = 5000 if rt > 5000 else rt + 20 - rt % 20
    return rt * (1 + conns)


def release_inflight(peer: Peer, sel: Selection) -> None:
    """Undo the in-flight start time booked by ``pick`` (called with ``free``)."""
    if sel.start_ms:
        peer._mv[peer._b + L.P_INFLIGHT_MS] -= sel.start_ms
        peer._mv[peer._i] -= sel.start_ms
        sel.start_ms = 0
