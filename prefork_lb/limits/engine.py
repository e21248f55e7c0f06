"""limit_req / limit_conn for one location, compiled at worker start (sans gevent).

nginx's PREACCESS phase (shared/reference/nginx-semantics-2.md 7): it runs after the
rewrite phase's ``return`` and before allow/deny. ``limit_req`` runs first (nginx's phase
handler order), a delayed request waits, then ``limit_conn`` counts it until it ends.

Rules:
1. One lock round trip of the shared zone's lock per module per request: every
   ``limit_req`` of the location is checked, and committed only if none rejects (nginx
   commits nothing on a reject either); ``limit_conn`` counts in one and releases with
   none (table.py rule 6).
2. Nothing is logged, rendered or timed while the lock is held: keys are rendered and the
   clock read before ``lock()``; the messages are logged after ``unlock()``.
3. An empty key is not limited (nginx).
4. Dry run: a reject passes with ``REJECTED_DRY_RUN`` (the state is not updated, as for a
   reject), a delay does not wait (``DELAYED_DRY_RUN``).
5. Log levels as nginx: rejects at ``limit_*_log_level``; delays one level lower (``info``
   stays ``info``).
6. Each decision is counted in its zone's table header (table.py rule 7), under the lock
   already held: limit_req counts every zone of the location as passed or delayed (its own
   excess over its ``delay``), or, on a reject, only the rejecting zone (rejected; the zones
   checked before it commit nothing, so they count nothing either); limit_conn counts every
   zone passed, or only the zone over its number (rejected; "could not allocate node"
   included), the counts of the zones before it being undone. In dry run, the ``*_dry_run``
   counters replace delayed and rejected. An empty key is no decision.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prefork_lb.http.template import Template, compile_template
from prefork_lb.limits import table as T
from prefork_lb.log import NOTICE

if TYPE_CHECKING:
    from prefork_lb.config.model import HttpConfig, LocationConfig
    from prefork_lb.http.exchange import Exchange
    from prefork_lb.zone.zone import Zone

log = logging.getLogger("prefork_lb.error")

NODELAY: Final = 1 << 62
_LEVELS: Final = {"info": logging.INFO, "notice": NOTICE, "warn": logging.WARNING, "error": logging.ERROR}
_LOWER: Final = {
    logging.INFO: logging.INFO,
    NOTICE: logging.INFO,
    logging.WARNING: NOTICE,
    logging.ERROR: logging.WARNING,
}

Tables = dict[tuple[int, str], T.LimitTable]


@dataclass(slots=True)
class _Req:
    name: str
    mv: memoryview
    buckets: int
    key: Template
    rate_mrps: int
    burst_m: int
    delay_m: int  # NODELAY for nodelay


@dataclass(slots=True)
class _Conn:
    name: str
    mv: memoryview
    buckets: int
    key: Template
    number: int


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class LocationLimits:
    """A location's limits (None in LocationRuntime where it has none: costs nothing)."""

    __slots__ = (
        "conn_dry_run",
        "conn_level",
        "conn_status",
        "conns",
        "req_dry_run",
        "req_level",
        "req_status",
        "reqs",
        "row1",
    )

    def __init__(self, loc: LocationConfig, http: HttpConfig, tables: Tables, row: int) -> None:
        reqs = []
        for lr in loc.limit_req:
            z = http.limit_req_zones[lr.zone]
            t = tables[(T.KIND_REQ, lr.zone)]
            delay_m = NODELAY if lr.delay is None else lr.delay * 1000
            reqs.append(
                _Req(lr.zone, t.mv, t.buckets, compile_template(z.key), z.rate_mrps, lr.burst * 1000, delay_m)
            )
        conns = []
        for lc in loc.limit_conn:
            cz = http.limit_conn_zones[lc.zone]
            t = tables[(T.KIND_CONN, lc.zone)]
            conns.append(_Conn(lc.zone, t.mv, t.buckets, compile_template(cz.key), lc.number))
        self.reqs = tuple(reqs)
        self.conns = tuple(conns)
        self.req_status = loc.limit_req_status
        self.req_dry_run = loc.limit_req_dry_run
        self.req_level = _LEVELS[loc.limit_req_log_level]
        self.conn_status = loc.limit_conn_status
        self.conn_dry_run = loc.limit_conn_dry_run
        self.conn_level = _LEVELS[loc.limit_conn_log_level]
        self.row1 = row + 1  # this worker's zone row + 1: its limit_conn entries (table.py rule 6)

    @classmethod
    def build(cls, loc: LocationConfig, http: HttpConfig, tables: Tables, row: int) -> LocationLimits | None:
        if not loc.limit_req and not loc.limit_conn:
            return None
        return cls(loc, http, tables, row)

    # ---- limit_req ----

    def limit_req(self, ex: Exchange, zone: Zone) -> tuple[int, float]:
        """(status to answer with, 0 to go on; seconds to wait first). Sets
        ``ex.limit_req_status``."""
        keys = []
        for r in self.reqs:
            key = r.key.render(ex)
            if key:
                keys.append((r, T.key_hash(key)))
        if not keys:
            return 0, 0.0
        now_ms = _now_ms()
        rejected: _Req | None = None
        excess_at = 0
        delay_ms = 0
        delayed: _Req | None = None
        checked = []
        dry = self.req_dry_run
        zone.lock()
        try:
            for r, h in keys:
                index, excess, verdict = T.req_check(r.mv, r.buckets, h, now_ms, r.rate_mrps, r.burst_m)
                if verdict < 0:
                    rejected, excess_at = r, excess
                    r.mv[T.C_REJECTED_DRY_RUN if dry else T.C_REJECTED] += 1  # rule 6
                    break
                checked.append((r, h, index, excess))
            else:
                for r, h, index, excess in checked:
                    T.req_commit(r.mv, h, index, excess, now_ms)
                    if excess > r.delay_m:
                        r.mv[T.C_DELAYED_DRY_RUN if dry else T.C_DELAYED] += 1
                    else:
                        r.mv[T.C_PASSED] += 1
        finally:
            zone.unlock()
        if rejected is not None:
            ex.limit_req_status = "REJECTED_DRY_RUN" if dry else "REJECTED"
            if log.isEnabledFor(self.req_level):
                log.log(
                    self.req_level,
                    'limiting requests%s, excess: %d.%03d by zone "%s", client: %s, request: "%s"',
                    ", dry run" if dry else "",
                    excess_at // 1000,
                    excess_at % 1000,
                    rejected.name,
                    ex.remote_addr,
                    ex.request_line,
                )
            return (0, 0.0) if dry else (self.req_status, 0.0)
        for r, _h, _index, excess in checked:
            if excess > r.delay_m:
                d = (excess - r.delay_m) * 1000 // r.rate_mrps
                if d > delay_ms:
                    delay_ms, excess_at, delayed = d, excess, r
        if delayed is None:
            ex.limit_req_status = "PASSED"
            return 0, 0.0
        level = _LOWER[self.req_level]
        if log.isEnabledFor(level):
            log.log(
                level,
                'delaying request%s, excess: %d.%03d, by zone "%s", client: %s, request: "%s"',
                ", dry run" if self.req_dry_run else "",
                excess_at // 1000,
                excess_at % 1000,
                delayed.name,
                ex.remote_addr,
                ex.request_line,
            )
        if self.req_dry_run:
            ex.limit_req_status = "DELAYED_DRY_RUN"
            return 0, 0.0
        ex.limit_req_status = "DELAYED"
        return 0, delay_ms / 1000

    # ---- limit_conn ----

    def limit_conn(self, ex: Exchange, zone: Zone) -> int:
        """The status to answer with, or 0: counted, ``release`` when the request ends
        (``ex.limit_conn_held``). Sets ``ex.limit_conn_status``."""
        keys = []
        for c in self.conns:
            key = c.key.render(ex)
            if key:
                keys.append((c, T.key_hash(key)))
        if not keys:
            return 0
        now_ms = _now_ms()
        held: list[tuple[memoryview, int, int]] = []
        over: _Conn | None = None
        full = False
        zone.lock()
        try:
            for c, h in keys:
                index = T.conn_acquire(c.mv, c.buckets, h, c.number, now_ms, self.row1)
                if index < 0:
                    over, full = c, index == -2
                    break
                held.append((c.mv, h, index))
            if over is not None:  # nginx: the counts taken for earlier limits are undone
                for mv, h, index in held:
                    T.conn_release(mv, h, index)
                held = []
                over.mv[T.C_REJECTED_DRY_RUN if self.conn_dry_run else T.C_REJECTED] += 1  # rule 6
            else:
                for mv, _h, _index in held:
                    mv[T.C_PASSED] += 1
        finally:
            zone.unlock()
        if over is None:
            ex.limit_conn_status = "PASSED"
            ex.limit_conn_held = held
            return 0
        dry = self.conn_dry_run
        ex.limit_conn_status = "REJECTED_DRY_RUN" if dry else "REJECTED"
        if full:
            log.error('could not allocate node in limit_conn zone "%s"', over.name)
        elif log.isEnabledFor(self.conn_level):
            log.log(
                self.conn_level,
                'limiting connections%s by zone "%s", client: %s, request: "%s"',
                ", dry run" if dry else "",
                over.name,
                ex.remote_addr,
                ex.request_line,
            )
        return 0 if dry else self.conn_status


def release_conns(ex: Exchange) -> None:
    """The request counted by ``LocationLimits.limit_conn`` ended: no lock (table.py rule 6:
    only this worker writes its entries, and no one takes an entry that still counts)."""
    held = ex.limit_conn_held
    ex.limit_conn_held = None
    if held:
        for mv, h, index in held:
            T.conn_release(mv, h, index)
