"""The status API against the real master: figures from the zone, the same from any worker."""

from __future__ import annotations

import json
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


def test_documents_are_the_same_from_every_worker(tmp_path: Path) -> None:
    with Backend(count=2) as b:
        port, api_port = free_port(), free_port()
        with LB(tmp_path, config(port, api_port, b.addrs), api_port) as lb:
            for _ in range(20):
                assert request(port, "GET", "/")[0] == 200
            ups = [api(api_port, "http/upstreams") for _ in range(6)]  # new connection each: any worker
            peers = ups[0]["backend"]["peers"]
            assert [p["server"] for p in peers] == b.addrs
            assert sum(p["requests"] for p in peers) == 20
            assert all(p["responses"]["2xx"] == p["requests"] and p["state"] == "up" for p in peers)
            assert all(
                u["backend"]["peers"][i]["requests"] == peers[i]["requests"] for u in ups for i in range(2)
            )
            assert peers[0]["response_time_histogram"]["count"] == peers[0]["requests"]
            zones = api(api_port, "http/server_zones")
            assert (
                zones["site.test"]["requests"] == 20 and zones["site.test"]["responses"]["codes"]["200"] == 20
            )
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
    with Backend(count=1) as alive:
        dead = f"127.0.0.1:{free_port()}"
        port, api_port = free_port(), free_port()
        with LB(tmp_path, config(port, api_port, [alive.addrs[0], dead]), api_port) as lb:
            for _ in range(4):
                request(port, "GET", "/")
            peers = {p["server"]: p for p in api(api_port, "http/upstreams")["backend"]["peers"]}
            assert (
                peers[dead]["state"] == "unavail"
                and peers[dead]["fails"] >= 1
                and peers[dead]["unavail"] == 1
            )
            assert "downstart" in peers[dead]
            assert peers[alive.addrs[0]]["state"] == "up"
            assert api(api_port, "nginx")["generation"] == 1
            lb.signal("reload")
            wait_for(lambda: api(api_port, "nginx")["generation"] == 2, what="generation 2")
            # the reload kept the peer's state: still unavailable, failure count intact
            peers = {p["server"]: p for p in api(api_port, "http/upstreams")["backend"]["peers"]}
            assert peers[dead]["state"] == "unavail"
            victim = lb.workers()[0]
            victim.send_signal(signal.SIGKILL)
            wait_for(lambda: api(api_port, "processes")["respawned"] == 1, what="respawn counted")


def test_stream_documents(tmp_path: Path) -> None:
    echo = TcpEcho()
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
                ups = api(api_port, "stream/upstreams")
                return ups["tcp"]["peers"][0]["connections"] == 1 and ups

            ups = wait_for(one_session, what="the stream session in the zone")
            peer = ups["tcp"]["peers"][0]
            assert peer["sent"] == 5 and peer["received"] > 5 and "connect_time" in peer
            zones = api(api_port, "stream/server_zones")
            assert zones[f"127.0.0.1:{tcp_port}"]["connections"] == 1
            assert zones[f"127.0.0.1:{tcp_port}"]["sessions"]["2xx"] == 1
    echo.close()


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
