"""The balancing methods other than plain round robin, driven the way the proxy drives them.

Expected key -> server maps and sequences come from shared/reference/nginx-semantics.md: sections
2 and 3.1-3.3 were observed on real nginx 1.22.1 (same literal server strings, so the
consistent-hash ring is nginx's), section 4 (random) and 10.3/10.4 (slow_start, least_time)
are the documented formulas. The small reference models below (``ref_*``) re-implement the
spec's pseudo-code independently of ``prefork_lb`` to predict retry chains.
"""

from __future__ import annotations

import bisect
import random as _random
import socket
import struct
import textwrap
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.hash import ConsistentHash, Hash
from prefork_lb.balance.ip_hash import IpHash, ip_key, walk
from prefork_lb.balance.least_conn import LeastConn
from prefork_lb.balance.least_time import LeastTime, release_inflight
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, free, new_selection, record_time, take
from prefork_lb.balance.random import Random
from prefork_lb.balance.registry import make_balancer
from prefork_lb.balance.round_robin import RoundRobin
from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Address, Method, UpstreamConfig, UpstreamServer
from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.template import compile_template
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone
from tests.unit.groups import private_group
from tests.unit.test_variables import make_exchange

NOW = 1_000  # an arbitrary "ngx_time()" second
LETTERS = "abcde"  # a, b, c, d, e = 127.0.0.1:24081 .. 24085, the spec's literal server strings


def srv(letter: str, **options: Any) -> UpstreamServer:
    port = 24081 + LETTERS.index(letter)
    return UpstreamServer(Address("inet", "127.0.0.1", port), f"127.0.0.1:{port}", **options)


def name(peer: Peer | None) -> str | None:
    return None if peer is None else LETTERS[peer.server.address.port - 24081]


def spec(text: str) -> list[str]:
    return text.split()


def build(method: str, *servers: UpstreamServer, **options: Any) -> tuple[PeerGroup, Balancer]:
    upstream = UpstreamConfig(
        name=options.pop("group_name", "u"), method=cast(Method, method), servers=servers, **options
    )
    group = private_group(upstream)
    return group, make_balancer(upstream, group, compile_template)


def peer(group: PeerGroup, letter: str) -> Peer:
    return next(p for p in group.all_peers() if name(p) == letter)


def key_exchange(key: str) -> Exchange:
    return make_exchange(target=f"/?k={key}".encode())


def client(addr: str) -> Exchange:
    return make_exchange(target=b"/", conn=ConnectionInfo(addr, 40000, "127.0.0.1", 8080, 1))


def pick(
    group: PeerGroup, bal: Balancer, sel: Selection, ex: Exchange | None = None, now: int = NOW
) -> Peer | None:
    with group.zone:
        return bal.pick(sel, ex, now)


def release(group: PeerGroup, sel: Selection, p: Peer, failed: bool = False, now: int = NOW) -> None:
    with group.zone:
        free(sel, p, failed, now)


def one(group: PeerGroup, bal: Balancer, ex: Exchange | None = None, now: int = NOW) -> str | None:
    """One request with a fresh selection, released successfully at once."""
    sel = new_selection(group, 0)
    p = pick(group, bal, sel, ex, now)
    if p is not None:
        release(group, sel, p, False, now)
    return name(p)


def request(
    group: PeerGroup,
    bal: Balancer,
    ex: Exchange | None = None,
    now: int = NOW,
    failing: set[str] | None = None,
) -> list[str]:
    """Attempts of one request until a success, BUSY (group name) or no tries left."""
    failing = failing or set()
    sel = new_selection(group, 0)
    attempts: list[str] = []
    while True:
        p = pick(group, bal, sel, ex, now)
        if p is None:
            attempts.append(group.name)
            return attempts
        letter = name(p)
        assert letter is not None
        attempts.append(letter)
        failed = letter in failing
        release(group, sel, p, failed, now)
        if not failed or sel.tries == 0:
            return attempts


def hold(group: PeerGroup, bal: Balancer, n: int, ex: Exchange | None = None) -> list[str | None]:
    """``n`` concurrent requests: picked and never released."""
    return [name(pick(group, bal, new_selection(group, 0), ex)) for _ in range(n)]


# ---- independent reference models of the spec's pseudo-code ----------------------------------------


def ref_hash_chain(key: bytes, weights: list[int], n: int) -> list[int]:
    """The first ``n`` candidate indexes of section 3.2's chain (acc, "REHASH" prefix)."""
    acc, out = 0, []
    for rehash in range(n):
        data = str(rehash).encode() + key if rehash else key
        acc = (acc + ((zlib.crc32(data) >> 16) & 0x7FFF)) % 2**32
        out.append(ref_walk(weights, acc % sum(weights)))
    return out


def ref_walk(weights: list[int], w: int) -> int:
    for i, weight in enumerate(weights):
        if w < weight:
            return i
        w -= weight
    raise AssertionError("w out of range")


def ref_ip_chain(addr: bytes, weights: list[int], n: int) -> list[int]:
    h, out = 89, []
    for _ in range(n):
        for byte in addr:
            h = (h * 113 + byte) % 6271
        out.append(ref_walk(weights, h % sum(weights)))
    return out


def ref_ring(servers: list[tuple[str, int]]) -> list[tuple[int, str]]:
    """Section 3.3's ketama ring: crc32(host + NUL + port + le32(prev)), 160 points per weight."""
    points: list[tuple[int, str]] = []
    for s, weight in servers:
        host, _, port = s.rpartition(":")
        prev = 0
        for _ in range(160 * weight):
            prev = zlib.crc32(host.encode() + b"\0" + port.encode() + struct.pack("<I", prev))
            points.append((prev, s))
    points.sort(key=lambda p: p[0])
    ring: list[tuple[int, str]] = []
    for p in points:
        if not ring or ring[-1][0] != p[0]:
            ring.append(p)
    return ring


