"""Micro-benchmark: what limit_req / limit_conn / realip cost per request in one worker.

    .venv/bin/python loadtest/limits_micro.py

Times ``LocationLimits.limit_req`` (render key, one zone lock round trip, check + commit),
``limit_conn`` + ``release_conns`` (one round trip; the release takes no lock), and
``RealIpRule.client`` for an X-Forwarded-For of two hops, on a real zone (futex lock when
the extension is built) and 10 MB tables. Keys cycle over 10,000 client addresses.
"""

from __future__ import annotations

import time

from prefork_lb.config.model import (
    HttpConfig,
    LimitConn,
    LimitConnZone,
    LimitReq,
    LimitReqZone,
    LocationConfig,
    RealIp,
)
from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.realip import RealIpRule
from prefork_lb.limits.engine import LocationLimits, release_conns
from prefork_lb.limits.table import TableSet
from prefork_lb.zone.zone import Zone

N = 200_000


def main() -> None:
    http = HttpConfig(
        limit_req_zones={
            "perip": LimitReqZone("perip", "$binary_remote_addr", 10 << 20, 10**9, "1000000r/s")
        },
        limit_conn_zones={"addr": LimitConnZone("addr", "$binary_remote_addr", 10 << 20)},
    )
    loc = LocationConfig(
        match="/",
        modifier="",
        pattern="/",
        regex=None,
        proxy_pass=None,
        return_=None,
        limit_req=(LimitReq("perip", 1000, None),),
        limit_conn=(LimitConn("addr", 1000),),
    )
    tables = TableSet().for_zones(http.limit_zone_sizes())
    limits = LocationLimits(loc, http, tables, 0)
    zone = Zone.for_peers(1)
    exchanges = []
    for i in range(10_000):
        conn = ConnectionInfo(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1234, "127.0.0.1", 80, i)
        exchanges.append(
            Exchange(
                conn,
                b"GET",
                b"/",
                "/",
                "",
                (1, 1),
                [],
                {b"x-forwarded-for": b"203.0.113.7, 10.0.0.1"},
                "",
                0.0,
            )
        )
    rule = RealIpRule(RealIp(("10.0.0.0/8",), "X-Forwarded-For", True))
    for name, fn in (
        ("limit_req", lambda ex: limits.limit_req(ex, zone)),
        ("limit_conn + release", lambda ex: (limits.limit_conn(ex, zone), release_conns(ex))),
        ("realip X-Forwarded-For, 2 hops", lambda ex: rule.client(ex.conn.remote_addr, ex.header_index)),
    ):
        start = time.perf_counter()
        for i in range(N):
            fn(exchanges[i % 10_000])
        per_us = (time.perf_counter() - start) / N * 1e6
        print(f"{name:32s} {per_us:6.2f} us per request ({zone.lock_kind} lock)")


if __name__ == "__main__":
    main()
