"""Active health checks (issue 17) against a real master, workers and health prober.

Backends are ``tests/health_backend.FlipBackend``: ``/healthz`` flips between 200, 500,
a hang, a close, garbage and a 10 MB body; every probe and every client request is counted
at the backend with its arrival time. Each test says what it catches; before issue 17
every one of them failed at once (``health_check`` was an unknown key: the master refused
the config).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from tests.backends import free_port
from tests.harness import LB, request, wait_for
from tests.health_backend import FlipBackend


def config(
    port: int,
    api_port: int,
    backends: list[str],
    check: str,
    *,
    workers: int = 2,
    matches: str = "",
    server_params: str = "",
    backups: tuple[str, ...] = (),
    top: str = "",
) -> str:
    servers = ",\n".join(
        f'  {{ address = "{a}"{server_params}{", backup = true" if a in backups else ""} }}' for a in backends
    )
    return f"""
workers = {workers}
{top}
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
{matches}
[http.upstreams.backend]
servers = [
{servers}
]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_read_timeout = "5s"
  health_check = {{ {check} }}
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
  [[http.servers.locations]]
  match = "/api/"
  api = true
  [[http.servers.locations]]
  match = "= /metrics"
  metrics = true
"""


def peers(api_port: int) -> dict[str, dict[str, Any]]:
    status, _, body = request(api_port, "GET", "/api/9/http/upstreams/backend")
    assert status == 200, body
    return {p["server"]: p for p in json.loads(body)["peers"]}


def state(api_port: int, addr: str) -> str:
    return str(peers(api_port)[addr]["state"])


@contextmanager
def client_load(port: int) -> Iterator[list[int]]:
    """Requests in a loop on a thread until the block ends; yields the statuses seen."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                statuses.append(request(port, "GET", "/load", timeout_s=10)[0])
            except OSError:
                statuses.append(-1)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield statuses
    finally:
        stop.set()
        t.join(15)


def prober_pid(lb: LB) -> int:
    for child in psutil.Process(lb.master_pid).children():
        try:
            if "health prober" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return 0


def test_a_failing_peer_leaves_after_fails_probes_and_returns_after_passes(tmp_path: Path) -> None:
    """Catches: a peer whose health check fails still getting client requests more than one
    interval after its ``fails``-th failed probe; one that never comes back, or comes back
    before ``passes`` passes; no warning on the state change, or one per passing probe."""
    interval = 1.0
    with FlipBackend("a") as a, FlipBackend("b") as b:
        port, api = free_port(), free_port()
        check = f'interval = "{int(interval * 1000)}ms", fails = 2, passes = 2, uri = "/healthz"'
        with LB(tmp_path, config(port, api, [a.addr, b.addr], check), port) as lb:
            wait_for(lambda: b.probe_count() >= 2, what="b probed")
            with client_load(port) as statuses:
                wait_for(lambda: b.served_count() >= 5, what="b serves client requests")
                b.mode = "fail"
                first_bad = b.probe_count()
                wait_for(lambda: state(api, b.addr) == "unhealthy", what="b unhealthy")
                with b.lock:
                    bad_probes = [t for t, _ in b.probes[first_bad:]]
                fails_at = bad_probes[1]  # the 2nd failing probe made it unhealthy
                # one client thread: once two more requests completed, none picked before the
                # state changed can still be on its way to b
                n = len(statuses)
                wait_for(lambda: len(statuses) >= n + 2, what="2 more requests")
                served_then = b.served_count()
                more = len(statuses)
                wait_for(lambda: len(statuses) >= more + 30, what="30 more requests")
                with b.lock:
                    last_served = max(b.served)
                assert b.served_count() == served_then  # nothing reached b once it was out
                assert last_served < fails_at + interval, (last_served - fails_at, interval)
                doc = peers(api)[b.addr]
                assert doc["health_checks"]["fails"] >= 2 and doc["health_checks"]["unhealthy"] == 1
                assert doc["health_checks"]["last_passed"] is False and "downstart" in doc
                b.mode = "ok"
                back = b.probe_count()
                wait_for(lambda: state(api, b.addr) == "up", what="b healthy again")
                assert b.probe_count() - back >= 2  # passes = 2
                served_back = b.served_count()
                wait_for(lambda: b.served_count() > served_back, what="b serves again")
            assert set(statuses) == {200}
            log = lb.output()
            assert f"upstream server {b.addr} is unhealthy: status 500 from /healthz" in log
            assert log.count(f"upstream server {b.addr} is healthy") == 1
            assert f"{a.addr} is" not in log  # nothing per passing probe
            assert peers(api)[b.addr]["downtime"] > 0


