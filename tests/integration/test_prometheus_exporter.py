"""A real client of the status API: nginx-prometheus-exporter in NGINX Plus mode.

Debian's ``prometheus-nginx-exporter`` (0.11) scrapes prefork-lb's ``/api`` exactly as it
scrapes NGINX Plus: it negotiates the API version with ``GET /api`` and then fetches every
document its Go client knows (``/api/8/nginx``, ``/api/8/http/upstreams``, ...). Any non-200
answer to a document it requires turns the whole scrape into ``nginxplus_up 0``, so this is
also the check that the API serves every path that client asks for.

prefork-lb's own ``/metrics`` (prefork_lb.metrics) uses the exporter's names; the second test
compares the two views of the same upstream.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.backends import Backend, free_port
from tests.harness import LB, accepts, request, status_config, wait_for

EXPORTER = shutil.which("prometheus-nginx-exporter")

pytestmark = pytest.mark.skipif(
    EXPORTER is None,
    reason="prometheus-nginx-exporter is not installed (apt-get install prometheus-nginx-exporter)",
)

REQUESTS = 6  # through the proxy; round robin over two peers with one worker: 3 each


def lb_config(port: int, api_port: int, backends: list[str]) -> str:
    return status_config(
        port,
        api_port,
        backends,
        workers=1,
        server_params="",
        log_format=("probe", "$server_port|$request|$status|$upstream_addr"),
        allow=True,
        status=("api", "metrics"),
    )


class Exporter:
    """``prometheus-nginx-exporter`` scraping ``api_url``, listening on a free loopback port."""

    def __init__(self, api_url: str, log_path: Path) -> None:
        assert EXPORTER is not None
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                EXPORTER,
                "-nginx.plus",
                "-nginx.scrape-uri",
                api_url,
                "-web.listen-address",
                f"127.0.0.1:{self.port}",
                "-nginx.timeout",
                "5s",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the exporter exited with {self.proc.returncode}:\n{self.log()}")
        return accepts(self.port)

    def scrape(self) -> str:
        wait_for(self._listening, what="the exporter to listen")
        status, _, body = request(self.port, "GET", "/metrics")
        assert status == 200, body
        return body.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def by_server(fams: dict[str, Any], family: str, upstream: str = "backend") -> dict[str, float]:
    """``{server: value}`` of an upstream-server family (the sample without a ``code`` label)."""
    return {
        s.labels["server"]: s.value
        for s in fams[family].samples
        if s.labels.get("upstream") == upstream and "code" not in s.labels
    }


def api_log(lb: LB, api_port: int) -> list[tuple[str, str]]:
    """(request line, status) of every request the API server logged."""
    out = []
    for line in lb.access_log():
        port, req, status, _ = line.split("|", 3)
        if port == str(api_port):
            out.append((req, status))
    return out


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[LB, int, Backend]]:
    port, api_port = free_port(), free_port()
    with Backend(count=2) as backends:
        with LB(tmp_path, lb_config(port, api_port, backends.addrs), port) as lb:
            wait_for(lambda: accepts(api_port), what="the API server to listen")
            for _ in range(REQUESTS):
                status, _, _ = request(port, "GET", "/")
                assert status == 200
            # The access log is written after the response: wait until all are accounted for.
            lb.access_log(lines=REQUESTS)
            yield lb, api_port, backends


@pytest.fixture
def exporter(setup: tuple[LB, int, Backend], tmp_path: Path) -> Iterator[Exporter]:
    _, api_port, _ = setup
    # The trailing slash matches the documented ``match = "/api/"``: the client then asks for
    # ``/api/`` and ``/api//8/nginx``, which prefork-lb (like nginx) reads as ``/api/8/nginx``.
    exp = Exporter(f"http://127.0.0.1:{api_port}/api/", tmp_path / "exporter.log")
    try:
        yield exp
    finally:
        exp.stop()


def test_exporter_scrapes_upstream_metrics(setup: tuple[LB, int, Backend], exporter: Exporter) -> None:
    lb, api_port, backends = setup
    fams = families(exporter.scrape())
    requested = api_log(lb, api_port)
    report = "\n".join(f"  {status} {req}" for req, status in requested)
    print(f"API requests made by the exporter:\n{report}")

    assert fams["nginxplus_up"].samples[0].value == 1, (
        f"the exporter could not read the API.\nexporter log:\n{exporter.log()}\nAPI requests:\n{report}"
    )
    assert "Error" not in exporter.log(), exporter.log()
    assert requested, "the exporter made no request to the API"
    # The client reads a 404 under /stream/ (zone_sync, limit_conns) as "not configured", as
    # NGINX Plus answers without those modules; any other non-200 would have failed the scrape.
    unexpected = [(r, s) for r, s in requested if s != "200" and not (s == "404" and "/stream/" in r)]
    assert not unexpected, f"non-200 API answers:\n{report}"

    requests = by_server(fams, "nginxplus_upstream_server_requests")
    assert requests == {addr: REQUESTS / 2 for addr in backends.addrs}
    assert by_server(fams, "nginxplus_upstream_server_state") == {addr: 1 for addr in backends.addrs}
    responses = {
        s.labels["server"]: s.value
        for s in fams["nginxplus_upstream_server_responses"].samples
        if s.labels["code"] == "2xx"
    }
    assert responses == {addr: REQUESTS / 2 for addr in backends.addrs}
    assert by_server(fams, "nginxplus_upstream_server_fails") == {addr: 0 for addr in backends.addrs}
    assert fams["nginxplus_http_requests"].samples[0].value >= REQUESTS
    assert fams["nginxplus_connections_accepted"].samples[0].value >= REQUESTS


def test_native_metrics_agree_with_the_exporter(setup: tuple[LB, int, Backend], exporter: Exporter) -> None:
    """prefork-lb's ``/metrics`` uses the exporter's names, types and labels, and the same figures."""
    _, api_port, backends = setup
    theirs = families(exporter.scrape())
    assert theirs["nginxplus_up"].samples[0].value == 1, exporter.log()

    conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        assert resp.getheader("Content-Type", "").startswith("text/plain"), resp.getheaders()
    finally:
        conn.close()
    ours = families(body)

    for name, family in ours.items():
        if not name.startswith("nginxplus_"):
            assert name.startswith("preforklb_"), name
            continue
        assert name in theirs, f"{name} is not an nginx-prometheus-exporter family"
        assert family.type == theirs[name].type, name
        label_sets = {frozenset(s.labels) for s in family.samples}
        assert label_sets <= {frozenset(s.labels) for s in theirs[name].samples}, name

    # No proxied traffic since the exporter's scrape: the upstream figures are identical.
    for name in ("requests", "state", "active", "fails", "unavail", "sent", "received", "limit"):
        family = f"nginxplus_upstream_server_{name}"
        assert by_server(ours, family) == by_server(theirs, family), family
    assert by_server(ours, "nginxplus_upstream_server_requests") == {a: REQUESTS / 2 for a in backends.addrs}
    ours_2xx = {
        (s.labels["server"], s.labels["code"]): s.value
        for s in ours["nginxplus_upstream_server_responses"].samples
    }
    theirs_2xx = {
        (s.labels["server"], s.labels["code"]): s.value
        for s in theirs["nginxplus_upstream_server_responses"].samples
    }
    assert ours_2xx == theirs_2xx
    assert ours["preforklb_up"].samples[0].value == 1
    workers = ours["preforklb_worker_resident_memory_bytes"].samples
    assert len(workers) == 1 and workers[0].value > 0
