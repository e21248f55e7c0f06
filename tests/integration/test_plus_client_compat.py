"""NGINX Plus client compatibility (issue 19): nginx-plus-go-client's requests, replayed.

``tests/plus_client.py`` issues exactly the requests nginx-plus-go-client issues (paths with
its trailing slashes, Go's headers, Go's JSON bodies, the version negotiation through
``GET /api``) and reads the answers as Go's ``json.Unmarshal`` would. These tests drive its
flows against the real master with 2 workers and real backends, and check both what the
client sees and what reached the backends (their own request counters).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, request, wait_for
from tests.plus_client import GO_UA, PlusClient, PlusError, UpstreamServer
from tests.stream_servers import TcpEcho


def config(
    port: int, api_port: int, servers: list[str], extra: str = "", api: str = "{ write = true }"
) -> str:
    entries = ", ".join(f'{{ address = "{s}" }}' for s in servers)
    return f"""
workers = 2
error_log = "error.log"
error_log_level = "notice"
[http]
access_log = "access.log"
[http.log_formats]
pid = '$pid|$upstream_addr|$status'
[http.upstreams.backend]
servers = [{entries}]
{extra}
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
  api = {api}
"""


def counts(be: Backend) -> dict[str, int]:
    return {f"127.0.0.1:{p}": int(be.stats(p)["requests"]) for p in be.ports}


def proxied(port: int, n: int, expect: int = 200) -> None:
    """``n`` requests, each on a new connection (so both workers take some)."""
    for _ in range(n):
        assert request(port, "GET", "/")[0] == expect


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


@pytest.fixture()
def backends() -> Any:
    with Backend(3) as be:
        yield be


def test_update_http_servers_flow(tmp_path: Path, backends: Backend) -> None:
    """``UpdateHTTPServers`` against prefork-lb: add two servers, converge (a second call
    with the same list changes nothing), change one and remove one, drain one, remove all;
    after each step the client's own reads (``GetHTTPServers``, ``GetUpstreams``) and the
    backends' counters agree with what was asked.

    Catches: a server document that does not round-trip through the client's struct and
    defaults (it would PATCH on every call), the Go client's trailing-slash paths, its
    DELETE without a body, a field it sends that we reject, a peer document Go cannot
    decode, a drained server still taking unbound requests, refusing to delete the last
    server, an API that closes the client's keep-alive connection."""
    a, b, c = backends.addrs
    port, api_port = free_port(), free_port()
    with LB(tmp_path, config(port, api_port, [a]), port):
        client = PlusClient(f"http://127.0.0.1:{api_port}/api", check_api=True)
        try:
            assert client.get_max_api_version() == 9
            assert [s.server for s in client.get_servers("backend")] == [a]
            with pytest.raises(PlusError) as missing:
                client.get_servers("nope")
            assert (missing.value.status, missing.value.code) == (404, "UpstreamNotFound")

            # 1. add b (weight 2) and c (max_fails 3, fail_timeout 5s)
            wanted = [
                UpstreamServer(a),
                UpstreamServer(b, weight=2),
                UpstreamServer(c, max_fails=3, fail_timeout="5s"),
            ]
            first = len(client.http.sent)
            added, deleted, updated, errors = client.update_servers("backend", wanted)
            assert errors == [] and deleted == [] and updated == []
            assert [s.server for s in added] == [b, c]
            flow = client.http.sent[first:]
            base = "/api/9/http/upstreams/backend/servers"
            assert [(s.method, s.path) for s in flow] == [
                ("GET", base),
                ("POST", base + "/"),
                ("POST", base + "/"),
            ]
            assert flow[1].body == f'{{"weight":2,"server":"{b}"}}'.encode()
            assert flow[2].body == f'{{"max_fails":3,"server":"{c}","fail_timeout":"5s"}}'.encode()
            assert flow[1].headers == [
                ("Host", f"127.0.0.1:{api_port}"),
                ("User-Agent", GO_UA),
                ("Content-Length", str(len(flow[1].body))),
                ("Content-Type", "application/json"),
                ("Accept-Encoding", "gzip"),
            ]
            servers = {s.server: s for s in client.get_servers("backend")}
            assert (servers[b].weight, servers[c].max_fails, servers[c].fail_timeout) == (2, 3, "5s")

            # 2. converged: the same list again is a GET and nothing else
            first = len(client.http.sent)
            assert client.update_servers("backend", wanted) == ([], [], [], [])
            assert [s.method for s in client.http.sent[first:]] == ["GET"]

            # traffic: weights 1:2:1 over the shared round robin, from both workers
            before = counts(backends)
            proxied(port, 8)
            assert delta(before, counts(backends)) == {a: 2, b: 4, c: 2}

            # 3. a gets weight 3, c goes: one DELETE (no body, trailing slash), one PATCH
            first = len(client.http.sent)
            wanted = [UpstreamServer(a, weight=3), UpstreamServer(b, weight=2)]
            added, deleted, updated, errors = client.update_servers("backend", wanted)
            assert errors == [] and added == []
            assert [s.server for s in deleted] == [c] and [s.server for s in updated] == [a]
            flow = client.http.sent[first:]
            assert [(s.method, s.path) for s in flow] == [
                ("GET", base),
                ("DELETE", f"{base}/{servers[c].id}/"),
                ("PATCH", f"{base}/{servers[a].id}/"),
            ]
            assert [k for k, _ in flow[1].headers] == ["Host", "User-Agent", "Accept-Encoding"] and not flow[
                1
            ].body
            assert flow[2].body == f'{{"weight":3,"server":"{a}"}}'.encode()  # no "id"
            assert client.update_servers("backend", wanted) == ([], [], [], [])
            before = counts(backends)
            proxied(port, 10)
            assert delta(before, counts(backends)) == {a: 6, b: 4, c: 0}

            # 4. drain b as a Go program does: UpdateHTTPServer with Drain set
            client.update_server("backend", UpstreamServer(b, id=servers[b].id, weight=2, drain=True))
            assert client.http.sent[-1].body == f'{{"weight":2,"server":"{b}","drain":true}}'.encode()
            drained = {s.server: s for s in client.get_servers("backend")}[b]
            assert drained.drain and drained.weight == 2
            wanted[1] = UpstreamServer(b, weight=2, drain=True)
            assert client.update_servers("backend", wanted) == ([], [], [], [])
            before = counts(backends)
            proxied(port, 6)
            assert delta(before, counts(backends)) == {a: 6, b: 0, c: 0}

            # 5. the client's view of the peers (GetUpstreams): states and counters
            peers = {p["Server"]: p for p in client.get_upstreams()["backend"]["Peers"]}
            assert set(peers) == {a, b}
            assert (peers[a]["State"], peers[b]["State"]) == ("up", "draining")
            assert (peers[a]["Weight"], peers[b]["Weight"]) == (3, 2)
            assert peers[a]["Requests"] == 2 + 6 + 6 and peers[b]["Requests"] == 4 + 4
            assert peers[a]["Responses"]["Codes"]["C200"] == peers[a]["Requests"]

            # 6. an empty list deletes every server (NGINX Plus allows it): 502, nothing reaches a backend
            added, deleted, updated, errors = client.update_servers("backend", [])
            assert errors == [] and sorted(s.server for s in deleted) == sorted([a, b])
            assert client.get_servers("backend") == []
            before = counts(backends)
            proxied(port, 4, expect=502)
            assert counts(backends) == before
            assert client.get_upstreams()["backend"]["Peers"] == []

            # 7. errors read as the client reads them
            with pytest.raises(PlusError) as bad:
                client.add_server("backend", UpstreamServer(a, weight=0))
            assert (bad.value.status, bad.value.code) == (400, "UpstreamConfFormatError")
            assert "weight" in bad.value.text
            client.add_server("backend", UpstreamServer(a))
            proxied(port, 2)
            assert client.http.connections == 1  # every request above on one keep-alive connection
        finally:
            client.close()


