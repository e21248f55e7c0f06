"""Upstream peers and the per-request selection state, with nginx's exact accounting.

Spec: shared/reference/nginx-semantics.md sections 0, 1.3, 5 and 10.3 (nginx 1.22, Angie's
slow_start). Peer state lives in the shared zone (``zone/layout.py``): every worker sees
the same counters, as nginx does with ``zone``. Callers hold the zone lock around
``Balancer.pick`` and ``free`` (``PeerGroup.zone``).

Rules:
1. Times are whole seconds (nginx's ``ngx_time()``), so "unavailable" is
   ``fails >= max_fails and now - checked <= fail_timeout`` with integer ``now``: a peer
   that failed at second T is usable again from second T + fail_timeout + 1.
2. ``fails`` is not a sliding window: only a success that started after a later
   ``checked`` resets it (``accessed < checked``); that is nginx's one-probe-per-period.
3. A failure lowers ``effective_weight`` by ``weight // max_fails`` (clamped at 0); every
   selection pass in which the peer is usable raises it by 1 up to ``weight``. With
   ``slow_start`` the decrement is replaced by Angie's ramp (section 10.3).
4. A ``single`` group (one primary peer, no backups) ignores max_fails entirely and never
   retries: nginx forces tries to 0 after its one attempt.
5. ``total_weight`` counts ``down`` peers (hash methods depend on it); ``tries`` does not.
6. A request starts on the primary list; when it yields nothing the request switches to
   the backup list with a fresh tried-set and stays there.
7. ``conns`` is global; each worker also counts its own share in its zone row, so the
   master can recount after a worker died.
8. Methods that scan a whole list (round robin, least_conn, least_time) read and write it
   through ``PeerList.table`` (``table.py``): the same words as the ``Peer`` properties,
   many peers per call. ``Peer.usable`` and ``PeerTable.unusable`` are the same filter.
9. Every zone word a peer owns has a read property on ``Peer``, including words only
   tests read today (``accessed_s``, ``rt_ms``, ``slow_start_t0_ms``): tests check the
   accounting through them, never through raw offsets. ``free``'s ``now_ms`` may be left
   out by callers that drive whole seconds (the unit tests): it is then ``now_s * 1000``;
   the proxy and the stream module pass the millisecond clock.
10. Active health checks (``health/``): in a group some check probes (``UpstreamConfig.
   checked``), a peer whose ``P_HC_STATE`` is not ``HC_UP`` (checking, unhealthy) is out
   of every filter (``Peer.usable``, ``PeerTable.unusable``, the per-peer loops and the
   compiled ones), whatever max_fails says; in other groups the word is never read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import accumulate

from prefork_lb.balance.table import PeerTable
from prefork_lb.config.model import UpstreamConfig, UpstreamServer
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone

log = logging.getLogger("prefork_lb.error")


class Peer:
    """One upstream address: its configuration plus a view of its shared state."""

    __slots__ = (
        "_a",
        "_b",
        "_i",
        "_mv",
        "addr",
        "backup",
        "down",
        "drain",
        "fail_timeout_s",
        "hc",
        "index",
        "max_conns",
        "max_fails",
        "name",
        "route",
        "server",
        "slot",
        "slow_start_ms",
        "weight",
    )

    def __init__(
        self, server: UpstreamServer, index: int, zone: Zone, slot: int, row: int, checked: bool = False
    ) -> None:
        self.server = server
        self.index = index  # position in its list (primary or backup): the tried-set bit
        self.slot = slot
        self.addr = server.address.text
        self.name = server.name
        self.weight = server.weight
        self.max_fails = server.max_fails
        self.fail_timeout_s = int(server.fail_timeout_s)
        self.max_conns = server.max_conns
        self.down = server.down
        self.backup = server.backup
        self.route = server.route  # issue 19: sticky route identifier
        self.drain = server.drain  # issue 19: only requests bound by sticky reach it
        self.slow_start_ms = int(server.slow_start_s * 1000)
        self.hc = checked  # active health checks: P_HC_STATE must be HC_UP (rule 10)
        self._mv = zone.mv
        self._b = L.peer_base(slot)
        self._a = L.active_index(row, zone.peers, slot)
        self._i = L.inflight_index(row, zone.peers, slot)

    def __repr__(self) -> str:
        return f"Peer({self.addr})"

    # ---- shared state (read and written under the zone lock) ----

    @property
    def current_weight(self) -> int:
        return self._mv[self._b + L.P_CW]

    @current_weight.setter
    def current_weight(self, value: int) -> None:
        self._mv[self._b + L.P_CW] = value

    @property
    def effective_weight(self) -> int:
        return self._mv[self._b + L.P_EW]

    @effective_weight.setter
    def effective_weight(self, value: int) -> None:
        self._mv[self._b + L.P_EW] = value

    @property
    def conns(self) -> int:
        return self._mv[self._b + L.P_CONNS]

    @property
    def fails(self) -> int:
        return self._mv[self._b + L.P_FAILS]

    @property
    def checked_s(self) -> int:
        return self._mv[self._b + L.P_CHECKED]

    @property
    def accessed_s(self) -> int:
        return self._mv[self._b + L.P_ACCESSED]

    @property
    def rt_ms(self) -> int:
        """least_time's moving average, -1 before the first measurement."""
        return self._mv[self._b + L.P_RT_MS]

    @property
    def slow_start_t0_ms(self) -> int:
        return self._mv[self._b + L.P_SLOW_START_MS]

    def usable(self, now_s: int) -> bool:
        """nginx's peer filter, without the per-request tried bit."""
        if self.down:
            return False
        mv, b = self._mv, self._b
        if self.hc and mv[b + L.P_HC_STATE]:
            return False
        if (
            self.max_fails
            and mv[b + L.P_FAILS] >= self.max_fails
            and now_s - mv[b + L.P_CHECKED] <= self.fail_timeout_s
        ):
            return False
        return not (self.max_conns and mv[b + L.P_CONNS] >= self.max_conns)

    def weight_pct(self, now_ms: int) -> int:
        """slow_start: effective weight scale in percent (100 when not ramping)."""
        t0 = self._mv[self._b + L.P_SLOW_START_MS]
        if not t0 or not self.slow_start_ms:  # a ramp left by a reload that dropped slow_start
            return 100
        pct = (now_ms - t0) * 100 // self.slow_start_ms
        if pct >= 100:
            self._mv[self._b + L.P_SLOW_START_MS] = 0
            return 100
        return max(pct, 0)