def ref_ring_walk(ring: list[tuple[int, str]], key: bytes) -> list[str]:
    """Servers clockwise from the first point >= crc32(key), one entry per point."""
    i = bisect.bisect_left([h for h, _ in ring], zlib.crc32(key))
    return [ring[(i + j) % len(ring)][1] for j in range(len(ring))]


def distinct(seq: list[str]) -> list[str]:
    out: list[str] = []
    for s in seq:
        if s not in out:
            out.append(s)
    return out


# ---- 3.2 hash $key ---------------------------------------------------------------------------------

KEYS = [f"k{i}" for i in range(30)]


def hash_map(group: PeerGroup, bal: Balancer) -> list[str | None]:
    return [one(group, bal, key_exchange(k)) for k in KEYS]


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ((srv("a"), srv("b"), srv("c")), "b a b a b c a c a a a a a a c b c c b a c c b a a a b b a c"),
        (
            (srv("a", weight=3), srv("b"), srv("c")),
            "a a a a a a c a a a a b a c c b a c a c b a a c a a c c b a",
        ),
        (
            (srv("a"), srv("b", down=True), srv("c")),
            "c a a a a c a c a a a a a a c c c c c a c c a a a a a c a c",
        ),
    ],
    ids=["equal", "weights-3-1-1", "b-down"],
)
def test_hash_maps_scenario_14(servers: tuple[UpstreamServer, ...], expected: str) -> None:
    group, bal = build("hash", *servers, hash_key="$arg_k")
    assert isinstance(bal, Hash) and not isinstance(bal, ConsistentHash)
    assert hash_map(group, bal) == spec(expected)


def test_hash_map_matches_the_reference_chain() -> None:
    group, bal = build("hash", srv("a", weight=3), srv("b"), srv("c", weight=2), hash_key="$arg_k")
    expected = [LETTERS[ref_hash_chain(k.encode(), [3, 1, 2], 1)[0]] for k in KEYS]
    assert hash_map(group, bal) == expected


def test_hash_candidates_use_static_weights_not_effective_weights() -> None:
    group, bal = build("hash", srv("a", weight=3, max_fails=3), srv("b"), srv("c"), hash_key="$arg_k")
    a = peer(group, "a")
    sel = new_selection(group, 0)
    with group.zone:
        take(sel, a, NOW)
        free(sel, a, True, NOW)  # ew 3 -> 2, still usable (1 < max_fails)
    assert a.effective_weight == 2 and a.usable(NOW)
    assert hash_map(group, bal) == spec("a a a a a a c a a a a b a c c b a c a c b a a c a a c c b a")


def test_hash_is_stable_per_key_and_independent_of_round_robin_state() -> None:
    group, bal = build("hash", srv("a"), srv("b"), srv("c"), hash_key="$arg_k")
    first = hash_map(group, bal)
    for _ in range(3):
        one(group, bal, key_exchange(""))  # advance the RR state in between
    assert hash_map(group, bal) == first


# ---- 3.3 hash $key consistent ----------------------------------------------------------------------

CHASH_B_DOWN = "c a c c a a a c c c a a c c a c c c a a a a a a c c c c a a"


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ((srv("a"), srv("b"), srv("c")), "c b c b a b a c c c a b b b b c c b a a a a a a b c c c a a"),
        (
            (srv("a"), srv("b"), srv("c", weight=2)),
            "c b c b c b c c c c c b b c c c c c a a c a c a b c c c a a",
        ),
        ((srv("a"), srv("b", down=True), srv("c")), CHASH_B_DOWN),
        ((srv("a"), srv("c")), CHASH_B_DOWN),
    ],
    ids=["equal", "c-weight-2", "b-down", "b-absent"],
)
def test_consistent_hash_maps_scenario_15(servers: tuple[UpstreamServer, ...], expected: str) -> None:
    group, bal = build("hash", *servers, hash_key="$arg_k", consistent=True)
    assert isinstance(bal, ConsistentHash)
    assert hash_map(group, bal) == spec(expected)


def test_consistent_hash_b_down_equals_b_absent() -> None:
    down_group, down_bal = build(
        "hash", srv("a"), srv("b", down=True), srv("c"), hash_key="$arg_k", consistent=True
    )
    gone_group, gone_bal = build("hash", srv("a"), srv("c"), hash_key="$arg_k", consistent=True)
    keys = [f"key-{i}" for i in range(200)]
    assert [one(down_group, down_bal, key_exchange(k)) for k in keys] == [
        one(gone_group, gone_bal, key_exchange(k)) for k in keys
    ]


def test_consistent_hash_ring_matches_the_reference_ring() -> None:
    _, bal = build(
        "hash", srv("a", weight=2), srv("b"), srv("c", weight=3), hash_key="$arg_k", consistent=True
    )
    assert isinstance(bal, ConsistentHash)
    ring = ref_ring([("127.0.0.1:24081", 2), ("127.0.0.1:24082", 1), ("127.0.0.1:24083", 3)])
    assert bal.points == [h for h, _ in ring]
    assert bal.servers == [s for _, s in ring]
    assert len(ring) <= 160 * 6


def test_consistent_hash_peers_sharing_a_server_string_share_its_points() -> None:
    """A hostname resolving to two addresses: one set of (deduplicated) points, smooth WRR between them."""
    x1 = UpstreamServer(Address("inet", "127.0.0.1", 24081), "multi.test:24081")
    x2 = UpstreamServer(Address("inet", "127.0.0.2", 24081), "multi.test:24081")
    group, bal = build("hash", x1, x2, srv("c"), hash_key="$arg_k", consistent=True)
    assert isinstance(bal, ConsistentHash)
    ring = ref_ring([("multi.test:24081", 1), ("127.0.0.1:24083", 1)])
    assert bal.points == [h for h, _ in ring]
    key = next(k for k in KEYS if ref_ring_walk(ring, k.encode())[0] == "multi.test:24081")
    got = []
    for _ in range(4):
        sel = new_selection(group, 0)
        p = pick(group, bal, sel, key_exchange(key))
        assert p is not None
        got.append(p.server.address.host)
        release(group, sel, p)
    assert got == ["127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"]
    # one of them failed: the other takes the server's keys, the ring does not move
    sel = new_selection(group, 0)
    p = pick(group, bal, sel, key_exchange(key))
    assert p is not None and p.server is x1
    release(group, sel, p, failed=True)
    assert {pick_host(group, bal, key) for _ in range(3)} == {"127.0.0.2"}


