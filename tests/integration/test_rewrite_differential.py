"""Differential: the rewrite module and error_page, nginx 1.22 against prefork-lb (issue 16).

The scenarios of shared/reference/nginx-semantics-2.md 2.2-2.6 (R1-R8, return forms, if) and
3.6 (error_page, proxy_intercept_errors), written twice: nginx syntax for the oracle and the
TOML twin of the config contract. Per request both must give the same status, Location
(the port, which differs between the two runs, normalised to PORT) and body; the backend
(demo_backend ``echo=1``) shows the request-target each upstream received. nginx's and our
own error pages differ in their signature, so an HTML error body is compared by status only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, request
from tests.nginx_conf import NGINX, Nginx, lb_from_conf, scenario

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]

NGINX_SERVER = r"""
    upstream backend {{ server {backend}; }}
    upstream dead {{ server 127.0.0.1:{dead}; }}
    server {{
        listen 127.0.0.1:{port};
        rewrite ^/srv/(.*)$ /loc/$1;
        rewrite ^/sv/a$ /sv/b;
        location / {{ proxy_pass http://backend; }}
        location /loc/ {{ return 200 "$uri $args $request_uri"; }}
        location = /sv/b {{ rewrite ^ /sv/a last; }}
        location = /sv/a {{ return 200 "sv-a"; }}
        location /a/ {{ rewrite ^/a/(.*)$ /$1 last; }}
        location = /end {{ return 200 "end"; }}
        location /loop/ {{ rewrite ^ /loop/x last; }}
        location /brkp/ {{ rewrite ^/brkp/(.*)$ /other/$1 break; proxy_pass http://backend; }}
        location /nf/ {{ rewrite ^/nf/(.*)$ /loc/$1; set $x 1; }}
        location /red/ {{ rewrite ^/red/(.*)$ /target/$1 redirect; }}
        location /perm/ {{ rewrite ^/perm/(.*)$ /target/$1 permanent; }}
        location /r8a/ {{ rewrite ^/r8a/(\w+)$ /loc/new?x=$1 last; }}
        location /r8b/ {{ rewrite ^/r8b/(\w+)$ /loc/new?x=$1? last; }}
        location /r8c/ {{ rewrite ^/r8c/(\w+)$ /loc/$1? last; }}
        location /capq/ {{ rewrite ^/capq/(.*)$ /loc/x?v=$1 last; }}
        location /abs/ {{ rewrite ^/abs/(.*)$ https://x.test/t/$1?n=1; }}
        location = /ret204 {{ return 204 "text"; }}
        location = /ret418 {{ return 418 "x"; }}
        location = /ret200x {{ return 200 /x; }}
        location = /retnotaurl {{ return 301 not-a-url; }}
        location = /retbare {{ return https://e.test/bare; }}
        location = /retrel {{ return 302 /rel/path; }}
        location /if/ {{ if ($arg_v) {{ return 200 "true"; }} return 200 "false"; }}
        location /ifre/ {{ if ($uri ~ ^/ifre/(\d+)$) {{ return 200 "id=$1"; }} return 404; }}
        location /ep1/ {{ error_page 404 =200 /errpage; return 404; }}
        location /ep2/ {{ error_page 404 /errpage; return 404; }}
        location /ep3/ {{ error_page 404 = /dyn; return 404; }}
        location /ep4/ {{ error_page 404 https://errors.test/404; return 404; }}
        location /ep5/ {{ error_page 404 = @fb; return 404; }}
        location = /errpage {{ return 200 "errpage"; }}
        location = /dyn {{ return 202 "dyn"; }}
        location @fb {{ proxy_pass http://backend; }}
        location /dead/ {{ error_page 502 =503 /errpage; proxy_pass http://dead; }}
        location /ie/ {{
            proxy_intercept_errors on;
            error_page 404 /errpage;
            error_page 500 502 = @fb;
            proxy_pass http://backend;
        }}
        location /noie/ {{ error_page 404 /errpage; proxy_pass http://backend; }}
    }}
"""


def _loc(match: str, body: str) -> str:
    return f'  [[http.servers.locations]]\n  match = "{match}"\n' + "".join(
        f"  {line}\n" for line in body.strip().splitlines()
    )


def toml(port: int, backend: str, dead: int) -> str:
    locations = [
        ("/", 'proxy_pass = "http://backend"'),
        ("/loc/", """rewrite_rules = ['return 200 "$uri $args $request_uri"']"""),
        ("= /sv/b", "rewrite_rules = ['rewrite ^ /sv/a last']"),
        ("= /sv/a", "return = '200 sv-a'"),
        ("/a/", "rewrite_rules = ['rewrite ^/a/(.*)$ /$1 last']"),
        ("= /end", "return = '200 end'"),
        ("/loop/", "rewrite_rules = ['rewrite ^ /loop/x last']"),
        ("/brkp/", "rewrite_rules = ['rewrite ^/brkp/(.*)$ /other/$1 break']\nproxy_pass = 'http://backend'"),
        ("/nf/", "rewrite_rules = ['rewrite ^/nf/(.*)$ /loc/$1', 'set $x 1']"),
        ("/red/", "rewrite_rules = ['rewrite ^/red/(.*)$ /target/$1 redirect']"),
        ("/perm/", "rewrite_rules = ['rewrite ^/perm/(.*)$ /target/$1 permanent']"),
        ("/r8a/", "rewrite_rules = ['rewrite ^/r8a/(\\w+)$ /loc/new?x=$1 last']"),
        ("/r8b/", "rewrite_rules = ['rewrite ^/r8b/(\\w+)$ /loc/new?x=$1? last']"),
        ("/r8c/", "rewrite_rules = ['rewrite ^/r8c/(\\w+)$ /loc/$1? last']"),
        ("/capq/", "rewrite_rules = ['rewrite ^/capq/(.*)$ /loc/x?v=$1 last']"),
        ("/abs/", "rewrite_rules = ['rewrite ^/abs/(.*)$ https://x.test/t/$1?n=1']"),
        ("= /ret204", "rewrite_rules = ['return 204 \"text\"']"),
        ("= /ret418", "rewrite_rules = ['return 418 \"x\"']"),
        ("= /ret200x", "rewrite_rules = ['return 200 /x']"),
        ("= /retnotaurl", "rewrite_rules = ['return 301 not-a-url']"),
        ("= /retbare", "rewrite_rules = ['return https://e.test/bare']"),
        ("= /retrel", "rewrite_rules = ['return 302 /rel/path']"),
        ("/if/", """rewrite_rules = ['if ($arg_v) { return 200 "true"; }', 'return 200 "false"']"""),
        (
            "/ifre/",
            """rewrite_rules = ['if ($uri ~ ^/ifre/(\\d+)$) { return 200 "id=$1"; }', 'return 404']""",
        ),
        ("/ep1/", "error_page = { '404' = '=200 /errpage' }\nreturn = 404"),
        ("/ep2/", "error_page = { '404' = '/errpage' }\nreturn = 404"),
        ("/ep3/", "error_page = { '404' = '= /dyn' }\nreturn = 404"),
        ("/ep4/", "error_page = { '404' = 'https://errors.test/404' }\nreturn = 404"),
        ("/ep5/", "error_page = { '404' = '= @fb' }\nreturn = 404"),
        ("= /errpage", "return = '200 errpage'"),
        ("= /dyn", "return = '202 dyn'"),
        ("@fb", 'proxy_pass = "http://backend"'),
        ("/dead/", "error_page = { '502' = '=503 /errpage' }\nproxy_pass = 'http://dead'"),
        (
            "/ie/",
            "proxy_intercept_errors = true\nerror_page = { '404' = '/errpage', '500 502' = '= @fb' }\n"
            "proxy_pass = 'http://backend'",
        ),
        ("/noie/", "error_page = { '404' = '/errpage' }\nproxy_pass = 'http://backend'"),
    ]
    return f"""
workers = 1
error_log = "error.log"
[http]
access_log = "access.log"
[http.upstreams.backend]
servers = [{{ address = "{backend}" }}]
[http.upstreams.dead]
servers = [{{ address = "127.0.0.1:{dead}" }}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
rewrite_rules = ['rewrite ^/srv/(.*)$ /loc/$1', 'rewrite ^/sv/a$ /sv/b']
""" + "".join(_loc(m, b) for m, b in locations)


REQUESTS = [
    "/srv/foo?q=1",  # R1
    "/sv/a",  # R2
    "/a" * 10 + "/end",  # R3
    "/a" * 11 + "/end",
    "/loop/1",  # R4
    "/brkp/foo?z=1&echo=1",  # R5
    "/nf/foo?z=1",  # R6
    "/red/foo?q=1",  # R7
    "/perm/foo",
    "/r8a/v1?orig=1",  # R8
    "/r8b/v1?orig=1",
    "/r8c/v1?orig=1",
    "/capq/a%20b%26c%3F",  # 2.2 escaping
    "/abs/v1?orig=1",
    "/ret204",  # 2.3
    "/ret418",
    "/ret200x",
    "/retnotaurl",
    "/retbare",
    "/retrel",
    "/if/?v=1",  # 2.4
    "/if/?v=0",
    "/if/?v=00",
    "/if/",
    "/ifre/42",
    "/ifre/x",
    "/ep1/x",  # 3.6
    "/ep2/x",
    "/ep3/x",
    "/ep4/x",
    "/ep5/x?echo=1",
    "/dead/x",
    "/ie/x?status=404",
    "/ie/x?status=403",
    "/ie/x?status=500&echo=1",
    "/noie/x?status=404",
]


def ask(port: int) -> list[tuple[str, int, str, str]]:
    out = []
    for path in REQUESTS:
        status, headers, body = request(port, "GET", path, headers={"Host": "example.test:9999"})
        location = headers.get("location", "").replace(f":{port}/", ":PORT/")
        text = body.decode("latin-1")
        if body.startswith(b"<html>"):
            text = "<error page>"
        elif body.startswith(b"{"):
            text = "upstream saw " + json.loads(body)["target"]
        out.append((path, status, location, text))
    return out


def test_rewrite_and_error_page_match_nginx(tmp_path: Path) -> None:
    """Catches any difference from nginx 1.22 in status, Location or body for the reference's
    rewrite/return/if/error_page rows (on the old code the TOML twin does not even load)."""
    dead = free_port()
    with Backend(1) as be:
        port = free_port()
        conf = scenario(NGINX_SERVER.format(backend=be.addrs[0], dead=dead, port=port))
        with Nginx(tmp_path / "nginx", port, conf):
            theirs = ask(port)
        port = free_port()
        (tmp_path / "lb").mkdir()
        with LB(tmp_path / "lb", toml(port, be.addrs[0], dead), port):
            ours = ask(port)
    diffs = [(t, o) for t, o in zip(theirs, ours, strict=True) if t != o]
    assert not diffs, "\n".join(f"nginx {t}\n  ours {o}" for t, o in diffs)


def test_the_nginx_conf_itself_converts_and_matches_nginx(tmp_path: Path) -> None:
    """Catches: the converter (``-c nginx.conf``) losing or reordering rewrite statements,
    error_page, proxy_intercept_errors or named locations: the same nginx.conf run by both."""
    dead = free_port()
    with Backend(1) as be:
        port = free_port()
        conf = scenario(NGINX_SERVER.format(backend=be.addrs[0], dead=dead, port=port))
        with Nginx(tmp_path / "nginx", port, conf):
            theirs = ask(port)
        port = free_port()
        conf = scenario(NGINX_SERVER.format(backend=be.addrs[0], dead=dead, port=port))
        with lb_from_conf(tmp_path / "lb", conf, port):
            ours = ask(port)
    diffs = [(t, o) for t, o in zip(theirs, ours, strict=True) if t != o]
    assert not diffs, "\n".join(f"nginx {t}\n  ours {o}" for t, o in diffs)
