"""The rewrite module, map and error_page end to end (issue 16): a real prefork-lb master and
real backends (demo_backend ``echo=1`` shows the request-target the upstream received).
nginx 1.22's answers for the same rows: shared/reference/nginx-semantics-2.md 2.2-2.6 and 3.6."""

from __future__ import annotations

import json
from pathlib import Path

from tests.backends import Backend, free_port
from tests.harness import LB, request, upstream_block

CONFIG = """
workers = 1
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "access.log"
[http.maps.pool_name]
source = "$arg_p"
values = {{ default = "dflt", "~^b(\\\\d)$" = "beta$1", exact = "E" }}
{upstream}
[http.upstreams.dead]
servers = [{{ address = "127.0.0.1:{dead}" }}]

[[http.servers]]
listen = ["127.0.0.1:{port}"]
rewrite_rules = [
  'rewrite ^(/download/.*)/media/(\\w+)\\.?.*$ $1/mp3/$2.mp3 last',
  'rewrite ^(/download/.*)/audio/(\\w+)\\.?.*$ $1/mp3/$2.ra last',
  'if ($http_user_agent ~* "badbot") {{ return 403; }}',
  'set $backend_pool "blue"',
  'rewrite ^/srv/(.*)$ /loc/$1',
]
error_page = {{ "502 503 504" = "@fallback", "404" = "=200 /empty.json" }}
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_set_header = {{ Host = "$host", X-Pool = "$backend_pool" }}
  [[http.servers.locations]]
  match = "/loc/"
  rewrite_rules = ['return 200 "$uri $args $request_uri"']
  [[http.servers.locations]]
  match = "/a/"
  rewrite_rules = ['rewrite ^/a/(.*)$ /$1 last']
  [[http.servers.locations]]
  match = "= /end"
  return = "200 end"
  [[http.servers.locations]]
  match = "/loop/"
  rewrite_rules = ['rewrite ^ /loop/x last']
  [[http.servers.locations]]
  match = "/red/"
  rewrite_rules = ['rewrite ^/red/(.*)$ /target/$1 redirect']
  [[http.servers.locations]]
  match = "/perm/"
  rewrite_rules = ['rewrite ^/perm/(.*)$ /target/$1 permanent']
  [[http.servers.locations]]
  match = "/brkp/"
  rewrite_rules = ['rewrite ^/brkp/(.*)$ /other/$1 break', 'return 403']
  proxy_pass = "http://backend"
  [[http.servers.locations]]
  match = "/static-like/"
  rewrite_rules = ['set $x 1']
  [[http.servers.locations]]
  match = "= /empty.json"
  rewrite_rules = ['return 200 "{{}}"']
  [[http.servers.locations]]
  match = "/dead/"
  proxy_pass = "http://dead"
  [[http.servers.locations]]
  match = "/deadpost/"
  proxy_pass = "http://dead"
  error_page = {{ "502" = "=200 /fromerr/x?echo=1" }}
  [[http.servers.locations]]
  match = "/ie/"
  proxy_pass = "http://backend"
  proxy_intercept_errors = true
  error_page = {{ "404" = "/err" }}
  [[http.servers.locations]]
  match = "= /err"
  return = "200 custom error page"
  [[http.servers.locations]]
  match = "/map"
  rewrite_rules = ['return 200 "$pool_name"']
  [[http.servers.locations]]
  match = "/crlf/"
  rewrite_rules = ['rewrite "^/crlf/([\\s\\S]*)$" https://x.test/$1 redirect']
  [[http.servers.locations]]
  match = "/ret/"
  rewrite_rules = ['return 302 https://x.test$uri']
  [[http.servers.locations]]
  match = "/retrel/"
  rewrite_rules = ['return 302 $uri']
  [[http.servers.locations]]
  match = "@fallback"
  return = "503 maintenance"
"""


def echo_target(body: bytes) -> str:
    return str(json.loads(body)["target"])