def test_mandatory_peers_get_nothing_before_their_first_pass(tmp_path: Path) -> None:
    """Catches: a mandatory peer serving before its first check passed (at start, the
    workers are up before the prober's first probe has an answer)."""
    with FlipBackend("a") as a, FlipBackend("b") as b:
        b.mode = "hang"
        port, api = free_port(), free_port()
        check = 'interval = "500ms", uri = "/healthz", mandatory = true, timeout = "2s"'
        with LB(tmp_path, config(port, api, [a.addr, b.addr], check), port) as lb:
            # every mandatory peer starts checking: a too, until its first pass
            wait_for(lambda: state(api, a.addr) == "up", what="a up")
            assert state(api, b.addr) in ("checking", "unhealthy")
            bodies = [lb.get(f"/{i}")[2] for i in range(20)]
            assert bodies == [b"a"] * 20
            assert b.served_count() == 0
            wait_for(lambda: state(api, b.addr) == "unhealthy", what="b unhealthy after a timeout")
            assert "is unhealthy: timed out" in lb.output()
            b.mode = "ok"
            wait_for(lambda: state(api, b.addr) == "up", what="b up")
            wait_for(lambda: lb.get("/x")[2] == b"b", what="b serving")


def test_backups_are_checked_and_every_peer_unhealthy_is_502(tmp_path: Path) -> None:
    """Catches: a backup peer left unchecked (it would serve while its /healthz fails), and
    requests sent to unhealthy peers when none is left (nginx: no live upstreams, 502)."""
    with FlipBackend("a") as a, FlipBackend("b") as b:
        a.mode = "fail"
        port, api = free_port(), free_port()
        check = 'interval = "200ms", uri = "/healthz", mandatory = true'
        with LB(tmp_path, config(port, api, [a.addr, b.addr], check, backups=(b.addr,)), port) as lb:
            wait_for(lambda: state(api, a.addr) == "unhealthy", what="a unhealthy")
            wait_for(lambda: state(api, b.addr) == "up", what="backup b up")
            assert [lb.get(f"/{i}")[2] for i in range(4)] == [b"b"] * 4  # the primary is out
            b.mode = "fail"
            wait_for(lambda: state(api, b.addr) == "unhealthy", what="backup b unhealthy")
            served = b.served_count()
            assert lb.get("/x")[0] == 502
            assert a.served_count() == 0 and b.served_count() == served
            assert "no live upstreams" in lb.output()


def test_one_probe_per_interval_with_four_workers(tmp_path: Path) -> None:
    """Catches: probes multiplied by the worker count (nginx Plus probes from every worker)."""
    interval = 0.4
    with FlipBackend("a") as a:
        port, api = free_port(), free_port()
        check = f'interval = "{int(interval * 1000)}ms", uri = "/healthz"'
        with LB(tmp_path, config(port, api, [a.addr], check, workers=4), port) as lb:
            assert len(lb.workers()) == 5  # 4 workers and the prober
            wait_for(lambda: a.probe_count() >= 8, what="8 probes")
            with a.lock:
                times = [t for t, _ in a.probes[:8]]
            gaps = [b - t for t, b in itertools.pairwise(times)]
            # one prober: probes an interval apart on average (4 probers: a quarter of it)
            assert sum(gaps) / len(gaps) > interval * 0.75, gaps


def test_match_status_header_body_and_bad_answers(tmp_path: Path) -> None:
    """Catches: a match block not applied (header/body tests), and a backend answering
    garbage, closing, or sending a 10 MB body making the prober stuck instead of failing
    the check (after each, the peer comes back as soon as /healthz is fine again)."""
    matches = """
[http.matches.healthy]
status = "200-399"
header = ['Content-Type ~ "json"', "X-Ready"]
body = '~ "\\"status\\": *\\"ok\\""'
"""
    with FlipBackend("a") as a, FlipBackend("b") as b:
        port, api = free_port(), free_port()
        check = 'interval = "200ms", uri = "/healthz", match = "healthy", timeout = "2s"'
        cfg = config(port, api, [a.addr, b.addr], check, matches=matches)
        with LB(tmp_path, cfg, port) as lb:
            wait_for(lambda: b.probe_count() >= 1 and state(api, b.addr) == "up", what="b up")
            for mode, reason in [
                ("text", 'header "content-type" fails ~ json'),
                ("huge", "body does not match"),
                ("garbage", "invalid response"),
                ("close", "connection closed before a response"),
            ]:
                b.mode = mode
                wait_for(lambda: state(api, b.addr) == "unhealthy", what=f"unhealthy on {mode}")
                assert reason in lb.output().splitlines()[-1], (mode, lb.output()[-400:])
                b.mode = "ok"
                wait_for(lambda: state(api, b.addr) == "up", what=f"up after {mode}")
            probes = b.probe_count()
            assert all(h.get("host") == "backend" for _, h in b.probes[:probes])


