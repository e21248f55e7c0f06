"""The fast paths of round_robin, least_conn and least_time against nginx's loops as written.

``balance/table.py`` reads and writes whole lists of zone words, and short lists take
per-peer loops over the zone words; both must be the straightforward per-peer code
(reproduced below over ``Peer`` properties, as the modules had it) to the word: same peer
returned, and every word of the zone identical after every step. Random configurations
(weights, down, backup, max_fails, fail_timeout, max_conns, slow_start, scattered slots)
run random traffic: requests held open (conns, max_conns), failures and retries (tried
bits, fails, effective_weight recovery, slow_start ramps), response times, a clock that
moves. Each case runs three times: as shipped (the compiled loops when built, else the
thresholds), with every list on the pure bulk path and with every list on the pure per-peer
loops. ``test_balance_native.py`` compares the compiled and the pure builds directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import pytest

from prefork_lb.balance import table as table_mod
from prefork_lb.balance.base import Balancer
from prefork_lb.balance.least_time import LeastTime, release_inflight
from prefork_lb.balance.peers import (
    Peer,
    PeerGroup,
    PeerList,
    Selection,
    free,
    new_selection,
    record_time,
    take,
)
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Address, Method, UpstreamConfig, UpstreamServer
from prefork_lb.http.exchange import Exchange
from prefork_lb.http.template import compile_template
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone

# ---- the reference: the per-peer code as it was ----------------------------------------------------


def ref_smooth_pick(
    peers: Sequence[Peer], tried: int, now_s: int, now_ms: int = 0, scaled: bool = False
) -> Peer | None:
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


def ref_round_robin(group: PeerGroup, sel: Selection, now_s: int) -> Peer | None:
    if group.single:
        only = group.primary.peers[0]
        if only.down or (only.max_conns and only.conns >= only.max_conns):
            return None
        return take(sel, only, now_s)
    now_ms = now_s * 1000 if group.slow_start else 0
    peer = ref_smooth_pick(sel.current.peers, sel.tried, now_s, now_ms, group.slow_start)
    if peer is None and sel.switch_to_backup():
        peer = ref_smooth_pick(sel.current.peers, sel.tried, now_s, now_ms, group.slow_start)
    return None if peer is None else take(sel, peer, now_s)


def ref_tie_break(plist: PeerList, first: Peer, tried: int, now_s: int, tied: Callable[[Peer], bool]) -> Peer:
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


def ref_least(plist: PeerList, tried: int, now_s: int, value: Callable[[Peer], int]) -> Peer | None:
    """least_conn's loop (``value`` = conns) and least_time's (``value`` = eta)."""
    best: Peer | None = None
    best_value = 0
    many = False
    values: dict[int, int] = {}
    for peer in plist.peers:
        if tried & (1 << peer.index) or not peer.usable(now_s):
            continue
        v = values[peer.index] = value(peer)
        if best is None or v * best.weight < best_value * peer.weight:
            best, best_value, many = peer, v, False
        elif v * best.weight == best_value * peer.weight:
            many = True
    if best is None or not many:
        return best
    weight = best.weight
    return ref_tie_break(
        plist, best, tried, now_s, lambda p: values[p.index] * weight == best_value * p.weight
    )


def ref_eta(peer: Peer, now_s: int, inflight: bool) -> int:
    rt = max(peer.rt_ms, 0)
    elapsed = now_s - peer.checked_s
    if elapsed > 0:
        rt >>= min(62, elapsed // (peer.fail_timeout_s + 1))
    conns = peer.conns
    if inflight and conns:
        age = now_s * 1000 - peer._mv[peer._b + L.P_INFLIGHT_MS] // conns
        rt = max(rt, age)
    rt = 5000 if rt > 5000 else rt + 20 - rt % 20
    return rt * (1 + conns)


class RefRoundRobin:
    def __init__(self, group: PeerGroup) -> None:
        self.group = group

    def pick(self, sel: Selection, ex: Exchange | None, now_s: int) -> Peer | None:
        return ref_round_robin(self.group, sel, now_s)


class RefLeastConn:
    def __init__(self, group: PeerGroup) -> None:
        self.group = group

    def pick(self, sel: Selection, ex: Exchange | None, now_s: int) -> Peer | None:
        group = self.group
        if group.single:
            return ref_round_robin(group, sel, now_s)

        def conns(p: Peer) -> int:
            return p.conns

        peer = ref_least(sel.current, sel.tried, now_s, conns)
        if peer is None and sel.switch_to_backup():
            peer = ref_least(sel.current, sel.tried, now_s, conns)
        return None if peer is None else take(sel, peer, now_s)


class RefLeastTime(LeastTime):
    """``LeastTime.pick`` (single groups, inflight booking) around the reference loop."""

    def _pick(self, plist: PeerList, tried: int, now_s: int) -> Peer | None:
        return ref_least(plist, tried, now_s, lambda p: ref_eta(p, now_s, self.inflight))


def reference(upstream: UpstreamConfig, group: PeerGroup) -> Balancer:
    if upstream.method == "round_robin":
        return RefRoundRobin(group)
    if upstream.method == "least_conn":
        return RefLeastConn(group)
    return RefLeastTime(group, upstream)


# ---- random configurations and traffic -------------------------------------------------------------


def random_upstream(rng: random.Random, method: str) -> UpstreamConfig:
    n = rng.choice([1, 2, 3, rng.randint(4, 12), rng.randint(13, 40)])
    uniform = rng.random() < 0.4
    weight = rng.randint(1, 4)
    servers = []
    for i in range(n):
        address = Address("inet", "10.0.0.1", 8000 + i)
        backup = i > 0 and rng.random() < 0.15
        servers.append(
            UpstreamServer(
                address=address,
                name=address.text,
                weight=weight if uniform else rng.choice([1, 1, 2, 3, 5, 7]),
                max_fails=rng.choice([0, 1, 1, 2, 3]),
                fail_timeout_s=float(rng.choice([1, 2, 5])),
                max_conns=rng.choice([0, 0, 0, 1, 2, 4]) if rng.random() < 0.5 else 0,
                backup=backup,
                down=rng.random() < 0.1,
                slow_start_s=float(rng.choice([0, 2, 7])) if method == "round_robin" else 0.0,
            )
        )
    return UpstreamConfig(
        name="u",
        method=cast(Method, method),
        servers=tuple(servers),
        least_time_inflight=rng.random() < 0.5,
    )


def random_slots(rng: random.Random, n: int) -> tuple[int, list[int]]:
    """Zone slots as the master leaves them: in order (fresh start) or scattered (reloads)."""
    kind = rng.choice(["contiguous", "offset", "scattered"])
    if kind == "contiguous":
        return n, list(range(n))
    if kind == "offset":
        start = rng.randint(1, 5)
        return n + start, list(range(start, start + n))
    size = n + rng.randint(0, 8)
    return size, rng.sample(range(size), n)


_zones: list[Zone] = []


@pytest.fixture(autouse=True)
def close_zones() -> Iterator[None]:
    """Thousands of zones otherwise: their fds would push later tests past select()'s 1024."""
    yield
    while _zones:
        _zones.pop().close()


