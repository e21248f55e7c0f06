"""Whole-list access to the zone words of one peer list: the balancers' bulk paths.

round_robin, least_conn and least_time look at every peer of a list on every pick, as
nginx does. Reading the zone through ``Peer`` properties costs about 0.5 us per peer and
pick in Python; a ``PeerTable`` reads one field of every peer with one C-level call
(``read``), lets the method compute over plain lists with ``map``/``max``/``min``/``index``,
and writes a field back with one call (``write``). ``loadtest/pick_bench.py``, 1000 peers,
us per request (pick + free) before -> after: round_robin ~500 -> ~63, least_conn ~630 ->
~78, least_time ~1000 -> ~190; shuffled slots (gather/store loop): 114, 97, 233.

Invariants:
1. A table holds configuration only (built once per ``PeerList``, per worker); zone words
   are read afresh on every pick, under the zone lock (``zone/layout.py`` rule 1), so a
   table is never stale. Positions are ``Peer.index`` values, lists are in position order.
2. When the list's slots form an arithmetic progression (the master assigns a group's
   slots in server order, so that holds until a reload adds peers to it) a field of every
   peer is one strided memoryview slice; otherwise a gather (``operator.itemgetter``) and
   a store loop. Both read and write exactly the same words.
3. ``unusable`` is exactly ``Peer.usable`` plus the tried bit, for the whole list: a peer is
   out when down, tried, ``fails >= max_fails and now - checked <= fail_timeout`` (with
   ``max_fails``) or ``conns >= max_conns`` (with ``max_conns``) or, in a list whose
   upstream is actively checked (``hc``), ``P_HC_STATE`` is not up. It reads ``checked``
   only of peers with ``fails`` > 0, ``conns`` only when some peer has ``max_conns``, and
   the health words only of checked lists.
4. A write stores every peer's word of the field; callers pass the value they read for
   peers they do not change, so the zone ends up exactly as with per-peer stores.
5. With the compiled loops built (``native.py``), ``native`` is that module and ``cfg`` the
   list's configuration as int64 words (``_pickloop.c`` describes them); round robin and
   least_conn then run nginx's per-peer loop in C for every list of two or more peers,
   and the bulk passes above serve least_time and the pure build.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from math import lcm
from typing import TYPE_CHECKING

from prefork_lb.balance import native
from prefork_lb.zone import layout as L

if TYPE_CHECKING:
    from prefork_lb.balance.peers import Peer

# Below every int64: a max() over current weights never picks an excluded peer.
LOW = -(1 << 64)
# Shorter lists take the per-peer loops: the bulk calls cost a fixed ~2 us (round robin:
# unusable + smooth) or ~1 us (least_*), the loops ~0.2 us (round robin) / ~0.15-0.5 us
# (least_conn / least_time) per peer. Measured crossovers, pick + take alone: round robin
# 10-12 peers, least_conn and least_time 6-8.
SMOOTH_MIN = 12
LEAST_MIN = 8
# The compiled loops (rule 5), or None: the pure build, or PREFORK_LB_PURE=1.
NATIVE = native.PICKLOOP


class PeerTable:
    """One peer list's configuration, laid out for whole-list passes (invariants 1-4)."""

    __slots__ = (
        "_getters",
        "_pack",
        "_slices",
        "_weights_mv",
        "_zeros",
        "_zeros_mv",
        "bases",
        "bulk_least",
        "bulk_smooth",
        "caps",
        "cfg",
        "down",
        "fail_timeouts",
        "hc",
        "high",
        "inc100",
        "max_fails",
        "mult",
        "mv",
        "n",
        "native",
        "peers",
        "periods",
        "rows",
        "total",
        "total100",
        "uniform",
        "weights",
    )

    def __init__(self, peers: Sequence[Peer], mv: memoryview) -> None:
        n = len(peers)
        self.n = n
        # whole-list calls, else the per-peer loops over ``rows``
        self.bulk_smooth = n >= SMOOTH_MIN  # round robin (and large ties)
        self.bulk_least = n >= LEAST_MIN  # least_conn, least_time
        self.mv = mv
        self.peers = tuple(peers)
        self.bases = [p._b for p in peers]
        self.weights = [p.weight for p in peers]
        self.max_fails = [p.max_fails for p in peers]
        self.fail_timeouts = [p.fail_timeout_s for p in peers]
        self.periods = [t + 1 for t in self.fail_timeouts]  # least_time halves rt once per period
        self.inc100 = [w * 100 for w in self.weights]  # slow_start: weight * 100 percent
        self.total = sum(self.weights)
        self.total100 = self.total * 100
        self.down = [p.index for p in peers if p.out]  # down or draining (peers.py rule 11)
        self.caps: list[int] | None = None
        if any(p.max_conns for p in peers):
            self.caps = [p.max_conns or (1 << 64) for p in peers]
        # least_conn/least_time compare conns/weight: as integers, key = value * (lcm // weight)
        common = lcm(*self.weights) if peers else 1
        self.uniform = len(set(self.weights)) <= 1
        self.mult = [common // w for w in self.weights]
        self.high = (1 << 80) * common  # above any key (values are < 2**63 * 5021)
        # active health checks (rule 3): the list's upstream is checked
        self.hc = any(p.hc for p in peers)
        # the per-peer loops: (position, base, tried bit, weight, max_fails, fail_timeout, max_conns, hc)
        self.rows = tuple(
            (p.index, p._b, 1 << p.index, p.weight, p.max_fails, p.fail_timeout_s, p.max_conns, p.hc)
            for p in peers
            if not p.out
        )
        self._pack = struct.Struct(f"{n}q")
        self._zeros = [0] * n
        self._zeros_mv = memoryview(self._pack.pack(*self._zeros)).cast("q")
        self._weights_mv = memoryview(self._pack.pack(*self.weights)).cast("q")
        self.native = NATIVE
        self.cfg = b""
        if NATIVE is not None:
            cfg = native_cfg(peers)
            if cfg is None:  # a value beyond the compiled loops' int32 fields: the pure loops
                self.native = None
            else:
                self.cfg = cfg
        self._slices: list[slice] | None = None
        self._getters: dict[int, Callable[[memoryview], tuple[int, ...]]] = {}  # made on first use
        step = self.bases[1] - self.bases[0] if n > 1 else L.PEER_WORDS
        if step > 0 and all(b == self.bases[0] + i * step for i, b in enumerate(self.bases)):
            first = self.bases[0] if n else 0
            self._slices = [
                slice(first + f, first + f + step * (n - 1) + 1, step) for f in range(L.PEER_WORDS)
            ]

    # ---- bulk access ----

    def read(self, field: int) -> list[int]:
        """Word ``field`` of every peer, in position order."""
        if self._slices is not None:
            return self.mv[self._slices[field]].tolist()
        getter = self._getters.get(field)
        if getter is None:  # n >= 3 here (1 or 2 slots are a progression), so it returns tuples
            getter = self._getters[field] = operator.itemgetter(*[b + field for b in self.bases])
        return list(getter(self.mv))

    def write(self, field: int, values: list[int]) -> None:
        """Store ``values`` (one per position) into word ``field`` of every peer."""
        mv = self.mv
        if self._slices is not None:
            mv[self._slices[field]] = memoryview(self._pack.pack(*values)).cast("q")
            return
        for base, value in zip(self.bases, values, strict=True):
            mv[base + field] = value

    def all_zero(self, field: int) -> bool:
        if self._slices is not None:  # compared in C, no int objects: 1.3 us at 1000 peers
            return self.mv[self._slices[field]] == self._zeros_mv
        return self.read(field) == self._zeros

    def at_weight(self) -> bool:
        """Every peer's effective_weight equals its weight (no failure being recovered from)."""
        if self._slices is not None:
            return self.mv[self._slices[L.P_EW]] == self._weights_mv
        return self.read(L.P_EW) == self.weights

    # ---- nginx's peer filter, for the whole list ----

    def unusable(self, tried: int, now_s: int, conns: list[int] | None = None) -> set[int]:
        """Positions the filter rejects (rule 3); ``conns``: the P_CONNS words if already read."""
        out = set(self.down)
        while tried:
            low = tried & -tried
            out.add(low.bit_length() - 1)
            tried ^= low
        if not self.all_zero(L.P_FAILS):
            mv, bases, max_fails, timeouts = self.mv, self.bases, self.max_fails, self.fail_timeouts
            fails = self.read(L.P_FAILS)
            for i in compress(range(self.n), fails):
                mf = max_fails[i]
                if mf and fails[i] >= mf and now_s - mv[bases[i] + L.P_CHECKED] <= timeouts[i]:
                    out.add(i)
        if self.hc and not self.all_zero(L.P_HC_STATE):
            out.update(compress(range(self.n), self.read(L.P_HC_STATE)))
        if self.caps is not None:
            if conns is None:
                conns = self.read(L.P_CONNS)
            out.update(compress(range(self.n), map(operator.ge, conns, self.caps)))
        return out

    # ---- smooth weighted round robin over the whole list ----

    def smooth(self, skip: set[int], now_ms: int = 0, scaled: bool = False, target: int = -1) -> int:
        """nginx's selection pass (``round_robin.smooth_pick``) over the positions not in
        ``skip`` (which holds every down peer); the chosen position, or -1 if none is left.
        ``target`` (sticky, balance/sticky.py rule 2): a usable position that pays the total
        in the winner's place.

        Regular peers (effective_weight == weight, no slow_start ramp) are one ``map``;
        the others are handled one by one, exactly as the per-peer loop does.
        """
        n = self.n
        if len(skip) >= n:  # skip holds positions only
            return -1
        inc = self.inc100 if scaled else self.weights
        total = self.total100 if scaled else self.total
        cws = self.read(L.P_CW)
        if self.uniform:
            step = inc[0]
            x = [cw + step for cw in cws]  # 19 us at 1000 peers, map(operator.add) 25 us
        else:
            x = list(map(operator.add, cws, inc))
        irregular: set[int] = set()
        ews = self.weights
        if not self.at_weight():
            ews = self.read(L.P_EW)
            irregular.update(compress(range(n), map(operator.ne, ews, self.weights)))
        if scaled and not self.all_zero(L.P_SLOW_START_MS):
            irregular.update(compress(range(n), self.read(L.P_SLOW_START_MS)))
        if irregular:
            mv, bases, weights, peers = self.mv, self.bases, self.weights, self.peers
            for i in irregular - skip:
                ew = ews[i]
                w = ew * peers[i].weight_pct(now_ms) if scaled else ew
                x[i] = cws[i] + w
                total += w - inc[i]
                if ew < weights[i]:
                    mv[bases[i] + L.P_EW] = ew + 1
        for i in skip:
            x[i] = LOW
            total -= inc[i]
        best = x.index(max(x)) if target < 0 else target
        x[best] -= total
        for i in skip:
            x[i] = cws[i]
        self.write(L.P_CW, x)
        return best

    # ---- least_conn / least_time ----

    def tie_break(self, keys: list[int], low: int, count: int, first: int) -> int:
        """nginx's tie-break of least_conn and least_time: smooth WRR (unscaled) among the
        ``count`` positions whose key is ``low``, the first of them at ``first``."""
        n = self.n
        # Mostly tied (an idle group): the bulk pass with the others skipped. least_conn, 1000
        # peers, 70% / 100% tied: 115 / 91 us per request, against 172 / 217 us one by one.
        if self.bulk_smooth and count * 2 > n:
            return self.smooth(set(compress(range(n), map(operator.ne, keys, repeat(low)))))
        tied = [first]
        i = first
        for _ in range(count - 1):
            i = keys.index(low, i + 1)
            tied.append(i)
        return self.smooth_among(tied)

    def smooth_among(self, tied: list[int]) -> int:
        """Smooth WRR (unscaled) among ``tied`` (usable positions, ascending, not empty)."""
        mv, bases, weights = self.mv, self.bases, self.weights
        best = tied[0]
        best_cw = total = 0
        for i in tied:
            b = bases[i]
            ew = mv[b + L.P_EW]
            cw = mv[b + L.P_CW] + ew
            mv[b + L.P_CW] = cw
            total += ew
            if ew < weights[i]:
                mv[b + L.P_EW] = ew + 1
            if i == best or cw > best_cw:
                best, best_cw = i, cw
        mv[bases[best] + L.P_CW] = best_cw - total
        return best


def native_cfg(peers: Sequence[Peer]) -> bytes | None:
    """A list's configuration for ``_pickloop.c`` (its header comment): a header (count, word
    limit, the field offsets it uses, P_HC_STATE or -1 when unchecked), then per position a
    hot record (base, weight or 0 when down, max_conns, max_fails: int32) and a cold one
    (fail_timeout_s, slow_start_ms: int64).
    None when a value does not fit in int32."""
    limit = max((p._b for p in peers), default=0) + L.PEER_WORDS
    hc = L.P_HC_STATE if any(p.hc for p in peers) else -1  # -1: the list is not actively checked
    head = (len(peers), limit, L.P_CW, L.P_EW, L.P_CONNS, L.P_FAILS, L.P_CHECKED, L.P_SLOW_START_MS, hc)
    hot: list[int] = []
    cold: list[int] = []
    for p in peers:
        hot += (p._b, 0 if p.out else p.weight, p.max_conns, p.max_fails)  # draining too
        cold += (p.fail_timeout_s, p.slow_start_ms)
    if any(not 0 <= v < 1 << 31 for v in hot) or limit >= 1 << 31:
        return None
    n = len(peers)
    return struct.pack(f"9q{4 * n}i{2 * n}q", *head, *hot, *cold)
