"""The limit zones' decision counters (table.py rule 7, engine.py rule 6) and the API's
documents and reset (limits/status.py), sans-IO: the real engine over real tables, with a
no-op lock (one process) and a bare exchange (the keys are literal, so nothing is rendered
from a request). Rates of 1r/m: nothing drains while a test runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from prefork_lb.limits import status as S
from prefork_lb.limits import table as T
from prefork_lb.limits.engine import LocationLimits, release_conns
from tests.unit.test_config import load, location, make

ZONES = """
[http.limit_req_zones.a]
key = "ka"
rate = "1r/m"
[http.limit_req_zones.b]
key = "kb"
rate = "1r/m"
[http.limit_conn_zones.c]
key = "kc"
[http.limit_conn_zones.d]
key = "kd"
"""
ZONE = SimpleNamespace(lock=lambda: None, unlock=lambda: None)


def exchange() -> Any:
    return SimpleNamespace(
        remote_addr="127.0.0.1",
        request_line="GET / HTTP/1.1",
        limit_req_status="",
        limit_conn_status="",
        limit_conn_held=None,
    )


def limits(tmp_path: Path, loc: str) -> tuple[LocationLimits, dict[tuple[int, str], T.LimitTable]]:
    cfg = load(tmp_path, make(http=ZONES, location=loc))
    tables = T.TableSet().for_zones(cfg.http.limit_zone_sizes())
    built = LocationLimits.build(location(cfg), cfg.http, tables, 0)
    assert built is not None
    return built, tables


def reqs(tables: dict[tuple[int, str], T.LimitTable]) -> dict[str, Any]:
    return S.document(T.KIND_REQ, ["a", "b"], tables)


def test_limit_req_counts_one_decision_per_zone(tmp_path: Path) -> None:
    """a (burst 5, delay 1) and b (burst 1, nodelay) in one location: each request counts in
    both zones while it goes on (passed, or delayed where that zone's own excess is over its
    delay); a reject counts only in the rejecting zone."""
    lim, tables = limits(
        tmp_path,
        'limit_req = [{ zone = "a", burst = 5, delay = 1 }, { zone = "b", burst = 1, nodelay = true }]',
    )
    outcomes = []
    for _ in range(3):
        ex = exchange()
        status, _ = lim.limit_req(ex, ZONE)  # type: ignore[arg-type]
        outcomes.append((status, ex.limit_req_status))
    assert outcomes == [(0, "PASSED"), (0, "PASSED"), (503, "REJECTED")]
    assert reqs(tables) == {
        "a": {"passed": 2, "delayed": 0, "rejected": 0, "delayed_dry_run": 0, "rejected_dry_run": 0},
        "b": {"passed": 2, "delayed": 0, "rejected": 1, "delayed_dry_run": 0, "rejected_dry_run": 0},
    }


def test_limit_req_delayed_and_dry_run_counters(tmp_path: Path) -> None:
    lim, tables = limits(tmp_path, 'limit_req = { zone = "a", burst = 1 }')
    seen = []
    for _ in range(3):
        ex = exchange()
        lim.limit_req(ex, ZONE)  # type: ignore[arg-type]
        seen.append(ex.limit_req_status)
    assert seen == ["PASSED", "DELAYED", "REJECTED"]
    assert reqs(tables)["a"] == {
        "passed": 1,
        "delayed": 1,
        "rejected": 1,
        "delayed_dry_run": 0,
        "rejected_dry_run": 0,
    }
    dry, dry_tables = limits(tmp_path, 'limit_req = { zone = "a", burst = 1 }\nlimit_req_dry_run = true')
    for _ in range(3):
        assert dry.limit_req(exchange(), ZONE) == (0, 0.0)  # type: ignore[arg-type]
    assert reqs(dry_tables)["a"] == {
        "passed": 1,
        "delayed": 0,
        "rejected": 0,
        "delayed_dry_run": 1,
        "rejected_dry_run": 1,
    }


def test_limit_conn_counts_passed_everywhere_rejected_only_where_over(tmp_path: Path) -> None:
    lim, tables = limits(
        tmp_path,
        'limit_conn = [{ zone = "c", number = 5 }, { zone = "d", number = 1 }]\nlimit_conn_status = 429',
    )
    first = exchange()
    assert lim.limit_conn(first, ZONE) == 0  # type: ignore[arg-type]
    second = exchange()
    assert lim.limit_conn(second, ZONE) == 429  # type: ignore[arg-type]
    release_conns(first)
    assert lim.limit_conn(exchange(), ZONE) == 0  # type: ignore[arg-type]
    doc = S.document(T.KIND_CONN, ["c", "d"], tables)
    assert doc == {
        "c": {"passed": 2, "rejected": 0, "rejected_dry_run": 0},
        "d": {"passed": 2, "rejected": 1, "rejected_dry_run": 0},
    }


def test_reset_rules(tmp_path: Path) -> None:
    lim, tables = limits(tmp_path, 'limit_req = { zone = "a" }')
    for _ in range(2):
        lim.limit_req(exchange(), ZONE)  # type: ignore[arg-type]
    locked: list[str] = []

    def reset(parts: list[str], write: bool = True) -> None:
        S.reset(parts, write, tables, lambda: locked.append("lock"), lambda: locked.append("unlock"), "::1")

    for parts, write, code in (
        (["http", "limit_reqs", "a"], False, "MethodDisabled"),
        (["http", "limit_reqs", "nope"], True, "LimitReqNotFound"),
        (["http", "limit_conns", "a"], True, "LimitConnNotFound"),
        (["http", "limit_reqs"], True, "MethodNotAllowed"),
    ):
        assert S.is_reset_path(parts)
        with pytest.raises(S.LimitsError) as info:
            reset(parts, write)
        assert info.value.code == code
    assert reqs(tables)["a"]["rejected"] == 1 and not locked
    reset(["http", "limit_reqs", "a"])
    assert locked == ["lock", "unlock"]
    assert reqs(tables)["a"] == dict.fromkeys(
        ("passed", "delayed", "rejected", "delayed_dry_run", "rejected_dry_run"), 0
    )
    assert reqs(tables)["b"]["passed"] == 0
    lim.limit_req(exchange(), ZONE)  # type: ignore[arg-type]
    assert reqs(tables)["a"]["rejected"] == 1  # the state was kept
    assert not S.is_reset_path(["http", "caches", "x"]) and not S.is_reset_path(
        ["http", "limit_reqs", "a", "b"]
    )