def test_reload_with_persistent_refuses_nothing_and_sigkill_respawns(tmp_path: Path) -> None:
    """Catches: a reload putting healthy mandatory peers back to "checking" when the check
    is persistent (502s during the reload); a prober killed with SIGKILL not respawned, or
    its peer states lost (an unhealthy peer serving again)."""
    with FlipBackend("a") as a, FlipBackend("b") as b, FlipBackend("c") as c:
        port, api = free_port(), free_port()
        check = 'interval = "300ms", uri = "/healthz", mandatory = true, persistent = true'
        with LB(tmp_path, config(port, api, [a.addr, b.addr, c.addr], check), port) as lb:
            wait_for(lambda: all(state(api, x.addr) == "up" for x in (a, b, c)), what="all up")
            c.mode = "fail"
            wait_for(lambda: state(api, c.addr) == "unhealthy", what="c unhealthy")
            with client_load(port) as statuses:
                old = prober_pid(lb)
                lb.conf.write_text(lb.conf.read_text().replace("workers = 2", "workers = 3"))
                os.kill(lb.master_pid, signal.SIGHUP)
                wait_for(lambda: prober_pid(lb) not in (0, old), what="a new prober")
                wait_for(lambda: "reconfigured: generation 2" in lb.output(), what="reload")
                n = len(statuses)
                wait_for(lambda: len(statuses) > n + 20, what="20 requests after the reload")
                assert state(api, c.addr) == "unhealthy"  # persistent: kept across the reload
                served_c = c.served_count()
                pid = prober_pid(lb)
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: prober_pid(lb) not in (0, pid), what="the prober respawned")
                assert f"health prober process {pid} exited on signal 9" in lb.output()
                assert state(api, c.addr) == "unhealthy"
                n = len(statuses)
                wait_for(lambda: len(statuses) > n + 20, what="20 requests after the respawn")
                assert c.served_count() == served_c
                c.mode = "ok"
                wait_for(lambda: state(api, c.addr) == "up", what="c up (the new prober probes)")
            assert set(statuses) == {200}, sorted(set(statuses))


def test_prometheus_series_and_api_shape(tmp_path: Path) -> None:
    """Catches: the API or the metrics page not showing active-check state and counters."""
    with FlipBackend("a") as a, FlipBackend("b") as b:
        b.mode = "fail"
        port, api = free_port(), free_port()
        check = 'interval = "200ms", uri = "/healthz"'
        with LB(tmp_path, config(port, api, [a.addr, b.addr], check), port):
            wait_for(lambda: state(api, b.addr) == "unhealthy", what="b unhealthy")
            wait_for(lambda: peers(api)[a.addr]["health_checks"]["checks"] >= 2, what="a probed")
            doc = peers(api)[a.addr]
            assert doc["state"] == "up" and doc["health_checks"]["last_passed"] is True
            _, _, text = request(api, "GET", "/metrics")
            lines = text.decode().splitlines()
            state_b = [x for x in lines if x.startswith("nginxplus_upstream_server_state{") and b.addr in x]
            assert len(state_b) == 1 and float(state_b[0].rsplit(" ", 1)[1]) == 6.0, state_b
            assert any(
                line.startswith(f'nginxplus_upstream_server_health_checks_unhealthy_total{{server="{b.addr}"')
                for line in lines
            )


def test_a_stuck_prober_is_killed_and_respawned(tmp_path: Path) -> None:
    """Catches: a prober whose hub stopped (here: SIGSTOP) left in place, so peer states
    freeze; the master must see its heartbeat age past ``worker_heartbeat_timeout``, kill
    it and start another, which goes on probing."""
    with FlipBackend("a") as a, FlipBackend("b") as b:
        port, api = free_port(), free_port()
        check = 'interval = "200ms", uri = "/healthz"'
        cfg = config(port, api, [a.addr, b.addr], check, top='worker_heartbeat_timeout = "2s"')
        with LB(tmp_path, cfg, port) as lb:
            pid = wait_for(lambda: prober_pid(lb), what="the prober")
            os.kill(pid, signal.SIGSTOP)
            # the master allows READY_TIMEOUT_S (10 s) + the timeout after a start
            new = wait_for(
                lambda: prober_pid(lb) not in (0, pid) and prober_pid(lb), timeout_s=60, what="respawn"
            )
            assert f"health prober process {pid} is not responding" in lb.output()
            b.mode = "fail"
            wait_for(lambda: state(api, b.addr) == "unhealthy", what="the new prober probing")
            assert prober_pid(lb) == new
