"""Smooth weighted round robin and the shared peer accounting, driven the way the proxy drives them.

Every expected sequence comes from shared/reference/nginx-semantics.md (sections 1, 5 and the
scenario table of section 11), most of them observed on real nginx 1.22.1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, free, new_selection
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Address, UpstreamConfig, UpstreamServer
from prefork_lb.http.template import compile_template
from tests.unit.groups import private_group

NOW = 1_000  # an arbitrary "ngx_time()" second


_PORTS: dict[str, int] = {}


def server(name: str, **options: object) -> UpstreamServer:
    """An upstream server whose ``name`` (the config string) is the letter the spec uses."""
    port = 9001 + len(_PORTS)
    _PORTS.setdefault(name, port)
    return UpstreamServer(address=Address("inet", "127.0.0.1", _PORTS[name]), name=name, **options)


def spec(text: str) -> list[str]:
    """A sequence as the spec writes it: "a a b a c"."""
    return text.split()


def build(*servers: UpstreamServer, name: str = "g") -> tuple[PeerGroup, Balancer]:
    upstream = UpstreamConfig(name=name, method="round_robin", servers=servers)
    group = private_group(upstream)
    return group, make_balancer(upstream, group, compile_template)


def request(
    group: PeerGroup,
    bal: Balancer,
    now_s: int,
    failing: Iterable[str] = (),
    next_upstream_tries: int = 0,
) -> list[str]:
    """One proxied request: attempts until a success, no peer (BUSY -> group name), or no tries left."""
    failing = set(failing)
    sel = new_selection(group, next_upstream_tries)
    attempts: list[str] = []
    while True:
        peer = bal.pick(sel, None, now_s)
        if peer is None:
            attempts.append(group.name)
            return attempts
        attempts.append(peer.name)
        failed = peer.name in failing
        free(sel, peer, failed, now_s)
        if not failed or sel.tries == 0:
            return attempts


def sequence(group: PeerGroup, bal: Balancer, n: int, now_s: int = NOW) -> list[str]:
    return ["+".join(request(group, bal, now_s)) for _ in range(n)]


def peer(group: PeerGroup, name: str) -> Peer:
    return next(p for p in group.all_peers() if p.name == name)


# ---- 1.2 smooth weighted round robin ---------------------------------------------------------------


def test_weights_5_1_1_scenario_1() -> None:
    group, bal = build(server("a", weight=5), server("b"), server("c"))
    assert sequence(group, bal, 14) == spec("a a b a c a a a a b a c a a")


def test_weights_3_2_1_scenario_2() -> None:
    group, bal = build(server("a", weight=3), server("b", weight=2), server("c"))
    assert sequence(group, bal, 12) == spec("a b a c b a a b a c b a")


def test_weights_5_1_1_current_weights_follow_the_worked_table() -> None:
    group, bal = build(server("a", weight=5), server("b"), server("c"))
    expected = [(-2, 1, 1), (-4, 2, 2), (1, -4, 3), (-1, -3, 4), (4, -2, -2), (2, -1, -1), (0, 0, 0)]
    for cw in expected:
        request(group, bal, NOW)
        assert tuple(p.current_weight for p in group.primary.peers) == cw


def test_equal_weights_are_plain_rotation() -> None:
    group, bal = build(server("a"), server("b"), server("c"))
    assert sequence(group, bal, 7) == spec("a b c a b c a")


# ---- 1.3 effective_weight on failure and recovery --------------------------------------------------


def test_failure_trace_scenario_6() -> None:
    group, bal = build(server("a", weight=4, max_fails=4, fail_timeout_s=60.0), server("b"), server("c"))
    first = request(group, bal, NOW, failing={"a"})
    assert first == ["a", "b"]
    # model state after request 1 (cw / ew): -2,0,2 / 3,1,1
    assert [p.current_weight for p in group.primary.peers] == [-2, 0, 2]
    assert [p.effective_weight for p in group.primary.peers] == [3, 1, 1]
    rest = sequence(group, bal, 13)
    assert ["+".join(first), *rest] == spec("a+b c a a b a a c a a b a a c")


def test_failure_trace_scenario_6_second_request_restores_effective_weight() -> None:
    group, bal = build(server("a", weight=4, max_fails=4, fail_timeout_s=60.0), server("b"), server("c"))
    request(group, bal, NOW, failing={"a"})
    assert request(group, bal, NOW) == ["c"]
    # r2 picks c: 1,1,-2 / 4,1,1 -- ew is back to 4 after one pass
    assert [p.current_weight for p in group.primary.peers] == [1, 1, -2]
    assert [p.effective_weight for p in group.primary.peers] == [4, 1, 1]
    assert peer(group, "a").fails == 1  # 1 < max_fails 4: still usable


def test_without_failure_the_same_group_gives_the_undisturbed_sequence() -> None:
    group, bal = build(server("a", weight=4, max_fails=4, fail_timeout_s=60.0), server("b"), server("c"))
    assert sequence(group, bal, 14) == spec("a a b a c a a a b a c a a a")


@pytest.mark.parametrize(
    ("weight", "max_fails", "ew_after"),
    [(1, 1, 0), (5, 1, 0), (4, 4, 3), (1, 3, 1), (3, 0, 3)],
)
def test_effective_weight_drop_on_failure(weight: int, max_fails: int, ew_after: int) -> None:
    group, bal = build(server("a", weight=weight, max_fails=max_fails), server("b"))
    sel = new_selection(group, 0)
    a = bal.pick(sel, None, NOW)
    assert a is not None and a.name == "a"
    free(sel, a, True, NOW)
    assert a.effective_weight == ew_after
    assert a.fails == 1
    assert a.accessed_s == a.checked_s == NOW


# ---- 5.1 / 5.3 max_fails, fail_timeout, the probe --------------------------------------------------


def test_dead_server_scenario_4() -> None:
    group, bal = build(server("a"), server("dead"))
    got = [request(group, bal, NOW, failing={"dead"}) for _ in range(5)]
    assert got == [["a"], ["dead", "a"], ["a"], ["a"], ["a"]]
    dead = peer(group, "dead")
    assert (dead.fails, dead.checked_s, dead.accessed_s, dead.effective_weight) == (1, NOW, NOW, 0)


def test_failed_peer_is_usable_again_at_second_t_plus_fail_timeout_plus_1() -> None:
    group, bal = build(server("a"), server("dead", fail_timeout_s=10.0))
    dead = peer(group, "dead")
    assert request(group, bal, NOW, failing={"dead"}) == ["a"]
    assert request(group, bal, NOW, failing={"dead"}) == ["dead", "a"]
    # now - checked <= fail_timeout: unusable, including at exactly T + fail_timeout
    for now in range(NOW, NOW + 11):
        for _ in range(4):
            assert request(group, bal, now, failing={"dead"}) == ["a"]
    assert not dead.usable(NOW + 10)
    assert dead.usable(NOW + 11)
    # its ew was 0, so the probe is the 3rd request after eligibility (§5.3)
    got = [request(group, bal, NOW + 11, failing={"dead"}) for _ in range(3)]
    assert got == [["a"], ["a"], ["dead", "a"]]
    assert dead.checked_s == NOW + 11


def test_one_probe_per_period_scenario_5() -> None:
    """a ok, dead refused, fail_timeout=2s, 4 requests per second: one probe every 3 seconds."""
    group, bal = build(server("a"), server("dead", fail_timeout_s=2.0))
    probes: list[tuple[int, int]] = []
    for tick in range(4 * 12):
        now, quarter = divmod(tick, 4)
        got = request(group, bal, 520 + now, failing={"dead"})
        if got != ["a"]:
            assert got == ["dead", "a"]
            probes.append((520 + now, quarter))
    # first failure at 520 (2nd request); eligible from 523, probe on the 3rd request of that second
    assert probes == [(520, 1), (523, 2), (526, 2), (529, 2)]


def test_probe_in_flight_blocks_other_requests_for_the_period() -> None:
    group, bal = build(server("a"), server("dead", fail_timeout_s=10.0))
    dead = peer(group, "dead")
    request(group, bal, NOW, failing={"dead"})
    request(group, bal, NOW, failing={"dead"})
    assert dead.fails == 1
    later = NOW + 11
    # find the probe and keep it in flight (connect pending)
    held: tuple[Selection, Peer] | None = None
    for _ in range(5):
        sel = new_selection(group, 0)
        p = bal.pick(sel, None, later)
        assert p is not None
        if p is dead:
            held = (sel, p)
            break
        free(sel, p, False, later)
    assert held is not None
    assert dead.checked_s == later
    # every other request during the next fail_timeout seconds avoids it
    for now in range(later, later + 11):
        for _ in range(3):
            assert request(group, bal, now) == ["a"]
    # the probe succeeds: accessed (NOW) < checked (later) -> fails reset, fully back
    sel, p = held
    free(sel, p, False, later + 1)
    assert dead.fails == 0
    assert dead.usable(later + 1)


def test_fails_are_not_a_sliding_window() -> None:
    """A success within fail_timeout of the last check does not reset fails."""
    group, bal = build(server("a", max_fails=2, fail_timeout_s=10.0), server("b"))
    a = peer(group, "a")
    assert request(group, bal, 100, failing={"a"}) == ["a", "b"]
    assert (a.fails, a.checked_s, a.accessed_s) == (1, 100, 100)
    # a succeeds at 105: checked is not refreshed (105 - 100 <= 10), so fails stays 1
    got = []
    while "a" not in got:
        got = request(group, bal, 105)
    assert a.fails == 1
    # a second failure at 108, with a success in between, disables it
    got = []
    while "a" not in got:
        got = request(group, bal, 108, failing={"a"})
    assert got == ["a", "b"]
    assert a.fails == 2
    assert not a.usable(118)
    assert [request(group, bal, 118) for _ in range(4)] == [["b"]] * 4


def test_fails_reset_by_success_after_a_later_checked() -> None:
    group, bal = build(server("a", max_fails=2, fail_timeout_s=10.0), server("b"))
    a = peer(group, "a")
    assert request(group, bal, 100, failing={"a"}) == ["a", "b"]
    assert a.fails == 1
    # at 111 (111 - 100 > 10) the selection refreshes checked; the success then resets fails
    got: list[str] = []
    while "a" not in got:
        got = request(group, bal, 111)
    assert a.checked_s == 111
    assert a.accessed_s == 100
    assert a.fails == 0


def test_max_fails_zero_never_disables() -> None:
    group, bal = build(server("a", max_fails=0), server("b"))
    a = peer(group, "a")
    for _ in range(6):
        request(group, bal, NOW, failing={"a"})
    assert a.fails > 1
    assert a.effective_weight == 1  # max_fails=0 never touches ew
    assert a.usable(NOW)


def test_no_live_upstreams_when_every_peer_is_charged() -> None:
    """Scenario 4 continued (§5.5): a closes without answering, dead refused -> then BUSY."""
    group, bal = build(server("a"), server("dead"), name="u")
    assert request(group, bal, NOW, failing={"a", "dead"}) == ["a", "dead"]
    assert request(group, bal, NOW, failing={"a", "dead"}) == ["u"]


# ---- 5.4 down, backup, max_conns -------------------------------------------------------------------


def test_down_peers_are_never_picked() -> None:
    group, bal = build(server("a", weight=5, down=True), server("b"), server("c"))
    assert set(sequence(group, bal, 20)) == {"b", "c"}
    assert sequence(group, bal, 4) == spec("b c b c")
    assert group.primary.total_weight == 7  # down peers still count in total_weight
    assert group.tries == 2  # ... but not in tries


def test_all_down_group_is_busy_scenario_11() -> None:
    group, bal = build(server("a", down=True), server("b", down=True), name="dn")
    assert request(group, bal, NOW) == ["dn"]
    assert group.tries == 0


def test_backup_after_failed_primaries_scenario_13() -> None:
    group, bal = build(server("dead1"), server("dead2"), server("c", backup=True))
    assert request(group, bal, NOW, failing={"dead1", "dead2"}) == ["dead1", "dead2", "c"]
    assert sequence(group, bal, 3) == ["c", "c", "c"]


def test_backup_list_gets_a_fresh_tried_set_and_the_request_stays_there() -> None:
    # max_fails=0: failed primaries stay usable, so only the request's tried-set keeps them out
    group, bal = build(
        server("a", max_fails=0),
        server("b", max_fails=0),
        server("c", backup=True),
        server("d", backup=True),
    )
    assert group.backup is not None
    sel = new_selection(group, 0)
    assert sel.tries == 4
    attempts = []
    for _ in range(4):
        p = bal.pick(sel, None, NOW)
        assert p is not None
        attempts.append(p.name)
        free(sel, p, True, NOW)
    # c and d have the same tried-bits (0, 1) as a and b: only a fresh bitmap lets them through
    assert attempts == ["a", "b", "c", "d"]
    assert sel.current is group.backup
    # everything on the backup list is tried: BUSY, never back to the (usable) primaries
    assert bal.pick(sel, None, NOW) is None
    # a new request starts on the primary list again
    sel2 = new_selection(group, 0)
    assert sel2.current is group.primary
    p = bal.pick(sel2, None, NOW)
    assert p is not None and not p.backup
    free(sel2, p, False, NOW)


def test_backup_is_not_used_while_a_primary_is_usable() -> None:
    group, bal = build(server("a"), server("b"), server("c", backup=True))
    assert set(sequence(group, bal, 10)) == {"a", "b"}
    assert request(group, bal, NOW, failing={"a"}) in (["a", "b"], ["b"])
    assert "c" not in sequence(group, bal, 4)


def test_max_conns_scenario_9() -> None:
    group, bal = build(server("a", max_conns=2), server("b", max_conns=1), server("c", backup=True))
    held = []
    for _ in range(5):
        sel = new_selection(group, 0)
        p = bal.pick(sel, None, NOW)
        assert p is not None
        held.append((sel, p))
    assert [p.name for _, p in held] == ["a", "b", "a", "c", "c"]
    assert (peer(group, "a").conns, peer(group, "b").conns, peer(group, "c").conns) == (2, 1, 2)
    for sel, p in held:
        free(sel, p, False, NOW)
    assert all(p.conns == 0 for p in group.all_peers())
    # released: a is usable again
    assert request(group, bal, NOW) in (["a"], ["b"])


def test_all_peers_at_max_conns_is_busy_scenario_10() -> None:
    group, bal = build(server("a", max_conns=1), server("b", max_conns=1), name="mc0")
    sels = [new_selection(group, 0) for _ in range(3)]
    picks = [bal.pick(sel, None, NOW) for sel in sels]
    assert [p.name if p else None for p in picks] == ["a", "b", None]


# ---- 5.6 single-server groups ----------------------------------------------------------------------


def test_single_server_ignores_max_fails_and_never_retries() -> None:
    group, bal = build(server("a", max_fails=1, fail_timeout_s=10.0))
    assert group.single
    a = peer(group, "a")
    for _ in range(5):
        sel = new_selection(group, 0)
        assert sel.tries == 1
        p = bal.pick(sel, None, NOW)
        assert p is a
        free(sel, p, True, NOW)
        assert sel.tries == 0  # forced to 0 after the one attempt
    assert a.fails == 0
    assert a.conns == 0
    assert a.usable(NOW)


def test_single_server_tries_forced_to_zero_even_with_next_upstream_tries() -> None:
    group, bal = build(server("a"))
    sel = new_selection(group, 5)
    p = bal.pick(sel, None, NOW)
    assert p is not None
    free(sel, p, False, NOW)
    assert sel.tries == 0


def test_single_down_server_is_busy() -> None:
    group, bal = build(server("a", down=True))
    assert group.single
    assert bal.pick(new_selection(group, 0), None, NOW) is None


def test_single_server_at_max_conns_is_busy() -> None:
    group, bal = build(server("a", max_conns=1))
    sel = new_selection(group, 0)
    a = bal.pick(sel, None, NOW)
    assert a is not None
    assert bal.pick(new_selection(group, 0), None, NOW) is None
    free(sel, a, False, NOW)
    assert bal.pick(new_selection(group, 0), None, NOW) is a


def test_one_primary_with_a_backup_is_not_single() -> None:
    group, bal = build(server("a"), server("b", backup=True))
    assert not group.single
    assert request(group, bal, NOW, failing={"a"}) == ["a", "b"]
    assert sequence(group, bal, 2) == ["b", "b"]


# ---- tries -----------------------------------------------------------------------------------------


def test_tries_count_non_down_primaries_and_backups() -> None:
    group, _ = build(
        server("a"),
        server("b", down=True),
        server("c"),
        server("d", backup=True),
        server("e", backup=True, down=True),
    )
    assert group.primary.tries == 2
    assert group.backup is not None and group.backup.tries == 1
    assert group.tries == 3
    assert group.primary.total_weight == 3


@pytest.mark.parametrize(("limit", "tries"), [(0, 3), (1, 1), (2, 2), (3, 3), (10, 3)])
def test_new_selection_clamps_with_proxy_next_upstream_tries(limit: int, tries: int) -> None:
    group, _ = build(server("a"), server("b"), server("c", backup=True))
    sel = new_selection(group, limit)
    assert sel.tries == tries
    assert sel.current is group.primary
    assert sel.tried == 0


def test_each_free_uses_up_one_try() -> None:
    group, bal = build(server("a"), server("b"), server("c"))
    assert request(group, bal, NOW, failing={"a", "b", "c"}, next_upstream_tries=2) == ["a", "b"]
    group, bal = build(server("a"), server("b"), server("c"))
    assert request(group, bal, NOW, failing={"a", "b", "c"}) == ["a", "b", "c"]


def test_workers_sharing_a_zone_follow_one_global_order() -> None:
    # nginx scenario 3 (zone, 4 workers): the global order is aabacaa, whichever worker picks.
    from prefork_lb.zone.zone import Zone

    servers = tuple(
        UpstreamServer(Address("inet", "127.0.0.1", 9000 + i), f"127.0.0.1:{9000 + i}", weight=w)
        for i, w in enumerate((5, 1, 1))
    )
    upstream = UpstreamConfig("u", "round_robin", servers)
    zone = Zone.for_peers(3, rows=4)
    with zone:
        for slot, s in enumerate(servers):
            zone.init_peer(slot, s.weight)
    workers = []
    for row in range(4):
        group = PeerGroup.build(upstream, zone, [0, 1, 2], row)
        workers.append((group, make_balancer(upstream, group, compile_template)))
    seq = []
    for i in range(21):
        group, bal = workers[(i * 7 + i // 3) % 4]  # any interleaving of workers
        sel = new_selection(group, 0)
        with zone:
            peer = bal.pick(sel, None, 1000)
            assert peer is not None
            free(sel, peer, False, 1000)
        seq.append("abc"[peer.slot])
    assert "".join(seq) == "aabacaa" * 3


def test_free_reports_the_disable_and_never_logs_under_the_lock(caplog: pytest.LogCaptureFixture) -> None:
    """free() runs under the zone lock: it returns True for the failure that reaches
    max_fails and logs nothing; the caller logs nginx's warning after unlocking."""
    group, bal = build(server("a"), server("dead"))
    with caplog.at_level(logging.DEBUG):
        sel = new_selection(group, 0)
        got = bal.pick(sel, None, NOW)
        while got is not None and got.name != "dead":
            assert free(sel, got, False, NOW) is False
            sel = new_selection(group, 0)
            got = bal.pick(sel, None, NOW)
        assert got is not None
        assert free(sel, got, True, NOW) is True
    assert caplog.records == []
