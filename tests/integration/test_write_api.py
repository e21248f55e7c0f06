"""The NGINX Plus write API for upstream servers (issue 19) against the real master.

Real prefork-lb master and workers (2-3), real backends (scripts/demo_backend.py), real
clients (http.client, curl). Which worker answered is read from ``$pid`` in the access log
or from ``/api/9/nginx``; what a backend received is counted by the backend itself.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from tests.backends import Backend, free_port
from tests.harness import LB, ZoneReader, request, wait_for
from tests.stream_servers import TcpEcho


def config(
    port: int,
    api_port: int,
    servers: list[str],
    workers: int = 2,
    api: str = "api = { write = true }",
    upstream_extra: str = "",
    top_extra: str = "",
) -> str:
    entries = ", ".join(f'{{ address = "{s}" }}' for s in servers)
    return f"""
workers = {workers}
error_log = "error.log"
error_log_level = "notice"
{top_extra}
[http]
access_log = "access.log"
[http.log_formats]
pid = '$pid|$upstream_addr|$status'
[http.upstreams.backend]
{upstream_extra}
servers = [{entries}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
log_format = "pid"
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
access_log = "off"
  [[http.servers.locations]]
  match = "/api/"
  {api}
  [[http.servers.locations]]
  match = "= /metrics"
  metrics = true
"""


def call(port: int, method: str, path: str, doc: Any = None, raw: bytes | None = None, **headers: str) -> Any:
    body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
    hdrs = {"Content-Type": "application/json"} if body is not None and not headers else {}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    status, _, data = request(port, method, f"/api/9/http/upstreams/backend{path}", body=body, headers=hdrs)
    return status, json.loads(data) if data else None


def peers_by_worker(api_port: int, workers: int) -> dict[int, list[dict[str, Any]]]:
    """The backend's peers as each worker reports them (new connections until all answered)."""
    import http.client

    seen: dict[int, list[dict[str, Any]]] = {}

    def all_answered() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
        try:
            conn.request("GET", "/api/9/nginx")
            pid = json.loads(conn.getresponse().read())["pid"]
            conn.request("GET", "/api/9/http/upstreams/backend")
            seen[pid] = json.loads(conn.getresponse().read())["peers"]
        finally:
            conn.close()
        return len(seen) >= workers

    wait_for(all_answered, what="every worker to answer")
    return seen


def upstream_addrs_by_pid(lb: LB) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in lb.access_log():
        pid, addr, _ = line.split("|")
        out.setdefault(pid, set()).add(addr)
    return out


@pytest.fixture()
def ports() -> tuple[int, int]:
    return free_port(), free_port()


def test_post_reaches_every_worker_without_reload(tmp_path: Path, ports: tuple[int, int]) -> None:
    """POST adds a server that every worker's next pick sees, with no reload: each of the 3
    workers sends requests to it (``$pid`` in the access log) before anything reads the
    API again, then every worker lists it. Catches a worker that keeps its startup list
    (no version check on the pick: verified by removing it) or an API that only changes
    the answering worker."""
    port, api_port = ports
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        with LB(tmp_path, config(port, api_port, a.addrs, workers=3), port) as lb:
            generation = json.loads(request(api_port, "GET", "/api/9/nginx")[2])["generation"]
            status, doc = call(api_port, "POST", "/servers", {"server": b.addrs[0], "weight": 2})
            assert status == 201, doc
            assert doc == {
                "id": 1,
                "server": b.addrs[0],
                "weight": 2,
                "max_conns": 0,
                "max_fails": 1,
                "fail_timeout": "10s",
                "slow_start": "0s",
                "route": "",
                "backup": False,
                "down": False,
            }

            def every_worker_used_b() -> bool:
                for _ in range(6):
                    assert request(port, "GET", "/")[0] == 200
                by_pid = upstream_addrs_by_pid(lb)
                return len(by_pid) == 3 and all(b.addrs[0] in addrs for addrs in by_pid.values())

            wait_for(every_worker_used_b, what="every worker to send requests to the new server")
            assert b.stats(b.ports[0])["requests"] > 0
            for pid, peers in peers_by_worker(api_port, 3).items():
                assert [(p["id"], p["server"], p["weight"]) for p in peers] == [
                    (0, a.addrs[0], 1),
                    (1, b.addrs[0], 2),
                ], pid
            after = json.loads(request(api_port, "GET", "/api/9/nginx")[2])["generation"]
            assert after == generation  # no reload happened
            assert f"server {b.addrs[0]} (id 1) added by 127.0.0.1" in lb.output() or any(
                f"server {b.addrs[0]} (id 1) added by 127.0.0.1" in line
                for line in (tmp_path / "error.log").read_text().splitlines()
            )


def test_patch_weight_down_drain(tmp_path: Path, ports: tuple[int, int]) -> None:
    """PATCH weight changes the shared smooth-WRR sequence at once (3:1 exactly over 8
    requests, counted at the backends); down takes a server out of every worker; drain is
    reported as state "draining" by every worker. Catches a PATCH applied to the table but
    not to the peers' zone words, or a change seen by one worker only."""
    port, api_port = ports
    with Backend(2) as be:
        with LB(tmp_path, config(port, api_port, be.addrs), port):
            status, doc = call(api_port, "PATCH", "/servers/0", {"weight": 3})
            assert status == 200 and doc["weight"] == 3, doc
            before = [be.stats(p)["requests"] for p in be.ports]
            for _ in range(8):
                assert request(port, "GET", "/")[0] == 200
            after = [be.stats(p)["requests"] for p in be.ports]
            assert [x - y for x, y in zip(after, before, strict=True)] == [6, 2]

            status, doc = call(api_port, "PATCH", "/servers/0", {"down": True})
            assert status == 200 and doc["down"] is True
            before = [be.stats(p)["requests"] for p in be.ports]
            for _ in range(6):
                assert request(port, "GET", "/")[0] == 200
            after = [be.stats(p)["requests"] for p in be.ports]
            assert [x - y for x, y in zip(after, before, strict=True)] == [0, 6]

            status, doc = call(api_port, "PATCH", "/servers/1", {"drain": True})
            assert status == 200 and doc["drain"] is True
            for pid, peers in peers_by_worker(api_port, 2).items():
                assert [p["state"] for p in peers] == ["down", "draining"], pid
            status, doc = call(api_port, "GET", "/servers/1")
            assert status == 200 and doc["drain"] is True and doc["weight"] == 1


def test_delete_with_requests_in_flight(tmp_path: Path, ports: tuple[int, int]) -> None:
    """DELETE of a server with a request in flight: the request completes with the server's
    answer, the server is a zombie until then, no new request reaches it, and its zone slot
    is freed once the request ended. Catches a slot freed (and reusable) under a running
    request, or a deleted server still picked."""
    port, api_port = ports
    with Backend(1, name="a") as a, Backend(1, name="c") as c:
        with LB(tmp_path, config(port, api_port, a.addrs), port) as lb:
            status, doc = call(api_port, "POST", "/servers", {"server": c.addrs[0]})
            assert status == 201
            c_id = doc["id"]
            assert call(api_port, "PATCH", "/servers/0", {"down": True})[0] == 200
            result: list[tuple[int, bytes]] = []

            def slow() -> None:
                s, _, body = request(port, "GET", "/?delay=1500", timeout_s=10)
                result.append((s, body))

            t = threading.Thread(target=slow)
            t.start()
            wait_for(lambda: c.stats(c.ports[0])["open"] >= 1, what="the slow request at c")
            zone = ZoneReader(lb.master_pid)
            used_before = len(zone.used_slots())
            status, remaining = call(api_port, "DELETE", f"/servers/{c_id}")
            assert status == 200, remaining
            assert [s["id"] for s in remaining] == [0]
            up = json.loads(request(api_port, "GET", "/api/9/http/upstreams/backend")[2])
            assert up["zombies"] == 1
            assert [p["id"] for p in up["peers"]] == [0]
            assert call(api_port, "PATCH", "/servers/0", {"down": False})[0] == 200
            for _ in range(4):
                assert request(port, "GET", "/")[2] == b"a\n"  # nothing new reaches c
            t.join(10)
            assert result == [(200, b"c\n")]
            wait_for(
                lambda: (
                    json.loads(request(api_port, "GET", "/api/9/http/upstreams/backend")[2])["zombies"] == 0
                ),
                what="the zombie to be swept",
            )
            assert len(zone.used_slots()) == used_before - 1


def test_state_file_survives_restart(tmp_path: Path, ports: tuple[int, int]) -> None:
    """``state``: every change is written in config syntax and read back at the next start
    (the group takes its servers from it). Catches a state file that is not written, not
    read, or read but ignored by the workers."""
    port, api_port = ports
    (tmp_path / "state").mkdir()
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        text = config(port, api_port, a.addrs, upstream_extra='state = "state/backend.state"')
        with LB(tmp_path, text, port):
            assert call(api_port, "POST", "/servers", {"server": b.addrs[0], "weight": 5})[0] == 201
            assert call(api_port, "PATCH", "/servers/0", {"max_conns": 7, "drain": True})[0] == 200
            saved = (tmp_path / "state" / "backend.state").read_text()
            assert f'{{ address = "{a.addrs[0]}", max_conns = 7, drain = true }}' in saved
            assert f'{{ address = "{b.addrs[0]}", weight = 5 }}' in saved
        with LB(tmp_path, text, port):
            status, servers = call(api_port, "GET", "/servers")
            assert status == 200
            assert [(s["server"], s["weight"], s["max_conns"], s.get("drain", False)) for s in servers] == [
                (a.addrs[0], 1, 7, True),
                (b.addrs[0], 5, 0, False),
            ]
            before = b.stats(b.ports[0])["requests"]
            for _ in range(6):
                assert request(port, "GET", "/")[0] == 200
            assert b.stats(b.ports[0])["requests"] > before


def test_delete_every_server_then_add(tmp_path: Path, ports: tuple[int, int]) -> None:
    """NGINX Plus lets the API delete every server of an upstream (nginx-plus-go-client's
    ``UpdateHTTPServers`` with an empty list does): every worker then answers 502 "no live
    upstreams" without touching a backend; the empty list is saved in the ``state`` file
    and a restart starts with no servers; a POSTed server serves again.

    Catches: a refused last DELETE (409), a worker that keeps its previous list (the
    backend would still count requests), a state file that cannot be read back empty."""
    port, api_port = ports
    (tmp_path / "state").mkdir()
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        state = 'state = "state/backend.state"'
        text = config(port, api_port, [a.addrs[0], b.addrs[0]], upstream_extra=state)
        with LB(tmp_path, text, port) as lb:
            assert request(port, "GET", "/")[0] == 200
            assert call(api_port, "DELETE", "/servers/0")[0] == 200
            status, remaining = call(api_port, "DELETE", "/servers/1")
            assert status == 200 and remaining == []
            before = a.stats(a.ports[0])["requests"] + b.stats(b.ports[0])["requests"]

            def both_workers_502() -> bool:
                for _ in range(4):  # new connections until each worker answered
                    assert request(port, "GET", "/")[0] == 502
                return len({line.split("|")[0] for line in lb.access_log() if line.endswith("|502")}) == 2

            wait_for(both_workers_502, what="both workers to answer 502")
            assert a.stats(a.ports[0])["requests"] + b.stats(b.ports[0])["requests"] == before
            assert "no live upstreams" in (tmp_path / "error.log").read_text()
            upstream = json.loads(request(api_port, "GET", "/api/9/http/upstreams/backend")[2])
            assert upstream["peers"] == []
        assert "servers = [\n]" in (tmp_path / "state" / "backend.state").read_text()
        with LB(tmp_path, text, port):
            assert call(api_port, "GET", "/servers") == (200, [])
            assert request(port, "GET", "/")[0] == 502
            status, doc = call(api_port, "POST", "/servers", {"server": b.addrs[0]})
            assert status == 201 and doc["server"] == b.addrs[0], doc
            before = b.stats(b.ports[0])["requests"]
            for _ in range(6):
                assert request(port, "GET", "/")[0] == 200
            assert b.stats(b.ports[0])["requests"] == before + 6


def test_concurrent_writes_lose_nothing(tmp_path: Path, ports: tuple[int, int]) -> None:
    """20 clients POST at once, then 20 clients PATCH at once (new connections: 3 workers
    write concurrently): 20 servers with distinct ids and distinct zone slots, every weight
    set, in every worker's view and in the state file. Catches writers that are not
    serialised (two POSTs taking the same free record or slot: with the POST's lock dropped
    it failed 2 runs of 3) and a state file written from an older snapshot last."""
    port, api_port = ports
    (tmp_path / "state").mkdir()
    with Backend(21) as be:
        text = config(port, api_port, be.addrs[:1], workers=3, upstream_extra='state = "state/b.state"')
        with LB(tmp_path, text, port) as lb:
            zone = ZoneReader(lb.master_pid)
            used = len(zone.used_slots())

            def together(n: int, job: Any) -> list[Any]:
                barrier = threading.Barrier(n)
                results: list[Any] = [None] * n

                def run(i: int) -> None:
                    barrier.wait()
                    results[i] = job(i)

                threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                return results

            posted = together(20, lambda i: call(api_port, "POST", "/servers", {"server": be.addrs[i + 1]}))
            assert [s for s, _ in posted] == [201] * 20, posted
            assert sorted(doc["id"] for _, doc in posted) == list(range(1, 21))
            assert len(zone.used_slots()) == used + 20
            patched = together(21, lambda i: call(api_port, "PATCH", f"/servers/{i}", {"weight": i + 2})[0])
            assert patched == [200] * 21
            by_addr = {doc["server"]: doc["id"] for _, doc in posted}
            by_addr[be.addrs[0]] = 0
            for pid, peers in peers_by_worker(api_port, 3).items():
                assert {p["server"]: p["weight"] for p in peers} == {a: by_addr[a] + 2 for a in be.addrs}, pid
            saved = (tmp_path / "state" / "b.state").read_text()
            for addr in be.addrs:
                assert f'{{ address = "{addr}", weight = {by_addr[addr] + 2} }}' in saved


def test_errors_in_nginx_plus_shape(tmp_path: Path, ports: tuple[int, int]) -> None:
    """Every refusal answers NGINX Plus's error document and changes nothing."""
    port, api_port = ports
    with Backend(1) as be:
        with LB(tmp_path, config(port, api_port, be.addrs, top_extra=""), port):

            def error(status: int, code: str, method: str, path: str, **kw: Any) -> str:
                s, doc = call(api_port, method, path, **kw)
                assert s == status, doc
                assert set(doc) == {"error", "request_id", "href"}
                assert doc["error"]["status"] == status and doc["error"]["code"] == code, doc
                assert len(doc["request_id"]) == 32
                return str(doc["error"]["text"])

            assert '"weight"' in error(
                400, "UpstreamConfFormatError", "POST", "/servers", doc={"server": "127.0.0.1:1", "weight": 0}
            )
            assert '"max_fails"' in error(
                400, "UpstreamConfFormatError", "PATCH", "/servers/0", doc={"max_fails": "x"}
            )
            assert '"down"' in error(400, "UpstreamConfFormatError", "PATCH", "/servers/0", doc={"down": 1})
            assert '"bogus"' in error(400, "UpstreamConfFormatError", "PATCH", "/servers/0", doc={"bogus": 1})
            assert '"server"' in error(400, "UpstreamConfFormatError", "POST", "/servers", doc={"weight": 2})
            error(400, "UpstreamBadAddress", "POST", "/servers", doc={"server": "no-such-host.invalid:80"})
            error(400, "JsonParseError", "POST", "/servers", raw=b"{not json")
            error(400, "UpstreamServerImmutable", "PATCH", "/servers/0", doc={"server": "127.0.0.1:1"})
            error(
                415,
                "UnsupportedMediaType",
                "POST",
                "/servers",
                raw=b"server=x",
                Content_Type="multipart/form-data",
            )
            error(409, "EntryExists", "POST", "/servers", doc={"server": be.addrs[0]})
            error(404, "UpstreamServerNotFound", "PATCH", "/servers/9", doc={"weight": 2})
            error(404, "UpstreamServerNotFound", "DELETE", "/servers/9")
            error(405, "MethodNotAllowed", "PUT", "/servers", doc={})
            s, _, data = request(api_port, "POST", "/api/9/http/upstreams/nope/servers", body=b"{}")
            assert s == 404 and json.loads(data)["error"]["code"] == "UpstreamNotFound"
            s, _, data = request(api_port, "POST", "/api/9/http/upstreams", body=b"{}")
            assert s == 405
            status, servers = call(api_port, "GET", "/servers")
            assert status == 200 and [(x["id"], x["weight"]) for x in servers] == [(0, 1)]


def test_read_only_api_refuses_writes(tmp_path: Path, ports: tuple[int, int]) -> None:
    """``api = true`` (and ``write = false``) stays read-only: GET of the servers works, a
    write is 405 MethodDisabled and changes nothing."""
    port, api_port = ports
    with Backend(1) as be:
        with LB(tmp_path, config(port, api_port, be.addrs, api="api = true"), port):
            s, doc = call(api_port, "POST", "/servers", {"server": "127.0.0.1:1"})
            assert s == 405 and doc["error"]["code"] == "MethodDisabled"
            s, doc = call(api_port, "GET", "/servers")
            assert s == 200 and [x["server"] for x in doc] == be.addrs


def test_zone_full_is_refused_cleanly(tmp_path: Path, ports: tuple[int, int]) -> None:
    """A zone with no free peer slot: POST is 409 UpstreamZoneFull, nothing is added, and
    the group keeps serving. Catches a half-written server or a worker that crashes."""
    port, api_port = ports
    from prefork_lb.zone import layout as L

    size = L.size_for(3, L.DEFAULT_ROWS)  # 1 server + 2 status zones: full from the start
    with Backend(1) as be:
        text = config(port, api_port, be.addrs, top_extra=f"zone_size = {size}")
        with LB(tmp_path, text, port):
            s, doc = call(api_port, "POST", "/servers", {"server": "127.0.0.1:1"})
            assert s == 409 and doc["error"]["code"] == "UpstreamZoneFull", doc
            assert "zone_size" in doc["error"]["text"]
            assert [x["id"] for x in call(api_port, "GET", "/servers")[1]] == [0]
            assert request(port, "GET", "/")[0] == 200


def test_nginx_docs_curl_requests(tmp_path: Path, ports: tuple[int, int]) -> None:
    """The requests of NGINX's documentation, sent by curl unchanged (``-d`` without a
    Content-Type: curl's form type): add a server, drain it, remove it."""
    port, api_port = ports
    base = f"http://127.0.0.1:{api_port}/api/9/http/upstreams/backend/servers"
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        with LB(tmp_path, config(port, api_port, a.addrs), port):

            def curl(*args: str) -> Any:
                out = subprocess.run(["curl", "-s", *args], capture_output=True, text=True, timeout=20)
                assert out.returncode == 0, out.stderr
                return json.loads(out.stdout)

            added = curl("-X", "POST", "-d", f'{{"server": "{b.addrs[0]}"}}', base)
            assert added["server"] == b.addrs[0]
            drained = curl("-X", "PATCH", "-d", '{"drain":true}', f"{base}/{added['id']}")
            assert drained["drain"] is True
            listed = curl(base)
            assert [x["server"] for x in listed] == [a.addrs[0], b.addrs[0]]
            remaining = curl("-X", "DELETE", f"{base}/{added['id']}")
            assert [x["server"] for x in remaining] == [a.addrs[0]]


def test_stream_upstream_servers(tmp_path: Path) -> None:
    """The same endpoints under /api/9/stream/upstreams/: a TCP server added at run time
    receives the next sessions once the configured one is down (the echo server names
    itself first)."""
    import socket

    port, api_port, tcp_port = free_port(), free_port(), free_port()
    one, two = TcpEcho(), TcpEcho()
    try:
        text = (
            config(port, api_port, ["127.0.0.1:1"])
            + f"""
[stream.upstreams.tcp]
servers = [{{ address = "{one.addr}" }}]
[[stream.servers]]
listen = ["127.0.0.1:{tcp_port}"]
proxy_pass = "tcp"
"""
        )
        with LB(tmp_path, text, port):
            path = "/api/9/stream/upstreams/tcp/servers"
            s, _, data = request(api_port, "POST", path, body=json.dumps({"server": two.addr}).encode())
            assert s == 201, data
            assert "route" not in json.loads(data)
            s, _, data = request(api_port, "PATCH", path + "/0", body=b'{"down": true}')
            assert s == 200, data
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as conn:
                    assert conn.recv(100) == f"{two.port}\n".encode()
            s, _, data = request(api_port, "POST", path, body=b'{"server": "127.0.0.1:2", "route": "a"}')
            assert s == 400 and b'unknown parameter \\"route' in data
    finally:
        one.close()
        two.close()


def test_write_api_on_public_listener_needs_allow(tmp_path: Path) -> None:
    """A write API on a non-loopback listener without an allow list is a config error that
    names the key."""
    text = config(free_port(), free_port(), ["127.0.0.1:1"]).replace(
        'listen = ["127.0.0.1:', 'listen = ["0.0.0.0:'
    )
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"locations\[0\]\.api"):
        load_config(str(tmp_path / "c.toml"))