@dataclass(slots=True)
class PeerList:
    peers: tuple[Peer, ...]
    total_weight: int  # including down peers (rule 5)
    tries: int  # peers that are not down
    table: PeerTable  # whole-list zone access for round_robin, least_conn, least_time
    weight_ends: tuple[int, ...]  # running sums of the static weights (hash, ip_hash walk)

    @classmethod
    def build(cls, peers: list[Peer], zone: Zone) -> PeerList:
        return cls(
            tuple(peers),
            sum(p.weight for p in peers),
            sum(1 for p in peers if not p.down),
            PeerTable(peers, zone.mv),
            tuple(accumulate(p.weight for p in peers)),
        )


@dataclass(slots=True)
class PeerGroup:
    name: str
    primary: PeerList
    backup: PeerList | None
    single: bool
    tries: int
    zone: Zone
    slow_start: bool  # some peer ramps: smooth-WRR weights are scaled by percent

    @classmethod
    def build(cls, upstream: UpstreamConfig, zone: Zone, slots: list[int], row: int = 0) -> PeerGroup:
        """``slots``: zone slot per server, as the master assigned them (``zone/slots.py``)."""
        assert len(slots) == len(upstream.servers)
        primary: list[Peer] = []
        backups: list[Peer] = []
        for server, slot in zip(upstream.servers, slots, strict=True):
            bucket = backups if server.backup else primary
            bucket.append(Peer(server, len(bucket), zone, slot, row, upstream.checked))
        plist = PeerList.build(primary, zone)
        blist = PeerList.build(backups, zone) if backups else None
        single = len(primary) == 1 and blist is None
        tries = plist.tries + (blist.tries if blist else 0)
        slow = any(s.slow_start_s for s in upstream.servers) and not single
        return cls(upstream.name, plist, blist, single, tries, zone, slow)

    def all_peers(self) -> tuple[Peer, ...]:
        return self.primary.peers + (self.backup.peers if self.backup else ())


@dataclass(slots=True)
class Selection:
    """Per-request balancer state (nginx's "peer data")."""

    group: PeerGroup
    tries: int  # attempts left, including the current one
    current: PeerList = field(init=False)
    tried: int = 0  # bitmap over ``current``
    hash: int = -1  # hash methods: the running hash / ring index, kept across retries
    hash_tries: int = 0  # hash methods: unusable candidates seen (> 20: round robin)
    rehash: int = 0  # hash: iterations so far (the "REHASH" prefix of the next one)
    start_ms: int = 0  # least_time inflight: when this request took its peer

    def __post_init__(self) -> None:
        self.current = self.group.primary

    def switch_to_backup(self) -> bool:
        backup = self.group.backup
        if backup is None or self.current is backup:
            return False
        self.current = backup
        self.tried = 0
        return True