def pick_host(group: PeerGroup, bal: Balancer, key: str) -> str:
    sel = new_selection(group, 0)
    p = pick(group, bal, sel, key_exchange(key))
    assert p is not None
    release(group, sel, p)
    return p.server.address.host


# ---- scenario 17: empty key -> round robin ---------------------------------------------------------


@pytest.mark.parametrize("consistent", [False, True])
@pytest.mark.parametrize("target", [b"/?k=", b"/"])
def test_empty_key_is_round_robin_scenario_17(consistent: bool, target: bytes) -> None:
    group, bal = build("hash", srv("a"), srv("b"), srv("c"), hash_key="$arg_k", consistent=consistent)
    got = [one(group, bal, make_exchange(target=target)) for _ in range(6)]
    assert got == spec("a b c a b c")


# ---- hash retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_fails", [1, 0])
def test_hash_retry_continues_the_rehash_chain(max_fails: int) -> None:
    """A failed attempt makes the next one continue the chain (section 3.2), skipping tried peers."""
    for key in KEYS[:10]:
        group, bal = build("hash", *(srv(x, max_fails=max_fails) for x in "abc"), hash_key="$arg_k")
        chain = distinct([LETTERS[i] for i in ref_hash_chain(key.encode(), [1, 1, 1], 21)])
        # peers the chain misses within 20 rehashes are reached by the round-robin fallback
        expected = chain + [x for x in "abc" if x not in chain]
        got = request(group, bal, key_exchange(key), failing={"a", "b", "c"})
        assert got == expected  # three tries, never a tried peer twice


def test_hash_retry_keeps_the_running_hash_in_the_selection() -> None:
    group, bal = build("hash", srv("a"), srv("b"), srv("c"), hash_key="$arg_k")
    ex = key_exchange("k0")  # k0 -> b (section 3.2 map)
    sel = new_selection(group, 0)
    first = pick(group, bal, sel, ex)
    assert name(first) == "b"
    assert sel.rehash == 1
    assert first is not None
    release(group, sel, first, failed=True)
    second = pick(group, bal, sel, ex)
    chain = [LETTERS[i] for i in ref_hash_chain(b"k0", [1, 1, 1], 21)]
    expected = next(x for x in chain[1:] if x != "b")
    assert name(second) == expected
    assert sel.rehash == chain.index(expected, 1) + 1  # the chain went on from where it stopped
    assert second is not None
    release(group, sel, second)
    # b is now unavailable for everyone: a fresh request for k0 walks the same chain
    assert one(group, bal, ex) == name(second)


@pytest.mark.parametrize("max_fails", [1, 0])
def test_consistent_hash_retry_walks_clockwise(max_fails: int) -> None:
    servers = [("127.0.0.1:24081", 1), ("127.0.0.1:24082", 1), ("127.0.0.1:24083", 1)]
    ring = ref_ring(servers)
    for key in KEYS[:10]:
        group, bal = build(
            "hash", *(srv(c, max_fails=max_fails) for c in "abc"), hash_key="$arg_k", consistent=True
        )
        walk = ref_ring_walk(ring, key.encode())
        expected = [LETTERS[int(s.rsplit(":", 1)[1]) - 24081] for s in distinct(walk)]
        got = request(group, bal, key_exchange(key), failing={"a", "b", "c"})
        assert got == expected
        assert len(got) == len(set(got)) == 3


def test_hash_falls_back_to_round_robin_after_20_unusable_candidates() -> None:
    """Every primary candidate unusable: after > 20 tries the RR fallback reaches the backup."""
    for consistent in (False, True):
        group, bal = build(
            "hash",
            srv("a", down=True),
            srv("b", down=True),
            srv("c", backup=True),
            hash_key="$arg_k",
            consistent=consistent,
        )
        sel = new_selection(group, 0)
        got = pick(group, bal, sel, key_exchange("k1"))
        assert name(got) == "c"
        assert sel.hash_tries == 21
        assert sel.current is group.backup


def test_hash_retry_then_fallback_like_nginx_dead_dead_backup() -> None:
    """Section 3.3: `server dead1; server dead2; server ok backup; hash $arg_k;` -> both dead, then ok."""
    for consistent in (False, True):
        group, bal = build(
            "hash", srv("a"), srv("b"), srv("c", backup=True), hash_key="$arg_k", consistent=consistent
        )
        got = request(group, bal, key_exchange("k3"), failing={"a", "b"})
        assert sorted(got[:2]) == ["a", "b"]
        assert got[2] == "c"
        assert request(group, bal, key_exchange("k3"), failing={"a", "b"}) == ["c"]


def test_hash_fallback_happens_only_after_more_than_20_unusable_candidates() -> None:
    """a usable (weight 1), b down (weight 50): keys whose chain misses a 21 times go round robin."""
    weights = [1, 50]
    hit_keys: list[tuple[str, int | None]] = []
    miss_keys: list[tuple[str, int | None]] = []
    for i in range(400):
        key = f"x{i}"
        chain = ref_hash_chain(key.encode(), weights, 21)
        (hit_keys if 0 in chain else miss_keys).append((key, chain.index(0) if 0 in chain else None))
    assert hit_keys and miss_keys
    for key, at in hit_keys[:5] + miss_keys[:5]:
        group, bal = build("hash", srv("a"), srv("b", weight=50, down=True), hash_key="$arg_k")
        sel = new_selection(group, 0)
        got = pick(group, bal, sel, key_exchange(key))
        assert name(got) == "a"
        assert sel.hash_tries == (21 if at is None else at)


