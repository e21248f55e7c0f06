"""NGINX Plus's ``/api/N/http/limit_reqs`` and ``/api/N/http/limit_conns`` end to end
(limits/status.py, table.py rule 7, engine.py rule 6).

A real master with 2 workers, a limit_req zone, a dry-run limit_req zone and a limit_conn
zone keyed by ``$arg_k`` (so every key starts a fresh, deterministic state), rates of 1r/m
(nothing drains while a test runs, so every outcome is exact), a gated upstream to hold
limit_conn counts. Every figure the API reports is compared with the ``$limit_req_status`` /
``$limit_conn_status`` the access log recorded for the same requests, whichever worker
answered; the exporter (Debian's nginx-prometheus-exporter, NGINX Plus mode) must report the
same numbers under its names; ``DELETE`` resets a zone (only where the API is writable); a
reload keeps the counters with the zone.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend, GatedBackend, free_port
from tests.harness import LB, accepts, request, wait_for
from tests.integration.test_dashboard_browser import browser, wait_page  # noqa: F401 (fixture)
from tests.integration.test_prometheus_exporter import EXPORTER, Exporter, families

FORMAT = "$pid|$status|$limit_req_status|$limit_conn_status|$uri|$arg_k"


def lb_config(port: int, api_port: int, backend: str, gate: str, timeout: str = "5s") -> str:
    return f"""