def test_update_stream_servers_flow(tmp_path: Path) -> None:
    """``UpdateStreamServers``: the same flow under ``/stream/upstreams``; sessions reach
    the servers the client asked for (each echo server names itself first), and
    ``GetStreamUpstreams`` decodes. Catches: a stream path, body or document the Go client
    cannot use, a PATCH body with ``server`` refused on stream servers."""
    port, api_port, tcp_port = free_port(), free_port(), free_port()
    one, two = TcpEcho(), TcpEcho()
    text = config(port, api_port, ["127.0.0.1:1"]) + (
        f'[stream.upstreams.tcp]\nservers = [{{ address = "{one.addr}" }}]\n'
        f'[[stream.servers]]\nlisten = ["127.0.0.1:{tcp_port}"]\nproxy_pass = "tcp"\n'
    )

    def first_lines(n: int) -> set[str]:
        seen = set()
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as conn:
                seen.add(conn.recv(100).decode().strip())
        return seen

    try:
        with LB(tmp_path, text, port):
            client = PlusClient(f"http://127.0.0.1:{api_port}/api")
            try:
                wanted = [UpstreamServer(one.addr), UpstreamServer(two.addr, max_conns=10)]
                added, deleted, updated, errors = client.update_servers("tcp", wanted, stream=True)
                assert (
                    errors == [] and [s.server for s in added] == [two.addr] and not deleted and not updated
                )
                assert client.http.sent[-1].body == f'{{"max_conns":10,"server":"{two.addr}"}}'.encode()
                assert client.update_servers("tcp", wanted, stream=True) == ([], [], [], [])
                assert first_lines(6) == {str(one.port), str(two.port)}
                wanted = [UpstreamServer(two.addr, max_conns=20)]
                added, deleted, updated, errors = client.update_servers("tcp", wanted, stream=True)
                assert errors == [] and [s.server for s in deleted] == [one.addr]
                assert [s.server for s in updated] == [two.addr]
                assert first_lines(4) == {str(two.port)}
                peers = client.get_stream_upstreams()["tcp"]["Peers"]
                assert [(p["Server"], p["MaxConns"]) for p in peers] == [(two.addr, 20)]
                assert peers[0]["Connections"] >= 4
            finally:
                client.close()
    finally:
        one.close()
        two.close()


