"""add_header, proxy_hide_header/proxy_pass_header and proxy_redirect against nginx 1.22
(shared/reference/nginx-semantics-2.md section 3, scenarios H1-H3 and the 3.5 rows), plus
the CR/LF injection guarantee of section 2.5 where prefork-lb is deliberately better.

Each scenario runs the same requests through real nginx (nginx syntax) and prefork-lb (its
TOML twin) in front of one header-echoing backend (``?s=<status>&h=Name:Value...``), and
compares the client-visible response fields (Date, Connection, Content-Length and the Server
value, which differ by design, left out). On the old code every scenario here fails: it
knew none of the keys (config error), hid neither X-Pad nor X-Accel-* and rewrote no
Location.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.backends import free_port
from tests.harness import LB
from tests.nginx_conf import NGINX, Nginx, scenario

HOST = "hdr.test"
IGNORED = {"date", "connection", "content-length", "content-type", "keep-alive", "transfer-encoding"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        q = parse_qs(urlsplit(self.path).query)
        status = int(q.get("s", ["200"])[0])
        self.send_response(status)  # adds Server and Date, as real upstreams do
        for item in q.get("h", []):
            name, _, value = item.partition(":")
            self.send_header(name, value)
        body = b"" if status in (204, 304) else b"ok\n"
        if "echo" in q:  # the request's fields as received, one per line
            body = "".join(f"{k}: {v}\n" for k, v in self.headers.items()).encode("latin-1")
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(port: int, path: str) -> tuple[int, list[tuple[str, str]]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": HOST})
        resp = conn.getresponse()
        resp.read()
        return resp.status, [(k.lower(), v) for k, v in resp.getheaders()]
    finally:
        conn.close()


def _visible(port: int, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields to compare: this instance's port written as PORT, Server's value dropped."""
    out = []
    for name, value in fields:
        if name in IGNORED:
            continue
        if name == "server":
            value = "(ours)" if value.startswith(("nginx", "prefork-lb")) else value
        out.append((name, value.replace(f":{port}", ":PORT")))
    return sorted(out)


def _q(*headers: str, s: int = 200) -> str:
    return "?" + "&".join([f"s={s}", *(f"h={quote(h)}" for h in headers)])


def _both(tmp_path: Path, ngx_http: str, toml: str, paths: list[str]) -> list[tuple[object, object]]:
    """(nginx's, prefork-lb's) (status, visible fields) per path."""
    port = free_port()
    with Nginx(tmp_path / "nginx", port, scenario(ngx_http.replace("PORT", str(port)))):
        theirs = [(s, _visible(port, f)) for s, f in (_get(port, p) for p in paths)]
    port = free_port()
    (tmp_path / "lb").mkdir()
    with LB(tmp_path / "lb", toml.replace("PORT", str(port)), port):
        ours = [(s, _visible(port, f)) for s, f in (_get(port, p) for p in paths)]
    return list(zip(theirs, ours, strict=True))


def _toml(locations: str, server_extra: str = "") -> str:
    return f"""
workers = 1
error_log = "error.log"
[http]
access_log = "off"
[[http.servers]]
listen = ["127.0.0.1:PORT"]
server_name = ["{HOST}"]
{server_extra}
{locations}
"""


needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


