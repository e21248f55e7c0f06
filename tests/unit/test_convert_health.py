"""``prefork-lb convert`` of NGINX Plus ``health_check`` and ``match`` (prefork_lb/convert/map_health.py).

Round trips: nginx text -> the converter -> the loader -> the Config model the prober runs
(``HealthCheck``, ``HttpMatch``, ``StreamMatch``), so a value the loader reads differently from
nginx (a quoted header value, a regex, a literal with edge spaces, CRLF in ``send``) fails here;
and the report for what has no equivalent, with its ``file:line``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config
from prefork_lb.convert import convert_file


def load(tmp_path: Path, text: str) -> tuple[Config, list[str]]:
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return load_config(str(conf)), [str(n) for n in convert_file(str(conf)).notes]


HTTP = """events {{}}
http {{
    upstream backend {{ zone backend 64k; server 127.0.0.1:9001; server 127.0.0.1:9002; }}
{matches}
    server {{
        listen 127.0.0.1:8080;
        location / {{
            proxy_pass http://backend;
            proxy_connect_timeout 3s;
            {check}
        }}
    }}
}}
"""


def test_http_check_parameters_reach_the_prober(tmp_path: Path) -> None:
    """Catches: a health_check parameter mapped to a wrong key or unit (nginx's bare
    ``jitter=1`` is seconds), flags lost, or the location's settings (proxy_connect_timeout,
    the group) not applied to the converted check."""
    cfg, notes = load(
        tmp_path,
        HTTP.format(
            matches="",
            check="health_check interval=2s jitter=1 fails=3 passes=2 uri=/healthz?x=1 port=9100 "
            "mandatory persistent keepalive_time=60s;",
        ),
    )
    assert notes == []
    (hc,) = cfg.health_checks()
    assert (hc.context, hc.upstream) == ("http", "backend")
    assert (hc.interval_s, hc.jitter_s, hc.fails, hc.passes) == (2.0, 1.0, 3, 2)
    assert (hc.uri, hc.port, hc.mandatory, hc.persistent) == ("/healthz?x=1", 9100, True, True)
    assert hc.connect_timeout_s == 3.0 and hc.http_match is None
    assert hc.request.startswith(b"GET /healthz?x=1 HTTP/1.0\r\n")
    assert cfg.http.upstreams["backend"].checked


def test_a_bare_check_takes_nginx_defaults(tmp_path: Path) -> None:
    """Catches: defaults written by the converter that differ from nginx's (5s, 0, 1, 1, /)."""
    cfg, notes = load(tmp_path, HTTP.format(matches="", check="health_check;"))
    (hc,) = cfg.health_checks()
    assert notes == []
    assert (hc.interval_s, hc.jitter_s, hc.fails, hc.passes, hc.uri, hc.port) == (5.0, 0.0, 1, 1, "/", 0)
    assert not hc.mandatory and not hc.persistent


MATCH = r"""
    match healthy {
        status 200-399 418;
        header Content-Type ~ "json";
        header X-Ready;
        header ! X-Bad;
        header X-Mode = "a b";
        header X-Not != off;
        header Server !~ "(?<name>apache)";
        body ~ "\"status\": *\"ok\"";
    }
"""


def test_match_conditions_reach_the_prober(tmp_path: Path) -> None:
    """Catches: a header value with a space cut at the space, the quotes of a value kept as part
    of it, a regex left PCRE-only (``(?<name>``), a test dropped or its operator changed, a
    body regex with escaped quotes garbled."""
    cfg, notes = load(tmp_path, HTTP.format(matches=MATCH, check="health_check match=healthy;"))
    assert notes == []
    (hc,) = cfg.health_checks()
    m = hc.http_match
    assert m is not None and m.name == "healthy"
    assert m.status is not None and (m.status.negate, m.status.ranges) == (False, ((200, 399), (418, 418)))
    tests = [(h.name, h.op, h.value) for h in m.headers]
    assert tests == [
        ("content-type", "~", "json"),
        ("x-ready", "present", ""),
        ("x-bad", "absent", ""),
        ("x-mode", "=", "a b"),
        ("x-not", "!=", "off"),
        ("server", "!~", "(?P<name>apache)"),
    ]
    assert m.body is not None
    negated, regex = m.body
    assert not negated and regex.search(b'{"status":  "ok"}') and not regex.search(b'{"status": "bad"}')


def test_negated_status_and_body(tmp_path: Path) -> None:
    """Catches: ``status ! 500`` or ``body !~`` losing its negation."""
    matches = '    match m { status ! 500 502-504; body !~ "maintenance"; }'
    cfg, _ = load(tmp_path, HTTP.format(matches=matches, check="health_check match=m;"))
    m = cfg.health_checks()[0].http_match
    assert m is not None and m.status is not None and m.body is not None
    assert m.status.negate and m.status.ranges == ((500, 500), (502, 504))
    assert m.body[0] is True and m.body[1].search(b"in maintenance")