workers = 2
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "access.log"
[http.log_formats]
lim = '{FORMAT}'
[http.limit_req_zones.rq]
key = "$arg_k"
size = "64k"
rate = "1r/m"
[http.limit_req_zones.dry]
key = "$arg_k"
size = "64k"
rate = "1r/m"
[http.limit_conn_zones.cn]
key = "$arg_k"
size = "64k"
[http.upstreams.backend]
servers = [{{ address = "{backend}" }}]
[http.upstreams.gated]
servers = [{{ address = "{gate}" }}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
log_format = "lim"
  [[http.servers.locations]]
  match = "/req"
  proxy_pass = "http://backend"
  proxy_read_timeout = "{timeout}"
  limit_req = {{ zone = "rq", burst = 2, delay = 1 }}
  [[http.servers.locations]]
  match = "/dry"
  proxy_pass = "http://backend"
  limit_req = {{ zone = "dry", burst = 2 }}
  limit_req_dry_run = true
  [[http.servers.locations]]
  match = "/conn"
  proxy_pass = "http://gated"
  proxy_read_timeout = "30s"
  limit_conn = {{ zone = "cn", number = 1 }}
  limit_conn_status = 429
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
access_log = "off"
  [[http.servers.locations]]
  match = "/api/"
  api = {{ write = true }}
  [[http.servers.locations]]
  match = "/ro/"
  api = true
  [[http.servers.locations]]
  match = "= /metrics"
  metrics = true
  [[http.servers.locations]]
  match = "/dashboard"
  dashboard = true
"""


def api(api_port: int, path: str, method: str = "GET", prefix: str = "/api/9") -> tuple[int, Any]:
    status, _, body = request(api_port, method, prefix + path)
    return status, json.loads(body) if body else None


def rows(lb: LB, lines: int = 0) -> list[list[str]]:
    return [line.split("|") for line in lb.access_log(lines)]


def tally(log: list[list[str]], uri: str, column: int) -> Counter[str]:
    return Counter(r[column] for r in log if r[4] == uri)


class Scenario:
    """The traffic: known outcomes per key, driven until both workers decided each kind."""

    def __init__(self, lb: LB, port: int, api_port: int, gate: GatedBackend) -> None:
        self.lb, self.port, self.api_port, self.gate = lb, port, api_port, gate
        self.logged = 0  # access log lines written by the traffic so far
        self.req_keys_used = 0  # /req keys that passed twice
        self.delayed_keys = 0  # of which had their third request delayed

    def get(self, path: str) -> int:
        status = request(self.port, "GET", path)[0]
        self.logged += 1
        return status

    def req_keys(self) -> list[list[int]]:
        """/req, per key: PASSED, PASSED (excess 1 is not over delay 1); at least 2 keys,
        until both workers passed requests."""
        out: list[list[int]] = []

        def both() -> bool:
            k = len(out)
            out.append([self.get(f"/req?k=r{k}"), self.get(f"/req?k=r{k}")])
            log = [r for r in rows(self.lb, self.logged) if r[4] == "/req" and r[2] == "PASSED"]
            return k >= 1 and len({r[0] for r in log}) == 2

        wait_for(both, what="/req passed by both workers")
        return out

    def rejected(self, key: str) -> int:
        return self.get(f"/req?k={key}")

    def delayed(self, key: str) -> None:
        """A third request of ``key`` is DELAYED (excess 2 > delay 1, about 60 s at 1r/m): the
        decision is counted at once; the client then goes away (499, logged as DELAYED)."""
        before = api(self.api_port, "/http/limit_reqs/rq")[1]["delayed"]
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            sock.sendall(f"GET /req?k={key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            wait_for(
                lambda: api(self.api_port, "/http/limit_reqs/rq")[1]["delayed"] == before + 1,
                what="the delayed decision",
            )
        finally:
            sock.close()
        self.logged += 1
        self.lb.access_log(self.logged)  # the 499 is logged


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[tuple[LB, int, int, GatedBackend, Path]]:
    port, api_port = free_port(), free_port()
    with Backend(count=1) as backend, GatedBackend() as gate:
        text = lb_config(port, api_port, backend.addrs[0], gate.addr)
        with LB(tmp_path, text, port) as running:
            wait_for(lambda: accepts(api_port), what="the API server")
            yield running, port, api_port, gate, tmp_path


def drive(lb: LB, port: int, api_port: int, gate: GatedBackend) -> Scenario:
    s = Scenario(lb, port, api_port, gate)
    keys = s.req_keys()
    assert all(pair == [200, 200] for pair in keys)
    # the third request of a key is DELAYED (excess 2: over delay 1, within burst 2), every
    # later one REJECTED (excess 3); keys until both workers delayed one, then rejected some
    delayed_keys = 0

    def delayed_by_both() -> bool:
        nonlocal delayed_keys
        key = f"r{delayed_keys}"
        if delayed_keys >= len(keys):  # a fresh key: its two passes first
            assert [s.get(f"/req?k={key}") for _ in range(2)] == [200, 200]
            keys.append([200, 200])
        s.delayed(key)
        delayed_keys += 1
        log = [r for r in rows(lb, s.logged) if r[4] == "/req" and r[2] == "DELAYED"]
        assert all(r[1] == "499" for r in log)
        return delayed_keys >= 2 and len({r[0] for r in log}) == 2

    wait_for(delayed_by_both, what="/req delayed by both workers")
    s.req_keys_used, s.delayed_keys = len(keys), delayed_keys

    def rejected_by_both() -> bool:
        assert s.rejected(f"r{s.logged % 2}") == 503
        log = [r for r in rows(lb, s.logged) if r[4] == "/req" and r[2] == "REJECTED"]
        return len({r[0] for r in log}) == 2

    wait_for(rejected_by_both, what="/req rejected by both workers")
    # dry run, per key: PASSED, DELAYED_DRY_RUN x2 (excess 1, 2 > delay 0), REJECTED_DRY_RUN
    for k in range(4):
        assert [s.get(f"/dry?k=d{k}") for _ in range(4)] == [200] * 4
    # limit_conn: one request of key c held at the gate, the others of key c rejected by
    # both workers, then released
    held: list[int] = []
    t = threading.Thread(target=lambda: held.append(request(port, "GET", "/conn?k=c", timeout_s=30)[0]))
    t.start()
    gate.wait_arrived(1)

    def conn_rejected_by_both() -> bool:
        assert s.get("/conn?k=c") == 429
        log = [r for r in rows(lb, s.logged) if r[4] == "/conn" and r[3] == "REJECTED"]
        return len({r[0] for r in log}) == 2

    wait_for(conn_rejected_by_both, what="/conn rejected by both workers")
    gate.release()
    t.join()
    s.logged += 1
    assert held == [200]
    assert s.get("/conn?k=c2") == 200
    lb.access_log(s.logged)
    return s


def expected(lb: LB, logged: int) -> dict[str, Any]:
    """The API documents the access log implies (rule: one decision per request and zone)."""
    log = rows(lb, logged)
    req = tally(log, "/req", 2)
    dry = tally(log, "/dry", 2)
    conn = tally(log, "/conn", 3)
    return {
        "limit_reqs": {
            "rq": {
                "passed": req["PASSED"],
                "delayed": req["DELAYED"],
                "rejected": req["REJECTED"],
                "delayed_dry_run": 0,
                "rejected_dry_run": 0,
            },
            "dry": {
                "passed": dry["PASSED"],
                "delayed": 0,
                "rejected": 0,
                "delayed_dry_run": dry["DELAYED_DRY_RUN"],
                "rejected_dry_run": dry["REJECTED_DRY_RUN"],
            },
        },
        "limit_conns": {
            "cn": {"passed": conn["PASSED"], "rejected": conn["REJECTED"], "rejected_dry_run": 0}
        },
    }


def test_limit_counters_are_server_wide_exact_and_reset(
    lb: tuple[LB, int, int, GatedBackend, Path],
) -> None:
    """Every decision of both workers is counted once, in its zone: the documents equal the
    access log's tally, with the exact figures the 1r/m rates imply (2 passed per /req key,
    one delayed for each of 2 keys; per /dry key 1 passed, 2 delayed_dry_run, 1
    rejected_dry_run). Catches per-worker counters (the answering worker's share only), a
    decision counted twice or in the wrong counter, a DELETE that does nothing or resets
    another zone, and a read-only API that writes."""
    running, port, api_port, gate, _ = lb
    s = drive(running, port, api_port, gate)
    want = expected(running, s.logged)
    rq, dry, cn = want["limit_reqs"]["rq"], want["limit_reqs"]["dry"], want["limit_conns"]["cn"]
    assert (rq["passed"], rq["delayed"]) == (2 * s.req_keys_used, s.delayed_keys) and rq["rejected"] >= 2
    assert dry == {"passed": 4, "delayed": 0, "rejected": 0, "delayed_dry_run": 8, "rejected_dry_run": 4}
    assert cn["passed"] == 2 and cn["rejected"] >= 2
    for _ in range(4):  # whichever worker answers: the same server-wide figures
        assert api(api_port, "/http/limit_reqs") == (200, want["limit_reqs"])
        assert api(api_port, "/http/limit_conns") == (200, want["limit_conns"])
    assert api(api_port, "/http/limit_reqs/dry") == (200, dry)
    assert api(api_port, "/http/limit_reqs/nope")[0] == 404
    assert "limit_reqs" in api(api_port, "/http")[1]

    # reset: read-only location refuses, unknown zone 404, then one zone only is zeroed
    status, doc = api(api_port, "/http/limit_reqs/rq", "DELETE", prefix="/ro/9")
    assert (status, doc["error"]["code"]) == (405, "MethodDisabled")
    status, doc = api(api_port, "/http/limit_reqs/nope", "DELETE")
    assert (status, doc["error"]["code"]) == (404, "LimitReqNotFound")
    status, doc = api(api_port, "/http/limit_conns/rq", "DELETE")
    assert (status, doc["error"]["code"]) == (404, "LimitConnNotFound")
    assert api(api_port, "/http/limit_reqs", "DELETE")[0] == 405
    assert api(api_port, "/http/limit_reqs/rq")[1] == rq  # nothing above reset anything
    assert api(api_port, "/http/limit_reqs/rq", "DELETE") == (204, None)
    assert api(api_port, "/http/limit_conns/cn", "DELETE") == (204, None)
    zero_req = dict.fromkeys(rq, 0)
    assert api(api_port, "/http/limit_reqs") == (200, {"rq": zero_req, "dry": dry})
    assert api(api_port, "/http/limit_conns") == (200, {"cn": dict.fromkeys(cn, 0)})
    # the limit state itself is kept: key r0 is still over its burst
    assert request(port, "GET", "/req?k=r0")[0] == 503
    assert api(api_port, "/http/limit_reqs/rq")[1] == {**zero_req, "rejected": 1}
    assert 'http limit_reqs zone "rq" statistics reset by 127.0.0.1' in running.output()


def test_limit_counters_survive_a_reload(lb: tuple[LB, int, int, GatedBackend, Path]) -> None:
    """The counters live with the zone's table: a reload that keeps the zones (another
    proxy_read_timeout) keeps them, and the new workers add to them. Catches counters kept
    in the workers (a reload would zero them)."""
    running, port, api_port, gate, _ = lb
    s = drive(running, port, api_port, gate)
    before = {c: api(api_port, f"/http/{c}")[1] for c in ("limit_reqs", "limit_conns")}
    assert before == expected(running, s.logged)
    pids = {p.pid for p in running.workers()}
    text = running.conf.read_text()
    running.conf.write_text(text.replace('proxy_read_timeout = "5s"', 'proxy_read_timeout = "6s"'))
    assert running.signal("reload").returncode == 0
    wait_for(
        lambda: (new := {p.pid for p in running.workers()}) and not new & pids, what="the new generation"
    )
    assert {c: api(api_port, f"/http/{c}")[1] for c in ("limit_reqs", "limit_conns")} == before
    assert request(port, "GET", "/req?k=r0")[0] == 503  # the state survived too
    assert api(api_port, "/http/limit_reqs/rq")[1]["rejected"] == before["limit_reqs"]["rq"]["rejected"] + 1


@pytest.mark.skipif(EXPORTER is None, reason="prometheus-nginx-exporter is not installed")
def test_exporter_and_metrics_report_the_limit_counters(
    lb: tuple[LB, int, int, GatedBackend, Path],
) -> None:
    """nginx-prometheus-exporter (NGINX Plus mode, API 8) reads the same figures as
    nginxplus_limit_request_*{zone} / nginxplus_limit_connection_*{zone}, and prefork-lb's
    own /metrics exposes the same families with the same values. Catches a document the
    exporter's client cannot read (nginxplus_up 0) and misnamed series."""
    running, port, api_port, gate, tmp_path = lb
    s = drive(running, port, api_port, gate)
    want = expected(running, s.logged)
    exp = Exporter(f"http://127.0.0.1:{api_port}/api/", tmp_path / "exporter.log")
    try:
        theirs = families(exp.scrape())
    finally:
        exp.stop()
    assert theirs["nginxplus_up"].samples[0].value == 1, exp.log()
    conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        ours = families(conn.getresponse().read().decode())
    finally:
        conn.close()
    for prefix, collection in (("limit_request", "limit_reqs"), ("limit_connection", "limit_conns")):
        for zone, doc in want[collection].items():
            for field, value in doc.items():
                name = f"nginxplus_{prefix}_{field}"
                for fams in (theirs, ours):
                    samples = {x.labels["zone"]: x.value for x in fams[name].samples}
                    assert samples[zone] == value, (name, zone, fams is ours)
                    assert fams[name].type == "counter"


