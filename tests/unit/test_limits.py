"""limit_req / limit_conn tables and realip (sans-IO), and their config errors.

The leaky bucket is driven with an explicit clock and checked against nginx 1.22's
observed sequences (shared/reference/nginx-semantics-2.md 7.3, rate 2r/s unless noted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefork_lb.config.model import RealIp
from prefork_lb.http.realip import RealIpRule
from prefork_lb.limits import table as T
from tests.unit.test_config import error, load, location, make


class Bucket:
    """One key of one limit_req zone; ``hit`` returns what nginx decides at ``t_ms``."""

    def __init__(self, rate_mrps: int = 2000, burst: int = 0, delay: int | None = 0) -> None:
        self.table = T.LimitTable(T.KIND_REQ, 64 * 1024)
        self.rate = rate_mrps
        self.burst_m = burst * 1000
        self.delay_m = (1 << 62) if delay is None else delay * 1000
        self.h = T.key_hash("\x7f\0\0\x01")

    def hit(self, t_ms: int) -> str:
        index, excess, verdict = T.req_check(
            self.table.mv, self.table.buckets, self.h, t_ms, self.rate, self.burst_m
        )
        if verdict < 0:
            return "REJECTED"
        T.req_commit(self.table.mv, self.h, index, excess, t_ms)
        if excess > self.delay_m:
            return f"DELAYED {(excess - self.delay_m) * 1000 // self.rate}ms"
        return "PASSED"


def test_l1_back_to_back_without_burst() -> None:
    b = Bucket()
    assert [b.hit(0) for _ in range(5)] == ["PASSED"] + ["REJECTED"] * 4


def test_l2_l3_the_rate_is_a_spacing() -> None:
    b = Bucket()
    assert [b.hit(t) for t in range(0, 1800, 300)] == ["PASSED", "REJECTED"] * 3
    b = Bucket()
    assert [b.hit(t) for t in range(0, 2000, 500)] == ["PASSED"] * 4


def test_l4_per_minute_rate() -> None:
    b = Bucket(rate_mrps=30 * 1000 // 60)
    assert [b.hit(t) for t in (0, 1000, 2000)] == ["PASSED", "REJECTED", "PASSED"]


def test_l5_burst_delays_by_the_spacing() -> None:
    b = Bucket(burst=3)
    assert [b.hit(0) for _ in range(6)] == [
        "PASSED",
        "DELAYED 500ms",
        "DELAYED 1000ms",
        "DELAYED 1500ms",
        "REJECTED",
        "REJECTED",
    ]


def test_l6_nodelay_frees_one_slot_per_interval() -> None:
    b = Bucket(burst=3, delay=None)
    assert [b.hit(0) for _ in range(6)] == ["PASSED"] * 4 + ["REJECTED"] * 2
    assert [b.hit(10) for _ in range(2)] == ["REJECTED"] * 2
    assert [b.hit(550) for _ in range(2)] == ["PASSED", "REJECTED"]


def test_l7_delay_threshold() -> None:
    b = Bucket(burst=4, delay=2)
    assert [b.hit(0) for _ in range(7)] == [
        "PASSED",
        "PASSED",
        "PASSED",
        "DELAYED 500ms",
        "DELAYED 1000ms",
        "REJECTED",
        "REJECTED",
    ]


def test_full_bucket_evicts_a_drained_state_first_then_the_oldest() -> None:
    t = T.LimitTable(T.KIND_REQ, T.MIN_SIZE)  # one bucket of WAYS entries
    assert t.buckets == 1
    keys = [1000 + i for i in range(T.WAYS)]
    for i, h in enumerate(keys):
        index, excess, _ = T.req_check(t.mv, 1, h, i, 1, 5000)
        T.req_commit(t.mv, h, index, excess, i)
        index, excess, _ = T.req_check(t.mv, 1, h, i, 1, 5000)  # excess 1000: not drained
        T.req_commit(t.mv, h, index, excess, i)
    index, _, verdict = T.req_check(t.mv, 1, 99, 100, 1, 5000)
    assert verdict == 0 and -1 - index == T.HEADER_WORDS  # key 1000, the least recent
    T.req_commit(t.mv, 99, index, 0, 100)
    assert t.mv[T.HEADER_WORDS] == 99


def test_limit_conn_counts_and_a_full_bucket_rejects() -> None:
    t = T.LimitTable(T.KIND_CONN, T.MIN_SIZE)
    a = T.conn_acquire(t.mv, 1, 7, 2, 0, 1)
    assert T.conn_acquire(t.mv, 1, 7, 2, 0, 1) == a
    assert T.conn_acquire(t.mv, 1, 7, 2, 0, 1) == -1
    T.conn_release(t.mv, 7, a)
    assert T.conn_acquire(t.mv, 1, 7, 2, 0, 1) == a
    for h in range(100, 100 + T.WAYS - 1):
        assert T.conn_acquire(t.mv, 1, h, 1, 0, 1) >= 0
    assert T.conn_acquire(t.mv, 1, 555, 1, 0, 1) == -2  # no entry free (nginx: 503)
    T.conn_release(t.mv, 100, T.HEADER_WORDS + T.ENTRY_WORDS)
    assert T.conn_acquire(t.mv, 1, 555, 1, 0, 1) == T.HEADER_WORDS + T.ENTRY_WORDS  # a count of 0 is free


def test_limit_conn_sums_workers_and_repair_drops_a_dead_workers_counts() -> None:
    """Each worker counts in its own entry; the limit is their sum; when a worker dies the
    master zeroes its entries and the key's other counts stay (table.py rule 6)."""
    t = T.LimitTable(T.KIND_CONN, 64 * 1024)
    b = t.buckets
    w1 = T.conn_acquire(t.mv, b, 7, 3, 0, 1)
    assert T.conn_acquire(t.mv, b, 7, 3, 0, 1) == w1
    w2 = T.conn_acquire(t.mv, b, 7, 3, 0, 2)
    assert w2 not in (w1, -1, -2)
    assert T.conn_acquire(t.mv, b, 7, 3, 0, 2) == -1  # 2 + 1 = 3 counted: the limit
    assert T.conn_repair(t.mv, 1) == 2  # worker of row 0 killed while counting 2
    assert T.conn_acquire(t.mv, b, 7, 3, 0, 2) == w2
    assert T.conn_acquire(t.mv, b, 7, 3, 0, 2) == w2
    assert T.conn_acquire(t.mv, b, 7, 3, 0, 3) == -1  # 3 of worker 2 now


