"""Micro-benchmark: the per-request pick cost of sticky cookie and sticky learn (issue 19).

    flock /tmp/prefork-lb-bench.lock .venv/bin/python loadtest/sticky_bench.py [--peers 100]

One "request" is ``pick_bench.py``'s locked loop (``new_selection``; lock; pick; unlock;
lock; free; unlock) with sticky's additions exactly as ``http/proxy.py`` makes them: a
``Binding`` per request, the pick through ``Sticky.pick`` and, per mode, the response's
work: ``Set-Cookie`` formatting (cookie) or reading the create value from the head and the
store into the learn table in the release's critical section (learn). Every request carries
a hint naming one of the peers (cookie: its md5 identifier; learn: a session learned before
timing), so the figures are those of bound requests (HIT), the common case. "plain" is the
same loop without sticky. Microseconds per request, the best of 5 timeit repeats (the box is shared).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pick_bench import BY_KEY, NOW_MS, NOW_S, make_exchange, make_setup

from prefork_lb.balance import learn, native
from prefork_lb.balance.peers import free, new_selection
from prefork_lb.balance.registry import make_balancer
from prefork_lb.balance.sticky import Binding, Sticky
from prefork_lb.config.model import StickyConfig
from prefork_lb.http.exchange import Exchange
from prefork_lb.http.template import compile_template
from prefork_lb.limits.table import LimitTable

N = 2048
HEAD = [(b"Content-Type", b"text/html"), (b"Content-Length", b"12")]


def with_cookie(i: int, cookie: str) -> Exchange:
    ex = make_exchange(i)
    ex.headers.append((b"Cookie", cookie.encode()))
    ex.header_index[b"cookie"] = cookie.encode()
    return ex


def run(method: str, peers: int, mode: str) -> float:
    setup = make_setup(BY_KEY[method], peers, 4)
    cfg = None
    if mode == "cookie":
        cfg = StickyConfig("cookie", cookie="srv", expires_s=3600.0, path="/", httponly=True)
    elif mode == "learn":
        cfg = StickyConfig(
            "learn",
            create=("$upstream_cookie_sessionid",),
            lookup=("$cookie_sessionid",),
            zone="bench",
            zone_size_bytes=1 << 20,
            timeout_s=3600.0,
        )
    upstream = replace(setup.upstream, sticky=cfg)
    group, bal = setup.group(0)
    zone = group.zone
    table = LimitTable(learn.KIND_STICKY, 1 << 20) if mode == "learn" else None
    sticky_up = upstream if cfg is not None else replace(upstream, sticky=StickyConfig("cookie", cookie="x"))
    sticky = Sticky(
        sticky_up, group, make_balancer(upstream, group, compile_template), compile_template, table
    )
    all_peers = group.all_peers()
    if mode == "cookie":
        exchanges = [with_cookie(i, f"srv={all_peers[i % peers].sid}") for i in range(N)]
    elif mode == "learn":
        exchanges = [with_cookie(i, f"sessionid=sess{i}") for i in range(N)]
        with zone:
            for i in range(N):
                sticky.learn(f"sess{i}", all_peers[i % peers], NOW_MS)
    else:
        exchanges = [make_exchange(i) for i in range(N)]
    heads = [[*HEAD, (b"Set-Cookie", f"sessionid=sess{i}; Path=/".encode())] for i in range(N)]

    def loop() -> None:
        for i, ex in enumerate(exchanges):
            sel = new_selection(group, 0)
            zone.lock()
            if mode == "plain":
                peer = bal.pick(sel, ex, NOW_S)
            else:
                b = Binding()
                peer = sticky.pick(b, sel, ex, NOW_S, NOW_MS)
            zone.unlock()
            assert peer is not None
            value = ""
            if mode == "cookie":
                sticky.set_cookie(peer, NOW_S, ex)
            elif mode == "learn":
                value = sticky.created(heads[i])
            zone.lock()
            free(sel, peer, False, NOW_S, NOW_MS)
            if value:
                sticky.learn(value, peer, NOW_MS)
            zone.unlock()

    times = timeit.repeat(loop, number=1, repeat=5)
    setup.check()
    return min(times) / N * 1e6  # the best of the repeats: the least disturbed by other load


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=100)
    args = parser.parse_args()
    print(f"peers={args.peers}, balancers: {native.describe()}, us per request (pick + free, locked)")
    print(f"{'method':<12} {'plain':>8} {'cookie':>8} {'learn':>8}")
    for method in ("round_robin", "least_conn"):
        row = [run(method, args.peers, mode) for mode in ("plain", "cookie", "learn")]
        print(f"{method:<12} " + " ".join(f"{v:8.1f}" for v in row))


if __name__ == "__main__":
    main()
