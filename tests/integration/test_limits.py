"""limit_req / limit_conn with state shared by all workers, and realip, end to end
(shared/reference/nginx-semantics-2.md section 7; issue 16). Counts are asserted, never
wall-clock margins: rates are chosen so nothing drains while a test runs."""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import Backend, GatedBackend, free_port
from tests.harness import LB, basic_config, request, upstream_block, wait_for

FORMAT = "$pid|$status|$limit_req_status|$limit_conn_status|$remote_addr|$realip_remote_addr|$request_uri"


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend(count=1) as b:
        yield b


def config(
    port: int, backend: Backend | GatedBackend, http_extra: str, location_extra: str, server_extra: str = ""
) -> str:
    addrs = [backend.addr] if isinstance(backend, GatedBackend) else backend.addrs
    text = basic_config(
        port, upstream_block("backend", addrs), location_extra=location_extra, server_extra=server_extra
    )
    text = text.replace("[http.log_formats]\n", f"{http_extra}\n[http.log_formats]\nlim = '{FORMAT}'\n", 1)
    return text.replace('log_format = "up"', 'log_format = "lim"', 1)


def log_rows(lb: LB, lines: int = 0) -> list[list[str]]:
    return [line.split("|") for line in lb.access_log(lines)]


def test_limit_req_burst_is_shared_by_all_workers(tmp_path: Path, backend: Backend) -> None:
    """rate 1r/m, burst 3, nodelay, 2 workers: exactly 1 + 3 requests pass in total however
    the connections spread over the workers (per-worker state would admit up to 8), the rest
    get 503 with $limit_req_status REJECTED. Old code: no limit_req (config error)."""
    port = free_port()
    zones = '[http.limit_req_zones.one]\nkey = "$binary_remote_addr"\nsize = "64k"\nrate = "1r/m"\n'
    loc = 'limit_req = { zone = "one", burst = 3, nodelay = true }'
    with LB(tmp_path, config(port, backend, zones, loc).replace("workers = 1", "workers = 2"), port) as lb:
        statuses: list[int] = []

        def both_workers_answered() -> bool:
            statuses.append(request(port, "GET", f"/?n={len(statuses)}")[0])
            rows = log_rows(lb, len(statuses))
            return len({r[0] for r in rows}) >= 2 and len(statuses) >= 8

        wait_for(both_workers_answered, what="requests answered by both workers")
        rows = log_rows(lb, len(statuses))
    assert Counter(statuses) == {200: 4, 503: len(statuses) - 4}
    assert statuses[:4] == [200] * 4
    assert Counter(r[2] for r in rows) == {"PASSED": 4, "REJECTED": len(statuses) - 4}
    assert re.search(
        r'\[error\] .*limiting requests, excess: [34]\.\d{3} by zone "one", client: 127', lb.output()
    )


def test_limit_req_delays_the_burst_and_rejects_beyond_it(tmp_path: Path, backend: Backend) -> None:
    """L5 at 30r/m (one request per 2 s, so a slow start of the threads changes nothing):
    4 concurrent, burst 2 (no nodelay): 1 PASSED, 2 DELAYED (answered 200 after waiting
    about 2 and 4 s), 1 REJECTED with limit_req_status 429 (L8). Old code: config error."""
    port = free_port()
    zones = '[http.limit_req_zones.one]\nkey = "$binary_remote_addr"\nrate = "30r/m"\n'
    loc = 'limit_req = { zone = "one", burst = 2 }\n  limit_req_status = 429'
    with LB(tmp_path, config(port, backend, zones, loc), port) as lb:
        barrier = threading.Barrier(4)
        out: list[int] = []

        def one(i: int) -> None:
            barrier.wait()
            out.append(request(port, "GET", f"/?i={i}")[0])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = log_rows(lb, 4)
    assert Counter(out) == {200: 3, 429: 1}
    assert Counter(r[2] for r in rows) == {"PASSED": 1, "DELAYED": 2, "REJECTED": 1}