@needs_nginx
def test_add_header_inheritance_and_status_list(tmp_path: Path, backend: int) -> None:
    """H1 + H2: a location's add_header replaces the server's wholesale; without ``always``
    only nginx's status list gets the field (upstream 304 yes, 404 no; our own 502 no; the
    404 for a path no location matches gets the server's ``always`` fields);
    an upstream field of the same name is sent as well (append, not replace)."""
    be = f"127.0.0.1:{backend}"
    dead = f"127.0.0.1:{free_port()}"
    ngx = f"""
    server {{
        listen 127.0.0.1:PORT;
        server_name {HOST};
        add_header X-Srv s;
        add_header X-Srv-Alw sa always;
        location /inherit/ {{ proxy_pass http://{be}; }}
        location /own/ {{
            add_header X-Norm n;
            add_header X-Alw a always;
            add_header X-Foo mine;
            add_header X-Empty "";
            proxy_pass http://{be};
        }}
        location /dead/ {{
            add_header X-Norm n;
            add_header X-Alw a always;
            proxy_pass http://{dead};
        }}
    }}"""
    toml = _toml(
        f"""
  [[http.servers.locations]]
  match = "/inherit/"
  proxy_pass = "http://{be}"
  [[http.servers.locations]]
  match = "/own/"
  proxy_pass = "http://{be}"
  add_header = {{ X-Norm = "n", X-Alw = {{ value = "a", always = true }}, X-Foo = "mine", X-Empty = "" }}
  [[http.servers.locations]]
  match = "/dead/"
  proxy_pass = "http://{dead}"
  add_header = {{ X-Norm = "n", X-Alw = {{ value = "a", always = true }} }}
""",
        'add_header = { X-Srv = "s", X-Srv-Alw = { value = "sa", always = true } }',
    )
    paths = [
        "/inherit/x",
        "/own/ok" + _q("X-Foo:upstream"),
        "/own/nm" + _q(s=304),
        "/own/nf" + _q(s=404),
        "/own/se" + _q(s=500),
        "/dead/x",
        "/nowhere",
    ]
    results = _both(tmp_path, ngx, toml, paths)
    for path, (theirs, ours) in zip(paths, results, strict=True):
        assert ours == theirs, path
    # and what nginx does, spelled out
    (_, inherit), (_, ok), (_, nm), (_, nf), (_, _se), (dead_status, dead_fields), nowhere = (
        r[1] for r in results
    )
    assert ("x-srv", "s") in inherit and ("x-srv-alw", "sa") in inherit
    assert nowhere[0] == 404 and ("x-srv-alw", "sa") in nowhere[1] and ("x-srv", "s") not in nowhere[1]
    assert ("x-srv", "s") not in ok and ("x-foo", "upstream") in ok and ("x-foo", "mine") in ok
    assert ("x-norm", "n") in nm and ("x-alw", "a") in nm
    assert ("x-norm", "n") not in nf and ("x-alw", "a") in nf
    assert dead_status == 502 and ("x-alw", "a") in dead_fields and ("x-norm", "n") not in dead_fields


@needs_nginx
def test_hidden_and_passed_upstream_fields(tmp_path: Path, backend: int) -> None:
    """H3: X-Pad and the X-Accel-* nginx knows are hidden by default (an unknown X-Accel-Foo
    passes), upstream Server/Date are replaced; proxy_hide_header adds, proxy_pass_header
    re-enables (Server then comes from the upstream); each list inherits on its own (the
    server's proxy_hide_header still applies under a location's proxy_pass_header)."""
    be = f"127.0.0.1:{backend}"
    ngx = f"""
    server {{
        listen 127.0.0.1:PORT;
        server_name {HOST};
        proxy_hide_header X-Powered-By;
        location /default/ {{ proxy_pass http://{be}; }}
        location /pass/ {{ proxy_pass_header Server; proxy_pass_header X-Pad; proxy_pass http://{be}; }}
    }}"""
    toml = _toml(
        f"""
  [[http.servers.locations]]
  match = "/default/"
  proxy_pass = "http://{be}"
  [[http.servers.locations]]
  match = "/pass/"
  proxy_pass = "http://{be}"
  proxy_pass_header = ["Server", "X-Pad"]
""",
        'proxy_hide_header = ["X-Powered-By"]',
    )
    q = _q("X-Pad:1", "X-Accel-Buffering:no", "X-Accel-Foo:f", "X-Accel-Expires:5", "X-Powered-By:php")
    paths = ["/default/x" + q, "/pass/x" + q]
    results = _both(tmp_path, ngx, toml, paths)
    for path, (theirs, ours) in zip(paths, results, strict=True):
        assert ours == theirs, path
    default, passed = (r[1][1] for r in results)
    assert [n for n, _ in default if n.startswith("x-")] == ["x-accel-foo"]
    assert ("server", "(ours)") in default
    assert ("x-pad", "1") in passed and ("x-powered-by", "php") not in passed
    assert ("server", "(ours)") not in passed and any(n == "server" for n, _ in passed)