def test_reads_decode_and_read_only_api(tmp_path: Path, backends: Backend) -> None:
    """``GetCaches``, ``GetNginxInfo`` and ``GetUpstreams`` decode with Go's types and show
    the traffic (3 requests to a cached location: 1 miss that reached the backend, 2 hits
    that did not); on a read-only API (``api = true``) a write is refused as NGINX Plus
    refuses it (405 ``MethodDisabled``) and changes nothing. Catches: a number where Go
    expects a string or an unsigned integer, a read-only API that writes."""
    port, api_port = free_port(), free_port()
    cache = (
        f'[http.proxy_cache_paths.one]\npath = "{tmp_path / "cache"}"\nkeys_zone = "1m"\nmax_size = "10m"\n'
    )
    text = (
        config(port, api_port, backends.addrs[:1], api="true")
        .replace("[http.log_formats]", cache + "[http.log_formats]")
        .replace('proxy_pass = "http://backend"\n', 'proxy_pass = "http://backend"\n  proxy_cache = "one"\n'
                 '  proxy_cache_valid = ["10m"]\n', 1)
    )  # fmt: skip
    with LB(tmp_path, text, port):
        before = counts(backends)
        proxied(port, 3)
        assert delta(before, counts(backends))[backends.addrs[0]] == 1
        client = PlusClient(f"http://127.0.0.1:{api_port}/api", check_api=True)
        try:
            caches = client.get_caches()
            one = caches["one"]
            assert one["MaxSize"] == 10 * 1024 * 1024 and isinstance(one["Cold"], bool)
            assert (one["Miss"]["Responses"], one["Hit"]["Responses"]) == (1, 2)
            assert one["Size"] > 0 and one["Hit"]["Bytes"] > 0
            info = client.get_nginx_info()
            assert info["Build"] == "prefork-lb" and info["ProcessID"] > 0
            peers = client.get_upstreams()["backend"]["Peers"]
            assert [(p["Server"], p["Requests"]) for p in peers] == [(backends.addrs[0], 1)]
            with pytest.raises(PlusError) as refused:
                client.add_server("backend", UpstreamServer(backends.addrs[1]))
            assert (refused.value.status, refused.value.code) == (405, "MethodDisabled")
            assert [s.server for s in client.get_servers("backend")] == backends.addrs[:1]
        finally:
            client.close()