def _generation(api_port: int) -> int:
    return int(json.loads(request(api_port, "GET", "/api/9/nginx")[2])["generation"])


def test_reload_resets_runtime_changes_unless_state(tmp_path: Path, ports: tuple[int, int]) -> None:
    """NGINX Plus: a reload replaces the runtime list with the config's; with ``state`` the
    config reads the saved list, so it survives, with the same ids and counters. The slot of
    a server the reload dropped is freed once the old generation exited. Catches runtime
    servers leaking zone slots across reloads, ids renumbered, or peer state reset."""
    port, api_port = ports
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        with LB(tmp_path, config(port, api_port, a.addrs), port) as lb:
            zone = ZoneReader(lb.master_pid)
            used = len(zone.used_slots())
            assert call(api_port, "POST", "/servers", {"server": b.addrs[0]})[0] == 201
            assert len(zone.used_slots()) == used + 1
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: _generation(api_port) == 2, what="the reload")
            status, servers = call(api_port, "GET", "/servers")
            assert [(s["id"], s["server"]) for s in servers] == [(0, a.addrs[0])]
            wait_for(lambda: len(zone.used_slots()) == used, what="the dropped server's slot to be freed")

        (tmp_path / "state").mkdir()
        text = config(port, api_port, a.addrs, upstream_extra='state = "state/backend.state"')
        with LB(tmp_path, text, port) as lb:
            assert call(api_port, "POST", "/servers", {"server": b.addrs[0]})[0] == 201
            for _ in range(4):
                assert request(port, "GET", "/")[0] == 200
            before = {p["id"]: p["requests"] for p in peers_by_worker(api_port, 2)[lb.workers()[0].pid]}
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: _generation(api_port) == 2, what="the reload")
            status, servers = call(api_port, "GET", "/servers")
            assert [(s["id"], s["server"]) for s in servers] == [(0, a.addrs[0]), (1, b.addrs[0])]
            up = json.loads(request(api_port, "GET", "/api/9/http/upstreams/backend")[2])
            assert {p["id"]: p["requests"] for p in up["peers"]} == before  # same slots, same counters
            status, doc = call(api_port, "POST", "/servers", {"server": "127.0.0.1:1"})
            assert status == 201 and doc["id"] == 2  # ids are never reused