def new_selection(group: PeerGroup, next_upstream_tries: int) -> Selection:
    tries = group.tries
    if next_upstream_tries and next_upstream_tries < tries:
        tries = next_upstream_tries
    return Selection(group, tries)


def take(sel: Selection, peer: Peer, now_s: int) -> Peer:
    """Book-keeping every method does once it has chosen ``peer`` (under the lock)."""
    mv, b = peer._mv, peer._b
    if now_s - mv[b + L.P_CHECKED] > peer.fail_timeout_s:
        mv[b + L.P_CHECKED] = now_s
    mv[b + L.P_CONNS] += 1
    mv[peer._a] += 1
    mv[b + L.P_REQUESTS] += 1
    mv[b + L.P_SELECTED_MS] = now_s * 1000
    sel.tried |= 1 << peer.index
    return peer


def free(sel: Selection, peer: Peer, failed: bool, now_s: int, now_ms: int = 0) -> bool:
    """Release ``peer`` after an attempt; ``failed`` charges it (nginx's NGX_PEER_FAILED).

    Runs under the zone lock, so it never logs: True means the failure left the peer at
    ``max_fails`` (nginx's "upstream server temporarily disabled"), for the caller to log
    once the lock is released, naming the phase that failed.
    """
    disabled = False
    mv, b = peer._mv, peer._b
    mv[b + L.P_CONNS] -= 1
    mv[peer._a] -= 1
    if failed:
        mv[b + L.P_FAILED_TOTAL] += 1
    if sel.group.single:
        sel.tries = 0
        return False
    if failed:
        fails = mv[b + L.P_FAILS] + 1
        mv[b + L.P_FAILS] = fails
        mv[b + L.P_ACCESSED] = now_s
        mv[b + L.P_CHECKED] = now_s
        if peer.max_fails:
            if peer.slow_start_ms:
                _slow_start_failure(peer, fails)
            else:
                ew = mv[b + L.P_EW] - peer.weight // peer.max_fails
                mv[b + L.P_EW] = max(ew, 0)
            if fails >= peer.max_fails:
                if fails == peer.max_fails:
                    mv[b + L.P_UNAVAIL] += 1
                    mv[b + L.P_DOWNSTART_MS] = now_ms or now_s * 1000
                disabled = True
    elif mv[b + L.P_ACCESSED] < mv[b + L.P_CHECKED]:
        if peer.slow_start_ms and peer.max_fails and mv[b + L.P_FAILS] >= peer.max_fails:
            mv[b + L.P_SLOW_START_MS] = now_s * 1000  # back from unavailable: ramp (pick's clock)
        mv[b + L.P_FAILS] = 0
        down_ms = mv[b + L.P_DOWNSTART_MS]
        if down_ms:
            mv[b + L.P_S_DOWNTIME_MS] += max(0, (now_ms or now_s * 1000) - down_ms)
            mv[b + L.P_DOWNSTART_MS] = 0
    if sel.tries:
        sel.tries -= 1
    return disabled


def log_disabled(peer: Peer, phase: str) -> None:
    """nginx's warning for a peer that reached max_fails (call it outside the zone lock)."""
    log.warning("upstream server temporarily disabled while %s, upstream: %s", phase, peer.addr)


def _slow_start_failure(peer: Peer, fails: int) -> None:
    """Angie: a failure during the ramp delays it; reaching max_fails ends it."""
    mv, b = peer._mv, peer._b
    if fails >= peer.max_fails:
        mv[b + L.P_SLOW_START_MS] = 0
    elif mv[b + L.P_SLOW_START_MS]:
        mv[b + L.P_SLOW_START_MS] += peer.slow_start_ms // peer.max_fails


def record_time(peer: Peer, ms: int) -> None:
    """least_time: nginx's moving average, ``avg = v`` first, then round(0.95 avg + 0.05 v)."""
    mv, b = peer._mv, peer._b
    avg = mv[b + L.P_RT_MS]
    mv[b + L.P_RT_MS] = ms if avg < 0 else (avg * 95 + ms * 5 + 50) // 100