# NGINX's guide "Dynamic Configuration of Upstreams with the NGINX Plus API", its three curl
# commands as printed (the POST body spread over shell lines ending in a backslash, inside
# single quotes: the backslash-newline pairs reach the server). Only the host and, so that
# nothing is ever sent off this machine, the POSTed server's address are substituted.
DOCS_COMMANDS = r"""curl -X POST -d '{ \
   "server": "10.0.0.1:8089", \
   "weight": 4, \
   "max_conns": 0, \
   "max_fails": 0, \
   "fail_timeout": "10s", \
   "slow_start": "10s", \
   "backup": true, \
   "down": true \
 }' -s 'http://127.0.0.1/api/9/http/upstreams/appservers/servers'
echo
curl -X PATCH -d '{ "down": true }' -s 'http://127.0.0.1/api/9/http/upstreams/appservers/servers/0'
echo
curl -X DELETE -s 'http://127.0.0.1/api/9/http/upstreams/appservers/servers/0'
"""


def test_nginx_docs_curl_scripts(tmp_path: Path, backends: Backend) -> None:
    """NGINX's documented curl commands run by bash unchanged (``-d`` without a
    Content-Type, the POST body with shell line continuations): the server is added with
    every parameter, server 0 is set down, then removed; traffic follows. Catches: curl's
    form Content-Type refused, the guide's multi-line body refused as invalid JSON (it
    was, before the backslash-newline leniency of upstream_conf.py rule 4)."""
    a, b, _ = backends.addrs
    port, api_port = free_port(), free_port()
    text = config(port, api_port, [a]).replace("backend", "appservers")
    script = DOCS_COMMANDS.replace("10.0.0.1:8089", b).replace("127.0.0.1/api", f"127.0.0.1:{api_port}/api")
    assert script.count("\\\n") == 9  # the continuations are really there
    with LB(tmp_path, text, port):
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        added, patched, remaining = (json.loads(line) for line in out.stdout.splitlines())
        assert added == {
            "id": 1,
            "server": b,
            "weight": 4,
            "max_conns": 0,
            "max_fails": 0,
            "fail_timeout": "10s",
            "slow_start": "10s",
            "route": "",
            "backup": True,
            "down": True,
        }
        assert (patched["id"], patched["server"], patched["down"]) == (0, a, True)
        assert [s["server"] for s in remaining] == [b]
        # b is a backup that is down: nothing is usable now
        before = counts(backends)
        proxied(port, 2, expect=502)
        assert counts(backends) == before
        curl = ["curl", "-s", "-X", "PATCH", "-d", '{ "down": false }']
        subprocess.run(
            [*curl, f"http://127.0.0.1:{api_port}/api/9/http/upstreams/appservers/servers/1"], check=True
        )
        proxied(port, 2)
        assert delta(before, counts(backends))[b] == 2


def suite_config(port: int, api_port: int, tmp_path: Path, drain_addr: str, tcp_port: int) -> str:
    """nginx-plus-go-client's own test setup (docker/test.conf) in prefork-lb's keys: an
    upstream ``test`` with no servers (a ``state`` file, as NGINX Plus pairs them), one
    ``test-drain`` whose server is configured with ``drain``, a stream upstream with no
    servers, a 100 MiB cache zone."""
    (tmp_path / "state").mkdir(exist_ok=True)
    return f"""
workers = 2
error_log = "error.log"
error_log_level = "notice"
[http]
access_log = "off"
[http.proxy_cache_paths.http_cache]
path = "{tmp_path / "cache"}"
keys_zone = "10m"
max_size = "100m"
[http.upstreams.test]
state = "state/test.state"
[http.upstreams.test-drain]
servers = [{{ address = "{drain_addr}", drain = true }}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/test"
  proxy_pass = "http://test"
  [[http.servers.locations]]
  match = "/drain"
  proxy_pass = "http://test-drain"
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
  [[http.servers.locations]]
  match = "/api/"
  api = {{ write = true }}
[stream.upstreams.stream_test]
state = "state/stream_test.state"
[[stream.servers]]
listen = ["127.0.0.1:{tcp_port}"]
proxy_pass = "stream_test"
"""