def test_added_server_is_health_checked(tmp_path: Path, ports: tuple[int, int]) -> None:
    """A server added to a group with a mandatory health check starts "checking" (no client
    request reaches it before its first probe) and the prober probes it: a live one becomes
    "up", a dead one "unhealthy". Catches runtime servers the prober never learns about
    (they would stay "checking" for ever)."""
    port, api_port = ports
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        text = config(port, api_port, a.addrs).replace(
            'proxy_pass = "http://backend"',
            'proxy_pass = "http://backend"\n  health_check = { interval = "1s", mandatory = true }',
        )
        with LB(tmp_path, text, port):
            wait_for(lambda: call(api_port, "GET", "")[0] == 200, what="the API")
            dead = f"127.0.0.1:{free_port()}"

            def states() -> dict[str, str]:
                doc = json.loads(request(api_port, "GET", "/api/9/http/upstreams/backend")[2])
                return {p["server"]: p["state"] for p in doc["peers"]}

            wait_for(lambda: states()[a.addrs[0]] == "up", what="a up")
            assert call(api_port, "POST", "/servers", {"server": b.addrs[0]})[0] == 201
            assert call(api_port, "POST", "/servers", {"server": dead})[0] == 201
            assert states()[b.addrs[0]] in ("checking", "up")
            wait_for(
                lambda: states() == {a.addrs[0]: "up", b.addrs[0]: "up", dead: "unhealthy"}, what="probes"
            )
            for _ in range(6):
                assert request(port, "GET", "/")[0] == 200


