"""Micro-benchmark of the response head with header rules (issue 16, http/header_rules.py).

    .venv/bin/python loadtest/header_rules_bench.py [iterations]

Times ``build_response_head`` for a typical upstream response (8 fields) in µs per call:
the head as built before issue 16 (the baseline, copied here), a location with no header
key (``DEFAULT_RULES``), the default ``proxy_redirect`` of every proxied location (no
Location in the response, then one to rewrite), and one ``add_header X-Upstream
$upstream_addr``. Best of 5 runs, one process, no I/O.
"""

from __future__ import annotations

import sys
import timeit
from typing import Final

from prefork_lb.config.model import LocationConfig, ProxyPass
from prefork_lb.http.exchange import Attempt, ConnectionInfo, Exchange
from prefork_lb.http.header_rules import DEFAULT_RULES, compile_rules
from prefork_lb.http.headers import DATES, HOP_BY_HOP, SERVER_HEADER, build_response_head, status_line

_OLD_DROP: Final = HOP_BY_HOP | {b"content-length", b"server", b"date"}


def old_build_response_head(
    status: int,
    reason: bytes,
    upstream_headers: list[tuple[bytes, bytes]],
    connection_listed: frozenset[bytes],
    framing: bytes,
    keep_alive: bool,
    now: float,
) -> bytes:
    """build_response_head as it was before issue 16 (the baseline)."""
    parts = [status_line(status, reason), SERVER_HEADER, DATES.field(now)]
    drop = _OLD_DROP | connection_listed if connection_listed else _OLD_DROP
    for name, value in upstream_headers:
        if name.lower() not in drop:
            parts += [name, b": ", value, b"\r\n"]
    parts.append(framing)
    parts.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(parts)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    ex = Exchange(
        conn=ConnectionInfo("192.0.2.7", 5555, "127.0.0.1", 8080, 1),
        method=b"GET",
        target=b"/download/a",
        path="/download/a",
        args="",
        version=(1, 1),
        headers=[],
        header_index={},
        host="example.test",
        start_time=0.0,
        attempts=[Attempt("10.0.0.1:8080", 200)],
    )
    fields = [
        (b"Server", b"app"),
        (b"Date", b"Mon, 07 Dec 2026 17:00:00 GMT"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"1234"),
        (b"Cache-Control", b"no-cache"),
        (b"ETag", b'"abc"'),
        (b"X-Request-Id", b"0123456789abcdef"),
        (b"Vary", b"Accept-Encoding"),
    ]
    with_location = [*fields, (b"Location", b"http://backend/download/b")]
    proxy = ProxyPass(upstream="backend", uri=None, host_header="backend")
    loc = LocationConfig("/download/", "", "/download/", None, proxy, None)
    redirect = compile_rules(loc)
    add = compile_rules(
        LocationConfig(
            "/download/",
            "",
            "/download/",
            None,
            proxy,
            None,
            add_header=(("X-Upstream", "$upstream_addr", False),),
        )
    )
    fl = b"Content-Length: 1234\r\n"
    none: frozenset[bytes] = frozenset()
    cases = {
        "before issue 16 (baseline)": lambda: old_build_response_head(
            200, b"OK", fields, none, fl, True, 1.0
        ),
        "no header key (DEFAULT_RULES)": lambda: build_response_head(
            200, b"OK", fields, none, fl, True, 1.0, DEFAULT_RULES, ex
        ),
        "proxy_redirect default, no Location": lambda: build_response_head(
            200, b"OK", fields, none, fl, True, 1.0, redirect, ex
        ),
        "proxy_redirect default, Location rewritten": lambda: build_response_head(
            302, b"Found", with_location, none, fl, True, 1.0, redirect, ex
        ),
        "one add_header $upstream_addr": lambda: build_response_head(
            200, b"OK", fields, none, fl, True, 1.0, add, ex
        ),
    }
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        print(f"{name:45s} {best:6.2f} us")


if __name__ == "__main__":
    main()
