"""The status API against the real master: figures from the zone, the same from any worker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from tests.backends import Backend, free_port
from tests.harness import LB, request, wait_for
from tests.stream_servers import TcpEcho


def config(
    port: int, api_port: int, servers: list[str], workers: int = 2, extra: str = "", api_extra: str = ""
) -> str:
    entries = ", ".join(f'{{ address = "{s}", max_fails = 1, fail_timeout = "30s" }}' for s in servers)
    return f"""
workers = {workers}
error_log = "error.log"
[http]
access_log = "off"
[http.upstreams.backend]
servers = [{entries}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
server_name = ["site.test"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
  [[http.servers.locations]]
  match = "/api/"
  api = true
  {api_extra}
  [[http.servers.locations]]
  match = "= /metrics"
  metrics = true
{extra}
"""


def api(port: int, path: str) -> Any:
    status, _, body = request(port, "GET", f"/api/9/{path}")
    assert status == 200, body
    return json.loads(body)


def api_from_one_worker(port: int, *paths: str) -> tuple[int, list[Any]]:
    """``/api/9/nginx`` then ``paths`` on one keep-alive connection: one worker answers
    them all, and the first names it (``pid``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        docs = []
        for path in ("nginx", *paths):
            conn.request("GET", f"/api/9/{path}")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body
            docs.append(json.loads(body))
        return int(docs[0]["pid"]), docs[1:]
    finally:
        conn.close()


def documents_by_worker(port: int, workers: int, *paths: str) -> dict[int, list[Any]]:
    """The documents as each of ``workers`` workers serves them (new connections until every
    worker has answered once: which worker accepts is the kernel's choice)."""
    seen: dict[int, list[Any]] = {}

    def every_worker() -> bool:
        pid, docs = api_from_one_worker(port, *paths)
        seen.setdefault(pid, docs)
        return len(seen) == workers

    wait_for(every_worker, what=f"all {workers} workers to answer the API")
    return seen


def test_documents_are_the_same_from_every_worker(tmp_path: Path) -> None:
    """Each worker answers with the zone's figures, not its own share.

    Catches: a worker-private zone (each worker's copy of the mapping after fork: the two
    workers' documents differ, each counting only its own share)."""
    with Backend(count=2) as b:
        port, api_port = free_port(), free_port()
        with LB(tmp_path, config(port, api_port, b.addrs), api_port) as lb:
            for _ in range(20):
                assert request(port, "GET", "/")[0] == 200

            def settled() -> bool:  # a request's figures land after its client saw the response
                zone = api(api_port, "http/server_zones")["site.test"]
                return bool(zone["processing"] == 0 and zone["requests"] == 20)

            wait_for(settled, what="the 20 requests' figures in the zone")
            by_worker = documents_by_worker(api_port, 2, "http/upstreams", "http/server_zones")
            assert set(by_worker) == {w.pid for w in lb.workers()}
            # both workers serve the identical figures (no proxied request in between; the
            # status server's own zone moves with these very API requests)
            ups, zones = by_worker.popitem()[1]
            assert all(u == ups and z["site.test"] == zones["site.test"] for u, z in by_worker.values()), (
                ups,
                zones,
                by_worker,
            )
            peers = ups["backend"]["peers"]
            assert [p["server"] for p in peers] == b.addrs
            # round robin over two equal peers: 10 each, whichever worker took each request
            assert [p["requests"] for p in peers] == [10, 10]
            assert [b.stats(p)["requests"] for p in b.ports] == [10, 10]
            assert all(p["responses"]["2xx"] == p["requests"] and p["state"] == "up" for p in peers)
            assert peers[0]["response_time_histogram"]["count"] == peers[0]["requests"]
            assert zones["site.test"]["requests"] == 20
            assert zones["site.test"]["responses"]["codes"]["200"] == 20
            assert api(api_port, "http/requests")["total"] >= 20
            conns = api(api_port, "connections")
            assert conns["accepted"] >= 20 and conns["active"] >= 1
            workers = api(api_port, "prefork/workers")
            assert len(workers) == 2 and all(w["state"] == "running" and w["rss"] > 0 for w in workers)
            assert {w["pid"] for w in workers} == {w.pid for w in lb.workers()}
            one = api(api_port, "http/upstreams/backend")
            assert one["zone"] == "backend" and len(one["peers"]) == 2
            assert request(api_port, "GET", "/api/")[2] == b"[1,2,3,4,5,6,7,8,9]"
            status, _, body = request(api_port, "GET", "/api/9/nope")
            assert status == 404 and json.loads(body)["error"]["code"] == "PathNotFound"
            assert request(api_port, "POST", "/api/9/nginx", body=b"")[0] == 405


def test_peer_state_generation_and_respawns(tmp_path: Path) -> None:
    """A reload keeps the peer state; a killed worker of the current generation is respawned
    into its slot and counted.

    The victim is taken from the API's generation-2 workers once the old generation has
    exited: killing a generation-1 worker that is still shutting down is (rightly) not
    respawned, and picking ``lb.workers()[0]`` (the lowest pid: an old worker) right after
    the reload made this test fail now and then.

    Catches: reload resetting peer state (nginx does); no respawn after SIGKILL; the
    respawn not counted (``processes.respawned``)."""
    with Backend(count=1) as alive:
        dead = f"127.0.0.1:{free_port()}"
        port, api_port = free_port(), free_port()
        with LB(tmp_path, config(port, api_port, [alive.addrs[0], dead]), api_port) as lb:
            for _ in range(4):
                # the dead peer is tried once, fails over to the live one, then is skipped
                assert request(port, "GET", "/")[0] == 200
            peers = {p["server"]: p for p in api(api_port, "http/upstreams")["backend"]["peers"]}
            assert (
                peers[dead]["state"] == "unavail"
                and peers[dead]["fails"] == 1
                and peers[dead]["unavail"] == 1
            )
            assert "downstart" in peers[dead]
            assert peers[alive.addrs[0]]["state"] == "up" and peers[alive.addrs[0]]["requests"] == 4
            assert api(api_port, "nginx")["generation"] == 1
            old = {w.pid for w in lb.workers()}
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: api(api_port, "nginx")["generation"] == 2, what="generation 2")
            # the reload kept the peer's state: still unavailable, failure count intact
            peers = {p["server"]: p for p in api(api_port, "http/upstreams")["backend"]["peers"]}
            assert peers[dead]["state"] == "unavail" and peers[dead]["fails"] == 1

            def new_generation_only() -> list[dict[str, Any]] | None:
                workers = api(api_port, "prefork/workers")
                pids = {w.pid for w in lb.workers()}
                ok = (
                    len(workers) == 2
                    and all(w["generation"] == 2 for w in workers)
                    and pids == {w["pid"] for w in workers}
                    and old.isdisjoint(pids)
                )
                return workers if ok else None

            workers = wait_for(new_generation_only, what="the old generation to exit")
            victim = workers[0]
            assert api(api_port, "processes")["respawned"] == 0
            signal_pid = victim["pid"]
            os.kill(signal_pid, signal.SIGKILL)
            wait_for(lambda: api(api_port, "processes")["respawned"] == 1, what="respawn counted")

            def respawned() -> list[dict[str, Any]] | None:
                now = api(api_port, "prefork/workers")
                pids = {w["pid"] for w in now}
                ok = len(now) == 2 and signal_pid not in pids and pids == {w.pid for w in lb.workers()}
                return now if ok else None

            now = wait_for(respawned, what="the killed worker replaced")
            assert sorted(w["slot"] for w in now) == sorted(w["slot"] for w in workers)
            assert all(w["generation"] == 2 and w["state"] == "running" for w in now)
            assert request(port, "GET", "/")[0] == 200


def test_stream_documents(tmp_path: Path) -> None:
    echo = TcpEcho()
    try:
        _stream_documents(tmp_path, echo)
    finally:
        echo.close()


def _stream_documents(tmp_path: Path, echo: TcpEcho) -> None:
    with Backend(count=1) as b:
        port, api_port, tcp_port = free_port(), free_port(), free_port()
        extra = f"""
[stream.upstreams.tcp]
servers = [{{ address = "{echo.addr}" }}]
[[stream.servers]]
listen = ["127.0.0.1:{tcp_port}"]
proxy_pass = "tcp"
"""
        with LB(tmp_path, config(port, api_port, b.addrs, extra=extra), api_port):
            with socket.create_connection(("127.0.0.1", tcp_port)) as s:
                s.makefile("rb").readline()
                s.sendall(b"hello")
                s.shutdown(socket.SHUT_WR)
                while s.recv(100):
                    pass

            def one_session() -> Any:
                # the session's byte counts land when it ends, after the client saw its close
                ups = api(api_port, "stream/upstreams")
                peer = ups["tcp"]["peers"][0]
                return peer["connections"] == 1 and peer["sent"] > 0 and ups

            ups = wait_for(one_session, what="the stream session in the zone")
            peer = ups["tcp"]["peers"][0]
            assert peer["sent"] == 5 and peer["received"] > 5 and "connect_time" in peer
            zones = api(api_port, "stream/server_zones")
            assert zones[f"127.0.0.1:{tcp_port}"]["connections"] == 1
            assert zones[f"127.0.0.1:{tcp_port}"]["sessions"]["2xx"] == 1


def test_allow_and_deny(tmp_path: Path) -> None:
    with Backend(count=1) as b:
        port, api_port = free_port(), free_port()
        cfg = config(
            port, api_port, b.addrs, workers=1, api_extra='deny = ["127.0.0.0/8"]\n  allow = ["::1"]'
        )
        with LB(tmp_path, cfg, api_port):
            assert request(api_port, "GET", "/api/9/nginx")[0] == 403
            assert request(api_port, "GET", "/metrics")[0] == 200  # other locations are not restricted


def test_api_on_a_public_address_needs_an_allow_list(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(
        '[[http.servers]]\nlisten = ["0.0.0.0:18999"]\n'
        '[[http.servers.locations]]\nmatch = "/api/"\napi = true\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert "http.servers[0].locations[0].api" in str(e.value) and "allow" in str(e.value)
    path.write_text(path.read_text() + 'allow = ["10.0.0.0/8"]\n')
    load_config(str(path))
