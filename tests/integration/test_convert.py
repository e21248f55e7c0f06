"""``prefork-lb convert`` and ``prefork-lb -c nginx.conf`` with the real CLI and master, and
nginx as the oracle where it is installed (one nginx.conf for both: tests/nginx_conf.py)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tomllib
from pathlib import Path

import pytest

from tests.backends import Backend, free_port
from tests.harness import request, run_cli, wait_for
from tests.nginx_conf import NGINX, lb_from_conf, run_conf_both, scenario

UNSUPPORTED_HEAVY = """
worker_processes 1;
pid run.pid;
error_log error.log info;
events {{ worker_connections 256; multi_accept on; use epoll; }}
http {{
    sendfile on;
    tcp_nopush on;
    gzip on;
    gzip_types text/plain;
    server_tokens off;
    limit_rate_after 1m;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    ssi on;
    upstream app {{ server {backend}; ntlm; }}
    server {{
        listen 127.0.0.1:{port};
        add_header X-Frame-Options DENY;
        location / {{
            proxy_pass http://app;
            proxy_store off;
            limit_rate 100k;
            if ($request_method = POST) {{ return 405; }}
        }}
        location /static/ {{ root /srv/www; try_files $uri =404; }}
        location = /ok {{ return 200 "fine"; }}
    }}
    server {{
        listen 127.0.0.1:{quic_port} quic;
        ssl_stapling on;
        location / {{ proxy_pass http://app; }}
    }}
}}
"""


def test_unsupported_directives_report_and_working_subset(tmp_path: Path) -> None:
    """Catches: a config full of directives prefork-lb lacks either refused as a whole or served
    with them dropped silently: the report names each one (file:line) in the error log and on
    ``-t``, ``--strict`` fails, and the rest serves."""
    port, quic_port = free_port(), free_port()
    with Backend(count=1) as backend:
        conf = UNSUPPORTED_HEAVY.format(backend=backend.addrs[0], port=port, quic_port=quic_port)
        lb = lb_from_conf(tmp_path, conf, port)
        strict = run_cli("convert", "--strict", str(lb.conf))
        assert strict.returncode == 1 and strict.stdout == ""
        assert "unsupported directive(s) (--strict); nothing written" in strict.stderr
        test = run_cli("-t", "-c", str(lb.conf))
        assert test.returncode == 0, test.stderr
        assert 'nginx.conf:9: "gzip on" has no prefork-lb equivalent' in test.stderr
        skipped = [line for line in test.stderr.splitlines() if line.endswith("; skipped")]
        # the WebSocket map is built in: a note, not skipped; the if and add_header are converted
        assert len(skipped) == 17, test.stderr
        assert 'nginx.conf:13: "map $http_upgrade $connection_upgrade": nginx\'s documented' in test.stderr
        with lb:
            status, headers, _ = lb.get("/")
            assert status == 200 and headers["x-port"] == backend.addrs[0].split(":")[1]
            assert lb.get("/ok")[2] == b"fine"
            assert request(lb.port, "POST", "/", body=b"x")[0] == 405  # the converted if
            assert lb.get("/static/x")[0] == 404  # kept, answering 404: never sent to the backend
            assert re.search(r'\[warn\] \d+#0: nginx.conf:11: "server_tokens off"', lb.output())
            assert quic_port not in _listening(lb.master_pid)


def _listening(pid: int) -> set[int]:
    import psutil

    return {c.laddr.port for c in psutil.Process(pid).net_connections() if c.status == "LISTEN"}


def test_convert_writes_toml_that_passes_t(tmp_path: Path) -> None:
    """Catches: ``convert -o`` writing TOML that ``prefork-lb -t`` refuses, or comments and the
    report missing from it."""
    port = free_port()
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n  upstream app {\n    server 127.0.0.1:9001 weight=2;  # the big one\n"
        "    server 127.0.0.1:9002;\n  }\n  server {\n"
        f"    listen 127.0.0.1:{port};\n    # to the app\n    location / {{ proxy_pass http://app; }}\n"
        "    gzip on;\n  }\n}\n"
    )
    out = tmp_path / "prefork-lb.toml"
    result = run_cli("convert", str(tmp_path / "nginx.conf"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        'nginx.conf:11: "gzip on" has no prefork-lb equivalent (compression belongs to the backend here); '
        "skipped"
    ]
    text = out.read_text()
    assert text.startswith("# converted from nginx.conf by prefork-lb convert\n# nginx.conf:11:")
    assert "  # the big one\n  { address" in text and "  # to the app\n  [[http.servers.locations]]" in text
    assert tomllib.loads(text)["http"]["upstreams"]["app"]["servers"][0]["weight"] == 2
    check = run_cli("-t", "-c", str(out))
    assert check.returncode == 0, check.stderr
    dump = run_cli("-T", "-c", str(tmp_path / "nginx.conf"))
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout == f"# configuration file {tmp_path / 'nginx.conf'} (converted to TOML):\n{text}"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"nginx.conf": "http {\n  server {\n"}, 'nginx.conf:2: unexpected end of file, expecting "}"'),
        ({"nginx.conf": "events {}\nhttp { server {} }\n}\n"}, 'nginx.conf:3: unexpected "}"'),
        (
            {"nginx.conf": "events {}\nlocation / {}\n"},
            'nginx.conf:2: "location" directive is not allowed here',
        ),
        (
            {"nginx.conf": "events {}\nhttp { include a.conf; }\n", "a.conf": "include nginx.conf;\n"},
            "a.conf:1: include loop: nginx.conf -> a.conf -> nginx.conf",
        ),
        ({"nginx.conf": "\x00\xff" * 3000000}, "nginx.conf: 6000000 bytes is more than"),
        (
            {"nginx.conf": "http { server {" + " location / {" * 3000 + "}" * 3002},
            "nginx.conf:1: blocks nested deeper than 32",
        ),
    ],
    ids=["unbalanced", "extra-brace", "unknown-context", "include-loop", "huge", "deep"],
)
def test_hostile_input_fails_cleanly(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    """Catches: hostile nginx input ending in a traceback, or a message that does not name the
    file and line, from ``convert`` and from ``-t -c nginx.conf`` alike."""
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="latin-1")
    conf = str(tmp_path / "nginx.conf")
    for args in (("convert", conf), ("-t", "-c", conf)):
        result = run_cli(*args)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert f"[emerg] {expected}" in result.stderr, result.stderr


def test_reload_reconverts_the_nginx_conf(tmp_path: Path) -> None:
    """Catches: ``-s reload`` not finding the master of an nginx.conf (its pid file is named by
    the converted ``pid``) or serving the first conversion again."""
    port = free_port()

    def conf(text: str) -> str:
        return scenario(f'server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{text}"; }} }}')

    with lb_from_conf(tmp_path, conf("one"), port) as lb:
        assert lb.get("/")[2] == b"one"
        lb.conf.write_text(conf("two"))
        result = lb.signal("reload")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: request(port, "GET", "/")[2] == b"two", what="the reloaded conversion")


# ---- nginx as the oracle: one nginx.conf for both ---------------------------------------------

LOCATIONS = """
    log_format diff '$status|$uri';
    access_log access.log diff;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "prefix /"; }}
        location /a {{ return 200 "prefix /a"; }}
        location /a/b/ {{ return 200 "prefix /a/b/"; }}
        location = /a {{ return 200 "exact /a"; }}
        location ^~ /static/ {{ return 200 "prefix-stop /static/"; }}
        location ~ \\.php$ {{ return 200 "regex php"; }}
        location ~* \\.(gif|JPG)$ {{ return 200 "iregex image"; }}
        location ~ ^/a/b/(?<rest>.+)\\.txt$ {{ return 200 "named group"; }}
        location /redirect {{ return 301 http://example.com$request_uri; }}
        location /found {{ return http://example.com/found; }}
        location /empty {{ return 204; }}
        location /teapot {{ return 418 "short and stout"; }}
    }}
"""
PATHS = [
    "/",
    "/x",
    "/a",
    "/a/",
    "/ab",
    "/a/b/",
    "/a/b/c",
    "/a/b/c.txt",
    "/a/b/x.php",
    "/static/x.php",
    "/static/y.GIF",
    "/img.jpg",
    "/img.JPG",
    "/redirect?q=1",
    "/found",
    "/empty",
    "/teapot",
    "/a/../static/z.gif",
]


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_location_modifiers_and_returns_match_nginx(tmp_path: Path) -> None:
    """Catches: a location modifier (=, ^~, ~, ~*, a PCRE named group) or a return form (text,
    redirect, bare URL, code only) converted into a location that matches or answers
    differently from nginx on the same nginx.conf."""

    def ask(port: int) -> list[tuple[int, str]]:
        out = []
        for path in PATHS:
            status, headers, body = request(port, "GET", path)
            page = re.sub(r"<hr><center>[^<]*</center>", "<hr>", body.decode())  # the signature
            out.append((status, page + "|" + headers.get("location", "")))
        return out

    (ngx, ngx_log), (ours, our_log) = run_conf_both(
        tmp_path, lambda port: scenario(LOCATIONS.format(port=port)), ask
    )
    assert ours == ngx
    assert our_log == ngx_log


PROXY = """
    log_format diff '$status|$upstream_addr';
    access_log access.log diff;
    upstream app {{ server {backend}; }}
    proxy_set_header X-From http;
    proxy_http_version 1.1;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 10;
        location /a/ {{ proxy_pass http://app/b/; }}
        location /h {{
            proxy_pass http://app;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header User-Agent "";
        }}
        location /denied {{ allow 10.0.0.0/8; deny all; proxy_pass http://app; }}
        location /returned {{ deny all; return 200 "returned"; }}
        location / {{ proxy_pass http://127.0.0.1:{backend_port}; }}
    }}
"""
SEEN = ("host", "x-from", "x-real-ip", "x-forwarded-for", "user-agent")


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_proxy_directives_match_nginx(tmp_path: Path) -> None:
    """Catches: proxy_pass with a URI part, proxy_set_header (inherited from http, replaced by
    a location's own set, "" removing a field), allow/deny (which nginx never applies to a
    location's return: the rewrite phase runs first) or client_max_body_size converted
    into something that sends the backend another request, or answers otherwise, than nginx
    on the same nginx.conf."""
    import json

    with Backend(count=1) as backend:
        addr = backend.addrs[0]

        def ask(port: int) -> list[tuple[int, str]]:
            out = []
            for method, path, body in (
                ("GET", "/a/x?echo=1", None),
                ("GET", "/h?echo=1", None),
                ("GET", "/?echo=1", None),
                ("GET", "/denied?echo=1", None),
                ("GET", "/returned", None),
                ("POST", "/?echo=1", b"x" * 20),
                ("POST", "/?echo=1", b"x" * 5),
            ):
                status, _, data = request(
                    port,
                    method,
                    path,
                    body=body,
                    headers={"User-Agent": "t/1", "X-Forwarded-For": "192.0.2.9"},
                )
                if status == 200 and path == "/returned":
                    out.append((status, data.decode()))
                elif status == 200:
                    seen = json.loads(data)
                    headers = {n.lower(): v for n, v in seen["headers"] if n.lower() in SEEN}
                    out.append((status, f"{seen['method']} {seen['target']} {sorted(headers.items())}"))
                else:
                    out.append((status, ""))
            return out

        def conf(port: int) -> str:
            return scenario(PROXY.format(port=port, backend=addr, backend_port=addr.split(":")[1]))

        (ngx, ngx_log), (ours, our_log) = run_conf_both(tmp_path, conf, ask)
    assert [status for status, _ in ours] == [200, 200, 200, 403, 200, 413, 200]
    assert ours == ngx
    assert our_log == ngx_log


STREAM = """
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
"""


@pytest.mark.nginx
@pytest.mark.skipif(
    NGINX is None or not Path("/usr/lib/nginx/modules/ngx_stream_module.so").exists(),
    reason="nginx or its stream module is not installed",
)
def test_stream_block_matches_nginx(tmp_path: Path) -> None:
    """Catches: a stream block (upstream weights, backup, a dead server, proxy_pass to an
    upstream) converted into a balancer that picks other servers than nginx does."""
    from tests.nginx_conf import Nginx
    from tests.stream_servers import TcpEcho

    echoes = [TcpEcho() for _ in range(3)]
    dead = free_port()

    def conf(port: int, stream_port: int) -> str:
        servers = (
            f"server {echoes[0].addr} weight=3; server 127.0.0.1:{dead}; "
            f"server {echoes[1].addr}; server {echoes[2].addr} backup;"
        )
        stream = (
            f"stream {{ upstream tcp {{ {servers} }} "
            f"server {{ listen 127.0.0.1:{stream_port}; proxy_pass tcp; proxy_connect_timeout 5s; }} }}"
        )
        # the http server is where the harnesses see readiness (a probe of the stream port
        # would be a connection the balancer counts)
        return STREAM + scenario(
            f"server {{ listen 127.0.0.1:{port}; location / {{ return 200; }} }}", stream
        )

    def ask(stream_port: int) -> list[str]:
        out = []
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", stream_port), timeout=10) as s:
                out.append(s.makefile().readline().strip())
        return out

    try:
        port, stream_port = free_port(), free_port()
        with Nginx(tmp_path / "nginx", port, conf(port, stream_port)):
            ngx = ask(stream_port)
        port, stream_port = free_port(), free_port()
        with lb_from_conf(tmp_path / "lb", conf(port, stream_port), port) as lb:
            ours = ask(stream_port)
            assert "load_module" in lb.output()  # reported, skipped
    finally:
        for echo in echoes:
            echo.close()
    names = {str(e.port): f"echo{i}" for i, e in enumerate(echoes)}
    assert [names[p] for p in ours] == [names[p] for p in ngx]
    assert set(ours) == {str(echoes[0].port), str(echoes[1].port)}


def test_convert_file_errors_are_messages(tmp_path: Path) -> None:
    """Catches: a missing input or an unwritable ``-o`` ending in a traceback."""
    (tmp_path / "nginx.conf").write_text("events {}\n")
    missing = run_cli("convert", str(tmp_path / "none.conf"))
    assert missing.returncode == 1
    assert (
        missing.stderr
        == f'prefork-lb: [emerg] open() "{tmp_path / "none.conf"}" failed (2: No such file or directory)\n'
    )
    unwritable = run_cli("convert", str(tmp_path / "nginx.conf"), "-o", str(tmp_path / "no" / "x.toml"))
    assert unwritable.returncode == 1
    assert unwritable.stderr == (
        f'prefork-lb: [emerg] open() "{tmp_path / "no" / "x.toml"}" failed (2: No such file or directory)\n'
    )


SERVERS = """
    log_format diff '$status|$host';
    access_log access.log diff;
    server {{ listen 127.0.0.1:{port}; server_name first.test; return 200 "first"; }}
    server {{ listen 127.0.0.1:{port} default_server; server_name _; return 200 "default"; }}
    server {{
        listen 127.0.0.1:{port};
        server_name example.test www.example.test;
        location / {{ return 200 "exact $host"; }}
    }}
    server {{ listen 127.0.0.1:{port}; server_name *.example.test; return 200 "leading wildcard"; }}
    server {{ listen 127.0.0.1:{port}; server_name mail.*; return 200 "trailing wildcard"; }}
    server {{ listen 127.0.0.1:{port}; server_name ~^(?<user>[a-z]+)\\.users\\.test$; return 200 "regex"; }}
    server {{
        listen 127.0.0.1:{port};
        server_name old.test;
        location /kept {{ return 200 "never reached"; }}
        return 301 https://new.test$request_uri;
    }}
"""
HOSTS = [
    "first.test",
    "FIRST.test",
    "example.test",
    "www.example.test",
    "a.b.example.test",
    "mail.example.org",
    "bob.users.test",
    "Bob.users.test",
    "old.test",
    "unknown.test",
]


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_server_selection_matches_nginx(tmp_path: Path) -> None:
    """Catches: server_name forms (exact, wildcards, a PCRE regex), default_server, or a
    server-level return (beside a location it shadows) converted into servers that answer a
    Host otherwise than nginx on the same nginx.conf."""

    def ask(port: int) -> list[tuple[int, str]]:
        out = []
        for host in HOSTS:
            status, headers, body = request(port, "GET", "/kept?x=1", headers={"Host": host})
            page = body.decode() if status == 200 else ""
            out.append((status, page + "|" + headers.get("location", "")))
        return out

    (ngx, ngx_log), (ours, our_log) = run_conf_both(
        tmp_path, lambda port: scenario(SERVERS.format(port=port)), ask
    )
    assert [page.split("|")[0] for _, page in ngx] == [
        "first",
        "first",
        "exact example.test",
        "exact www.example.test",
        "leading wildcard",
        "trailing wildcard",
        "regex",
        "regex",
        "",
        "default",
    ]
    assert ours == ngx
    assert our_log == ngx_log


KEEPALIVE = """
    log_format diff '$status|$upstream_addr';
    access_log access.log diff;
    upstream pooled {{ server {backend}; keepalive 4; keepalive_requests 3; }}
    upstream unpooled {{ server {backend}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        location /pooled {{ proxy_pass http://pooled; proxy_set_header Connection ""; }}
        location / {{ proxy_pass http://unpooled; }}
    }}
"""


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_upstream_keepalive_matches_nginx(tmp_path: Path) -> None:
    """Catches: keepalive or keepalive_requests of an upstream lost or mis-keyed on the way:
    the backend sees its requests on other connections than nginx gives it (its X-Conn-Requests
    counts the requests of each connection)."""
    with Backend(count=1) as backend:

        def ask(port: int) -> list[tuple[int, str]]:
            out = []
            for path in ["/pooled"] * 7 + ["/"] * 2:
                status, headers, _ = request(port, "GET", path)
                out.append((status, headers.get("x-conn-requests", "-")))
            return out

        def conf(port: int) -> str:
            return scenario(KEEPALIVE.format(port=port, backend=backend.addrs[0]))

        (ngx, ngx_log), (ours, our_log) = run_conf_both(tmp_path, conf, ask)
    assert [n for _, n in ngx] == ["1", "2", "3", "1", "2", "3", "1", "1", "1"]
    assert ours == ngx
    assert our_log == ngx_log


WS_AND_TLS = """
    log_format diff '$status|$upstream_addr';
    access_log access.log diff;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream ws {{ server {ws}; }}
    upstream up.test {{ server {tls}; }}
    upstream failing {{ server {tls}; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        location /echo {{
            proxy_pass http://ws;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
        location /tls/ {{
            proxy_pass https://up.test/;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_server_name on;
        }}
        location /fresh/ {{
            proxy_pass https://up.test/;
            proxy_ssl_session_reuse off;
            proxy_ssl_server_name on;
        }}
        location /other-ca/ {{
            proxy_pass https://failing/;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {other};
        }}
        location /wrong-name/ {{
            proxy_pass https://failing/;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name wrong.test;
        }}
        location /rsa-only/ {{
            proxy_pass https://failing/;
            proxy_ssl_protocols TLSv1.2;
            proxy_ssl_ciphers aRSA;
        }}
    }}
"""


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None or shutil.which("openssl") is None, reason="needs nginx and openssl")
def test_websocket_idiom_and_upstream_tls_match_nginx(tmp_path: Path) -> None:
    """Catches: nginx's canonical WebSocket config (the documented ``map``, proxy_http_version
    1.1, the Upgrade and Connection headers) reported as unsupported, or converted into a
    tunnel that echoes otherwise or sends the backend other Host/Upgrade/Connection fields
    than nginx; and ``proxy_pass https://`` with proxy_ssl_verify, a trusted CA, SNI,
    proxy_ssl_name, proxy_ssl_session_reuse, proxy_ssl_protocols and proxy_ssl_ciphers
    skipped (old converter: "planned", the location answered 404) or converted into TLS
    that verifies, resumes, sends SNI or fails otherwise than nginx on the same nginx.conf
    (the TLS backend's answer names its request count, resumption and SNI)."""
    from websockets.sync.client import connect

    from tests.integration.test_upstream_tls import TlsNginx, make_pki
    from tests.ws_backend import WsBackend

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    with WsBackend() as ws_up, TlsNginx(tmp_path / "backend", pki) as tls_up:

        def ask(port: int) -> list[tuple[int, str]]:
            out = []
            for path in (
                ["/tls/"] * 2 + ["/fresh/"] * 2 + ["/echo", "/other-ca/", "/wrong-name/", "/rsa-only/"]
            ):
                status, _, body = request(port, "GET", path)
                out.append((status, body.decode() if status == 200 else ""))
            seen = len(ws_up.handshakes)
            with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10, close_timeout=10) as ws:
                assert ws.response is not None
                for message in ("hello", os.urandom(100_000)):
                    ws.send(message)
                    assert ws.recv(timeout=10) == message
                status = ws.response.status_code
            sent = [
                (k, v.lower()) for k, v in ws_up.handshakes[seen] if k in ("host", "upgrade", "connection")
            ]
            out.append((status, str(sorted(sent))))
            return out

        def conf(port: int) -> str:
            fields = {"ws": ws_up.addr, "tls": tls_up.addr, "ca": pki.ca, "other": pki.other_ca}
            return scenario(WS_AND_TLS.format(port=port, **fields))

        (tmp_path / "check").mkdir()
        (tmp_path / "check" / "nginx.conf").write_text(conf(free_port()))
        test = run_cli("-t", "-c", str(tmp_path / "check" / "nginx.conf"))
        assert test.returncode == 0, test.stderr
        skipped = [line for line in test.stderr.splitlines() if line.endswith("; skipped")]
        assert all("temp_path" in line for line in skipped), test.stderr  # the preamble's only
        (ngx, ngx_log), (ours, our_log) = run_conf_both(tmp_path, conf, ask)
    assert ngx == [
        (200, "tls 1 . sni=up.test\n"),
        (200, "tls 1 r sni=up.test\n"),
        (200, "tls 1 . sni=up.test\n"),
        (200, "tls 1 . sni=up.test\n"),
        (426, ""),  # websockets: "Upgrade Required" (nginx sent "Connection: close")
        (502, ""),
        (502, ""),
        (502, ""),
        (101, "[('connection', 'upgrade'), ('host', 'ws'), ('upgrade', 'websocket')]"),
    ]
    assert ours == ngx
    assert our_log == ngx_log
