"""The compiled loops (``balance/_pickloop.c``) against the pure-Python build, word for word.

round_robin and least_conn run nginx's per-peer loop in C when the extension is built
(``balance/native.py``). Each test drives the same group on several zones of their own, one
per build (compiled; pure bulk passes; pure per-peer loops), and requires the same peer and
every zone word identical after every step. States come from random traffic (requests held
open, failures, retries with tried bitmaps, slow_start ramps, a moving clock) and from
random zone words written directly (current and effective weights, conns against
max_conns, fails against max_fails/fail_timeout, ramp starts in the past and the future).

These tests catch a compiled loop that drifts from nginx's order (a tie taken by ``>=``, a
missed filter, an ``effective_weight`` step or slow_start scale out of place) and a build
that silently stops using the compiled loops. Without the extension they fail, unless
``PREFORK_LB_PURE=1`` says the pure build is meant (a machine without a C compiler).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from typing import cast

import pytest

from prefork_lb.balance import native
from prefork_lb.balance import table as table_mod
from prefork_lb.balance.base import Balancer
from prefork_lb.balance.native import PickLoop
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, free, new_selection
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Address, Method, UpstreamConfig, UpstreamServer
from prefork_lb.http.template import compile_template
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone
from tests.unit.groups import private_group

try:
    from prefork_lb.balance import _pickloop

    COMPILED: PickLoop | None = _pickloop
except ImportError:
    COMPILED = None

PURE_WANTED = os.environ.get(native.PURE_ENV, "") not in ("", "0")
SIDES = ("compiled", "bulk", "loops")

pytestmark = pytest.mark.skipif(
    COMPILED is None and PURE_WANTED, reason="pure build requested (PREFORK_LB_PURE=1), extension not built"
)


def test_the_extension_is_built_and_used() -> None:
    """The install compiled ``_pickloop`` and the balancers use it unless PREFORK_LB_PURE=1."""
    assert COMPILED is not None, (
        "prefork_lb/balance/_pickloop.c is not built: `pip install -e .` (needs a C compiler), "
        "or set PREFORK_LB_PURE=1 to test the pure build"
    )
    code = "from prefork_lb.balance import native, table; print(table.NATIVE is not None, native.describe())"
    env = dict(os.environ)
    out = {}
    for pure in ("", "1"):
        env[native.PURE_ENV] = pure
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
        )
        out[pure] = done.stdout.strip()
    assert out[""] == "True compiled (_pickloop)"
    assert out["1"] == "False pure (PREFORK_LB_PURE)"


# ---- one group per build ---------------------------------------------------------------------------

_zones: list[Zone] = []


@pytest.fixture(autouse=True)
def close_zones() -> Iterator[None]:
    yield
    while _zones:
        _zones.pop().close()


def build_sides(
    upstream: UpstreamConfig, size: int, slots: list[int], start_weights: list[int]
) -> list[tuple[PeerGroup, Balancer]]:
    """The group once per build in ``SIDES``, each on a zone of its own with the same words."""
    assert COMPILED is not None, "the extension is not built (test_the_extension_is_built_and_used)"
    sides = []
    for kind in SIDES:
        zone = Zone.for_peers(size, rows=2)
        _zones.append(zone)
        with zone:
            for slot in range(size):
                zone.init_peer(slot, 1)
            for slot, weight in zip(slots, start_weights, strict=True):
                zone.init_peer(slot, weight)
        group = PeerGroup.build(upstream, zone, slots, row=0)
        for plist in (group.primary, group.backup):
            if plist is None:
                continue
            t = plist.table
            t.native = COMPILED if kind == "compiled" else None
            if kind == "compiled" and not t.cfg:  # PREFORK_LB_PURE=1 with the extension built
                t.cfg = table_mod.native_cfg(plist.peers)
            t.bulk_smooth = t.bulk_least = kind == "bulk"
        sides.append((group, make_balancer(upstream, group, compile_template)))
    return sides


def where(peer: Peer | None) -> tuple[bool, int] | None:
    return None if peer is None else (peer.backup, peer.index)


def pick_all(sides: list[tuple[PeerGroup, Balancer]], sels: list[Selection], now: int) -> list[Peer | None]:
    got = []
    for (group, bal), sel in zip(sides, sels, strict=True):
        with group.zone:
            got.append(bal.pick(sel, None, now))
    chosen = dict(zip(SIDES, got, strict=True))
    assert len({where(p) for p in got}) == 1, f"builds chose differently: {chosen}"
    same_zones(sides)
    return got


def same_zones(sides: list[tuple[PeerGroup, Balancer]]) -> None:
    words = [group.zone.mv.tolist() for group, _ in sides]
    for kind, other in zip(SIDES[1:], words[1:], strict=True):
        if other != words[0]:
            diff = next(i for i, (a, b) in enumerate(zip(words[0], other, strict=True)) if a != b)
            raise AssertionError(f"zone word {diff} differs: compiled {words[0][diff]}, {kind} {other[diff]}")


# ---- random configurations -------------------------------------------------------------------------


def random_upstream(rng: random.Random, method: str) -> UpstreamConfig:
    # up to 150 peers: tried bitmaps wider than one 64-bit word
    n = rng.choice([2, 3, rng.randint(4, 12), rng.randint(13, 40), rng.randint(60, 150)])
    uniform = rng.random() < 0.4
    weight = rng.randint(1, 4)
    servers = []
    for i in range(n):
        address = Address("inet", "10.0.0.1", 8000 + i)
        servers.append(
            UpstreamServer(
                address=address,
                name=address.text,
                weight=weight if uniform else rng.choice([1, 1, 2, 3, 5, 7, 100]),
                max_fails=rng.choice([0, 1, 1, 2, 3]),
                fail_timeout_s=float(rng.choice([1, 2, 5])),
                max_conns=rng.choice([0, 0, 0, 1, 2, 4]) if rng.random() < 0.5 else 0,
                backup=i > 0 and rng.random() < 0.15,
                down=rng.random() < 0.1,
                slow_start_s=float(rng.choice([0, 2, 7])) if method == "round_robin" else 0.0,
            )
        )
    # actively health-checked groups: P_HC_STATE is read (unchecked ones must ignore it)
    checked = rng.random() < 0.4
    return UpstreamConfig(name="u", method=cast(Method, method), servers=tuple(servers), checked=checked)


def random_slots(rng: random.Random, n: int) -> tuple[int, list[int]]:
    kind = rng.choice(["contiguous", "offset", "scattered"])
    if kind == "contiguous":
        return n, list(range(n))
    if kind == "offset":
        start = rng.randint(1, 5)
        return n + start, list(range(start, start + n))
    size = n + rng.randint(0, 8)
    return size, rng.sample(range(size), n)


@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_compiled_and_pure_builds_agree_over_random_traffic(method: str) -> None:
    rng = random.Random(f"native/{method}")
    picks = 0
    for _ in range(30):
        upstream = random_upstream(rng, method)
        size, slots = random_slots(rng, len(upstream.servers))
        start = [rng.randint(1, 7) if rng.random() < 0.2 else s.weight for s in upstream.servers]
        sides = build_sides(upstream, size, slots, start)
        now = 1_000_000
        active: list[list[tuple[Selection, Peer]]] = [[] for _ in SIDES]
        for _ in range(200):
            action = rng.random()
            if action < 0.45 or not active[0]:
                tries = rng.choice([0, 0, 0, 1, 2])
                sels = [new_selection(group, tries) for group, _ in sides]
                got = pick_all(sides, sels, now)
                picks += 1
                if got[0] is not None:
                    for side, peer in enumerate(got):
                        assert peer is not None
                        active[side].append((sels[side], peer))
            elif action < 0.9:
                k = rng.randrange(len(active[0]))
                failed = rng.random() < 0.3
                sels = []
                for side, (group, _) in enumerate(sides):
                    sel, peer = active[side].pop(k)
                    with group.zone:
                        free(sel, peer, failed, now, now * 1000)
                    sels.append(sel)
                same_zones(sides)
                while failed and sels[0].tries and rng.random() < 0.8:  # retries: tried bits set
                    got = pick_all(sides, sels, now)
                    picks += 1
                    if got[0] is None:
                        break
                    failed = rng.random() < 0.5
                    for side, ((group, _), peer) in enumerate(zip(sides, got, strict=True)):
                        assert peer is not None
                        with group.zone:
                            free(sels[side], peer, failed, now, now * 1000)
                    same_zones(sides)
            else:
                now += rng.choice([1, 1, 2, 3, 7])
    assert picks > 2500


def scramble(
    rng: random.Random, upstream: UpstreamConfig, slots: list[int], mv: memoryview, now: int
) -> None:
    """Random words for every field the loops read or write (one zone; copied to the others)."""
    for s, slot in zip(upstream.servers, slots, strict=True):
        b = L.peer_base(slot)
        mv[b + L.P_CW] = rng.randint(-50, 50) * rng.choice([1, 1, 100])
        mv[b + L.P_EW] = rng.choice([s.weight, s.weight, rng.randint(0, s.weight)])
        mv[b + L.P_CONNS] = rng.choice([0, 0, 1, 2, 3, 5])
        mv[b + L.P_FAILS] = rng.choice([0, 0, 0, 1, 2, 3])
        mv[b + L.P_CHECKED] = now - rng.choice([0, 1, 2, 5, 6, 100])
        ramp = rng.random() < 0.3 and s.slow_start_s > 0
        mv[b + L.P_SLOW_START_MS] = now * 1000 + rng.randint(-8000, 3000) if ramp else 0
        mv[b + L.P_HC_STATE] = rng.choice([L.HC_UP, L.HC_UP, L.HC_UP, L.HC_CHECKING, L.HC_UNHEALTHY])


@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_compiled_and_pure_builds_agree_on_random_states(method: str) -> None:
    rng = random.Random(f"native-states/{method}")
    cases = 0
    for _ in range(60):
        upstream = random_upstream(rng, method)
        size, slots = random_slots(rng, len(upstream.servers))
        sides = build_sides(upstream, size, slots, [s.weight for s in upstream.servers])
        mvs = [group.zone.mv for group, _ in sides]
        now = 2_000_000
        for _ in range(40):
            scramble(rng, upstream, slots, mvs[0], now)
            for mv in mvs[1:]:
                mv[:] = mvs[0]
            sels = [new_selection(group, 0) for group, _ in sides]
            on_backup = sides[0][0].backup is not None and rng.random() < 0.2
            n = len(sels[0].current.peers)
            if on_backup:
                assert all(sel.switch_to_backup() for sel in sels)
                n = len(sels[0].current.peers)
            tried = sum(1 << i for i in range(n) if rng.random() < 0.2)
            for sel in sels:
                sel.tried = tried
            pick_all(sides, sels, now + rng.choice([0, 0, 1, 3]))
            cases += 1
    assert cases == 2400


def test_the_compiled_loops_refuse_a_table_that_reaches_past_the_zone() -> None:
    """cfg is built per list at config load; a mismatch with the zone raises, never writes out
    of bounds. Tried bitmaps of any width are read bit by bit (wider than 64 peers: a retry)."""
    if COMPILED is None:
        pytest.fail("extension not built")
    servers = tuple(
        UpstreamServer(address=Address("inet", "10.0.0.9", 9000 + i), name=f"s{i}") for i in range(3)
    )
    upstream = UpstreamConfig(name="u", method="round_robin", servers=servers)
    big = Zone.for_peers(40)
    small = Zone.for_peers(3)
    _zones.extend((big, small))
    with big:
        for slot in (30, 31, 32):
            big.init_peer(slot, 1)
    group = PeerGroup.build(upstream, big, [30, 31, 32])
    cfg = table_mod.native_cfg(group.primary.peers)
    assert cfg is not None
    assert COMPILED.smooth(big.mv, cfg, 0, 1000, 0, False) == 0
    with pytest.raises(ValueError, match="past the zone"):
        COMPILED.smooth(small.mv, cfg, 0, 1000, 0, False)
    with pytest.raises(ValueError, match="malformed"):
        COMPILED.least_conn(big.mv, cfg[:-8], 0, 1000)
    # tried bits: positions 0 and 2 out; bits beyond the list are ignored, as in Python
    assert COMPILED.least_conn(big.mv, cfg, 0b101 | 1 << 200, 1000) == 1
    assert COMPILED.smooth(big.mv, cfg, 0b111, 1000, 0, False) == -1


def test_a_list_with_values_beyond_int32_takes_the_pure_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled loops keep weight, max_conns and max_fails in int32: a list with a larger
    value (the config puts no upper bound on them) runs on the pure loops, not on a truncation."""
    if COMPILED is None:
        pytest.fail("extension not built")
    monkeypatch.setattr(table_mod, "NATIVE", COMPILED)
    servers = tuple(
        UpstreamServer(address=Address("inet", "10.0.0.8", 9000 + i), name=f"s{i}", weight=w)
        for i, w in enumerate((1, 1 << 31, 2))
    )
    upstream = UpstreamConfig(name="u", method="round_robin", servers=servers)
    group = private_group(upstream)
    assert group.primary.table.native is None
    assert table_mod.native_cfg(group.primary.peers) is None
    small = UpstreamConfig(name="u", method="round_robin", servers=servers[:1] + servers[2:])
    assert private_group(small).primary.table.native is COMPILED
    bal = make_balancer(upstream, group, compile_template)
    sel = new_selection(group, 0)
    with group.zone:
        peer = bal.pick(sel, None, 1000)
    assert peer is not None and peer.name == "s1"