def test_go_client_own_suite_replayed(tmp_path: Path, backends: Backend) -> None:
    """The checks of nginx-plus-go-client's own integration tests (tests/client_test.go:
    TestClient, TestUpstreamServer, TestStreamUpstreamServer, TestUpstreamServerWithDrain,
    TestStats), which it runs against a real NGINX Plus, replayed against prefork-lb: the
    same calls, the same expected structs (``reflect.DeepEqual`` after zeroing the id),
    the same counts of added/deleted/updated servers.

    Catches: an upstream that cannot start without servers (Plus's ``zone`` + ``state``
    pattern), a parameter that does not come back as sent (``route``, ``slow_start``,
    ``backup`` + ``down``...), a PATCH of the whole server struct refused, a duplicate or a
    stale id accepted, and any read of ``GetStats`` that 404s or does not decode (the
    exporter loses the whole scrape: ``/api/9/workers`` was missing)."""
    port, api_port, tcp_port = free_port(), free_port(), free_port()
    text = suite_config(port, api_port, tmp_path, backends.addrs[0], tcp_port)
    with LB(tmp_path, text, port):
        c = PlusClient(f"http://127.0.0.1:{api_port}/api")
        try:
            # TestUpstreamServer / TestStreamUpstreamServer: every parameter comes back as sent
            full = UpstreamServer(
                "127.0.0.1:2000",
                max_conns=321,
                max_fails=64,
                fail_timeout="21s",
                slow_start="12s",
                weight=10,
                route="test",
                backup=True,
                down=True,
            )
            for stream, upstream in ((False, "test"), (True, "stream_test")):
                server = dataclasses.replace(full, stream=stream, route="" if stream else "test")
                c.add_server(upstream, server)
                got = c.get_servers(upstream, stream)
                assert [dataclasses.replace(s, id=0) for s in got] == [server]
                assert c.update_servers(upstream, [], stream)[1] == got
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as conn:
                assert conn.recv(100) == b""  # no stream server: the session is closed
            wait_for(
                lambda: "no live upstreams" in (tmp_path / "error.log").read_text(), what="the stream 502 log"
            )

            # TestClient
            c.get_servers("test")
            with pytest.raises(PlusError):
                c.get_servers("random")
            c.add_server("test", UpstreamServer("127.0.0.1:8001"))
            with pytest.raises(PlusError, match="already exists"):
                c.add_server("test", UpstreamServer("127.0.0.1:8001"))
            servers = c.get_servers("test")
            assert len(servers) == 1
            c.update_server("test", dataclasses.replace(servers[0], slow_start="30s"))
            servers = c.get_servers("test")
            assert len(servers) == 1 and servers[0].slow_start == "30s"
            old = PlusClient(f"http://127.0.0.1:{api_port}/api", patch_content_type=False)  # before PR #448
            try:
                old.update_server("test", dataclasses.replace(servers[0], weight=3))
                assert [k for k, _ in old.http.sent[-1].headers] == [
                    "Host",
                    "User-Agent",
                    "Content-Length",
                    "Accept-Encoding",
                ]
                assert old.get_servers("test")[0].weight == 3
                old.update_server("test", dataclasses.replace(servers[0], weight=1))
            finally:
                old.close()
            with pytest.raises(PlusError) as stale:
                c.update_server("test", dataclasses.replace(servers[0], id=servers[0].id + 1))
            assert stale.value.status == 404
            c.delete_server("test", "127.0.0.1:8001")
            with pytest.raises(PlusError, match="not found"):
                c.delete_server("test", "127.0.0.1:8001")

            servers1 = [UpstreamServer(f"127.0.0.2:{p}") for p in (8001, 8002, 8003)]
            added, deleted, updated, errors = c.update_servers("test", servers1)
            assert (len(added), len(deleted), len(updated), errors) == (3, 0, 0, [])
            servers = c.get_servers("test")
            assert all(
                any(s.server == w.server and w.same_parameters_as(s) for s in servers) for w in servers1
            )
            assert c.update_servers("test", servers1) == ([], [], [], [])
            servers[0] = dataclasses.replace(
                servers[0], max_conns=5, max_fails=6, fail_timeout="15s", slow_start="10s"
            )
            servers[1] = dataclasses.replace(servers[1], slow_start="10s")
            added, deleted, updated, errors = c.update_servers("test", servers)
            assert (len(added), len(deleted), len(updated), errors) == (0, 0, 2, [])
            got = {s.server: s for s in c.get_servers("test")}
            s0, s1 = got[servers[0].server], got[servers[1].server]
            assert (s0.max_conns, s0.max_fails, s0.fail_timeout, s0.slow_start) == (5, 6, "15s", "10s")
            assert (s1.max_conns, s1.max_fails, s1.fail_timeout, s1.slow_start) == (0, 1, "10s", "10s")
            servers2 = [UpstreamServer(f"127.0.0.2:{p}") for p in (8003, 8004, 8005)]
            added, deleted, updated, errors = c.update_servers("test", servers2)
            assert (len(added), len(deleted), len(updated), errors) == (2, 2, 0, [])
            added, deleted, updated, errors = c.update_servers("test", [])
            assert (len(added), len(deleted), len(updated), errors) == (0, 3, 0, [])
            assert c.get_servers("test") == []

            # TestUpstreamServerWithDrain: a configured drain reads back as Plus shows it
            expected = UpstreamServer(
                backends.addrs[0], max_conns=0, max_fails=1, fail_timeout="10s", slow_start="0s",
                backup=False, down=False, weight=1, drain=True,
            )  # fmt: skip
            assert [dataclasses.replace(s, id=0) for s in c.get_servers("test-drain")] == [expected]

            # TestStats: GetStats whole, after a server was added and traffic went through
            c.add_server("test", UpstreamServer(backends.addrs[1]))
            assert request(port, "GET", "/test")[0] == 200
            stats = c.get_stats()
            info = stats["NginxInfo"]
            assert info["Version"] and info["Build"] and info["Address"] and info["LoadTimestamp"]
            assert info["Timestamp"] and info["Generation"] >= 1 and info["ProcessID"] >= 1
            assert info["ParentProcessID"] >= 1
            assert stats["Connections"]["Accepted"] >= 1
            assert len(stats["Workers"]) == 2 and all(w["ProcessID"] > 0 for w in stats["Workers"])
            assert sum(w["HTTP"]["HTTPRequests"]["Total"] for w in stats["Workers"]) >= 1
            assert stats["Caches"]["http_cache"]["MaxSize"] == 104857600
            peers = stats["Upstreams"]["test"]["Peers"]
            assert [(p["Server"], p["Requests"]) for p in peers] == [(backends.addrs[1], 1)]
            assert "stream_test" in stats["StreamUpstreams"]
        finally:
            c.close()