def test_table_set_keeps_a_zone_across_reloads_unless_its_size_changes() -> None:
    ts = T.TableSet()
    first = ts.for_zones({(T.KIND_REQ, "one"): 65536})
    first[(T.KIND_REQ, "one")].mv[T.HEADER_WORDS] = 42
    again = ts.for_zones({(T.KIND_REQ, "one"): 65536})
    assert again[(T.KIND_REQ, "one")].mv[T.HEADER_WORDS] == 42
    bigger = ts.for_zones({(T.KIND_REQ, "one"): 131072})
    assert bigger[(T.KIND_REQ, "one")].mv[T.HEADER_WORDS] == 0
    ts.prune({(T.KIND_REQ, "one"): 131072})
    assert list(ts.tables) == [(T.KIND_REQ, "one", 131072)]


# ---- realip ----


def rule(recursive: bool, header: str = "X-Forwarded-For") -> RealIpRule:
    return RealIpRule(RealIp(("10.0.0.0/8", "127.0.0.1/32"), header, recursive))


@pytest.mark.parametrize(
    ("peer", "value", "recursive", "client"),
    [
        ("127.0.0.1", "203.0.113.7, 10.1.2.3", False, "10.1.2.3"),
        ("127.0.0.1", "203.0.113.7, 10.1.2.3", True, "203.0.113.7"),
        ("127.0.0.1", "1.1.1.1, 203.0.113.7, 10.1.2.3", True, "203.0.113.7"),
        ("127.0.0.1", "10.9.9.9, 10.1.2.3", True, "10.9.9.9"),  # all trusted: the leftmost
        ("127.0.0.1", "garbage, 10.1.2.3", True, "10.1.2.3"),  # stops at a non-address
        ("127.0.0.1", "unknown", True, None),
        ("192.0.2.1", "203.0.113.7", True, None),  # untrusted peer: header ignored
        ("127.0.0.1", "203.0.113.7:8080", False, "203.0.113.7"),
        ("127.0.0.1", "[2001:db8::1]:80", False, "2001:db8::1"),
        ("::ffff:127.0.0.1", "203.0.113.7", False, "203.0.113.7"),
    ],
)
def test_realip_forwarded_list(peer: str, value: str, recursive: bool, client: str | None) -> None:
    assert rule(recursive).client(peer, {b"x-forwarded-for": value.encode()}) == client


