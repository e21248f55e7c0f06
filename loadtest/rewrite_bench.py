"""Micro-benchmark of the rewrite engine (issue 16: under 5 us per request for the two
download rewrites of the contract; add_header belongs to header_rules and is measured there).

    python loadtest/rewrite_bench.py [iterations]

Prints microseconds per request for: the server block with both rewrites when the first
matches (the URI changes), when neither matches, a location without rewrite_rules (the cost
is one attribute test, shown for scale), and a map lookup (exact and regex). Runs the same
``rewrite.run`` the worker runs, on an Exchange built as the connection builds it.
"""

from __future__ import annotations

import sys
import time

from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.maps import compile_map
from prefork_lb.http.rewrite import compile_rules, run
from prefork_lb.http.template import compile_template
from prefork_lb.http.variables import lookup_variable

RULES = [
    r"rewrite ^(/download/.*)/media/(\w+)\.?.*$ $1/mp3/$2.mp3 last",
    r"rewrite ^(/download/.*)/audio/(\w+)\.?.*$ $1/mp3/$2.ra last",
]
CONN = ConnectionInfo("127.0.0.1", 40000, "127.0.0.1", 8080, 1)


def exchange(target: bytes) -> Exchange:
    path, _, args = target.decode("latin-1").partition("?")
    return Exchange(CONN, b"GET", target, path, args, (1, 1), [], {}, "example.com", 0.0)


def per_request_us(label: str, target: bytes, body: object, n: int) -> None:
    f = body  # a callable on Exchange
    assert callable(f)
    best = base = float("inf")
    for _ in range(5):  # a fresh Exchange per request, as the worker; its cost is subtracted
        t0 = time.perf_counter()
        for _ in range(n):
            f(exchange(target))
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            exchange(target)
        base = min(base, time.perf_counter() - t0)
    print(f"{label:<46} {(best - base) / n * 1e6:6.2f} us/request")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    block = compile_rules(RULES)
    per_request_us(
        "2 download rewrites, first matches", b"/download/a/media/song.wma?x=1", lambda ex: run(block, ex), n
    )
    per_request_us("2 download rewrites, none matches", b"/index.html?x=1", lambda ex: run(block, ex), n)
    no_rules = None
    per_request_us(
        "location without rewrite_rules (is None test)", b"/index.html", lambda ex: no_rules is not None, n
    )
    get = lambda name: lookup_variable(name).get  # noqa: E731
    m = compile_map(
        "m", compile_template("$uri").render, {"/a": "x", "~^/api/(v\\d)/": "$1", "default": "d"}, False, get
    )
    per_request_us("map, exact key", b"/a", m.get, n)
    per_request_us("map, regex key with a capture", b"/api/v2/x", m.get, n)


if __name__ == "__main__":
    main()