def test_exporter_and_dashboard_read_runtime_servers(tmp_path: Path, ports: tuple[int, int]) -> None:
    """nginx-prometheus-exporter (NGINX Plus mode) and prefork-lb's /metrics still read the
    API with the write API on: a server added at run time appears with its state (draining
    = 2), ids and all; the dashboard page is served next to it."""
    from tests.integration.test_prometheus_exporter import EXPORTER, Exporter, by_server, families

    if EXPORTER is None:
        pytest.skip("prometheus-nginx-exporter is not installed")
    port, api_port = ports
    with Backend(1) as a, Backend(1) as b:
        text = (
            config(port, api_port, a.addrs)
            + '  [[http.servers.locations]]\n  match = "/dashboard"\n  dashboard = true\n'
        )
        with LB(tmp_path, text, port):
            assert call(api_port, "POST", "/servers", {"server": b.addrs[0]})[0] == 201
            assert call(api_port, "PATCH", "/servers/1", {"drain": True})[0] == 200
            for _ in range(4):
                assert request(port, "GET", "/")[0] == 200
            exporter = Exporter(f"http://127.0.0.1:{api_port}/api/", tmp_path / "exporter.log")
            try:
                fams = families(exporter.scrape())
            finally:
                exporter.stop()
            assert fams["nginxplus_up"].samples[0].value == 1, exporter.log()
            assert by_server(fams, "nginxplus_upstream_server_state") == {a.addrs[0]: 1, b.addrs[0]: 2}
            ours = families(request(api_port, "GET", "/metrics")[2].decode())
            assert by_server(ours, "nginxplus_upstream_server_state") == {a.addrs[0]: 1, b.addrs[0]: 2}
            status, _, page = request(api_port, "GET", "/dashboard/")
            assert status == 200 and b"<html" in page.lower()