# ---- 3.1 ip_hash -----------------------------------------------------------------------------------


def ip_map(group: PeerGroup, bal: Balancer, addrs: list[str]) -> list[str | None]:
    return [one(group, bal, client(a)) for a in addrs]


def test_ip_hash_ipv4_scenario_16() -> None:
    group, bal = build("ip_hash", srv("a"), srv("b"), srv("c"))
    assert isinstance(bal, IpHash)
    assert ip_map(group, bal, [f"10.0.{i}.7" for i in range(30)]) == spec("a b c") * 10


def test_ip_hash_ignores_the_fourth_octet() -> None:
    group, bal = build("ip_hash", srv("a"), srv("b"), srv("c"))
    addrs = [f"192.168.{i}.{last}" for i in range(10) for last in (1, 200)]
    assert ip_map(group, bal, addrs) == spec("a a b b c c a a b b c c a a b b c c a a")


def test_ip_hash_weighted_2_1_1() -> None:
    group, bal = build("ip_hash", srv("a", weight=2), srv("b"), srv("c"))
    addrs = [f"192.168.{i}.{last}" for i in range(10) for last in (1, 200)]
    assert ip_map(group, bal, addrs) == spec("a a b b c c a a a a b b c c a a a a b b")


def test_ip_hash_ipv6() -> None:
    group, bal = build("ip_hash", srv("a"), srv("b"), srv("c"))
    assert ip_map(group, bal, [f"2001:db8::{i}" for i in range(20)]) == (spec("b c a") * 7)[:20]


def test_ip_hash_key_bytes() -> None:
    assert ip_key("10.1.2.3") == bytes([10, 1, 2])
    assert ip_key("2001:db8::1") == bytes.fromhex("20010db8000000000000000000000001")
    assert ip_key("unix:") == b"\0\0\0"
    assert ip_key("") == b"\0\0\0"


def test_ip_hash_down_server_remaps_only_its_own_clients() -> None:
    addrs = [f"10.{i}.{i * 7 % 256}.1" for i in range(60)]
    group, bal = build("ip_hash", srv("a"), srv("b"), srv("c"))
    before = ip_map(group, bal, addrs)
    group, bal = build("ip_hash", srv("a"), srv("b", down=True), srv("c"))
    after = ip_map(group, bal, addrs)
    for was, now in zip(before, after, strict=True):
        assert now != "b"
        if was != "b":
            assert now == was


def test_ip_hash_retry_continues_the_chain() -> None:
    group, bal = build("ip_hash", srv("a"), srv("b"), srv("c"))
    for i in range(10):
        addr = f"10.0.{i}.7"
        chain = distinct([LETTERS[j] for j in ref_ip_chain(bytes([10, 0, i]), [1, 1, 1], 21)])
        expected = chain + [x for x in "abc" if x not in chain]
        assert request(group, bal, client(addr), failing={"a", "b", "c"}) == expected
        group, bal = build("ip_hash", srv("a"), srv("b"), srv("c"))


def test_ip_hash_single_server_and_fallback() -> None:
    group, bal = build("ip_hash", srv("a"))
    assert group.single
    assert [one(group, bal, client("10.0.0.1")) for _ in range(3)] == ["a", "a", "a"]
    group, bal = build("ip_hash", srv("a", down=True), srv("b", down=True), group_name="dn")
    assert request(group, bal, client("10.0.0.1")) == ["dn"]


# ---- 2. least_conn ---------------------------------------------------------------------------------


def test_least_conn_weighted_scenario_7() -> None:
    group, bal = build("least_conn", srv("a", weight=3), srv("b"))
    assert isinstance(bal, LeastConn)
    assert hold(group, bal, 8) == spec("a b a a a b a a")


def test_least_conn_equal_scenario_8() -> None:
    group, bal = build("least_conn", srv("a"), srv("b"), srv("c"))
    assert hold(group, bal, 7) == spec("a b c c b a a")


def test_least_conn_without_a_tie_touches_no_weights() -> None:
    group, bal = build("least_conn", srv("a"), srv("b"))
    hold(group, bal, 1)  # a (tie -> cw touched)
    before = [(p.current_weight, p.effective_weight) for p in group.primary.peers]
    assert hold(group, bal, 1) == ["b"]  # no tie: b has fewer conns
    assert [(p.current_weight, p.effective_weight) for p in group.primary.peers] == before


def test_least_conn_released_connections_count_down() -> None:
    group, bal = build("least_conn", srv("a"), srv("b"))
    sel = new_selection(group, 0)
    a = pick(group, bal, sel)
    assert name(a) == "a" and a is not None
    assert hold(group, bal, 1) == ["b"]
    release(group, sel, a)
    assert a.conns == 0
    assert hold(group, bal, 1) == ["a"]


def shared_zone_groups(
    method: str, *servers: UpstreamServer
) -> tuple[Zone, list[tuple[PeerGroup, Balancer]]]:
    upstream = UpstreamConfig(name="u", method=cast(Method, method), servers=servers)
    zone = Zone.for_peers(len(servers), rows=2)
    with zone:
        for slot, s in enumerate(servers):
            zone.init_peer(slot, s.weight)
    workers = []
    for row in range(2):
        group = PeerGroup.build(upstream, zone, list(range(len(servers))), row)
        workers.append((group, make_balancer(upstream, group, compile_template)))
    return zone, workers


def test_least_conn_counts_connections_of_every_worker() -> None:
    zone, [(g0, b0), (g1, b1)] = shared_zone_groups("least_conn", srv("a"), srv("b"))
    assert hold(g0, b0, 1) == ["a"]
    assert hold(g1, b1, 1) == ["b"]  # worker 1 sees worker 0's connection on a
    assert hold(g1, b1, 1) == ["b"]  # 1:1 tie -> b: a's tie-break cw was spent by worker 0 (shared)
    assert hold(g0, b0, 1) == ["a"]  # worker 0 sees worker 1's two connections on b
    assert [p.conns for p in g0.primary.peers] == [2, 2]
    assert [p.conns for p in g1.primary.peers] == [2, 2]
    # each worker's own share is in its row
    mv = zone.mv
    assert [mv[L.active_index(0, zone.peers, s)] for s in (0, 1)] == [2, 0]
    assert [mv[L.active_index(1, zone.peers, s)] for s in (0, 1)] == [0, 2]


