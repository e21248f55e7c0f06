#!/usr/bin/env python3
"""Misbehaving-upstream scenarios through prefork-lb and nginx, side by side (issue 11).

    .venv/bin/python loadtest/upstream_faults.py            # both balancers
    .venv/bin/python loadtest/upstream_faults.py --only lb  # or: --only nginx

Each scenario runs the raw-socket backend of tests/raw_backend.py behind a balancer with a
keep-alive pool (``keepalive 8`` / ``keepalive = 8``, one worker) and prints one markdown
table row per scenario: what the clients saw through prefork-lb and through nginx. To get
the "before" column, run it from a checkout of an older commit. Loopback only; every loop
is bounded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.backends import free_port
from tests.harness import LB, basic_config, request, upstream_block, wait_for
from tests.integration.test_nginx_differential import Nginx
from tests.raw_backend import RawBackend

Balancer = Callable[[list[RawBackend], str], AbstractContextManager[object]]


def lb(backends: list[RawBackend], read_timeout: str) -> AbstractContextManager[object]:
    port = free_port()
    params = {b.addr: ', max_fails = 1, fail_timeout = "60s"' for b in backends}
    upstream = upstream_block("backend", [b.addr for b in backends], extra="keepalive = 8", **params)
    conf = basic_config(port, upstream).replace('"5s"', f'"{read_timeout}"')
    inst = LB(Path(tempfile.mkdtemp()), conf, port)
    inst.port = port
    return inst


def nginx(backends: list[RawBackend], read_timeout: str) -> AbstractContextManager[object]:
    port = free_port()
    servers = [(b.addr, "max_fails=1 fail_timeout=60s") for b in backends]
    inst = Nginx(Path(tempfile.mkdtemp()), port, servers, method="keepalive 8;")
    conf = inst.dir / "nginx.conf"
    conf.write_text(conf.read_text().replace("proxy_read_timeout 5s", f"proxy_read_timeout {read_timeout}"))
    return inst


def port_of(inst: object) -> int:
    port: int = inst.port  # type: ignore[attr-defined]
    return port


def stray(make: Balancer) -> str:
    with RawBackend() as b, make([b], "5s") as inst:
        wrong = 0
        for i in range(20):
            status, headers, body = request(port_of(inst), "GET", f"/extra?id=c{i}")
            wrong += (status, body) != (200, f"c{i}".encode()) or "set-cookie" in headers
            wait_for(lambda n=i: b.stray_written() > n)
        return f"{wrong}/20 clients got a wrong response"


def late(mode: str, method: str) -> Callable[[Balancer], str]:
    def run(make: Balancer) -> str:
        with RawBackend() as b, make([b], "5s") as inst:
            wrong = 0
            for i in range(10):
                request(port_of(inst), method, f"/{mode}?id=x{i}")
                wait_for(lambda n=i: b.stray_written() > n)
                status, _, body = request(port_of(inst), "GET", f"/ok?id=c{i}")
                wrong += (status, body) != (200, f"c{i}".encode())
            return f"{wrong}/10 next clients wrong"

    return run


def post_after_reset(make: Balancer) -> str:
    with RawBackend() as b, make([b], "5s") as inst:
        failed = 0
        for i in range(30):
            request(port_of(inst), "GET", f"/rstnext?id=g{i}")
            failed += request(port_of(inst), "POST", f"/ok?id=p{i}", body=b"x")[0] != 200
        return f"{failed}/30 POSTs failed"


def rotation(make: Balancer) -> str:
    with RawBackend() as a, RawBackend() as b, make([a, b], "5s") as inst:
        for i in range(20):
            request(port_of(inst), "GET", f"/rstnext?id={i}")
        return f"split {a.count('/rstnext')}/{b.count('/rstnext')}"


def slow_reused(make: Balancer) -> str:
    with RawBackend() as b, make([b], "1s") as inst:
        request(port_of(inst), "GET", "/ok?id=warm")
        t0 = time.monotonic()
        status = request(port_of(inst), "GET", "/slow?id=s&ms=4000")[0]
        took = time.monotonic() - t0
        return f"{status} after {took:.1f} s, backend ran it {b.count('/slow')}x"


def early_hints(make: Balancer) -> str:
    with RawBackend() as b, make([b], "3s") as inst:
        t0 = time.monotonic()
        status = request(port_of(inst), "GET", "/early?id=e")[0]
        return f"{status} after {time.monotonic() - t0:.1f} s"


def lf_only(make: Balancer) -> str:
    with RawBackend() as b, make([b], "3s") as inst:
        t0 = time.monotonic()
        status = request(port_of(inst), "GET", "/lfonly?id=l")[0]
        return f"{status} after {time.monotonic() - t0:.1f} s, backend ran it {b.count('/lfonly')}x"


SCENARIOS: list[tuple[str, Callable[[Balancer], str]]] = [
    ("1 stray response after a response", stray),
    ("1 late body after HEAD", late("headlate", "HEAD")),
    ("1 late body after 204", late("nocontent", "GET")),
    ("2 POST on a reused connection the upstream reset", post_after_reset),
    ("3 resets on reused connections, 2 peers, max_fails=1", rotation),
    ("4 read timeout on a reused connection", slow_reused),
    ("5 103 + 200 in one write", early_hints),
    ("6 bare-LF head", lf_only),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["lb", "nginx"])
    args = parser.parse_args()
    columns: list[tuple[str, Balancer]] = []
    if args.only != "nginx":
        columns.append(("prefork-lb", lb))
    if args.only != "lb":
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            print("nginx is not installed (Debian nginx-light)", file=sys.stderr)
            return 1
        columns.append(("nginx", nginx))
    print("| item | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for title, scenario in SCENARIOS:
        cells = []
        for _, make in columns:
            try:
                cells.append(scenario(make))
            except Exception as e:  # a scenario that breaks is a result too
                cells.append(f"error: {e!r}"[:80])
        print(f"| {title} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