def new_zone(size: int, rows: int = 1) -> Zone:
    zone = Zone.for_peers(size, rows)
    _zones.append(zone)
    return zone


def make_pair(
    upstream: UpstreamConfig, size: int, slots: list[int], start_weights: list[int] | None = None
) -> list[tuple[PeerGroup, Balancer]]:
    """The same group twice, each on a zone of its own: the real balancer, then the reference.
    ``start_weights``: effective weights left by another generation (a reload), else weights."""
    pair = []
    for real in (True, False):
        zone = new_zone(size, rows=2)
        with zone:
            for slot in range(size):
                zone.init_peer(slot, 1)
            for i, (slot, s) in enumerate(zip(slots, upstream.servers, strict=True)):
                zone.init_peer(slot, start_weights[i] if start_weights else s.weight)
        group = PeerGroup.build(upstream, zone, slots, row=0)
        pair.append(
            (group, make_balancer(upstream, group, compile_template) if real else reference(upstream, group))
        )
    return pair


def index_of(peer: Peer | None) -> tuple[bool, int] | None:
    return None if peer is None else (peer.backup, peer.index)


def run_traffic(rng: random.Random, upstream: UpstreamConfig, size: int, slots: list[int], steps: int) -> int:
    """Drive both balancers with the same random traffic; returns how many picks were compared."""
    start = [rng.randint(1, 7) if rng.random() < 0.2 else s.weight for s in upstream.servers]
    pair = make_pair(upstream, size, slots, start)
    zones = [group.zone for group, _ in pair]
    now = 1_000_000
    active: list[list[tuple[Selection, Peer]]] = [[], []]  # per side, in the same order
    picks = 0

    def pick_both(sels: list[Selection]) -> bool:
        nonlocal picks
        got = []
        for side, (group, bal) in enumerate(pair):
            with group.zone:
                got.append(bal.pick(sels[side], None, now))
        picks += 1
        assert index_of(got[0]) == index_of(got[1]), f"pick {picks}: {got}"
        assert zones[0].mv.tolist() == zones[1].mv.tolist(), f"zone differs after pick {picks}"
        if got[0] is None:
            return False
        for side in (0, 1):
            peer = got[side]
            assert peer is not None
            active[side].append((sels[side], peer))
        return True

    for _ in range(steps):
        action = rng.random()
        if action < 0.45 or not active[0]:
            tries = rng.choice([0, 0, 0, 1, 2])
            pick_both([new_selection(group, tries) for group, _ in pair])
        elif action < 0.9:
            k = rng.randrange(len(active[0]))
            failed = rng.random() < 0.3
            ms = rng.choice([0, 15, 20, 21, 40, 95, 300, 500, 1000, 1500, 2000, 3000, 4990, 5000, 5001, 6000])
            sels = []
            for side, (group, bal) in enumerate(pair):
                sel, peer = active[side].pop(k)
                with group.zone:
                    if isinstance(bal, LeastTime) and not failed:
                        record_time(peer, ms)
                    release_inflight(peer, sel)
                    free(sel, peer, failed, now, now * 1000)
                sels.append(sel)
            assert zones[0].mv.tolist() == zones[1].mv.tolist()
            if failed and sels[0].tries and rng.random() < 0.8:  # proxy_next_upstream: a retry
                pick_both(sels)
        else:
            now += rng.choice([1, 1, 2, 3, 7])
        if isinstance(pair[0][1], LeastTime):
            check_etas(pair[0][1], pair[0][0], now)
    return picks