# ---- 5.4 max_conns ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_max_conns_with_backup_scenario_9(method: str) -> None:
    group, bal = build(method, srv("a", max_conns=2), srv("b", max_conns=1), srv("c", backup=True))
    assert hold(group, bal, 5) == spec("a b a c c")
    assert [p.conns for p in group.all_peers()] == [2, 1, 2]


@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_max_conns_busy_scenario_10(method: str) -> None:
    group, bal = build(method, srv("a", max_conns=1), srv("b", max_conns=1), group_name="mc0")
    assert hold(group, bal, 3) == ["a", "b", None]
    assert request(group, bal) == ["mc0"]


# ---- 4. random -------------------------------------------------------------------------------------


def random_balancer(*servers: UpstreamServer, two: bool = False, seed: int = 7) -> tuple[PeerGroup, Random]:
    upstream = UpstreamConfig(name="u", method="random", servers=servers, random_two=two)
    group = private_group(upstream)
    bal = Random(group, upstream)
    bal.rng = _random.Random(seed)  # reproducible draws
    return group, bal


def test_random_is_what_the_registry_builds() -> None:
    _, bal = build("random", srv("a"), srv("b"), random_two=True)
    assert isinstance(bal, Random) and bal.two


def test_random_distribution_follows_weights() -> None:
    group, bal = random_balancer(srv("a", weight=3), srv("b"), srv("c"))
    counts = Counter(one(group, bal) for _ in range(6000))
    for letter, weight in zip("abc", (3, 1, 1), strict=True):
        assert abs(counts[letter] / 6000 - weight / 5) < 0.03, counts


def test_random_never_picks_a_down_peer() -> None:
    group, bal = random_balancer(srv("a"), srv("b", weight=5, down=True), srv("c"))
    counts = Counter(one(group, bal) for _ in range(2000))
    assert set(counts) == {"a", "c"}
    assert abs(counts["a"] - counts["c"]) < 200


def test_random_two_prefers_the_less_loaded_peer() -> None:
    group, bal = random_balancer(srv("a"), srv("b"), srv("c"), two=True)
    busy = peer(group, "a")
    with group.zone:
        for _ in range(10):
            take(new_selection(group, 0), busy, NOW)
    counts = Counter(one(group, bal) for _ in range(3000))
    # any pair containing a has an idle partner: a is never chosen
    assert counts["a"] == 0
    assert counts["b"] > 1200 and counts["c"] > 1200
    # plain random keeps sending a its share
    plain_group, plain = random_balancer(srv("a"), srv("b"), srv("c"))
    with plain_group.zone:
        for _ in range(10):
            take(new_selection(plain_group, 0), peer(plain_group, "a"), NOW)
    assert Counter(one(plain_group, plain) for _ in range(3000))["a"] > 800


class ScriptedRng:
    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def randrange(self, n: int) -> int:
        v = self.values.pop(0)
        assert 0 <= v < n
        return v


@pytest.mark.parametrize(
    ("conns", "draws", "expected"),
    [
        ((0, 0), [0, 1], "b"),  # tie -> the second pick
        ((0, 0), [1, 0], "a"),
        ((0, 1), [0, 1], "a"),  # B busier than A -> A
        ((1, 0), [0, 1], "b"),
        ((0, 0), [0, 0, 0, 1], "b"),  # A drawn again: not a valid B, keep drawing
    ],
)
def test_random_two_choice_rule(conns: tuple[int, int], draws: list[int], expected: str) -> None:
    upstream = UpstreamConfig(name="u", method="random", servers=(srv("a"), srv("b")), random_two=True)
    group = private_group(upstream)
    bal = Random(group, upstream)
    bal.rng = cast(Any, ScriptedRng(draws))
    with group.zone:
        for p, n in zip(group.primary.peers, conns, strict=True):
            for _ in range(n):
                take(new_selection(group, 0), p, NOW)
    sel = new_selection(group, 0)
    assert name(pick(group, bal, sel)) == expected
    assert sel.hash_tries == len(draws) - 1  # every pick before the last counts toward the 20


def test_random_two_weights_are_cross_multiplied() -> None:
    upstream = UpstreamConfig(
        name="u", method="random", servers=(srv("a", weight=4), srv("b")), random_two=True
    )
    group = private_group(upstream)
    with group.zone:
        for _ in range(3):
            take(new_selection(group, 0), group.primary.peers[0], NOW)  # a: 3 conns / weight 4
        take(new_selection(group, 0), group.primary.peers[1], NOW)  # b: 1 conn / weight 1
    # A = a, B = b: B.conns * A.weight = 4 > A.conns * B.weight = 3 -> A
    bal = Random(group, upstream)
    bal.rng = cast(Any, ScriptedRng([0, 4]))
    assert name(pick(group, bal, new_selection(group, 0))) == "a"


@pytest.mark.parametrize("two", [False, True])
def test_random_single_server(two: bool) -> None:
    group, bal = random_balancer(srv("a"), two=two)
    assert group.single
    assert [one(group, bal) for _ in range(5)] == ["a"] * 5


def test_random_falls_back_to_round_robin_after_20_unusable_picks() -> None:
    group, bal = random_balancer(srv("a", weight=50, max_conns=1), srv("b"))
    hold_sel = new_selection(group, 0)
    with group.zone:
        take(hold_sel, peer(group, "a"), NOW)
    bal.rng = cast(Any, ScriptedRng([0] * 21))  # always a, which is at max_conns
    sel = new_selection(group, 0)
    assert name(pick(group, bal, sel)) == "b"
    assert sel.hash_tries == 21


# ---- 10.4 least_time -------------------------------------------------------------------------------


