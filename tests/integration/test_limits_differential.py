"""Differential: limit_req, limit_conn and realip through real nginx 1.22 and prefork-lb, one
nginx.conf for both (prefork-lb converts it: tests/nginx_conf.py), both with 2 workers
(nginx's state is in its shm zone, ours in the master's shared tables: the limit is per
server in both). Scenarios: shared/reference/nginx-semantics-2.md 7.3 (L1, L6, L8, L9, L10,
L11, L12) with rates chosen so nothing drains while a scenario runs, and realip. Compared:
the statuses the client saw and the logged variables, request by request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.backends import Backend, GatedBackend
from tests.harness import request
from tests.nginx_conf import NGINX, run_conf_both, scenario

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]
Conf = Callable[[int], str]
Ask = Callable[[int], list[tuple[int, str]]]
LOG = "$status|$limit_req_status|$limit_conn_status|$remote_addr|$realip_remote_addr|$request_uri"


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend(count=1) as b:
        yield b


def conf(addr: str, http: str, location: str, server: str = "") -> Conf:
    def make(port: int) -> str:
        text = scenario(f"""
    log_format diff '{LOG}';
    access_log access.log diff;
    {http}
    server {{
        listen 127.0.0.1:{port};
        {server}
        location /ret {{
            {location}
            return 200 "ok";
        }}
        location / {{
            {location}
            proxy_pass http://{addr};
        }}
    }}
""")
        return text.replace("worker_processes 1;", "worker_processes 2;")

    return make


def sequential(paths: list[str], headers: dict[str, str] | None = None) -> Ask:
    def ask(port: int) -> list[tuple[int, str]]:
        return [(request(port, "GET", p, headers=headers)[0], p) for p in paths]

    return ask


def same(tmp_path: Path, make: Conf, ask: Ask) -> list[str]:
    """The answers in order; the log lines as a multiset (sorted): with 2 workers a line can
    land after the next request's (each is written after its response is sent)."""
    (ngx, ngx_log), (ours, our_log) = run_conf_both(tmp_path, make, ask)
    assert ours == ngx
    assert sorted(our_log) == sorted(ngx_log)
    return sorted(our_log)


ZONE = "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;"


def test_l1_no_burst(tmp_path: Path, backend: Backend) -> None:
    log = same(tmp_path, conf(backend.addrs[0], ZONE, "limit_req zone=one;"), sequential(["/"] * 5))
    assert [line.split("|")[:2] for line in log] == [["200", "PASSED"]] + [["503", "REJECTED"]] * 4  # sorted


def test_l6_burst_nodelay_and_l8_status(tmp_path: Path, backend: Backend) -> None:
    loc = "limit_req zone=one burst=3 nodelay; limit_req_status 429;"
    log = same(tmp_path, conf(backend.addrs[0], ZONE, loc), sequential(["/"] * 6))
    assert [line.split("|")[0] for line in log] == ["200"] * 4 + ["429"] * 2


def test_l9_dry_run_and_l10_return(tmp_path: Path, backend: Backend) -> None:
    loc = "limit_req zone=one; limit_req_dry_run on;"
    log = same(tmp_path, conf(backend.addrs[0], ZONE, loc), sequential(["/"] * 3 + ["/ret"] * 2))
    assert sorted(line.split("|")[1] for line in log) == ["-"] * 2 + ["PASSED"] + ["REJECTED_DRY_RUN"] * 2


def test_l11_l12_limit_conn(tmp_path: Path) -> None:
    """One request held by the upstream; the next ones with the same key are rejected
    (limit_conn_status 429) until it ends; then one passes."""

    def ask_with(gate: GatedBackend) -> Ask:
        def ask(port: int) -> list[tuple[int, str]]:
            gate.shut()
            out: list[tuple[int, str]] = []
            t = threading.Thread(target=lambda: out.append((request(port, "GET", "/held")[0], "/held")))
            t.start()
            gate.wait_arrived(1)
            busy = [(request(port, "GET", f"/busy{i}")[0], f"/busy{i}") for i in range(3)]
            gate.release()
            t.join()
            return busy + out + [(request(port, "GET", "/after")[0], "/after")]

        return ask

    with GatedBackend() as gate:
        http = "limit_conn_zone $binary_remote_addr zone=addr:1m;"
        loc = "limit_conn addr 1; limit_conn_status 429;"
        (ngx, ngx_log), (ours, our_log) = run_conf_both(tmp_path, conf(gate.addr, http, loc), ask_with(gate))
    assert ours == ngx == [(429, "/busy0"), (429, "/busy1"), (429, "/busy2"), (200, "/held"), (200, "/after")]
    assert sorted(our_log) == sorted(ngx_log)  # the held request is logged when it ends


def test_realip_x_forwarded_for_recursive(tmp_path: Path, backend: Backend) -> None:
    server = (
        "set_real_ip_from 127.0.0.1; set_real_ip_from 10.0.0.0/8; "
        "real_ip_header X-Forwarded-For; real_ip_recursive on;"
    )
    make = conf(backend.addrs[0], "", "", server)

    def ask(port: int) -> list[tuple[int, str]]:
        out = []
        for i, xff in enumerate(
            ["203.0.113.7, 10.1.2.3", "10.9.9.9, 10.1.2.3", "garbage, 10.1.2.3", "unknown"]
        ):
            out.append((request(port, "GET", f"/r{i}", headers={"X-Forwarded-For": xff})[0], f"/r{i}"))
        return out

    rows = {line.split("|")[5]: line.split("|")[3] for line in same(tmp_path, make, ask)}
    assert rows == {"/r0": "203.0.113.7", "/r1": "10.9.9.9", "/r2": "10.1.2.3", "/r3": "127.0.0.1"}


def test_l7_concurrent_burst_with_delay_threshold(tmp_path: Path, backend: Backend) -> None:
    """L7 at 30r/m (one request per 2 s, so the threads' start spread changes nothing): 7
    concurrent requests, burst=4 delay=2: 3 pass at once, 2 are delayed (then 200), 2 are
    rejected. The log lines come in completion order: compared as counts."""
    loc = "limit_req zone=one burst=4 delay=2;"

    def ask(port: int) -> list[tuple[int, str]]:
        barrier = threading.Barrier(7)
        out: list[tuple[int, str]] = []

        def one(i: int) -> None:
            barrier.wait()
            out.append((request(port, "GET", f"/c{i}", timeout_s=30)[0], "/"))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(out)

    zone = "limit_req_zone $binary_remote_addr zone=one:1m rate=30r/m;"
    (ngx, ngx_log), (ours, our_log) = run_conf_both(tmp_path, conf(backend.addrs[0], zone, loc), ask)
    assert ours == ngx == [(200, "/")] * 5 + [(503, "/")] * 2

    def counts(log: list[str]) -> list[tuple[str, str]]:
        return sorted((line.split("|")[0], line.split("|")[1]) for line in log)

    assert counts(our_log) == counts(ngx_log)
    assert counts(our_log).count(("200", "DELAYED")) == 2