def test_respawned_worker_serves_runtime_servers(tmp_path: Path, ports: tuple[int, int]) -> None:
    """A worker killed after a POST is respawned with the runtime list (the table), not its
    config's: its requests reach the added server and it lists it. Catches a respawn that
    builds from the config alone (the change would be lost in one worker)."""
    import os
    import signal

    port, api_port = ports
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        with LB(tmp_path, config(port, api_port, a.addrs), port) as lb:
            assert call(api_port, "PATCH", "/servers/0", {"down": True})[0] == 200
            assert call(api_port, "POST", "/servers", {"server": b.addrs[0]})[0] == 201
            old = {w.pid for w in lb.workers()}
            victim = sorted(old)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len({w.pid for w in lb.workers()} - old) == 1, what="the respawn")
            new_pid = ({w.pid for w in lb.workers()} - old).pop()

            def new_worker_used_b() -> bool:
                for _ in range(4):
                    assert request(port, "GET", "/")[2] == b"b\n"
                return b.addrs[0] in upstream_addrs_by_pid(lb).get(str(new_pid), set())

            wait_for(new_worker_used_b, what="the new worker to proxy")
            peers = peers_by_worker(api_port, 2)[new_pid]
            assert [(p["server"], p["state"]) for p in peers] == [(a.addrs[0], "down"), (b.addrs[0], "up")]


def test_post_a_hostname(tmp_path: Path, ports: tuple[int, int]) -> None:
    """A hostname is resolved at POST (gevent's resolver: the worker keeps serving) into one
    server per address, each with its own id; the answer is the first."""
    port, api_port = ports
    with Backend(1) as a, Backend(1) as b:
        with LB(tmp_path, config(port, api_port, a.addrs), port):
            status, doc = call(api_port, "POST", "/servers", {"server": f"localhost:{b.ports[0]}"})
            assert status == 201, doc
            servers = call(api_port, "GET", "/servers")[1]
            added = [s for s in servers if s["id"] != 0]
            assert doc in added and {s["server"] for s in added} <= {b.addrs[0], f"[::1]:{b.ports[0]}"}
            assert b.addrs[0] in {s["server"] for s in added}