def test_limit_req_state_survives_a_reload(tmp_path: Path, backend: Backend) -> None:
    """Better than nginx per worker, as nginx with its shm zone: after ``-s reload`` (another
    keepalive_timeout, same zone) the new workers see the old generation's state: the key
    that used its one request per minute is still rejected; a reload that changes the zone's
    size starts it empty. Old code: config error."""
    port = free_port()
    zones = '[http.limit_req_zones.one]\nkey = "$binary_remote_addr"\nsize = "64k"\nrate = "1r/m"\n'
    text = config(port, backend, zones, 'limit_req = { zone = "one" }')
    with LB(tmp_path, text, port) as lb:
        first = [request(port, "GET", "/")[0] for _ in range(2)]
        pids = {p.pid for p in lb.workers()}
        lb.conf.write_text(text.replace('proxy_read_timeout = "5s"', 'proxy_read_timeout = "6s"'))
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: (new := {p.pid for p in lb.workers()}) and not new & pids, what="the new generation")
        after_reload = request(port, "GET", "/")[0]
        pids = {p.pid for p in lb.workers()}
        lb.conf.write_text(text.replace('size = "64k"', 'size = "128k"'))
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: (new := {p.pid for p in lb.workers()}) and not new & pids, what="the new generation")
        resized = request(port, "GET", "/")[0]
    assert first == [200, 503]
    assert after_reload == 503
    assert resized == 200


def test_limit_req_dry_run_and_return_location(tmp_path: Path, backend: Backend) -> None:
    """L9: dry run passes everything, the variable says REJECTED_DRY_RUN; L10: a ``return``
    location is never limited (rewrite phase first), $limit_req_status empty."""
    port = free_port()
    zones = '[http.limit_req_zones.one]\nkey = "$binary_remote_addr"\nrate = "1r/m"\n'
    loc = """limit_req = { zone = "one" }
  limit_req_dry_run = true
  [[http.servers.locations]]
  match = "/ret"
  return = "200 ok"
  limit_req = { zone = "one" }"""
    with LB(tmp_path, config(port, backend, zones, loc), port) as lb:
        first = [request(port, "GET", "/")[0] for _ in range(3)]
        second = [request(port, "GET", "/ret")[0] for _ in range(3)]
        rows = log_rows(lb, 6)
    assert first == [200] * 3 and second == [200] * 3
    assert [r[2] for r in rows] == ["PASSED", "REJECTED_DRY_RUN", "REJECTED_DRY_RUN", "-", "-", "-"]


def test_limit_conn_counts_requests_across_workers(tmp_path: Path) -> None:
    """L11/L12 with 2 workers: while one request is held by the upstream, every other request
    with the same key gets 429 (limit_conn_status), whichever worker it reaches; once it ends
    the count is released and the next request passes. Old code: config error."""
    port = free_port()
    zones = '[http.limit_conn_zones.addr]\nkey = "$binary_remote_addr"\nsize = "64k"\n'
    loc = 'limit_conn = { zone = "addr", number = 1 }\n  limit_conn_status = 429'
    with GatedBackend() as gate:
        text = config(port, gate, zones, loc).replace("workers = 1", "workers = 2")
        with LB(tmp_path, text, port) as lb:
            held: list[int] = []
            t = threading.Thread(target=lambda: held.append(request(port, "GET", "/held", timeout_s=30)[0]))
            t.start()
            gate.wait_arrived(1)  # counted (limit_conn runs before the upstream is asked)
            polls: list[int] = []

            def rejected_by_both() -> bool:
                polls.append(request(port, "GET", f"/?p={len(polls)}")[0])
                return len({r[0] for r in log_rows(lb) if r[1] == "429"}) >= 2

            wait_for(rejected_by_both, what="429 from both workers while one request is held")
            gate.release()
            t.join()
            after = request(port, "GET", "/after")[0]
            rows = log_rows(lb, len(polls) + 2)
    assert set(polls) == {429} and held == [200] and after == 200
    assert gate.arrived == 2  # the held request and the one after it, no poll
    assert all(r[3] == "REJECTED" for r in rows if r[1] == "429")
    assert [r[3] for r in rows if r[6] in ("/held", "/after")] == ["PASSED", "PASSED"]


