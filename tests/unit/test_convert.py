"""``prefork-lb convert``: the TOML writer, the directive mapping and nginx.conf round trips.

Round trips go nginx syntax -> converted TOML -> ``load_config`` (what ``-t``, startup and
reload run) and assert the loaded model, per directive family; the examples of NGINX's
documentation for upstream and load balancing are written here from the docs' text.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config
from prefork_lb.convert import ConvertError, convert_file
from prefork_lb.convert.mapping import map_config
from prefork_lb.convert.read import MAX_FILE_BYTES, Directive
from prefork_lb.convert.toml_writer import Inline, dumps

# ---- the TOML writer ----------------------------------------------------------------------------


def test_writer_round_trips_every_value_type() -> None:
    """Catches: an emitter that writes a string, key or nesting the TOML parser reads back
    differently (quotes, backslashes, control characters, dotted names, arrays of tables)."""
    doc: dict[str, Any] = {
        "workers": 2,
        "daemon": False,
        "pid": 'a "quoted" \\path\twith\x01',
        "http": {
            "log_formats": {"main": '$remote_addr "$request"'},
            "upstreams": {
                "my.app": {"servers": [Inline(address="127.0.0.1:1", weight=5), Inline(address="x:2")]}
            },
            "servers": [
                {
                    "listen": ["127.0.0.1:80"],
                    "locations": [
                        {"match": "/", "proxy_set_header": Inline({"X-Real-IP": "$remote_addr", "a b": ""})},
                        {"match": "= /x", "return": 404},
                    ],
                }
            ],
        },
    }
    text = dumps(doc, {"workers": "two of them", "http.upstreams.my.app.servers[1]": "the second"})
    assert tomllib.loads(text) == doc
    assert "# two of them\nworkers = 2" in text
    assert "  # the second\n  { address" in text


def test_writer_refuses_types_the_contract_does_not_use() -> None:
    """Catches: a float or None slipping into the output as text the loader reads otherwise."""
    with pytest.raises(TypeError):
        dumps({"x": 1.5})
    with pytest.raises(TypeError):
        dumps({"x": None})


# ---- the mapping (sans-IO) ----------------------------------------------------------------------


def d(
    name: str, *args: str, block: list[Directive] | None = None, line: int = 1, comment: str = ""
) -> Directive:
    out = Directive(name, list(args), "nginx.conf", line, block, comment)
    out.where = f"nginx.conf:{line}"
    return out


def test_mapping_upstream_family() -> None:
    """Catches: a balancing method, server parameter or keepalive directive mapped to a wrong
    key, or an unknown server parameter dropped without a note."""
    ups = d(
        "upstream",
        "app",
        block=[
            d("hash", "$request_uri", "consistent"),
            d("zone", "app", "64k"),
            d("keepalive", "16"),
            d("keepalive_timeout", "30s"),
            d("server", "10.0.0.1", "weight=5", "max_fails=3", "fail_timeout=30s", line=7, comment="big"),
            d("server", "10.0.0.2:8080", "max_conns=10", "down", "resolve", line=8),
            d("server", "[::1]", "slow_start=10s"),
        ],
    )
    out = map_config([d("http", block=[ups])])
    assert out.doc["http"]["upstreams"]["app"] == {
        "method": "hash",
        "hash": "$request_uri",
        "consistent": True,
        "keepalive": 16,
        "keepalive_timeout": "30s",
        "servers": [
            {"address": "10.0.0.1:80", "weight": 5, "max_fails": 3, "fail_timeout": "30s"},
            {"address": "10.0.0.2:8080", "max_conns": 10, "down": True},
            {"address": "[::1]:80", "slow_start": "10s"},
        ],
    }
    assert [str(n) for n in out.notes] == [
        'nginx.conf:8: "server 10.0.0.2:8080 max_conns=10 down resolve": "resolve" is not supported; '
        "the server is used without it"
    ]
    assert out.comments["http.upstreams.app.servers[0]"] == "big"
    assert out.origins["http.upstreams.app.servers[1]"] == "nginx.conf:8"


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        (d("least_conn"), {"method": "least_conn"}),
        (d("ip_hash"), {"method": "ip_hash"}),
        (d("random"), {"method": "random"}),
        (d("random", "two", "least_conn"), {"method": "random", "random": {"two": True}}),
        (
            d("least_time", "last_byte", "inflight"),
            {"method": "least_time", "least_time": "last_byte inflight"},
        ),
        (d("queue", "100", "timeout=70"), {"queue": {"size": 100, "timeout": 70}}),
    ],
)
def test_mapping_balancing_methods(directive: Directive, expected: dict[str, Any]) -> None:
    """Catches: a balancing directive mapped to the wrong method or option."""
    out = map_config([d("http", block=[d("upstream", "u", block=[directive, d("server", "127.0.0.1:1")])])])
    u = out.doc["http"]["upstreams"]["u"]
    assert {k: v for k, v in u.items() if k != "servers"} == expected
    assert not out.notes


def test_mapping_unsupported_directives_are_reported_never_dropped() -> None:
    """Catches: a directive with no equivalent vanishing silently, or a report line without
    file:line and advice."""
    root = [
        d(
            "http",
            block=[
                d("gzip", "on", line=42),
                d("split_clients", "$a", "$b", block=[], line=43),
                d("frobnicate", "1", line=44),
            ],
        ),
    ]
    out = map_config(root)
    assert [str(n) for n in out.notes] == [
        'nginx.conf:42: "gzip on" has no prefork-lb equivalent (compression belongs to the backend here); '
        "skipped",
        'nginx.conf:43: "split_clients $a $b" is not built in prefork-lb yet (planned): map; skipped',
        'nginx.conf:44: "frobnicate 1" has no prefork-lb equivalent; skipped',
    ]
    assert all(n.unsupported for n in out.notes)


def test_mapping_inherits_what_the_contract_lacks() -> None:
    """Catches: http-level client_header_timeout or allow/deny lost because the TOML contract
    has them only on servers and locations (nginx inherits them, wherever they are written),
    or allow/deny kept on a return location (nginx returns before it checks them)."""
    loc = d("location", "/", block=[d("proxy_pass", "http://127.0.0.1:1")])
    own = d("location", "/own", block=[d("proxy_pass", "http://127.0.0.1:1"), d("deny", "all")])
    ret = d("location", "/ret", block=[d("return", "204"), d("deny", "all", line=9)])
    server = d("server", block=[d("listen", "127.0.0.1:80"), loc, own, ret])
    out = map_config(
        [
            d(
                "http",
                block=[server, d("allow", "10.0.0.0/8"), d("deny", "all"), d("client_header_timeout", "5s")],
            )
        ]
    )
    s = out.doc["http"]["servers"][0]
    assert s["client_header_timeout"] == "5s"
    assert s["locations"][0]["allow"] == ["10.0.0.0/8"] and s["locations"][0]["deny"] == ["all"]
    assert "allow" not in s["locations"][1] and s["locations"][1]["deny"] == ["all"]
    assert s["locations"][2] == {"match": "/ret", "return": 204}
    assert [str(n) for n in out.notes] == [
        'nginx.conf:9: "deny all": nginx answers the location\'s return before allow/deny are checked; '
        "not converted"
    ]
    assert "client_header_timeout" not in out.doc["http"]


def test_mapping_server_return_and_empty_server() -> None:
    """Catches: a server-level return (the usual http->https redirect) lost because the TOML
    contract has return only in locations; a server without locations refused by the loader."""
    redirect = d("server", block=[d("listen", "80"), d("return", "301", "https://$host$request_uri")])
    static = d("server", block=[d("listen", "81"), d("root", "/var/www")])
    out = map_config([d("http", block=[redirect, static])])
    servers = out.doc["http"]["servers"]
    assert servers[0]["locations"] == [{"match": "/", "return": "301 https://$host$request_uri"}]
    assert servers[1]["locations"] == [{"match": "/", "return": 404}]


def test_mapping_locations() -> None:
    """Catches: location modifiers written without nginx's optional space, PCRE named groups,
    named locations (error_page targets) lost, nested locations (which prefork-lb lacks)
    kept, a location that serves files dropped (its URIs would then reach another location:
    a backend)."""
    locs = [
        d("location", "=/exact", block=[d("return", "200")]),
        d("location", "^~", "/static/", block=[d("return", "201")]),
        d("location", "~*", r"\.(?<ext>png)$", block=[d("return", "202")]),
        d("location", "@named", block=[d("return", "203")]),
        d(
            "location",
            "/outer",
            block=[d("return", "204"), d("location", "/outer/inner", block=[d("return", "205")])],
        ),
        d("location", "/static-files", block=[d("root", "/srv")]),
    ]
    out = map_config([d("http", block=[d("server", block=[d("listen", "80"), *locs])])])
    matches = [loc["match"] for loc in out.doc["http"]["servers"][0]["locations"]]
    assert matches == ["= /exact", "^~ /static/", r"~* \.(?P<ext>png)$", "@named", "/outer", "/static-files"]
    assert out.doc["http"]["servers"][0]["locations"][-1]["return"] == 404  # its URIs stay its own
    skipped = [n.text.split('"')[1] for n in out.notes if n.unsupported]
    assert skipped == ["location /outer/inner", "root /srv"]


def test_mapping_listen_parameters() -> None:
    """Catches: a quic listener served as TCP, or http2 (issue 20) dropped."""
    server = d(
        "server",
        block=[
            d("listen", "443", "quic", line=2),
            d("listen", "80", "default", "reuseport", "backlog=100", "http2", line=3),
            d("location", "/", block=[d("return", "200")]),
        ],
    )
    out = map_config([d("http", block=[server])])
    assert out.doc["http"]["servers"][0]["listen"] == ["80 default_server reuseport backlog=100 http2"]
    assert [(n.where, n.unsupported) for n in out.notes] == [("nginx.conf:2", True)]


# ---- round trips: nginx syntax -> TOML -> load_config ------------------------------------------


def load(tmp_path: Path, text: str, name: str = "nginx.conf") -> Config:
    (tmp_path / name).write_text(text)
    return load_config(str(tmp_path / name))


def test_round_trip_main_context(tmp_path: Path) -> None:
    """Catches: main-context directives (workers, events, pid, logs, limits) lost or mis-keyed."""
    config = load(
        tmp_path,
        """
        worker_processes 3;
        worker_rlimit_nofile 4096;
        worker_shutdown_timeout 10s;
        pid run/lb.pid;
        error_log logs/err.log warn;
        daemon off;
        events { worker_connections 512; }
        http { server { listen 127.0.0.1:8080; location / { return 200; } } }
        """,
    )
    assert config.workers == 3 and config.worker_connections == 512
    assert config.worker_rlimit_nofile == 4096 and config.worker_shutdown_timeout_s == 10.0
    assert config.pid_path == str(tmp_path / "run/lb.pid")
    assert config.error_log_path == str(tmp_path / "logs/err.log") and config.error_log_level == "warn"
    assert config.daemon is False
    assert "worker_processes 3" in (tmp_path / "nginx.conf").read_text()  # a .conf, converted in memory


def test_round_trip_proxy_directives_and_inheritance(tmp_path: Path) -> None:
    """Catches: a proxy_*/client_*/keepalive directive mapped to a wrong key, or the http ->
    server -> location inheritance (proxy_set_header replaced wholesale) changed."""
    config = load(
        tmp_path,
        """
        http {
            proxy_read_timeout 5s;
            proxy_set_header X-From http;
            client_max_body_size 2m;
            keepalive_timeout 10s 10;
            upstream app { server 127.0.0.1:9001; keepalive 8; keepalive_requests 50; keepalive_time 1h; }
            server {
                listen 127.0.0.1:8080;
                client_header_timeout 7s;
                proxy_connect_timeout 2s;
                location /a/ {
                    proxy_pass http://app/b/;
                    proxy_set_header Host $host;
                    proxy_set_header X-Real-IP $remote_addr;
                    proxy_next_upstream error timeout http_502;
                    proxy_next_upstream_tries 3;
                    proxy_next_upstream_timeout 9s;
                    proxy_send_timeout 4s;
                    proxy_buffer_size 16k;
                    client_body_buffer_size 32k;
                    client_body_timeout 6s;
                    send_timeout 8s;
                    keepalive_requests 10;
                    lingering_close always;
                    lingering_time 20s;
                    lingering_timeout 2s;
                    proxy_http_version 1.1;
                }
                location / { proxy_pass http://127.0.0.1:9002; }
            }
        }
        """,
    )
    server = config.http.servers[0]
    a, root = server.locations
    assert server.client_header_timeout_s == 7.0 and server.keepalive_timeout_s == 10.0
    assert a.proxy_pass is not None and (a.proxy_pass.upstream, a.proxy_pass.uri) == ("app", "/b/")
    assert a.proxy_set_header == (("Host", "$host"), ("X-Real-IP", "$remote_addr"))
    assert root.proxy_set_header == (("X-From", "http"),)
    assert a.proxy_next_upstream == frozenset({"error", "timeout", "http_502"})
    assert (a.proxy_next_upstream_tries, a.proxy_next_upstream_timeout_s) == (3, 9.0)
    assert (a.proxy_read_timeout_s, a.proxy_connect_timeout_s, a.proxy_send_timeout_s) == (5.0, 2.0, 4.0)
    assert (a.proxy_buffer_size_bytes, a.client_body_buffer_size_bytes) == (16384, 32768)
    assert a.client_max_body_size_bytes == 2 * 1024 * 1024 and a.client_body_timeout_s == 6.0
    assert (a.send_timeout_s, a.keepalive_requests, a.lingering_close) == (8.0, 10, "always")
    assert (a.lingering_time_s, a.lingering_timeout_s) == (20.0, 2.0)
    ups = config.http.upstreams["app"]
    assert (ups.keepalive, ups.keepalive_requests, ups.keepalive_time_s) == (8, 50, 3600.0)
    assert config.notes == (
        'nginx.conf:6: "keepalive_timeout 10s 10": the second value (the "Keep-Alive: timeout=" header) '
        "is not sent by prefork-lb",
    )


def test_round_trip_servers_listen_and_returns(tmp_path: Path) -> None:
    """Catches: listen parameters, server names or return forms changed on the way."""
    config = load(
        tmp_path,
        """
        http {
            server {
                listen 127.0.0.1:8080 default_server backlog=64;
                listen [::1]:8080;
                server_name example.com *.example.com ~^(?<sub>.+)\\.example\\.org$;
                location = /a { return 204; }
                location /b { return 301 https://example.com$request_uri; }
                location /c { return "200" "hello $remote_addr"; }
                location /d { return http://example.net/; }
            }
        }
        """,
    )
    s = config.http.servers[0]
    assert [(lc.address.text, lc.default_server, lc.backlog) for lc in s.listen] == [
        ("127.0.0.1:8080", True, 64),
        ("[::1]:8080", False, 511),
    ]
    assert s.server_names == ("example.com", "*.example.com", "~^(?P<sub>.+)\\.example\\.org$")
    returns = [(loc.match, loc.return_.status, loc.return_.text) for loc in s.locations if loc.return_]
    assert returns == [
        ("= /a", 204, None),
        ("/b", 301, "https://example.com$request_uri"),
        ("/c", 200, "hello $remote_addr"),
        ("/d", 302, "http://example.net/"),
    ]


def test_round_trip_logs_access_and_api(tmp_path: Path) -> None:
    """Catches: log_format strings not joined as nginx joins them, access_log parameters, several
    logs at one level, allow/deny or api lost."""
    config = load(
        tmp_path,
        """
        http {
            log_format up '$remote_addr '
                          '$upstream_addr';
            access_log logs/a.log up buffer=32k flush=5s;
            access_log logs/b.log;
            server {
                listen 127.0.0.1:8081;
                location /api/ { api write=on; allow 127.0.0.1; deny all; }
                location / { access_log off; return 200; }
            }
        }
        """,
    )
    assert config.http.log_formats["up"] == "$remote_addr $upstream_addr"
    api, plain = config.http.servers[0].locations
    assert [(al.path, al.format_name, al.buffer_bytes, al.flush_s) for al in api.access_logs] == [
        (str(tmp_path / "logs/a.log"), "up", 32768, 5.0),
        (str(tmp_path / "logs/b.log"), "combined", 0, 1.0),
    ]
    assert api.status == "api" and [allow for allow, _ in api.access] == [True, False]
    assert api.api_write  # issue 19: write=on is the write API
    assert plain.access_logs == ()


def test_round_trip_stream(tmp_path: Path) -> None:
    """Catches: the stream block's upstreams, listen parameters and proxy_* keys mis-mapped."""
    config = load(
        tmp_path,
        """
        stream {
            log_format bytes '$remote_addr $bytes_sent';
            upstream dns { random two; server 127.0.0.1:5353; server 127.0.0.1:5354 weight=2; }
            server {
                listen 127.0.0.1:5300 udp reuseport;
                proxy_pass dns;
                proxy_responses 1;
                proxy_requests 1;
                proxy_timeout 20s;
                access_log logs/dns.log bytes;
            }
            server {
                listen 127.0.0.1:3306 so_keepalive=on;
                proxy_pass 127.0.0.1:3307;
                proxy_connect_timeout 1s;
                proxy_next_upstream off;
                proxy_next_upstream_tries 2;
                proxy_buffer_size 4k;
            }
        }
        """,
    )
    udp, tcp = config.stream.servers
    assert udp.listen[0].udp and udp.listen[0].reuseport and udp.proxy_pass == "dns"
    assert (udp.proxy_responses, udp.proxy_requests, udp.proxy_timeout_s) == (1, 1, 20.0)
    assert udp.access_logs[0].format_name == "bytes"
    assert config.stream.upstreams["dns"].random_two
    assert tcp.listen[0].so_keepalive and tcp.proxy_next_upstream is False
    assert (tcp.proxy_connect_timeout_s, tcp.proxy_next_upstream_tries, tcp.proxy_buffer_size_bytes) == (
        1.0,
        2,
        4096,
    )


def test_loader_error_names_the_nginx_line(tmp_path: Path) -> None:
    """Catches: an error in the converted TOML naming a key path the operator never wrote,
    instead of the nginx line it came from."""
    with pytest.raises(ConfigError) as info:
        load(
            tmp_path,
            "http {\n  server {\n    listen 127.0.0.1:8080;\n    location / {\n"
            "      proxy_read_timeout 5x;\n      return 200;\n    }\n  }\n}\n",
        )
    assert str(info.value).startswith(
        "nginx.conf:5: http.servers[0].locations[0].proxy_read_timeout: invalid"
    )


# ---- NGINX's documentation examples -------------------------------------------------------------

# https://nginx.org/en/docs/http/load_balancing.html
LOAD_BALANCING = """
http {
    upstream myapp1 {
        least_conn;
        server srv1.example.com weight=3;
        server srv2.example.com;
        server srv3.example.com;
    }

    server {
        listen 80;

        location / {
            proxy_pass http://myapp1;
        }
    }
}
"""

# https://nginx.org/en/docs/http/ngx_http_upstream_module.html (the first example, and the
# NGINX Plus one with a zone, resolve and health_check)
UPSTREAM_MODULE = """
http {
upstream backend {
    server backend1.example.com       weight=5;
    server backend2.example.com:8080;
    server unix:/tmp/backend3;

    server backup1.example.com:8080   backup;
    server backup2.example.com:8080   backup;
}

resolver 10.0.0.1;

upstream dynamic {
    zone upstream_dynamic 64k;

    server backend1.example.com      weight=5;
    server backend2.example.com:8080 fail_timeout=5s slow_start=30s;
    server 192.0.2.1                 max_fails=3;
    server backend3.example.com      resolve;
    server backend4.example.com      service=http resolve;

    server backup1.example.com:8080  backup;
    server backup2.example.com:8080  backup;
}

server {
    location / {
        proxy_pass http://backend;
    }
    location /dynamic {
        proxy_pass http://dynamic;
        health_check;
    }
}
}
"""

# https://nginx.org/en/docs/stream/ngx_stream_core_module.html
STREAM_CORE = """
stream {
    upstream backend {
        hash $remote_addr consistent;

        server backend1.example.com:12345 weight=5;
        server 127.0.0.1:12345            max_fails=3 fail_timeout=30s;
        server unix:/tmp/backend3;
    }

    upstream dns {
       server 192.168.0.1:53535;
       server dns.example.com:53;
    }

    server {
        listen 12345;
        proxy_connect_timeout 1s;
        proxy_timeout 3s;
        proxy_pass backend;
    }

    server {
        listen 127.0.0.1:53 udp reuseport;
        proxy_timeout 20s;
        proxy_pass dns;
    }

    server {
        listen [::1]:12345;
        proxy_pass unix:/tmp/stream.socket;
    }
}
"""


def _resolvable(text: str) -> str:
    """The docs' hostnames, made loopback so the loader resolves them."""
    import re

    return re.sub(r"\b[a-z0-9]+\.example\.com", "localhost", text)


def test_docs_load_balancing_example(tmp_path: Path) -> None:
    """Catches: the load balancing page's configuration not converting to what it says."""
    (tmp_path / "nginx.conf").write_text(LOAD_BALANCING)
    conversion = convert_file(str(tmp_path / "nginx.conf"))
    doc = tomllib.loads(conversion.toml)
    assert doc["http"]["upstreams"]["myapp1"] == {
        "method": "least_conn",
        "servers": [
            {"address": "srv1.example.com:80", "weight": 3},
            {"address": "srv2.example.com:80"},
            {"address": "srv3.example.com:80"},
        ],
    }
    assert doc["http"]["servers"] == [
        {"listen": ["80"], "locations": [{"match": "/", "proxy_pass": "http://myapp1"}]}
    ]
    assert conversion.notes == ()
    config = load(tmp_path, _resolvable(LOAD_BALANCING))
    assert [s.weight for s in config.http.upstreams["myapp1"].servers][:1] == [3]


def test_docs_upstream_module_example(tmp_path: Path) -> None:
    """Catches: the upstream module's examples (Plus parameters included) not converting, or
    resolve/service=/resolver disappearing from the report; its Plus health_check is mapped
    (convert/map_health.py) onto the /dynamic location."""
    (tmp_path / "nginx.conf").write_text(UPSTREAM_MODULE)
    conversion = convert_file(str(tmp_path / "nginx.conf"))
    doc = tomllib.loads(conversion.toml)
    backend = doc["http"]["upstreams"]["backend"]["servers"]
    assert backend[2] == {"address": "unix:/tmp/backend3"}
    assert backend[3] == {"address": "backup1.example.com:8080", "backup": True}
    dynamic = doc["http"]["upstreams"]["dynamic"]["servers"]
    assert dynamic[1] == {"address": "backend2.example.com:8080", "fail_timeout": "5s", "slow_start": "30s"}
    assert dynamic[2] == {"address": "192.0.2.1:80", "max_fails": 3}
    assert doc["http"]["servers"][0]["listen"] == ["*:80"]
    lines = [str(n) for n in conversion.notes]
    assert [line.split(":")[1] for line in lines] == ["12", "20", "21", "21", "27"]
    assert "resolver" in lines[0] and not any("health_check" in line for line in lines)
    assert doc["http"]["servers"][0]["locations"][1]["health_check"] == {}
    config = load(tmp_path, _resolvable(UPSTREAM_MODULE))
    assert config.http.upstreams["dynamic"].servers[1].slow_start_s == 30.0
    assert [hc.upstream for hc in config.health_checks()] == ["dynamic"]


def test_docs_stream_example(tmp_path: Path) -> None:
    """Catches: the stream module's example not converting (hash consistent, udp reuseport,
    a unix socket proxy_pass)."""
    config = load(tmp_path, _resolvable(STREAM_CORE))
    backend = config.stream.upstreams["backend"]
    assert (backend.method, backend.hash_key, backend.consistent) == ("hash", "$remote_addr", True)
    assert [s.proxy_pass for s in config.stream.servers] == ["backend", "dns", "unix:/tmp/stream.socket"]
    assert config.stream.servers[1].listen[0].udp and config.stream.servers[1].listen[0].reuseport
    assert config.notes == ()


# ---- hostile input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("http {\n  server {\n", 'nginx.conf:2: unexpected end of file, expecting "}"'),
        ("events {}\n}\n", 'nginx.conf:2: unexpected "}"'),
        (
            "events {}\nhttp {\n  location / { return 200; }\n}\n",
            'nginx.conf:3: "location" directive is not allowed here',
        ),
        ("events {}\nserver { listen 80; }\n", 'nginx.conf:2: "server" directive is not allowed here'),
        ("http { server { listen; } }\n", 'nginx.conf:1: invalid number of arguments in "listen"'),
        ("http { include missing.conf; }\n", 'nginx.conf:1: open() "'),
    ],
    ids=["unclosed", "extra-brace", "location-in-http", "server-in-main", "no-args", "missing-include"],
)
def test_hostile_input_is_a_clear_error(tmp_path: Path, text: str, error: str) -> None:
    """Catches: broken nginx syntax converted into something, or failing with a traceback
    instead of a message naming the file and line."""
    (tmp_path / "nginx.conf").write_text(text)
    with pytest.raises(ConvertError) as info:
        convert_file(str(tmp_path / "nginx.conf"))
    assert str(info.value).startswith(error)


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    """Catches: an include loop followed forever (nginx recurses until it runs out of
    descriptors) or silently cut."""
    (tmp_path / "nginx.conf").write_text("events {}\nhttp {\n  include conf.d/*.conf;\n}\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("# a\ninclude conf.d/b.conf;\n")
    (tmp_path / "conf.d" / "b.conf").write_text("include conf.d/a.conf;\n")
    with pytest.raises(ConvertError) as info:
        convert_file(str(tmp_path / "nginx.conf"))
    assert str(info.value) == (
        "conf.d/b.conf:1: include loop: nginx.conf -> conf.d/a.conf -> conf.d/b.conf -> conf.d/a.conf"
    )


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    """Catches: a huge (or wrong) file parsed for minutes or into all memory."""
    (tmp_path / "nginx.conf").write_text("http { include big.conf; }\n")
    with open(tmp_path / "big.conf", "w") as f:
        f.write("# x\n" * (MAX_FILE_BYTES // 4 + 1))
    with pytest.raises(ConvertError) as info:
        convert_file(str(tmp_path / "nginx.conf"))
    assert str(info.value).startswith(f"big.conf: {MAX_FILE_BYTES + 4} bytes is more than")


def test_includes_glob_and_repeat(tmp_path: Path) -> None:
    """Catches: include globs not followed in sorted order, or a file included from two
    places (proxy_params) kept only once."""
    (tmp_path / "sites").mkdir()
    (tmp_path / "proxy_params").write_text("proxy_set_header Host $host;\n")
    for name, port in (("b.conf", 8082), ("a.conf", 8081)):
        (tmp_path / "sites" / name).write_text(
            f"server {{ listen 127.0.0.1:{port}; "
            "location / { proxy_pass http://127.0.0.1:9; include proxy_params; } }\n"
        )
    config = load(tmp_path, "events {}\nhttp { include sites/*.conf; }\n")
    assert [s.listen[0].address.port for s in config.http.servers] == [8081, 8082]
    assert all(s.locations[0].proxy_set_header == (("Host", "$host"),) for s in config.http.servers)
    assert len(config.files) == 4


def test_startup_errors_name_the_nginx_line(tmp_path: Path) -> None:
    """Catches: a startup check (log file, pid directory, bind) of a converted nginx.conf
    naming only a TOML key path the operator never wrote."""
    import socket

    from prefork_lb.preflight import StartupError, check_startup

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        lines = ["pid run.pid;", "events {}", "http {", "  access_log {log};", "  server {"]
        lines += [f"    listen 127.0.0.1:{port};", "    location / { return 200; }", "  }", "}"]
        text = "\n".join(lines)
        config = load(tmp_path, text.replace("{log}", "missing/a.log"))
        with pytest.raises(StartupError, match=r"\(http.access_log, nginx.conf:4\)$"):
            check_startup(config)
        config = load(tmp_path, text.replace("{log}", "a.log").replace("run.pid", "none/run.pid"))
        with pytest.raises(StartupError, match=r"\(pid, nginx.conf:1\)$"):
            check_startup(config)
        config = load(tmp_path, text.replace("{log}", "a.log"))
        with pytest.raises(StartupError, match=r"\(http.servers\[0\].listen\[0\], nginx.conf:6\)$"):
            check_startup(config, probe_binds=True)
    finally:
        taken.close()


def test_nginx_defaults_that_differ_are_written(tmp_path: Path) -> None:
    """Catches: prefork-lb's own defaults standing in for nginx's where they differ:
    worker_connections (nginx 512) and the level of an error_log given without one (error)."""
    config = load(
        tmp_path,
        "error_log err.log;\nevents {}\nhttp { server { listen 127.0.0.1:1; location / { return 200; } } }\n",
    )
    assert (config.worker_connections, config.error_log_level) == (512, "error")


def test_control_characters_stay_on_their_line(tmp_path: Path) -> None:
    """Catches: a control character in an unknown directive written raw into the report and the
    TOML's comment header (a comment may not hold one: the whole TOML would not load)."""
    (tmp_path / "nginx.conf").write_text("events {}\nhttp { \x00x\x1b on; }\n")
    conversion = convert_file(str(tmp_path / "nginx.conf"))
    assert [str(n) for n in conversion.notes] == [
        'nginx.conf:2: "\\x00x\\x1b on" has no prefork-lb equivalent; skipped'
    ]
    assert tomllib.loads(conversion.toml) == {"worker_connections": 512, "http": {}}


def test_a_toml_config_named_conf_gets_a_hint(tmp_path: Path) -> None:
    """Catches: a TOML config that happens to be named ``.conf`` failing with an nginx syntax
    error and no word of why."""
    (tmp_path / "lb.conf").write_text('workers = 2\n[http]\naccess_log = "off"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "lb.conf"))
    assert str(info.value) == (
        'lb.conf: unexpected end of file, expecting ";" or "}" '
        "(lb.conf is valid TOML: a config ending in .conf is read as nginx syntax; rename it .toml)"
    )


def test_status_module_is_the_api_with_a_note() -> None:
    """Catches: the old NGINX Plus ``status`` served as the API without saying its shape differs."""
    loc = d("location", "/status", block=[d("status", line=3)])
    out = map_config([d("http", block=[d("server", block=[d("listen", "127.0.0.1:80"), loc])])])
    assert out.doc["http"]["servers"][0]["locations"][0] == {"match": "/status", "api": True}
    assert [(n.where, n.unsupported) for n in out.notes] == [("nginx.conf:3", False)]


# ---- TLS to upstreams and WebSocket (docs/config.md) --------------------------------------------


def _ca(directory: Path) -> None:
    """A self-signed CA certificate, ``ca.crt`` in ``directory``."""
    import subprocess

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test CA"],
        cwd=directory, check=True, capture_output=True,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_round_trip_upstream_tls(tmp_path: Path) -> None:
    """Catches: proxy_pass https:// or a proxy_ssl_* directive skipped (old converter: all were
    "planned") or mis-keyed, their http -> server -> location inheritance lost, a relative
    trusted certificate not found next to the nginx.conf (nginx's conf prefix), SSLv3 passed
    to the loader (which would refuse it) instead of dropped with a note, or the SNI
    difference of a verifying location not reported."""
    _ca(tmp_path)
    config = load(
        tmp_path,
        """
        http {
            proxy_ssl_protocols SSLv3 TLSv1.2;
            proxy_ssl_session_reuse off;
            upstream up.test { server 127.0.0.1:9443; }
            server {
                listen 127.0.0.1:8080;
                proxy_ssl_trusted_certificate ca.crt;
                proxy_http_version 1.1;
                location /v/ {
                    proxy_pass https://up.test/;
                    proxy_ssl_verify on;
                    proxy_ssl_name backend.test;
                    proxy_ssl_ciphers HIGH:!aNULL;
                }
                location /sni/ {
                    proxy_pass https://127.0.0.1:9443;
                    proxy_ssl_server_name on;
                    proxy_ssl_session_reuse on;
                    proxy_ssl_verify_depth 2;
                }
            }
        }
        """,
    )
    v, sni = config.http.servers[0].locations
    assert v.proxy_pass is not None and v.proxy_pass.ssl and v.proxy_pass.uri == "/"
    assert (v.proxy_ssl_verify, v.proxy_ssl_name, v.proxy_ssl_ciphers) == (
        True,
        "backend.test",
        "HIGH:!aNULL",
    )
    assert v.proxy_ssl_trusted_certificate == str(tmp_path / "ca.crt")
    assert v.proxy_ssl_protocols == ("TLSv1.2",) and v.proxy_ssl_session_reuse is False
    assert (v.proxy_ssl_server_name, v.proxy_http_version) == (False, "1.1")
    assert (sni.proxy_ssl_verify, sni.proxy_ssl_server_name, sni.proxy_ssl_session_reuse) == (
        False,
        True,
        True,
    )
    assert config.notes == (
        'nginx.conf:3: "proxy_ssl_protocols SSLv3 TLSv1.2": SSLv2 and SSLv3 are not spoken by prefork-lb; '
        "mapped without them",
        'nginx.conf:20: "proxy_ssl_verify_depth 2" is not supported: chains are verified to OpenSSL\'s '
        "default depth (100; nginx's default of 1 allows one intermediate CA); remove it; skipped",
        'nginx.conf:12: "proxy_ssl_verify on": the verified name is also sent as SNI '
        "(proxy_ssl_server_name is off)",
    )


def test_mapping_tls_directives_left_unsupported() -> None:
    """Catches: a proxy_ssl_* directive prefork-lb lacks (client certificates, CRLs) mapped or
    dropped silently, a proxy_ssl value other than on/off turned into a boolean instead of
    reaching the loader (which names the line), or a stream server with ``proxy_ssl on``
    converted into one that speaks plain TCP to a TLS upstream."""
    loc = d(
        "location",
        "/",
        block=[
            d("proxy_pass", "https://app"),
            d("proxy_ssl_certificate", "c.pem", line=3),
            d("proxy_ssl_crl", "crl.pem", line=4),
            d("proxy_ssl_verify", "yes", line=5),
        ],
    )
    stream = d(
        "stream",
        block=[
            d(
                "server",
                block=[d("listen", "7000"), d("proxy_pass", "127.0.0.1:7001"), d("proxy_ssl", "on", line=8)],
                line=7,
            ),
            d(
                "server",
                block=[d("listen", "7002"), d("proxy_pass", "127.0.0.1:7003"), d("proxy_ssl", "off")],
            ),
        ],
    )
    out = map_config([d("http", block=[d("server", block=[d("listen", "80"), loc])]), stream])
    assert out.doc["http"]["servers"][0]["locations"][0]["proxy_ssl_verify"] == "yes"
    assert out.doc["stream"]["servers"] == [{"listen": ["7002"], "proxy_pass": "127.0.0.1:7003"}]
    assert [(n.where, n.text.split(" is not ")[0]) for n in out.notes if n.unsupported] == [
        ("nginx.conf:3", '"proxy_ssl_certificate c.pem"'),
        ("nginx.conf:4", '"proxy_ssl_crl crl.pem"'),
        ("nginx.conf:8", '"proxy_ssl on"'),
        ("nginx.conf:7", '"server" connects to its upstream with TLS (proxy_ssl on), which the converter '
         "does not map yet (plain TCP to a TLS upstream would fail): write the server with proxy_ssl = true "
         "and its proxy_ssl_* keys in the TOML (docs/config.md, stream servers); skipped"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "entries",
    [
        [("default", "upgrade"), ("", "close")],
        [("", "close"), ("default", "upgrade")],
    ],
    ids=["documented", "reordered"],
)
def test_mapping_connection_upgrade_map_is_built_in(entries: list[tuple[str, str]]) -> None:
    """Catches: nginx's documented WebSocket map (``default upgrade; '' close;``, in either
    order; crossplane reads '' and "" alike) reported as unsupported, so ``--strict`` refused
    the canonical WebSocket config (old converter: "map" was planned), or written into the TOML."""
    block = [d(name, value, line=3 + i) for i, (name, value) in enumerate(entries)]
    out = map_config(
        [d("http", block=[d("map", "$http_upgrade", "$connection_upgrade", block=block, line=2)])]
    )
    assert out.doc == {"http": {}, "worker_connections": 512}
    assert [(str(n), n.unsupported) for n in out.notes] == [
        (
            'nginx.conf:2: "map $http_upgrade $connection_upgrade": nginx\'s documented WebSocket map: '
            "prefork-lb has $connection_upgrade built in, the same; not converted",
            False,
        )
    ]


@pytest.mark.parametrize(
    ("args", "entries", "expected"),
    [
        (
            ("$http_upgrade", "$connection_upgrade"),
            [("default", "upgrade"), ("", "")],
            {"source": "$http_upgrade", "values": {"default": "upgrade", "": ""}},
        ),
        (
            ("$host", "$site"),
            [("hostnames",), ("*.example.com", "wild"), ("default", "none")],
            {"source": "$host", "values": {"*.example.com": "wild", "default": "none"}, "hostnames": True},
        ),
        (
            ("$uri", "$api"),
            [("~^/api/(v\\d)/", "$1"), ("default", "")],
            {"source": "$uri", "values": {"~^/api/(v\\d)/": "$1", "default": ""}},
        ),
    ],
    ids=["keepalive-variant", "hostnames", "regex"],
)
def test_mapping_other_maps_are_converted(
    args: tuple[str, str], entries: list[tuple[str, ...]], expected: dict[str, Any]
) -> None:
    """Catches: a map that is not exactly nginx's documented one (``'' ''`` for upstream
    keep-alive, hostnames, regexes) taken as the built-in or not converted to
    ``[http.maps.NAME]`` (issue 16)."""
    block = [d(e[0], *e[1:]) for e in entries]
    out = map_config([d("http", block=[d("map", *args, block=block, line=2)])])
    assert not out.notes
    assert out.doc["http"]["maps"] == {args[1][1:]: expected}


def test_mapping_rewrite_module_and_error_page() -> None:
    """Catches: rewrite/set/if/break/return losing their order in ``rewrite_rules`` (server
    and location), error_page codes and ``=code`` lost, proxy_intercept_errors dropped, a
    statement after a return converted although nginx never runs it (issue 16)."""
    server = d(
        "server",
        block=[
            d("listen", "80"),
            d("rewrite", r"^(/download/.*)/media/(\w+)\.?.*$", "$1/mp3/$2.mp3", "last"),
            d("if", "$http_user_agent", "~*", "bad bot", block=[d("return", "403")]),
            d("set", "$pool", "blue"),
            d("error_page", "502", "503", "@fallback"),
            d("error_page", "404", "=200", "/empty.json"),
            d(
                "location",
                "/x/",
                block=[
                    d("rewrite", "^/x/(.*)$", "/y/$1", "break"),
                    d("return", "403"),
                    d("proxy_pass", "http://127.0.0.1:1"),
                    d("proxy_intercept_errors", "on"),
                ],
            ),
            d("location", "/r/", block=[d("return", "404"), d("set", "$a", "1")]),
            d("location", "@fallback", block=[d("return", "503", "maintenance")]),
        ],
    )
    out = map_config([d("http", block=[server])])
    s = out.doc["http"]["servers"][0]
    assert s["rewrite_rules"] == [
        r"rewrite ^(/download/.*)/media/(\w+)\.?.*$ $1/mp3/$2.mp3 last",
        'if ($http_user_agent ~* "bad bot") { return 403; }',
        "set $pool blue",
    ]
    assert s["error_page"] == {"502 503": "@fallback", "404": "=200 /empty.json"}
    x, r, fallback = s["locations"]
    assert x["rewrite_rules"] == ["rewrite ^/x/(.*)$ /y/$1 break", "return 403"]
    assert x["proxy_intercept_errors"] is True
    assert r == {"match": "/r/", "return": 404}
    assert fallback == {"match": "@fallback", "return": "503 maintenance"}
    assert [n.text.split('"')[1] for n in out.notes if n.unsupported] == ["set $a 1"]


def test_mapping_stream_level_proxy_ssl_applies_to_every_server() -> None:
    """Catches: ``proxy_ssl on`` written at the stream level (after the servers, as nginx
    allows) not inherited: its servers converted to plain TCP to TLS upstreams; a server's own
    ``proxy_ssl off`` still converts."""
    stream = d(
        "stream",
        block=[
            d("server", block=[d("listen", "7000"), d("proxy_pass", "127.0.0.1:7001")], line=2),
            d(
                "server",
                block=[d("listen", "7002"), d("proxy_pass", "127.0.0.1:7003"), d("proxy_ssl", "off")],
            ),
            d("proxy_ssl", "on", line=4),
        ],
    )
    out = map_config([stream])
    assert out.doc["stream"] == {"servers": [{"listen": ["7002"], "proxy_pass": "127.0.0.1:7003"}]}
    assert [n.where for n in out.notes] == ["nginx.conf:2", "nginx.conf:4"]  # proxy_ssl off: no note


@pytest.mark.parametrize("empty", ["''", '""'])
def test_connection_upgrade_map_quoted_either_way(tmp_path: Path, empty: str) -> None:
    """Catches: the WebSocket map's empty key recognised only in one quoting (nginx's docs use
    ``''``, many configs ``""``): the other reported as unsupported."""
    (tmp_path / "nginx.conf").write_text(
        f"events {{}}\nhttp {{\n  map $http_upgrade $connection_upgrade {{\n    default upgrade;\n"
        f"    {empty} close;\n  }}\n}}\n"
    )
    conversion = convert_file(str(tmp_path / "nginx.conf"))
    assert [n.where for n in conversion.notes] == ["nginx.conf:3"] and not conversion.unsupported


# ---- TLS termination: listen ... ssl, ssl_*, stream ssl_preread ---------------------------------


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    from tests.tls_certs import TestCA

    ca = TestCA(tmp_path_factory.mktemp("convert-tls") / "certs")
    for name in ("a.test", "b.test"):
        ca.issue(name)
    ca.issue("a.test", "ec")
    return ca


def test_round_trip_tls_termination_and_inheritance(tmp_path: Path, tls_ca: Any) -> None:
    """Catches: ``listen ... ssl`` or an ``ssl_*`` directive skipped (old converter: all were,
    "planned"); an http-level ssl_* not copied into each TLS server, or copied over the
    server's own value; a second ssl_certificate replacing the first; an http-level value
    copied into a plain server (the loader refuses ssl_* there); ``ssl on`` not making the
    server's listens TLS; TLSv1/TLSv1.1 (which the loader refuses) kept."""
    c = tls_ca.dir
    config = load(
        tmp_path,
        f"""
        http {{
            ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
            ssl_ciphers HIGH:!aNULL;
            ssl_session_cache builtin:1000 shared:SSL:10m;
            ssl_session_timeout 1h;
            ssl_certificate {c}/b.test-rsa.crt;
            ssl_certificate_key {c}/b.test-rsa.key;
            server {{
                listen 127.0.0.1:8443 ssl http2 default_server;
                server_name a.test;
                ssl_certificate {c}/a.test-rsa.crt;
                ssl_certificate_key {c}/a.test-rsa.key;
                ssl_certificate {c}/a.test-ec.crt;
                ssl_certificate_key {c}/a.test-ec.key;
                ssl_session_tickets off;
                ssl_protocols TLSv1.3;
                ssl_prefer_server_ciphers on;
                location / {{ return 200 a; }}
            }}
            server {{
                listen 127.0.0.1:8444;
                server_name b.test;
                ssl on;
                ssl_client_certificate {c}/ca.crt;
                ssl_verify_client optional;
                ssl_dhparam dh.pem;
                location / {{ return 200 b; }}
            }}
            server {{
                listen 127.0.0.1:8080;
                ssl_ciphers ALL;
                location / {{ return 200 plain; }}
            }}
        }}
        """,
    )
    a, b, plain = config.http.servers
    assert a.listen[0].ssl and a.listen[0].default_server and b.listen[0].ssl
    assert a.listen[0].http2 and not b.listen[0].http2  # issue 20
    assert a.ssl is not None and b.ssl is not None and plain.ssl is None and not plain.listen[0].ssl
    assert a.ssl.certificates == (f"{c}/a.test-rsa.crt", f"{c}/a.test-ec.crt")
    assert a.ssl.keys == (f"{c}/a.test-rsa.key", f"{c}/a.test-ec.key")
    assert (a.ssl.protocols, a.ssl.ciphers, a.ssl.session_tickets) == (("TLSv1.3",), "HIGH:!aNULL", False)
    assert (a.ssl.session_cache, a.ssl.session_timeout_s) == ("shared:SSL:10m", 3600.0)
    assert b.ssl.certificates == (f"{c}/b.test-rsa.crt",) and b.ssl.protocols == ("TLSv1.2", "TLSv1.3")
    assert (b.ssl.client_certificate, b.ssl.verify_client) == (f"{c}/ca.crt", "optional")
    notes = [str(n) for n in convert_file(str(tmp_path / "nginx.conf")).notes]
    assert notes == [
        'nginx.conf:3: "ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3": prefork-lb terminates TLSv1.2 and '
        "TLSv1.3 only; mapped without the older ones",
        'nginx.conf:5: "ssl_session_cache builtin:1000 shared:SSL:10m": mapped to "shared:SSL:10m": '
        "prefork-lb's session cache is per worker (a session ID resumes only on the worker that issued it; "
        "tickets resume on any worker)",
        'nginx.conf:18: "ssl_prefer_server_ciphers on": prefork-lb always prefers its own cipher order; '
        "nothing to set",
        'nginx.conf:24: "ssl on": deprecated (removed in nginx 1.25): mapped to the "ssl" flag on the listen '
        "addresses",
        'nginx.conf:27: "ssl_dhparam dh.pem" is not supported: no custom DH parameters (key exchange is '
        "ECDHE, and TLS 1.3's); remove it; skipped",
        'nginx.conf:32: "ssl_ciphers ALL": the server has no "ssl" listen, where nginx ignores it too; not '
        "converted",
    ]


def test_round_trip_stream_tls_and_ssl_preread(tmp_path: Path, tls_ca: Any) -> None:
    """Catches: stream ``listen ... ssl``, ssl_handshake_timeout, ``ssl_preread`` or
    preread_timeout skipped (old converter), a stream-level value not reaching each server,
    or a stream-level ``ssl_preread on`` copied into a TLS or UDP server (the loader refuses
    both); ``hash $ssl_preread_server_name`` routes by SNI."""
    c = tls_ca.dir
    config = load(
        tmp_path,
        f"""
        stream {{
            ssl_preread on;
            preread_timeout 5s;
            ssl_handshake_timeout 10s;
            ssl_certificate {c}/a.test-rsa.crt;
            ssl_certificate_key {c}/a.test-rsa.key;
            upstream by_sni {{ hash $ssl_preread_server_name; server 127.0.0.1:9001; server 127.0.0.1:9002; }}
            server {{ listen 127.0.0.1:6443; proxy_pass by_sni; }}
            server {{
                listen 127.0.0.1:6444 ssl;
                proxy_pass 127.0.0.1:9003;
                ssl_handshake_timeout 3s;
                ssl_session_cache off;
            }}
            server {{ listen 127.0.0.1:5353 udp; proxy_pass 127.0.0.1:9004; }}
        }}
        """,
    )
    preread, tls, udp = config.stream.servers
    assert preread.ssl_preread and preread.ssl is None and preread.preread_timeout_s == 5.0
    assert config.stream.upstreams["by_sni"].hash_key == "$ssl_preread_server_name"
    assert not tls.ssl_preread and tls.ssl is not None and tls.listen[0].ssl
    assert (tls.ssl.certificates, tls.ssl.session_cache) == ((f"{c}/a.test-rsa.crt",), "off")
    assert (tls.ssl_handshake_timeout_s, preread.ssl_handshake_timeout_s) == (3.0, 10.0)
    assert not udp.ssl_preread and udp.ssl is None
    assert convert_file(str(tmp_path / "nginx.conf")).notes == ()


def test_tls_directives_prefork_lb_lacks_are_reported() -> None:
    """Catches: an ssl_* directive prefork-lb lacks mapped or dropped silently (each gets a
    reason saying what prefork-lb does instead), a certificate path with variables mapped
    to a file that cannot exist, or ``ssl_verify_client optional_no_ca`` mapped to a
    verifying mode; ``ssl_prefer_server_ciphers off`` (certbot's) without a note."""
    server = d(
        "server",
        block=[
            d("listen", "443", "ssl"),
            d("ssl_certificate", "$ssl_server_name.crt", line=2),
            d("ssl_session_ticket_key", "t.key", line=3),
            d("ssl_stapling", "on", line=4),
            d("ssl_verify_client", "optional_no_ca", line=5),
            d("ssl_early_data", "on", line=6),
            d("ssl_prefer_server_ciphers", "off", line=7),
            d("location", "/", block=[d("return", "200")]),
        ],
    )
    out = map_config([d("http", block=[server])])
    s = out.doc["http"]["servers"][0]
    assert s["listen"] == ["443 ssl"] and not any(k.startswith("ssl_") for k in s)
    assert [(n.where, n.unsupported) for n in out.notes] == [
        *((f"nginx.conf:{i}", True) for i in range(2, 7)),
        ("nginx.conf:7", False),  # prefork-lb prefers its own order: a difference, not a gap
    ]
    assert "generated" not in out.notes[1].text and "reload" in out.notes[1].text


def test_http_level_tls_without_a_tls_server_is_noted() -> None:
    """Catches: Debian's http-level ``ssl_protocols`` (and ``ssl on``) vanishing without a note
    when no server listens with ``ssl``, or being copied into plain servers (which the loader
    refuses); an http-level ``ssl on`` not making every server's listens TLS."""
    plain = d("server", block=[d("listen", "80"), d("location", "/", block=[d("return", "200")])])
    out = map_config([d("http", block=[d("ssl_protocols", "TLSv1.2", line=2), plain])])
    assert "ssl_protocols" not in out.doc["http"] and "ssl_protocols" not in out.doc["http"]["servers"][0]
    assert [str(n) for n in out.notes] == [
        'nginx.conf:2: "ssl_protocols": no server here it applies to; not converted'
    ]
    tls = d("server", block=[d("listen", "443"), d("location", "/", block=[d("return", "200")])])
    out = map_config([d("http", block=[tls, d("ssl", "on", line=3), d("ssl_certificate", "a.crt", line=4)])])
    s = out.doc["http"]["servers"][0]
    assert (s["listen"], s["ssl_certificate"]) == (["443 ssl"], ["a.crt"])
    assert out.origins["http.servers[0].ssl_certificate[0]"] == "nginx.conf:4"


def test_round_trip_tls_address_shared_with_a_server_without_the_flag(tmp_path: Path, tls_ca: Any) -> None:
    """Catches: a server on an address another server made TLS (nginx: ``ssl`` is per
    address) losing its own certificate (SNI would get the default server's) or failing the
    load (the loader takes ssl_* only with the flag on the server's own listen); a server
    there without a certificate made to need one (nginx serves it the default's)."""
    c = tls_ca.dir
    config = load(
        tmp_path,
        f"""
        http {{
            server {{
                listen 127.0.0.1:8443 ssl;
                server_name a.test;
                ssl_certificate {c}/a.test-rsa.crt;
                ssl_certificate_key {c}/a.test-rsa.key;
                location / {{ return 200 a; }}
            }}
            server {{
                listen 127.0.0.1:8443;
                server_name b.test;
                ssl_certificate {c}/b.test-rsa.crt;
                ssl_certificate_key {c}/b.test-rsa.key;
                location / {{ return 200 b; }}
            }}
            server {{
                listen 127.0.0.1:8443;
                server_name c.test;
                ssl_session_tickets off;
                location / {{ return 200 c; }}
            }}
        }}
        """,
    )
    _, b, c_server = config.http.servers
    assert b.listen[0].ssl and b.ssl is not None and b.ssl.certificates == (f"{c}/b.test-rsa.crt",)
    assert c_server.ssl is None and not c_server.listen[0].ssl
    notes = [str(n) for n in convert_file(str(tmp_path / "nginx.conf")).notes]
    assert notes == [
        'nginx.conf:11: "listen 127.0.0.1:8443": another server listens on this address with "ssl", which '
        'makes it TLS for every server (nginx); mapped with "ssl"',
        'nginx.conf:20: "ssl_session_tickets off": the server has no "ssl" listen, where nginx ignores it '
        "too; not converted",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["off"], "off"),
        (["none"], "none"),
        (["builtin"], "shared:builtin:5120k"),  # nginx's 20480 sessions, ~256 bytes each
        (["builtin:1000"], "shared:builtin:250k"),
        (["builtin:1000", "shared:SSL:10m"], "shared:SSL:10m"),
    ],
)
def test_mapping_ssl_session_cache(args: list[str], expected: str) -> None:
    """Catches: nginx's ``builtin[:N]`` (which the loader does not take) copied as written, or
    a ``shared:`` beside it lost; off/none changed."""
    server = d(
        "server",
        block=[
            d("listen", "443", "ssl"),
            d("ssl_session_cache", *args),
            d("location", "/", block=[d("return", "200")]),
        ],
    )
    out = map_config([d("http", block=[server])])
    assert out.doc["http"]["servers"][0]["ssl_session_cache"] == expected
def test_round_trip_header_rules(tmp_path: Path) -> None:
    """Catches: add_header (with ``always``), proxy_hide_header, proxy_pass_header or
    proxy_redirect (default, off, pairs, regex, in order) skipped or mapped to a wrong shape;
    the old converter reported all four as planned and skipped them."""
    config = load(
        tmp_path,
        """
        http {
            add_header X-Http h;
            server {
                listen 127.0.0.1:8080;
                add_header X-Srv s always;
                proxy_hide_header X-Powered-By;
                location /a/ {
                    proxy_pass http://127.0.0.1:9001;
                    add_header X-Upstream $upstream_addr;
                    add_header Strict-Transport-Security "max-age=31536000" always;
                    proxy_pass_header Server;
                    proxy_pass_header X-Pad;
                    proxy_redirect default;
                    proxy_redirect http://backend/ /;
                    proxy_redirect ~^/(.*)$ /mapped/$1;
                }
                location /b/ { proxy_pass http://127.0.0.1:9001; proxy_redirect off; }
                location /c/ { proxy_pass http://127.0.0.1:9001; }
            }
        }
        """,
    )
    server = config.http.servers[0]
    a, b, c = server.locations
    assert a.add_header == (
        ("X-Upstream", "$upstream_addr", False),
        ("Strict-Transport-Security", "max-age=31536000", True),
    )
    assert a.proxy_hide_header == ("X-Powered-By",) and a.proxy_pass_header == ("Server", "X-Pad")
    assert a.proxy_redirect == ("default", ("http://backend/", "/"), ("~^/(.*)$", "/mapped/$1"))
    assert b.proxy_redirect == () and b.add_header == (("X-Srv", "s", True),)
    assert c.proxy_redirect == ("default",)
    assert server.add_header == (("X-Srv", "s", True),)



def test_limits_and_realip_map(tmp_path: Path) -> None:
    """Catches: limit_req_zone / limit_req / limit_conn / realip reported as unsupported, or an
    http-level realip lost (the contract has it per server: copied into each), or several
    limit_req lines of a level not all kept (nginx checks them all)."""
    config = load(
        tmp_path,
        """events {}
http {
    limit_req_zone $binary_remote_addr zone=one:1m rate=30r/m;
    limit_conn_zone $binary_remote_addr zone=addr:1m;
    set_real_ip_from 10.0.0.0/8;
    real_ip_header X-Forwarded-For;
    limit_req_status 429;
    server {
        listen 127.0.0.1:8080;
        location / {
            limit_req zone=one burst=5 nodelay;
            limit_req zone=one burst=9 delay=2;
            limit_conn addr 3;
            limit_conn_dry_run on;
            proxy_pass http://127.0.0.1:9001;
        }
    }
}
""",
    )
    server = config.http.servers[0]
    loc = server.locations[0]
    assert config.http.limit_req_zones["one"].rate_mrps == 500
    assert [(r.burst, r.delay) for r in loc.limit_req] == [(5, None), (9, 2)]
    assert [(c.zone, c.number) for c in loc.limit_conn] == [("addr", 3)]
    assert (loc.limit_req_status, loc.limit_conn_dry_run) == (429, True)
    assert server.realip is not None
    assert (server.realip.trusted, server.realip.header) == (("10.0.0.0/8",), "X-Forwarded-For")


def test_round_trip_upstream_state(tmp_path: Path) -> None:
    """Issue 19: NGINX Plus's ``state`` maps to a TOML state file next to Plus's (whose
    ``server ...;`` syntax prefork-lb does not read). Catches the directive dropped or Plus's
    file read as TOML."""
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "b.conf").write_text("server 127.0.0.1:9 weight=2;\n")
    config = load(
        tmp_path,
        """
        http {
            upstream b { zone b 64k; state st/b.conf; server 127.0.0.1:8; }
            server { listen 127.0.0.1:8081; location / { proxy_pass http://b; } }
        }
        """,
    )
    up = config.http.upstreams["b"]
    assert up.state_path == str(tmp_path / "st" / "b.conf.toml")
    assert [s.address.port for s in up.servers] == [8]
    assert any("b.conf.toml" in n for n in config.notes)


def test_round_trip_http2(tmp_path: Path) -> None:
    """Issue 20: nginx's HTTP/2 directives (1.22's listen flag, 1.25's ``http2 on``, the
    limits) reach the model. Catches: a flag or key dropped or mis-keyed."""
    config = load(
        tmp_path,
        """
        http {
            http2_max_concurrent_streams 64;
            large_client_header_buffers 2 16k;
            http2_chunk_size 16k;
            http2_recv_buffer_size 128k;
            server {
                listen 127.0.0.1:8080 http2;
                http2_idle_timeout 30s;
                location / { return 200 a; }
            }
            server {
                listen 127.0.0.1:8081;
                http2 on;
                http2_max_field_size 4k;
                location / { return 200 b; }
            }
        }
        """,
    )
    a, b = config.http.servers
    assert a.listen[0].http2 and not a.http2 and b.http2 and not b.listen[0].http2
    assert (a.http2_settings.max_concurrent_streams, a.http2_settings.idle_timeout_s) == (64, 30.0)
    assert (a.http2_settings.max_field_size_bytes, a.http2_settings.max_header_size_bytes) == (16384, 32768)
    assert (a.http2_settings.chunk_size_bytes, a.http2_settings.recv_buffer_size_bytes) == (16384, 131072)
    assert b.http2_settings.max_field_size_bytes == 4096