def test_what_has_no_equivalent_is_reported_with_its_line(tmp_path: Path) -> None:
    """Catches: a gRPC check converted into HTTP probes (every peer would go unhealthy), a second
    check, a check without proxy_pass (the loader would refuse the whole config), ``require``,
    a second status test or an unknown parameter dropped silently."""
    text = """events {}
http {
    upstream backend { server 127.0.0.1:9001; }
    match m {
        status 200;
        status ! 500;
        require $upstream_http_x_ok;
    }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://backend; health_check match=m; health_check uri=/b; }
        location /g { proxy_pass http://backend; health_check grpc_service=x type=grpc; }
        location /r { return 200; health_check; }
        location /u { proxy_pass http://backend; health_check udp; }
    }
}
"""
    cfg, notes = load(tmp_path, text)
    assert notes == [
        'nginx.conf:6: "status ! 500" is a second status test; prefork-lb takes one per match '
        "(combine the codes); skipped",
        'nginx.conf:7: "require $upstream_http_x_ok" has no prefork-lb equivalent (no variables in match '
        "blocks); the match is used without it, so peers pass more readily; skipped",
        'nginx.conf:11: "health_check uri=/b" is a second check of this block; prefork-lb takes one per '
        "location (write it in another location with the same proxy_pass); skipped",
        'nginx.conf:12: "health_check grpc_service=x type=grpc" is not supported: prefork-lb\'s probes are '
        "HTTP/1.0 GET requests, which a gRPC server fails (passive checks still apply: max_fails, "
        "fail_timeout); skipped",
        'nginx.conf:13: "health_check" needs a proxy_pass in its location (nginx refuses it without one '
        "too); skipped",
        'nginx.conf:14: "health_check udp" has the parameter "udp", which nginx does not take here either; '
        "skipped",
    ]
    (hc,) = cfg.health_checks()
    assert hc.http_match is not None and hc.http_match.status is not None
    assert hc.http_match.status.ranges == ((200, 200),) and hc.uri == "/"


def test_a_bad_value_is_a_config_error_at_the_nginx_line(tmp_path: Path) -> None:
    """Catches: a converted check whose error names the TOML key only (the operator edits the
    nginx.conf), or an unknown match accepted."""
    with pytest.raises(ConfigError, match=r"nginx\.conf:10: .*health_check.*interval"):
        load(tmp_path, HTTP.format(matches="", check="health_check interval=10ms;"))
    with pytest.raises(ConfigError, match=r'nginx\.conf:10: .*unknown match "nope"'):
        load(tmp_path, HTTP.format(matches="", check="health_check match=nope;"))


STREAM = r"""events {}
stream {
    upstream redis { server 127.0.0.1:6379; }
    upstream dns { server 127.0.0.1:5353; }
    health_check_timeout 3s;
    match redis { send "PING\r\n"; expect ~ "^\+PONG"; }
    match lit { send "hi"; expect " ok "; }
    server { listen 127.0.0.1:6380; proxy_pass redis; health_check interval=1s fails=2 match=redis; }
    server {
        listen 127.0.0.1:5300 udp;
        proxy_pass dns;
        health_check udp match=lit mandatory;
        health_check_timeout 1s;
    }
    server { listen 127.0.0.1:6381; proxy_pass redis; }
}
"""


def test_stream_checks_and_matches_reach_the_prober(tmp_path: Path) -> None:
    """Catches: ``\\r\\n`` in ``send`` sent as four characters, a literal ``expect`` losing its
    edge spaces, ``udp`` lost, the stream-level health_check_timeout not applied (or applied
    over a server's own)."""
    cfg, notes = load(tmp_path, STREAM)
    assert notes == []
    tcp, udp = cfg.health_checks()
    assert (tcp.upstream, tcp.interval_s, tcp.fails, tcp.udp) == ("redis", 1.0, 2, False)
    assert tcp.connect_timeout_s == tcp.read_timeout_s == 3.0
    assert tcp.stream_match is not None and tcp.stream_match.send == b"PING\r\n"
    assert tcp.stream_match.expect is not None
    is_regex, _, regex = tcp.stream_match.expect
    assert is_regex and regex is not None and regex.search(b"+PONG\r\n")
    assert (udp.upstream, udp.udp, udp.mandatory, udp.connect_timeout_s) == ("dns", True, True, 1.0)
    assert udp.stream_match is not None and udp.stream_match.expect == (False, b" ok ", None)
    assert len(cfg.stream.servers) == 3


def test_stream_reports(tmp_path: Path) -> None:
    """Catches: an http-only parameter or a second check on a stream server dropped silently,
    a stream-level timeout with no check to apply to disappearing without a note."""
    text = """events {}
stream {
    upstream u { server 127.0.0.1:6379; }
    health_check_timeout 3s;
    match m { expect "x"; status 200; }
    server { listen 127.0.0.1:6380; proxy_pass u; health_check uri=/x; }
}
"""
    cfg, notes = load(tmp_path, text)
    assert notes == [
        'nginx.conf:5: "status 200" is not a stream match test prefork-lb has (send STRING, expect STRING '
        "| ~ REGEX); skipped",
        'nginx.conf:6: "health_check uri=/x" has the parameter "uri=/x", which nginx does not take here '
        "either; skipped",
        'nginx.conf:4: "health_check_timeout": no server here it applies to; not converted',
    ]
    assert cfg.health_checks() == []