def test_rewrite_module_end_to_end(tmp_path: Path) -> None:
    """Catches: rewrite_rules/error_page/maps/named locations missing (the old code rejects
    the keys); the download/media rewrite of the issue; nginx's phase order and 10-change
    limit; redirects made absolute; break + proxy_pass sending the rewritten URI."""
    port, dead = free_port(), free_port()
    with Backend(1) as be:
        cfg = CONFIG.format(upstream=upstream_block("backend", be.addrs), port=port, dead=dead)
        with LB(tmp_path, cfg, port):
            # the download rewrites (server level, then location search): upstream sees it
            status, _, body = request(port, "GET", "/download/x/media/song.wma?echo=1")
            assert status == 200 and echo_target(body) == "/download/x/mp3/song.mp3?echo=1"
            status, _, body = request(port, "GET", "/download/y/audio/talk.ogg?echo=1")
            assert echo_target(body) == "/download/y/mp3/talk.ra?echo=1"
            # server-level if / set; the set variable reaches proxy_set_header
            assert request(port, "GET", "/", headers={"User-Agent": "x BadBot y"})[0] == 403
            status, _, body = request(port, "GET", "/plain?echo=1")
            assert ["X-Pool", "blue"] in json.loads(body)["headers"]
            # R1: server rewrite then location (flag-less: re-search), $request_uri stays raw
            assert request(port, "GET", "/srv/foo?q=1")[2] == b"/loc/foo q=1 /srv/foo?q=1"
            # R3/R4: ten URI changes succeed, the eleventh is a 500
            assert request(port, "GET", "/a" * 10 + "/end")[:3:2] == (200, b"end")
            assert request(port, "GET", "/a" * 11 + "/end")[0] == 500
            assert request(port, "GET", "/loop/1")[0] == 500
            assert "rewrite or internal redirection cycle" in (tmp_path / "error.log").read_text()
            # R7: redirect/permanent, made absolute from Host (without its port) and the local port
            status, headers, _ = request(port, "GET", "/red/foo?q=1", headers={"Host": "example.test:9999"})
            assert status == 302 and headers["location"] == f"http://example.test:{port}/target/foo?q=1"
            status, headers, _ = request(port, "GET", "/perm/foo", headers={"Host": "example.test"})
            assert status == 301 and headers["location"] == f"http://example.test:{port}/target/foo"
            # R5: break stays in the location, later statements do not run, upstream gets the new URI
            status, _, body = request(port, "GET", "/brkp/foo?echo=1&z=1")
            assert status == 200 and echo_target(body) == "/other/foo?echo=1&z=1"
            # error_page: 404 (a location with only rewrite_rules has no content) -> =200 /empty.json
            assert request(port, "GET", "/static-like/x")[:3:2] == (200, b"{}")
            # error_page 502 -> @fallback: its answer, with the original status (nginx)
            status, _, body = request(port, "GET", "/dead/x")
            assert (status, body) == (502, b"maintenance")
            # error_page URI: a POST becomes a GET without its body (sent to the first upstream)
            status, _, body = request(port, "POST", "/deadpost/", body=b"hello")
            seen = json.loads(body)
            assert (status, seen["method"], seen["target"], seen["body_len"]) == (
                200,
                "GET",
                "/fromerr/x?echo=1",
                0,
            )
            # proxy_intercept_errors: upstream 404 -> /err body with 404; 403 passed through
            status, _, body = request(port, "GET", "/ie/x?status=404")
            assert (status, body) == (404, b"custom error page")
            assert request(port, "GET", "/ie/x?status=403")[0] == 403
            # map: exact, regex with a capture, default
            assert request(port, "GET", "/map?p=exact")[2] == b"E"
            assert request(port, "GET", "/map?p=b7")[2] == b"beta7"
            assert request(port, "GET", "/map")[2] == b"dflt"
            # 2.5: CR LF in a capture of a redirect are escaped, no header is injected
            status, headers, _ = request(port, "GET", "/crlf/%0d%0aX-Inj:%201")
            assert status == 302 and headers["location"] == "https://x.test/%0D%0AX-Inj:%201"
            assert "x-inj" not in headers
            # 2.5, better than nginx: $uri (decoded) in a return URL never injects a header
            for path in ("/ret/%0d%0aX-Inj:%201", "/ret/%0aX-Inj:%201", "/retrel/%0d%0aX-Inj:%201"):
                status, headers, _ = request(port, "GET", path, headers={"Host": "h.test"})
                assert status == 302 and "x-inj" not in headers, path
                assert "\r" not in headers["location"] and "\n" not in headers["location"]
                assert headers["location"].endswith("/%0D%0AX-Inj:%201") or headers["location"].endswith(
                    "/%0AX-Inj:%201"
                )


def _map_config(port: int, value: str) -> str:
    return f"""
workers = 1
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
[http.maps.m]
source = "$arg_k"
values = {{ default = "{value}" }}
[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  return = "200 $m"
"""


def test_maps_follow_reload_and_survive_a_failed_one(tmp_path: Path) -> None:
    """Catches: config variables (maps, set) kept from the previous generation after a
    reload, or a failed reload leaving its half-built variable table behind, so that a
    worker respawned afterwards compiles its templates against it (the map's placeholder
    then recurses forever)."""
    import os
    import signal

    from tests.harness import wait_for

    port = free_port()
    with LB(tmp_path, _map_config(port, "one"), port) as lb:
        assert request(port, "GET", "/")[2] == b"one"
        lb.conf.write_text(_map_config(port, "two"))
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: request(port, "GET", "/")[2] == b"two", what="the reloaded map")
        lb.conf.write_text(_map_config(port, "$nosuchvar"))
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: "reload aborted" in lb.output(), what="the failed reload")
        (worker,) = lb.workers()
        os.kill(worker.pid, signal.SIGKILL)
        wait_for(lambda: [w.pid for w in lb.workers()] not in ([], [worker.pid]), what="a respawned worker")
        wait_for(lambda: request(port, "GET", "/")[2] == b"two", what="the respawned worker answering")