@needs_nginx
def test_proxy_redirect(tmp_path: Path, backend: int) -> None:
    """Section 3.5: ``default`` maps the proxy_pass URL to the location (made absolute for
    Location, relative for Refresh); relative or foreign Locations pass unchanged; explicit
    pairs; ``off`` passes everything."""
    be = f"127.0.0.1:{backend}"
    ngx = f"""
    server {{
        listen 127.0.0.1:PORT;
        server_name {HOST};
        location /rd/ {{ proxy_pass http://{be}; }}
        location /front/ {{ proxy_pass http://{be}/app/; }}
        location /pair/ {{ proxy_pass http://{be}; proxy_redirect http://backend.test/ /mapped/; }}
        location /off/ {{ proxy_pass http://{be}; proxy_redirect off; }}
        location /rx/ {{ proxy_pass http://{be}; proxy_redirect ~^/(.*)$ /mapped/$1; }}
    }}"""
    toml = _toml(f"""
  [[http.servers.locations]]
  match = "/rd/"
  proxy_pass = "http://{be}"
  [[http.servers.locations]]
  match = "/front/"
  proxy_pass = "http://{be}/app/"
  [[http.servers.locations]]
  match = "/pair/"
  proxy_pass = "http://{be}"
  proxy_redirect = [["http://backend.test/", "/mapped/"]]
  [[http.servers.locations]]
  match = "/off/"
  proxy_pass = "http://{be}"
  proxy_redirect = "off"
  [[http.servers.locations]]
  match = "/rx/"
  proxy_pass = "http://{be}"
  proxy_redirect = [["~^/(.*)$", "/mapped/$1"]]
""")
    paths = [
        "/rd/a" + _q(f"Location:http://{be}/rd/new", f"Refresh:5; url=http://{be}/rd/r", s=302),
        "/rd/b" + _q("Location:/rel/new", s=302),
        "/rd/c" + _q("Location:http://other/x", s=301),
        "/front/a" + _q(f"Location:http://{be}/app/after", s=302),
        "/pair/a" + _q("Location:http://backend.test/p?q=1", s=302),
        "/off/a" + _q(f"Location:http://{be}/rd/new", s=302),
        "/rx/a" + _q("Location:/b", s=302),
    ]
    results = _both(tmp_path, ngx, toml, paths)
    for path, (theirs, ours) in zip(paths, results, strict=True):
        assert ours == theirs, path
    fields = [dict(r[1][1]) for r in results]
    assert fields[0]["location"] == f"http://{HOST}:PORT/rd/new"
    assert fields[0]["refresh"] == "5; url=/rd/r"
    assert fields[1]["location"] == "/rel/new"
    assert fields[2]["location"] == "http://other/x"
    assert fields[3]["location"] == f"http://{HOST}:PORT/front/after"
    assert fields[4]["location"] == f"http://{HOST}:PORT/mapped/p?q=1"
    assert fields[5]["location"] == f"http://{be}/rd/new"
    assert fields[6]["location"] == f"http://{HOST}:PORT/mapped/b"