def least_time(*servers: UpstreamServer, inflight: bool = False) -> tuple[PeerGroup, LeastTime]:
    group, bal = build("least_time", *servers, least_time_inflight=inflight)
    assert isinstance(bal, LeastTime)
    # one selection each at NOW so "checked" is recent (no halving of the averages yet)
    for p in group.primary.peers:
        sel = new_selection(group, 0)
        with group.zone:
            take(sel, p, NOW)
            free(sel, p, False, NOW)
    return group, bal


def test_record_time_moving_average() -> None:
    group, _ = least_time(srv("a"), srv("b"))
    a = peer(group, "a")
    assert a.rt_ms == -1
    values = []
    for v in (100, 200, 300, 0, 40):
        record_time(a, v)
        values.append(a.rt_ms)
    # first value, then round(0.95 avg + 0.05 v): 95+10=105, 99.75+15=114.75, 109.25, 103.55+2=105.55
    assert values == [100, 105, 115, 109, 106]


@pytest.mark.parametrize(
    ("rt", "conns", "eta"),
    [
        (-1, 0, 20),
        (0, 0, 20),
        (1, 0, 20),
        (19, 0, 20),
        (20, 0, 40),
        (101, 0, 120),
        (101, 2, 360),
        (5001, 0, 5000),
        (9000, 1, 10000),
    ],
)
def test_least_time_eta(rt: int, conns: int, eta: int) -> None:
    group, bal = least_time(srv("a"), srv("b"))
    a = peer(group, "a")
    if rt >= 0:
        record_time(a, rt)
    with group.zone:
        for _ in range(conns):
            take(new_selection(group, 0), a, NOW)
        assert bal.eta(a, NOW) == eta


def test_least_time_lower_eta_wins_and_conns_raise_it() -> None:
    group, bal = least_time(srv("a"), srv("b"), srv("c"))
    for letter, rt in zip("abc", (300, 100, 200), strict=True):
        record_time(peer(group, letter), rt)
    # etas 320, 120, 220 -> b; then b = 120*2 = 240 -> c; then c = 440, b 240 -> b; b 360 > a 320 -> a
    assert hold(group, bal, 4) == spec("b c b a")


def test_least_time_weights_are_cross_multiplied() -> None:
    group, bal = least_time(srv("a", weight=3), srv("b"))
    record_time(peer(group, "a"), 300)  # eta 320 / weight 3 < 120
    record_time(peer(group, "b"), 100)
    assert one(group, bal) == "a"


def test_least_time_20ms_buckets_tie_and_use_smooth_round_robin() -> None:
    group, bal = least_time(srv("a"), srv("b"))
    record_time(peer(group, "a"), 19)
    record_time(peer(group, "b"), 1)
    assert [one(group, bal) for _ in range(6)] == spec("a b a b a b")
    group, bal = least_time(srv("a"), srv("b"))
    record_time(peer(group, "a"), 21)  # 40 vs 20
    record_time(peer(group, "b"), 1)
    assert [one(group, bal) for _ in range(4)] == ["b"] * 4


def test_least_time_above_5000_degenerates_to_least_conn() -> None:
    group, bal = least_time(srv("a"), srv("b"))
    record_time(peer(group, "a"), 9000)
    record_time(peer(group, "b"), 6000)
    assert [one(group, bal) for _ in range(4)] == spec("a b a b")  # both capped: tie
    # then exactly least_conn: a (tie), b (fewer conns), b (1:1 tie, a's cw already spent)
    assert hold(group, bal, 3) == spec("a b b")


def test_least_time_average_is_halved_per_fail_timeout_plus_one_since_checked() -> None:
    group, bal = least_time(srv("a", fail_timeout_s=10), srv("b"))
    a = peer(group, "a")
    record_time(a, 400)
    assert a.checked_s == NOW
    assert bal.eta(a, NOW + 10) == 420
    assert bal.eta(a, NOW + 11) == 220
    assert bal.eta(a, NOW + 22) == 120
    assert a.rt_ms == 400  # the stored average is not changed


def test_least_time_inflight_books_and_releases_start_times() -> None:
    group, bal = least_time(srv("a"), srv("b"), inflight=True)
    a, b = peer(group, "a"), peer(group, "b")
    record_time(a, 20)  # eta 40
    record_time(b, 100)  # eta 120
    sel = new_selection(group, 0)
    assert pick(group, bal, sel) is a
    assert sel.start_ms == NOW * 1000
    assert a._mv[a._b + L.P_INFLIGHT_MS] == NOW * 1000
    # 2 s later a's in-flight request is 2000 ms old: rt = max(20, 2000) -> 2020 * (1 + 1)
    with group.zone:
        assert bal.eta(a, NOW + 2) == 4040
    assert name(pick(group, bal, new_selection(group, 0), now=NOW + 2)) == "b"
    with group.zone:
        release_inflight(a, sel)
        free(sel, a, False, NOW + 2)
    assert sel.start_ms == 0
    assert a._mv[a._b + L.P_INFLIGHT_MS] == 0
    release_inflight(a, sel)  # idempotent
    assert a._mv[a._b + L.P_INFLIGHT_MS] == 0


def test_least_time_release_feeds_the_measured_time_and_undoes_inflight() -> None:
    """The balancer's ``release`` (what the proxy calls under the zone lock when an attempt
    ends): a completed attempt feeds its header or last-byte time to the average, a failed
    one (no times) only undoes the in-flight start. Catches release work left in the proxy
    (the old code had no ``LeastTime.release``)."""
    group, bal = least_time(srv("a"), srv("b"), inflight=True)
    sel = new_selection(group, 0)
    got = pick(group, bal, sel)
    assert got is not None and bal.releases
    with group.zone:
        bal.release(got, sel, None, None)  # failed: nothing measured
        free(sel, got, True, NOW)
    assert got.rt_ms == -1 and sel.start_ms == 0 and got._mv[got._b + L.P_INFLIGHT_MS] == 0
    sel = new_selection(group, 0)
    got = pick(group, bal, sel)
    assert got is not None and sel.start_ms == NOW * 1000
    with group.zone:
        bal.release(got, sel, 0.030, 0.250)  # header: 30 ms
        free(sel, got, False, NOW)
    assert got.rt_ms == 30 and got._mv[got._b + L.P_INFLIGHT_MS] == 0
    group, last = build("least_time", srv("a"), srv("b"), least_time="last_byte")
    assert isinstance(last, LeastTime)
    sel = new_selection(group, 0)
    got = pick(group, last, sel)
    assert got is not None
    with group.zone:
        last.release(got, sel, 0.030, 0.250)  # last_byte: 250 ms
        free(sel, got, False, NOW)
    assert got.rt_ms == 250


