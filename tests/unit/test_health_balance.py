"""Every balancing method skips a peer that active health checks hold out (issue 17).

A peer of an actively checked group whose ``P_HC_STATE`` is checking or unhealthy gets no
request, whatever max_fails says, on the compiled loops, the pure per-peer loops, the bulk
passes and the hash methods alike; a single-peer group answers "no live upstreams" (None);
a group nobody checks ignores the word. Catches a balancer path that forgets the health
word (before issue 17 none read it).
"""

from __future__ import annotations

import pytest

from prefork_lb.balance.peers import PeerGroup, new_selection
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Address, Method, UpstreamConfig, UpstreamServer
from prefork_lb.http.template import compile_template
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone

METHODS: list[tuple[Method, str]] = [
    ("round_robin", ""),
    ("least_conn", ""),
    ("least_time", ""),
    ("ip_hash", ""),
    ("hash", "$remote_addr"),
    ("random", ""),
]


def group_of(method: Method, key: str, n: int, checked: bool, max_fails: int = 1) -> UpstreamConfig:
    servers = tuple(
        UpstreamServer(
            address=Address("inet", "10.0.0.1", 9000 + i), name=f"10.0.0.1:{9000 + i}", max_fails=max_fails
        )
        for i in range(n)
    )
    return UpstreamConfig(name="u", method=method, servers=servers, hash_key=key, checked=checked)


def build(up: UpstreamConfig) -> PeerGroup:
    """The group on a zone of its own, one slot per server (as the master assigns them)."""
    zone = Zone.for_peers(len(up.servers))
    with zone:
        for slot, server in enumerate(up.servers):
            zone.init_peer(slot, server.weight)
    return PeerGroup.build(up, zone, list(range(len(up.servers))))


@pytest.mark.parametrize(("method", "key"), METHODS)
@pytest.mark.parametrize("n", [3, 20])  # per-peer loops and bulk passes
@pytest.mark.parametrize("state", [L.HC_CHECKING, L.HC_UNHEALTHY])
def test_a_peer_out_by_active_checks_gets_nothing(method: Method, key: str, n: int, state: int) -> None:
    up = group_of(method, key, n, checked=True, max_fails=0)
    group = build(up)
    bal = make_balancer(up, group, compile_template)
    out = {0, n - 1}
    for p in group.all_peers():
        if p.index in out:
            group.zone.mv[p._b + L.P_HC_STATE] = state
    chosen = set()
    for _ in range(200):
        sel = new_selection(group, 0)
        with group.zone:
            peer = bal.pick(sel, None, 1000)
        assert peer is not None
        chosen.add(peer.index)
    assert not chosen & out
    assert chosen


@pytest.mark.parametrize(("method", "key"), METHODS)
def test_every_peer_out_means_no_live_upstreams(method: Method, key: str) -> None:
    for n in (1, 4):
        up = group_of(method, key, n, checked=True)
        group = build(up)
        bal = make_balancer(up, group, compile_template)
        for p in group.all_peers():
            group.zone.mv[p._b + L.P_HC_STATE] = L.HC_UNHEALTHY
        with group.zone:
            assert bal.pick(new_selection(group, 0), None, 1000) is None


def test_an_unchecked_group_ignores_the_health_word() -> None:
    up = group_of("round_robin", "", 3, checked=False)
    group = build(up)
    bal = make_balancer(up, group, compile_template)
    for p in group.all_peers():
        group.zone.mv[p._b + L.P_HC_STATE] = L.HC_UNHEALTHY
    with group.zone:
        assert bal.pick(new_selection(group, 0), None, 1000) is not None