def check_etas(bal: LeastTime, group: PeerGroup, now: int) -> None:
    """least_time's keys, bulk and per peer, against the reference formula."""
    for plist in (group.primary, group.backup):
        if plist is None:
            continue
        table = plist.table
        want = [
            ref_eta(p, now, bal.inflight) * table.mult[p.index] if p.usable(now) else table.high
            for p in plist.peers
        ]
        assert bal.etas(table, 0, now) == want
        assert [bal.eta(p, now) for p in plist.peers] == [ref_eta(p, now, bal.inflight) for p in plist.peers]


@pytest.fixture(params=["shipped", "bulk", "loops"])
def paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    mode = cast(str, request.param)
    if mode != "shipped":
        monkeypatch.setattr(table_mod, "NATIVE", None)
    if mode == "bulk":
        monkeypatch.setattr(table_mod, "SMOOTH_MIN", 0)
        monkeypatch.setattr(table_mod, "LEAST_MIN", 0)
    elif mode == "loops":
        monkeypatch.setattr(table_mod, "SMOOTH_MIN", 1 << 30)
        monkeypatch.setattr(table_mod, "LEAST_MIN", 1 << 30)
    return mode


@pytest.mark.parametrize("method", ["round_robin", "least_conn", "least_time"])
def test_fast_paths_equal_the_per_peer_loops(method: str, paths: str) -> None:
    rng = random.Random(f"{method}/{paths}")
    picks = 0
    for _ in range(40):
        upstream = random_upstream(rng, method)
        size, slots = random_slots(rng, len(upstream.servers))
        picks += run_traffic(rng, upstream, size, slots, 250)
    assert picks > 3000