def test_realip_without_the_header_keeps_the_peer() -> None:
    assert rule(True, "X-Real-IP").client("127.0.0.1", {b"x-forwarded-for": b"1.2.3.4"}) is None
    assert rule(True, "X-Real-IP").client("127.0.0.1", {b"x-real-ip": b"1.2.3.4"}) == "1.2.3.4"


# ---- config ----

ZONES = """
[http.limit_req_zones.perip]
key = "$binary_remote_addr"
size = "10m"
rate = "30r/m"
[http.limit_conn_zones.addr]
key = "$binary_remote_addr"
"""


def test_limits_config_loads_and_inherits(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        make(
            http=ZONES.replace(
                "[http.limit_req", 'limit_conn = { zone = "addr", number = 10 }\n[http.limit_req', 1
            ),
            location='limit_req = { zone = "perip", burst = 20, nodelay = true }\nlimit_req_status = 429',
        ),
    )
    z = cfg.http.limit_req_zones["perip"]
    assert (z.size_bytes, z.rate_mrps) == (10 * 1024 * 1024, 500)
    loc = location(cfg)
    assert [(r.zone, r.burst, r.delay) for r in loc.limit_req] == [("perip", 20, None)]
    assert loc.limit_req_status == 429
    assert [(c.zone, c.number) for c in loc.limit_conn] == [("addr", 10)]  # from [http]


@pytest.mark.parametrize(
    ("http", "loc", "message"),
    [
        ("", 'limit_req = { zone = "nope" }', 'limit_req: [0]: unknown zone "nope"'),
        ("", 'limit_conn = { zone = "nope", number = 1 }', 'limit_conn: [0]: unknown zone "nope"'),
        ("", 'limit_conn = { zone = "addr" }', 'needs "number"'),
        ("", 'limit_req = { zone = "perip", nodelay = true, delay = 2 }', "cannot be combined"),
        ("", 'limit_req = { zone = "perip", burts = 2 }', 'unknown key "burts"'),
        ("", "limit_req_status = 200", "between 400 and 599"),
        ('[http.limit_req_zones.z]\nkey = "$remote_addr"\nrate = "0r/s"', "", "rate: must be above 0"),
        ('[http.limit_req_zones.z]\nkey = "$remote_addr"\nrate = "10/s"', "", "rate: must be a rate"),
        ('[http.limit_req_zones.z]\nkey = "$nope"\nrate = "1r/s"', "", 'key: unknown variable "$nope"'),
    ],
)
def test_limits_config_errors(tmp_path: Path, http: str, loc: str, message: str) -> None:
    text = error(tmp_path, make(http=ZONES + http, location=loc))
    assert message in text and "lb.toml" in text


def test_realip_config(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, make(server='set_real_ip_from = ["10.0.0.0/8", "192.0.2.1"]\nreal_ip_recursive = true')
    )
    assert cfg.http.servers[0].realip == RealIp(("10.0.0.0/8", "192.0.2.1/32"), "X-Real-IP", True)
    assert "set_real_ip_from[1]" in error(tmp_path, make(server='set_real_ip_from = ["10.0.0.0/8", "bad"]'))
    assert "has no effect" in error(tmp_path, make(server='real_ip_header = "X-Forwarded-For"'))
    assert "proxy_protocol" in error(
        tmp_path, make(server='set_real_ip_from = ["10.0.0.0/8"]\nreal_ip_header = "proxy_protocol"')
    )
