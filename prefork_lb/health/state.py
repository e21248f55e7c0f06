"""Peer health state: per-check counting (sans-IO) and the zone words (``P_HC_*``).

Rules:
1. Each (check, peer) pair keeps its own verdict: ``None`` while checking (mandatory, no
   pass yet), True healthy, False unhealthy; ``fails`` consecutive failures turn it
   False, ``passes`` consecutive passes turn it True. A peer's zone state is the worst of
   its pairs: unhealthy if any pair is False, else checking if any is None, else up.
2. Only the prober writes the health words, under the zone lock, one probe at a time; it
   returns what changed so the caller logs after the lock is released.
3. The verdicts are rebuilt from the zone when a prober starts (respawn after a crash:
   nothing is lost). After a reload, a check that is not ``persistent`` starts over:
   checking when ``mandatory``, else up. New peers of a mandatory check are set checking by
   the master when their slot is made (``seed_new``), before any worker can pick them.
4. Time out of rotation accumulates into ``P_S_DOWNTIME_MS`` when a peer comes back;
   ``P_HC_DOWNSTART_MS`` marks when it left. Coming back with ``slow_start`` starts the ramp.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone


@dataclass(slots=True)
class Verdict:
    """One (check, peer) pair's counting (rule 1)."""

    fails: int
    passes: int
    ok: bool | None
    run: int = 0  # consecutive results: > 0 passes, < 0 failures

    def record(self, passed: bool) -> bool:
        """Count one probe; True when ``ok`` changed."""
        if passed:
            self.run = self.run + 1 if self.run > 0 else 1
            # a checking (mandatory) peer is up after its first pass (nginx Plus)
            if self.ok is None or (self.ok is False and self.run >= self.passes):
                self.ok = True
                return True
        else:
            self.run = self.run - 1 if self.run < 0 else -1
            if self.ok is not False and -self.run >= self.fails:
                self.ok = False
                return True
        return False


def peer_state(verdicts: list[Verdict]) -> int:
    if any(v.ok is False for v in verdicts):
        return L.HC_UNHEALTHY
    if any(v.ok is None for v in verdicts):
        return L.HC_CHECKING
    return L.HC_UP


def initial_ok(zone_state: int, reloaded: bool, mandatory: bool, persistent: bool) -> bool | None:
    """Rule 3: a pair's verdict when a prober starts."""
    if reloaded and not persistent:
        return None if mandatory else True
    if zone_state == L.HC_UNHEALTHY:
        return False
    if zone_state == L.HC_CHECKING:
        return None
    return True


def write_probe(zone: Zone, slot: int, passed: bool, state: int, slow_start: bool, now_ms: int) -> int:
    """Rule 2, under the lock: count the probe and store ``state``; returns the old state."""
    mv, b = zone.mv, L.peer_base(slot)
    mv[b + L.P_HC_CHECKS] += 1
    if not passed:
        mv[b + L.P_HC_FAILS] += 1
    mv[b + L.P_HC_LAST] = 1 if passed else 2
    return set_state(zone, slot, state, slow_start, now_ms)


def set_state(zone: Zone, slot: int, state: int, slow_start: bool, now_ms: int) -> int:
    """Store ``state`` with rule 4's book-keeping (under the lock); returns the old state."""
    mv, b = zone.mv, L.peer_base(slot)
    old = int(mv[b + L.P_HC_STATE])
    if old == state:
        return old
    mv[b + L.P_HC_STATE] = state
    if state == L.HC_UNHEALTHY:
        mv[b + L.P_HC_UNHEALTHY] += 1
    if state == L.HC_UP:
        start = mv[b + L.P_HC_DOWNSTART_MS]
        if start:
            mv[b + L.P_S_DOWNTIME_MS] += max(0, now_ms - start)
        mv[b + L.P_HC_DOWNSTART_MS] = 0
        if slow_start:
            mv[b + L.P_SLOW_START_MS] = now_ms
    elif old == L.HC_UP:
        mv[b + L.P_HC_DOWNSTART_MS] = now_ms
    return old


def seed_new(zone: Zone, slot: int, mandatory: bool, now_ms: int) -> None:
    """Rule 3, master side, under the lock: a new peer slot of a checked group."""
    if mandatory:
        b = L.peer_base(slot)
        zone.mv[b + L.P_HC_STATE] = L.HC_CHECKING
        zone.mv[b + L.P_HC_DOWNSTART_MS] = now_ms
