"""Peer health state (health/state.py, sans-IO): consecutive fails/passes per check, the
worst verdict wins, state after a reload or a respawn, downtime and slow_start on return.

Catches: a peer out after fewer than ``fails`` failures or back after fewer than
``passes`` passes; a non-consecutive count (a pass between failures must restart it); a
mandatory peer kept out after its first pass; persistent/mandatory mixed up at reload;
downtime not accumulated; no slow_start ramp when a peer comes back.
"""

from __future__ import annotations

from prefork_lb.health.state import Verdict, initial_ok, peer_state, seed_new, set_state, write_probe
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone


def test_fails_and_passes_are_consecutive() -> None:
    v = Verdict(fails=3, passes=2, ok=True)
    assert [v.record(p) for p in (False, False, True, False, False)] == [False] * 5
    assert v.ok is True  # never three failures in a row
    assert v.record(False) is True and v.ok is False
    assert [v.record(p) for p in (True, False, True)] == [False, False, False]
    assert v.record(True) is True and v.ok is True


def test_checking_is_up_after_the_first_pass_and_unhealthy_after_fails() -> None:
    v = Verdict(fails=2, passes=3, ok=None)
    assert v.record(True) is True and v.ok is True
    w = Verdict(fails=2, passes=3, ok=None)
    assert (w.record(False), w.record(False), w.ok) == (False, True, False)


def test_the_worst_verdict_wins() -> None:
    up, checking, bad = Verdict(1, 1, True), Verdict(1, 1, None), Verdict(1, 1, False)
    assert peer_state([up, up]) == L.HC_UP
    assert peer_state([up, checking]) == L.HC_CHECKING
    assert peer_state([checking, bad, up]) == L.HC_UNHEALTHY


def test_initial_verdicts() -> None:
    # a respawned prober (not a reload): whatever the zone says
    assert initial_ok(L.HC_UNHEALTHY, False, True, False) is False
    assert initial_ok(L.HC_CHECKING, False, True, False) is None
    assert initial_ok(L.HC_UP, False, True, False) is True
    # a reload: persistent keeps it, otherwise start over
    assert initial_ok(L.HC_UNHEALTHY, True, False, True) is False
    assert initial_ok(L.HC_UNHEALTHY, True, False, False) is True
    assert initial_ok(L.HC_UP, True, True, False) is None


def test_zone_words_downtime_and_slow_start() -> None:
    zone = Zone.for_peers(1)
    try:
        mv, b = zone.mv, L.peer_base(0)
        with zone:
            seed_new(zone, 0, True, 1000)
            assert (mv[b + L.P_HC_STATE], mv[b + L.P_HC_DOWNSTART_MS]) == (L.HC_CHECKING, 1000)
            assert write_probe(zone, 0, False, L.HC_UNHEALTHY, True, 2000) == L.HC_CHECKING
            assert mv[b + L.P_HC_DOWNSTART_MS] == 1000  # out since it was made
            assert (mv[b + L.P_HC_CHECKS], mv[b + L.P_HC_FAILS], mv[b + L.P_HC_UNHEALTHY]) == (1, 1, 1)
            assert mv[b + L.P_HC_LAST] == 2
            assert write_probe(zone, 0, True, L.HC_UP, True, 5000) == L.HC_UNHEALTHY
            assert (mv[b + L.P_S_DOWNTIME_MS], mv[b + L.P_HC_DOWNSTART_MS]) == (4000, 0)
            assert mv[b + L.P_SLOW_START_MS] == 5000  # the ramp starts
            assert mv[b + L.P_HC_LAST] == 1
            assert set_state(zone, 0, L.HC_UNHEALTHY, False, 6000) == L.HC_UP
            assert (mv[b + L.P_HC_DOWNSTART_MS], mv[b + L.P_HC_UNHEALTHY]) == (6000, 2)
    finally:
        zone.close()