def test_limit_conn_count_of_a_killed_worker_is_released(tmp_path: Path) -> None:
    """Better than nginx (which leaks a crashed worker's limit_conn counts): a worker
    SIGKILLed while a request it counted is in flight gives the count back when the master
    reaps it, so the key is not locked out. Fails with counts kept per key only (the
    master cannot tell whose they were) and on the old code (config error)."""
    port = free_port()
    zones = '[http.limit_conn_zones.addr]\nkey = "$binary_remote_addr"\nsize = "64k"\n'
    loc = 'limit_conn = { zone = "addr", number = 1 }'
    with GatedBackend() as gate:
        text = config(port, gate, zones, loc).replace("workers = 1", "workers = 2")
        with LB(tmp_path, text, port) as lb:
            held: list[object] = []

            def hold() -> None:
                try:
                    held.append(request(port, "GET", "/held", timeout_s=30)[0])
                except OSError as e:
                    held.append(e)

            t = threading.Thread(target=hold)
            t.start()
            gate.wait_arrived(1)
            assert request(port, "GET", "/busy")[0] == 503
            holder = [
                w
                for w in lb.workers()
                if any(c.raddr and c.raddr.port == gate.port for c in w.net_connections())
            ]
            assert len(holder) == 1
            holder[0].kill()
            t.join()
            wait_for(lambda: len(lb.workers()) == 2 and holder[0] not in lb.workers(), what="the respawn")
            gate.release()
            after = request(port, "GET", "/after")[0]
            log = lb.output()
    assert after == 200
    assert f"worker process {holder[0].pid} held 1 limit_conn count(s), released" in log


def test_realip_from_x_forwarded_for(tmp_path: Path, backend: Backend) -> None:
    """realip: a trusted peer's X-Forwarded-For gives $remote_addr (recursive over trusted
    hops), $realip_remote_addr keeps the peer, deny applies to the real address, and an
    untrusted header value stays as the client. Old code: unknown keys (config error)."""
    port = free_port()
    server = """set_real_ip_from = ["127.0.0.0/8", "10.0.0.0/8"]
real_ip_header = "X-Forwarded-For"
real_ip_recursive = true"""
    loc = 'deny = ["198.51.100.9"]'
    with LB(tmp_path, config(port, backend, "", loc, server_extra=server), port) as lb:
        a = request(port, "GET", "/a", headers={"X-Forwarded-For": "203.0.113.7, 10.1.2.3"})[0]
        b = request(port, "GET", "/b", headers={"X-Forwarded-For": "198.51.100.9"})[0]
        c = request(port, "GET", "/c", headers={"X-Forwarded-For": "unknown"})[0]
        d = request(port, "GET", "/d")[0]
        rows = {r[6]: r for r in log_rows(lb, 4)}
    assert (a, b, c, d) == (200, 403, 200, 200)
    assert rows["/a"][4:6] == ["203.0.113.7", "127.0.0.1"]
    assert rows["/b"][4:6] == ["198.51.100.9", "127.0.0.1"]
    assert rows["/c"][4:6] == ["127.0.0.1", "127.0.0.1"]
    assert rows["/d"][4:6] == ["127.0.0.1", "127.0.0.1"]


def test_realip_address_is_the_ip_hash_key(tmp_path: Path) -> None:
    """ip_hash uses the realip address: a request relayed by a trusted 127.0.0.1 with
    X-Real-IP 127.0.k.1 goes to the backend a direct client from 127.0.k.1 gets. Old code:
    the realip keys are unknown (config error); without realip in ip_hash every relayed
    request would go where 127.0.0.1 goes."""
    port = free_port()
    with Backend(count=3) as three:
        up = upstream_block("backend", three.addrs, extra='method = "ip_hash"')
        text = basic_config(port, up, server_extra='set_real_ip_from = ["127.0.0.1"]')
        with LB(tmp_path, text, port):
            direct = [request(port, "GET", "/", source=f"127.0.{k}.1")[1]["x-port"] for k in range(1, 9)]
            relayed = [
                request(port, "GET", "/", headers={"X-Real-IP": f"127.0.{k}.1"})[1]["x-port"]
                for k in range(1, 9)
            ]
    assert len(set(direct)) > 1  # the clients do spread (else the comparison proves nothing)
    assert relayed == direct


def test_client_closing_during_a_delay_is_noticed(tmp_path: Path, backend: Backend) -> None:
    """nginx 1.19.9+: a client that closes while its request is delayed by limit_req is
    noticed at once (499 logged, nothing sent upstream) instead of after the delay (60 s
    here: rate 1r/m, burst 1). Fails on a plain sleep and on the old code."""
    port = free_port()
    zones = '[http.limit_req_zones.one]\nkey = "$binary_remote_addr"\nrate = "1r/m"\n'
    with LB(tmp_path, config(port, backend, zones, 'limit_req = { zone = "one", burst = 1 }'), port) as lb:
        assert request(port, "GET", "/first")[0] == 200
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /delayed HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(
                lambda: 'delaying request, excess: 1.000, by zone "one"' in lb.output(), what="the delay"
            )
        rows = log_rows(lb, 2)
    assert [(r[1], r[2], r[6]) for r in rows] == [("200", "PASSED", "/first"), ("499", "DELAYED", "/delayed")]