@pytest.mark.parametrize("method", ["round_robin", "least_conn", "ip_hash", "hash", "random"])
def test_only_least_time_has_release_work(method: str) -> None:
    """The other methods inherit the no-op ``release`` and say so with ``releases``, so the
    proxy skips the call: no per-request cost for them. Catches a method (or a default)
    that would make every request pay for least_time's release."""
    options: dict[str, Any] = {"hash_key": "$remote_addr"} if method == "hash" else {}
    group, bal = build(method, srv("a"), srv("b"), **options)
    assert bal.releases is False
    sel = new_selection(group, 0)
    got = pick(group, bal, sel, client("10.0.0.1") if method in ("ip_hash", "hash") else None)
    assert got is not None
    with group.zone:
        bal.release(got, sel, 0.030, 0.250)
        free(sel, got, False, NOW)
    assert got.rt_ms == -1


def test_least_time_without_inflight_ignores_request_age() -> None:
    group, bal = least_time(srv("a"), srv("b"))
    record_time(peer(group, "a"), 20)
    record_time(peer(group, "b"), 100)
    sel = new_selection(group, 0)
    assert name(pick(group, bal, sel)) == "a"
    assert sel.start_ms == 0
    # a: 40 * 2 = 80 < 120 whatever the age
    assert name(pick(group, bal, new_selection(group, 0), now=NOW + 2)) == "a"


# ---- 10.3 slow_start (round robin) -----------------------------------------------------------------


def recover(group: PeerGroup, bal: Balancer, t: int) -> int:
    """a fails at t; the probe after fail_timeout (1 s) succeeds. Returns the second of the probe."""
    a = peer(group, "a")
    while "a" not in request(group, bal, now=t, failing={"a"}):
        pass
    assert a.fails == 1 and not a.usable(t + 1)
    probe = t + 2
    for _ in range(5):
        if "a" in request(group, bal, now=probe):
            break
    else:
        raise AssertionError("no probe")
    assert a.fails == 0
    return probe


def window(group: PeerGroup, bal: Balancer, now: int, n: int = 22) -> int:
    return sum(request(group, bal, now=now) == ["a"] for _ in range(n))


def test_slow_start_ramps_the_share_up_linearly() -> None:
    group, bal = build("round_robin", srv("a", slow_start_s=10, max_fails=1, fail_timeout_s=1), srv("b"))
    assert group.slow_start
    a = peer(group, "a")
    probe = recover(group, bal, NOW)
    assert a.slow_start_t0_ms == probe * 1000
    counts = [window(group, bal, probe + k) for k in range(12)]
    assert counts[0] == 0  # 0 %
    assert counts == sorted(counts), counts  # never shrinks
    assert counts[1] < counts[4] < counts[7] < counts[10], counts
    assert counts[10] == counts[11] == 11  # full weight after slow_start
    assert a.slow_start_t0_ms == 0  # ramp over


def test_slow_start_percentage_is_linear() -> None:
    group, bal = build("round_robin", srv("a", slow_start_s=10, fail_timeout_s=1), srv("b"))
    a = peer(group, "a")
    probe = recover(group, bal, NOW)
    t0 = probe * 1000
    with group.zone:
        assert [a.weight_pct(t0 + ms) for ms in (0, 1000, 2500, 5000, 9999)] == [0, 10, 25, 50, 99]
        assert a.weight_pct(t0 + 10_000) == 100
        assert a.slow_start_t0_ms == 0


def test_without_slow_start_the_recovered_peer_is_back_at_full_weight() -> None:
    group, bal = build("round_robin", srv("a", max_fails=1, fail_timeout_s=1), srv("b"))
    assert not group.slow_start
    probe = recover(group, bal, NOW)
    assert peer(group, "a").effective_weight == 1
    assert window(group, bal, probe) == 11


def test_slow_start_failure_during_ramp_delays_it_and_max_fails_ends_it() -> None:
    group, _ = build("round_robin", srv("a", slow_start_s=10, max_fails=2, fail_timeout_s=1), srv("b"))
    a = peer(group, "a")
    sel = new_selection(group, 0)
    with group.zone:
        take(sel, a, NOW)
        free(sel, a, True, NOW)
        assert a.effective_weight == 1  # no ew decrement with slow_start
        take(sel, a, NOW)
        free(sel, a, True, NOW)
    assert not a.usable(NOW + 1)
    # probe at NOW + 2 succeeds: the ramp starts
    sel = new_selection(group, 0)
    with group.zone:
        take(sel, a, NOW + 2)
        free(sel, a, False, NOW + 2)
    t0 = (NOW + 2) * 1000
    assert a.slow_start_t0_ms == t0
    with group.zone:
        take(sel, a, NOW + 3)
        free(sel, a, True, NOW + 3)  # 1 < max_fails: t0 += slow_start / max_fails
    assert a.slow_start_t0_ms == t0 + 5000
    with group.zone:
        take(sel, a, NOW + 3)
        free(sel, a, True, NOW + 3)  # reaches max_fails: no ramp until the next recovery
    assert a.slow_start_t0_ms == 0


def test_slow_start_is_ignored_for_a_single_server() -> None:
    group, _ = build("round_robin", srv("a", slow_start_s=10))
    assert group.single and not group.slow_start