@pytest.mark.parametrize("method", ["round_robin", "least_conn", "least_time"])
def test_idle_large_group_ties_take_the_bulk_pass(method: str, paths: str) -> None:
    """All conns 0 (an idle group): least_* tie every peer, the tie-break is a whole pass."""
    servers = tuple(
        UpstreamServer(address=Address("inet", "10.0.0.2", 9000 + i), name=f"s{i}", weight=1 + i % 3)
        for i in range(30)
    )
    upstream = UpstreamConfig(name="u", method=cast(Method, method), servers=servers)
    pair = make_pair(upstream, 30, list(range(30)))
    for _ in range(200):
        got = []
        for group, bal in pair:
            sel = new_selection(group, 0)
            with group.zone:
                peer = bal.pick(sel, None, 1000)
                assert peer is not None
                free(sel, peer, False, 1000)
            got.append(peer.index)
        assert got[0] == got[1]
        assert pair[0][0].zone.mv.tolist() == pair[1][0].zone.mv.tolist()


def test_table_reads_and_writes_scattered_slots_like_contiguous_ones() -> None:
    servers = tuple(
        UpstreamServer(address=Address("inet", "10.0.0.3", 9000 + i), name=f"s{i}", weight=i + 1)
        for i in range(5)
    )
    upstream = UpstreamConfig(name="u", method="round_robin", servers=servers)
    for slots in ([0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [0, 2, 4, 6, 8], [7, 1, 5, 0, 3]):
        zone = new_zone(9)
        with zone:
            for slot in range(9):
                zone.init_peer(slot, 9)
            for slot, s in zip(slots, servers, strict=True):
                zone.init_peer(slot, s.weight)
        group = PeerGroup.build(upstream, zone, slots)
        table = group.primary.table
        assert table.read(L.P_EW) == [1, 2, 3, 4, 5]
        table.write(L.P_CW, [10, 20, 30, 40, 50])
        assert [zone.mv[L.peer_base(s) + L.P_CW] for s in slots] == [10, 20, 30, 40, 50]
        others = [zone.mv[L.peer_base(s) + L.P_CW] for s in range(9) if s not in slots]
        assert others == [0] * (9 - 5)
        assert table.at_weight() and table.all_zero(L.P_FAILS)
        zone.mv[L.peer_base(slots[2]) + L.P_FAILS] = 1
        assert not table.all_zero(L.P_FAILS)


def test_a_ramp_word_left_by_a_reload_that_dropped_slow_start_is_ignored(paths: str) -> None:
    """A reload keeps a server's slot (and its slow_start ramp word) when only its options
    change; without slow_start the ramp has no length. Caught: the pure loops divided by the
    zero ``slow_start_ms`` (ZeroDivisionError on every pick while another server ramps)."""
    servers = (
        UpstreamServer(address=Address("inet", "10.0.0.4", 9000), name="a", slow_start_s=10.0),
        UpstreamServer(address=Address("inet", "10.0.0.4", 9001), name="b"),
    )
    upstream = UpstreamConfig(name="u", method="round_robin", servers=servers)
    group, bal = make_pair(upstream, 2, [0, 1])[0]
    now = 1000
    group.zone.mv[L.peer_base(1) + L.P_SLOW_START_MS] = now * 1000 - 2000  # b "ramping"
    got = []
    for _ in range(4):
        sel = new_selection(group, 0)
        with group.zone:
            peer = bal.pick(sel, None, now)
            assert peer is not None
            free(sel, peer, False, now)
        got.append(peer.name)
    assert got == ["a", "b", "a", "b"]