def _raw_head(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n\r\n", 1)[0]


def test_no_header_injection_through_variables(tmp_path: Path, backend: int) -> None:
    """Section 2.5, better than nginx: nginx 1.22 emits ``X-Inj: 1`` as its own field for
    ``add_header X-U $uri`` with ``/h/%0d%0aX-Inj:%201`` (and bare ``%0a``); here the CR/LF
    are percent-encoded into the one field, on proxied and on local (``return``, error)
    responses, and in a proxy_redirect replacement that expands ``$uri``."""
    be = f"127.0.0.1:{backend}"
    port = free_port()
    toml = _toml(f"""
  [[http.servers.locations]]
  match = "/h/"
  proxy_pass = "http://{be}"
  add_header = {{ X-U = {{ value = "$uri", always = true }} }}
  proxy_redirect = [["http://{be}/", "/$uri/"]]
  [[http.servers.locations]]
  match = "/r/"
  return = "204"
  add_header = {{ X-U = "$uri" }}
""").replace("PORT", str(port))
    with LB(tmp_path, toml, port):
        for target in (
            "/h/%0d%0aX-Inj:%201",
            "/h/%0aX-Inj:%201",
            "/h/%0d%0aX-Inj:%201" + _q(f"Location:http://{be}/x", s=302),
            "/h/%0d%0aX-Inj:%201" + _q(s=404),
            "/r/%0d%0aX-Inj:%201",
        ):
            head = _raw_head(port, target)
            lines = head.split(b"\r\n")
            assert not any(line.lower().startswith(b"x-inj") for line in lines), (target, head)
            assert all(b"\n" not in line and b"\r" not in line for line in lines)
            assert (
                b"X-U: /h/%0D%0AX-Inj: 1" in head
                or b"X-U: /h/%0AX-Inj: 1" in head
                or (b"X-U: /r/%0D%0AX-Inj: 1" in head)
            ), head
        head = _raw_head(port, "/h/%0d%0aX-Inj:%201" + _q(f"Location:http://{be}/x", s=302))
        assert b"Location: http://hdr.test:%d//h/%%0D%%0AX-Inj: 1/x" % port in head, head


@needs_nginx
def test_defaults_with_no_key_set(tmp_path: Path, backend: int) -> None:
    """A location with only proxy_pass gets nginx's defaults: X-Pad and X-Accel-Buffering
    hidden, ``proxy_redirect default`` rewriting the upstream's own URL. The old code passed
    X-Pad/X-Accel-Buffering and the Location unchanged (no config key involved)."""
    be = f"127.0.0.1:{backend}"
    ngx = f"""
    server {{
        listen 127.0.0.1:PORT;
        server_name {HOST};
        location / {{ proxy_pass http://{be}; }}
    }}"""
    toml = _toml(f"""
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://{be}"
""")
    paths = ["/a/b" + _q("X-Pad:1", "X-Accel-Buffering:no", f"Location:http://{be}/c", s=301)]
    ((theirs, ours),) = _both(tmp_path, ngx, toml, paths)
    assert ours == theirs
    assert ("location", f"http://{HOST}:PORT/c") in ours[1]
    assert not any(n in ("x-pad", "x-accel-buffering") for n, _ in ours[1])


@needs_nginx
def test_debug_headers_after_a_failed_try(tmp_path: Path, backend: int) -> None:
    """Section 3.7: ``add_header X-Upstream $upstream_addr always`` and friends show every
    attempt (a dead first peer, then the live one), then only the live peer once the dead
    one is skipped. Times are compared as "-" or a number: ``$upstream_response_time`` of
    the attempt being relayed is "-" when the head is built (nginx; it was "0.000")."""
    be = f"127.0.0.1:{backend}"
    dead = f"127.0.0.1:{free_port()}"
    ngx = f"""
    upstream pool {{ server {dead}; server {be}; }}
    server {{
        listen 127.0.0.1:PORT;
        server_name {HOST};
        location / {{
            proxy_pass http://pool;
            add_header X-Upstream $upstream_addr always;
            add_header X-Up-Status $upstream_status always;
            add_header X-Up-Conn $upstream_connect_time always;
            add_header X-Up-Time $upstream_response_time always;
        }}
    }}"""
    toml = f"""
workers = 1
error_log = "error.log"
[http]
access_log = "off"
[http.upstreams.pool]
servers = [{{ address = "{dead}" }}, {{ address = "{be}" }}]
[[http.servers]]
listen = ["127.0.0.1:PORT"]
server_name = ["{HOST}"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://pool"
  add_header = {{ X-Upstream = {{ value = "$upstream_addr", always = true }}, \
X-Up-Status = {{ value = "$upstream_status", always = true }}, \
X-Up-Conn = {{ value = "$upstream_connect_time", always = true }}, \
X-Up-Time = {{ value = "$upstream_response_time", always = true }} }}
"""

    def times(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            (n, re.sub(r"\d+\.\d{3}", "T", v) if n in ("x-up-conn", "x-up-time") else v) for n, v in fields
        ]

    results = _both(tmp_path, ngx, toml, ["/a", "/b"])
    for theirs, ours in results:
        assert (ours[0], times(ours[1])) == (theirs[0], times(theirs[1]))
    first, second = (dict(times(r[1][1])) for r in results)
    assert first["x-upstream"] == f"{dead}, {be}" and first["x-up-status"] == "502, 200"
    assert first["x-up-conn"] == "-, T"
    assert first["x-up-time"] == "T, -"  # the attempt being relayed has no response time yet
    assert second["x-upstream"] == be and second["x-up-status"] == "200"


def test_reference_injection_payloads(tmp_path: Path, backend: int) -> None:
    """Section 2.5's exact payloads, where nginx 1.22 injects ``X-Inj: 1`` as a field of its
    own: ``return 302 https://x.test$uri``, ``add_header X-U $uri``, ``proxy_set_header X-U
    $uri`` (the upstream received two fields there). Here each stays one field, its CR/LF
    percent-encoded; ``$request_uri`` stays raw and safe; NUL in the path is a 400. The
    ``return`` and ``proxy_set_header`` rows held already (issue 11); the add_header rows
    fail on the old code (no add_header)."""
    be = f"127.0.0.1:{backend}"
    port = free_port()
    toml = _toml(f"""
  [[http.servers.locations]]
  match = "/ret/"
  return = "302 https://x.test$uri"
  [[http.servers.locations]]
  match = "/retru/"
  return = "302 https://x.test$request_uri"
  [[http.servers.locations]]
  match = "/h/"
  return = "200 ok"
  add_header = {{ X-U = "$uri" }}
  [[http.servers.locations]]
  match = "/crlfp/"
  proxy_pass = "http://{be}"
  proxy_set_header = {{ X-U = "$uri" }}
""").replace("PORT", str(port))
    with LB(tmp_path, toml, port):
        for prefix, field in (("/ret/", b"Location: https://x.test/ret/"), ("/h/", b"X-U: /h/")):
            for crlf, encoded in (("%0d%0a", b"%0D%0A"), ("%0a", b"%0A")):
                head = _raw_head(port, f"{prefix}{crlf}X-Inj:%201")
                assert not any(line.lower().startswith(b"x-inj") for line in head.split(b"\r\n")), head
                assert field + encoded + b"X-Inj:" in head, head  # one field, encoded
        head = _raw_head(port, "/retru/%0d%0aX-Inj:%201")
        assert b"Location: https://x.test/retru/%0d%0aX-Inj:%201\r\n" in head + b"\r\n", head
        assert _raw_head(port, "/ret/%00x").startswith(b"HTTP/1.1 400 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"GET /crlfp/%0d%0aX-Inj:%201?echo=1 HTTP/1.1\r\n"
                + f"Host: {HOST}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        received = data.split(b"\r\n\r\n", 1)[1].decode("latin-1").splitlines()
        assert "X-U: /crlfp/%0D%0AX-Inj: 1" in received, received
        assert not any(line.lower().startswith("x-inj") for line in received), received