# ---- registry and config validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "cls"),
    [
        ("round_robin", {}, RoundRobin),
        ("least_conn", {}, LeastConn),
        ("ip_hash", {}, IpHash),
        ("hash", {"hash_key": "$arg_k"}, Hash),
        ("random", {}, Random),
        ("least_time", {}, LeastTime),
    ],
)
def test_registry_builds_each_method(method: str, options: dict[str, Any], cls: type) -> None:
    group, bal = build(method, srv("a"), srv("b"), **options)
    assert type(bal) is cls
    assert bal.group is group


def write_upstream(tmp_path: Path, body: str) -> str:
    path = tmp_path / "lb.toml"
    path.write_text("[http.upstreams.u]\n" + textwrap.dedent(body))
    return str(path)


def config_error(tmp_path: Path, body: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write_upstream(tmp_path, body))
    return info.value


KEY_LINE = {"hash": 'hash = "$arg_k"\n', "random": "random = { two = true }\n"}


@pytest.mark.parametrize("method", ["hash", "ip_hash", "random"])
def test_no_backup_methods_reject_backup(tmp_path: Path, method: str) -> None:
    err = config_error(
        tmp_path,
        f'method = "{method}"\n{KEY_LINE.get(method, "")}'
        "servers = [\n"
        '  { address = "127.0.0.1:24081" },\n'
        '  { address = "127.0.0.1:24082" },\n'
        '  { address = "127.0.0.1:24083", backup = true },\n'
        "]\n",
    )
    assert err.key_path == "http.upstreams.u.servers[2].backup"
    assert f'balancing method "{method}" does not support backup servers' in str(err)


@pytest.mark.parametrize("method", ["round_robin", "least_conn", "least_time"])
def test_backup_is_accepted_by_the_other_methods(tmp_path: Path, method: str) -> None:
    config = load_config(
        write_upstream(
            tmp_path,
            f'method = "{method}"\n'
            'servers = [ { address = "127.0.0.1:24081" }, { address = "127.0.0.1:24082", backup = true } ]\n',
        )
    )
    assert [s.backup for s in config.http.upstreams["u"].servers] == [False, True]


@pytest.mark.parametrize(
    ("method", "option", "field"),
    [("ip_hash", "backup = true", "backup"), ("least_conn", 'slow_start = "10s"', "slow_start")],
)
def test_server_errors_name_the_toml_entry_when_a_hostname_resolves_to_several_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, option: str, field: str
) -> None:
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "twice.test":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    err = config_error(
        tmp_path,
        f'method = "{method}"\n'
        "servers = [\n"
        '  { address = "twice.test:24081" },\n'
        f'  {{ address = "127.0.0.1:24083", {option} }},\n'
        "]\n",
    )
    # the file has no servers[2]: the message must point at the entry the user wrote
    assert err.key_path == f"http.upstreams.u.servers[1].{field}"


@pytest.mark.parametrize("method", ["hash", "ip_hash", "random", "least_conn", "least_time"])
def test_slow_start_needs_round_robin(tmp_path: Path, method: str) -> None:
    err = config_error(
        tmp_path,
        f'method = "{method}"\n{KEY_LINE.get(method, "")}'
        'servers = [ { address = "127.0.0.1:24081" },\n'
        '            { address = "127.0.0.1:24082", slow_start = "30s" } ]\n',
    )
    assert err.key_path == "http.upstreams.u.servers[1].slow_start"
    assert "slow_start" in err.message


def test_slow_start_is_accepted_with_round_robin(tmp_path: Path) -> None:
    config = load_config(
        write_upstream(
            tmp_path,
            'servers = [ { address = "127.0.0.1:24081", slow_start = "30s" },\n'
            '            { address = "127.0.0.1:24082" } ]\n',
        )
    )
    assert config.http.upstreams["u"].servers[0].slow_start_s == 30.0


def test_hash_needs_a_key(tmp_path: Path) -> None:
    err = config_error(tmp_path, 'method = "hash"\nservers = [ { address = "127.0.0.1:24081" } ]\n')
    assert err.key_path == "http.upstreams.u.hash"
    assert "needs a key" in err.message


def test_hash_key_with_an_unknown_variable_is_rejected(tmp_path: Path) -> None:
    err = config_error(
        tmp_path,
        'method = "hash"\nhash = "$no_such_variable"\nservers = [ { address = "127.0.0.1:24081" } ]\n',
    )
    assert err.key_path == "http.upstreams.u.hash"
    assert "no_such_variable" in err.message


def test_hash_options_need_method_hash(tmp_path: Path) -> None:
    err = config_error(tmp_path, 'hash = "$arg_k"\nservers = [ { address = "127.0.0.1:24081" } ]\n')
    assert err.key_path == "http.upstreams.u.hash"


def test_hash_config_loads(tmp_path: Path) -> None:
    config = load_config(
        write_upstream(
            tmp_path,
            'method = "hash"\nhash = "$arg_k"\nconsistent = true\n'
            'servers = [ { address = "127.0.0.1:24081" }, { address = "127.0.0.1:24082" } ]\n',
        )
    )
    up = config.http.upstreams["u"]
    assert (up.method, up.hash_key, up.consistent) == ("hash", "$arg_k", True)
    group = private_group(up)
    assert isinstance(make_balancer(up, group, compile_template), ConsistentHash)


@pytest.mark.parametrize("seed", range(5))
def test_walk_by_bisection_finds_the_peer_nginx_subtraction_finds(seed: int) -> None:
    rng = _random.Random(seed)
    weights = [rng.choice((1, 1, 2, 3, 5, 10)) for _ in range(rng.randint(1, 40))]
    servers = [srv(LETTERS[i % len(LETTERS)], weight=w) for i, w in enumerate(weights)]
    group, _ = build("hash", *servers, hash_key="$uri")
    plist = group.primary
    for w in range(sum(weights)):
        assert walk(plist, w).index == ref_walk(weights, w)