def test_go_client_drain_keeps_sticky_sessions(tmp_path: Path, backends: Backend) -> None:
    """Session draining as NGINX's guide for Python sites describes it, driven by the Go
    client: ``UpdateHTTPServer`` with ``Drain`` on a server of a ``sticky cookie`` group;
    requests bound to it by the cookie keep reaching it, unbound ones (from both workers)
    never do, and ``GetUpstreams`` shows it ``draining``. Catches: a drain that cuts bound
    sessions, or one that still takes new ones."""
    import hashlib

    a, b, _ = backends.addrs
    port, api_port = free_port(), free_port()
    text = config(port, api_port, [a, b], extra='sticky = { cookie = "srv_id" }')
    with LB(tmp_path, text, port):
        client = PlusClient(f"http://127.0.0.1:{api_port}/api")
        try:
            id_b = {s.server: s.id for s in client.get_servers("backend")}[b]
            client.update_server("backend", UpstreamServer(b, id=id_b, drain=True))
            assert client.http.sent[-1].body == f'{{"server":"{b}","drain":true}}'.encode()
            peers = {p["Server"]: p["State"] for p in client.get_upstreams()["backend"]["Peers"]}
            assert peers == {a: "up", b: "draining"}
            before = counts(backends)
            cookie = {"Cookie": "srv_id=" + hashlib.md5(b.encode()).hexdigest()}
            for _ in range(4):
                status, headers, _ = request(port, "GET", "/", headers=cookie)
                assert status == 200 and headers["set-cookie"] == cookie["Cookie"]
            proxied(port, 6)
            assert delta(before, counts(backends)) == {a: 6, b: 4, backends.addrs[2]: 0}
        finally:
            client.close()