def test_dashboard_shows_the_limit_zones(
    lb: tuple[LB, int, int, GatedBackend, Path],
    browser: Any,  # noqa: F811
) -> None:
    """The limits table: one row per zone and kind with the API's figures (headless
    Chromium; skipped like test_dashboard_browser.py without it)."""
    _, port, api_port, _, _ = lb
    assert [request(port, "GET", "/dry?k=x")[0] for _ in range(4)] == [200] * 4
    assert [request(port, "GET", "/req?k=x")[0] for _ in range(2)] == [200] * 2
    browser.get(f"http://127.0.0.1:{api_port}/dashboard/")
    rows_js = (
        "return [...document.querySelectorAll('tr.limit')].map((tr) => "
        "[tr.dataset.limit, ...[...tr.cells].map((c) => c.textContent)]);"
    )
    rows = wait_page(browser, lambda d: d.execute_script(rows_js) or None, "the limits table")
    by_key = {r[0]: r[1:] for r in rows}
    dash = "\u2013"
    assert by_key == {
        "limit_req|dry": ["dry", "limit_req", "1", "0", "0", dash, "2", "1"],
        "limit_req|rq": ["rq", "limit_req", "2", "0", "0", dash, "0", "0"],
        "limit_conn|cn": ["cn", "limit_conn", "0", dash, "0", dash, dash, "0"],
    }, rows
