"""Active health checks: config (matches, health_check tables) and match evaluation (issue 17).

Catches: a ``health_check`` key refused as unknown (before issue 17 every one was), bad
input accepted silently (unknown match, bad regex, fails = 0, interval below 100 ms, a UDP
check that sends without expecting), errors that do not name file and key, and match rules
evaluated wrongly (status ranges and negation, header operators, body regex).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config
from prefork_lb.health.match import BadResponse, http_verdict, parse_head, stream_verdict
from prefork_lb.health.model import HttpMatch, StreamMatch

HTTP = """
[http.matches.healthy]
status = "200-399"
header = ['Content-Type ~ "json"', "X-Ready", "! X-Down", "X-Mode = live"]
body = '~ "\\"status\\": *\\"ok\\""'
[http.upstreams.backend]
servers = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }]
[[http.servers]]
listen = ["127.0.0.1:8080"]
[[http.servers.locations]]
match = "/"
proxy_pass = "http://backend"
proxy_set_header = { Host = "probe.example", X-Probe = "1", X-Real-IP = "$remote_addr" }
HC
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "lb.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path))


def http(hc: str) -> str:
    return HTTP.replace("HC", hc)


def test_a_location_check_takes_the_match_and_the_location_proxy_settings(tmp_path: Path) -> None:
    hc = (
        'health_check = { interval = "2s", fails = 2, passes = 3, uri = "/healthz", '
        'match = "healthy", mandatory = true, timeout = "1s" }'
    )
    c = load(tmp_path, http(hc))
    (check,) = c.health_checks()
    assert (check.upstream, check.interval_s, check.fails, check.passes, check.mandatory) == (
        "backend",
        2.0,
        2,
        3,
        True,
    )
    assert check.http_match is not None and check.http_match.name == "healthy"
    assert check.host == "probe.example"  # a literal proxy_set_header Host wins
    assert b"X-Probe: 1" in check.request and b"X-Real-IP" not in check.request  # variables: not sent
    assert check.request.startswith(b"GET /healthz HTTP/1.0\r\n")
    assert (check.connect_timeout_s, check.read_timeout_s) == (1.0, 1.0)
    assert c.http.upstreams["backend"].checked


def test_an_upstream_table_check_and_a_group_nobody_checks(tmp_path: Path) -> None:
    text = (
        http("")
        + """
[http.upstreams.other]
servers = [{ address = "127.0.0.1:9003" }]
[http.upstreams.other.health_check]
interval = "1s"
"""
    )
    c = load(tmp_path, text)
    (check,) = c.health_checks()
    assert (check.upstream, check.host, check.interval_s) == ("other", "other", 1.0)
    assert c.http.upstreams["other"].checked and not c.http.upstreams["backend"].checked


def test_stream_checks_tcp_and_udp(tmp_path: Path) -> None:
    text = r"""
[stream.matches.redis]
send = "PING\r\n"
expect = "~ \"\\+PONG\""
[stream.upstreams.redis]
servers = [{ address = "127.0.0.1:6379" }]
[stream.upstreams.dns]
servers = [{ address = "127.0.0.1:5353" }]
[stream.upstreams.dns.health_check]
udp = true
[[stream.servers]]
listen = ["127.0.0.1:6380"]
proxy_pass = "redis"
health_check = { interval = "2s", fails = 1, passes = 1, match = "redis" }
health_check_timeout = "1s"
"""
    c = load(tmp_path, text)
    dns, redis = sorted(c.health_checks(), key=lambda h: h.upstream)
    assert dns.udp and dns.stream_match is None
    assert redis.stream_match is not None and redis.stream_match.send == b"PING\r\n"
    assert redis.connect_timeout_s == 1.0
    assert stream_verdict(redis.stream_match, b"+PONG\r\n") == ""
    assert stream_verdict(redis.stream_match, b"-ERR\r\n") != ""


@pytest.mark.parametrize(
    ("hc", "key", "message"),
    [
        ('health_check = { match = "helthy" }', "locations[0].health_check.match", 'unknown match "helthy"'),
        ("health_check = { fails = 0 }", "locations[0].health_check.fails", "positive integer"),
        ('health_check = { interval = "50ms" }', "locations[0].health_check.interval", "at least 100ms"),
        ('health_check = { urii = "/x" }', "locations[0].health_check.urii", "unknown key"),
        ('health_check = { uri = "x" }', "locations[0].health_check.uri", 'must start with "/"'),
    ],
)
def test_bad_checks_are_config_errors_naming_file_and_key(
    tmp_path: Path, hc: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, http(hc))
    assert err.value.file.endswith("lb.toml")
    assert err.value.key_path.endswith(key), err.value.key_path
    assert message in err.value.message


def test_bad_matches_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.matches\.healthy\.body: invalid regex"):
        load(tmp_path, HTTP.replace('\\"status\\": *\\"ok\\"', "(").replace("HC", ""))
    with pytest.raises(ConfigError, match=r"http\.matches\.healthy\.header\[0\]: .*invalid regex"):
        load(tmp_path, HTTP.replace('Content-Type ~ "json"', 'Content-Type ~ "("').replace("HC", ""))
    with pytest.raises(ConfigError, match=r"http\.matches\.healthy\.status"):
        load(tmp_path, HTTP.replace("200-399", "200-abc").replace("HC", ""))
    udp = r"""
[stream.matches.dns]
send = "x"
[stream.upstreams.dns]
servers = [{ address = "127.0.0.1:5353" }]
[stream.upstreams.dns.health_check]
udp = true
match = "dns"
"""
    with pytest.raises(
        ConfigError, match=r"stream\.upstreams\.dns\.health_check\.match: a UDP check needs \"expect\""
    ):
        load(tmp_path, udp)


def test_a_check_without_proxy_pass_is_refused(tmp_path: Path) -> None:
    text = HTTP.replace('proxy_pass = "http://backend"', 'return = "200 ok"').replace(
        "HC", "health_check = {}"
    )
    with pytest.raises(ConfigError, match='health_check: needs "proxy_pass"'):
        load(tmp_path, text)


# ---- match evaluation (sans-IO) ----


def test_http_verdicts() -> None:
    from prefork_lb.config.load_health import _header, _regex_test, _status

    m = HttpMatch(
        "m",
        _status("200-299 304"),
        (
            _header('Content-Type ~ "json"'),
            _header("X-Ready"),
            _header("! X-Down"),
            _header("X-Mode != test"),
        ),
        _regex_test('~ "ok"', "body"),
    )
    good = [("content-type", "application/json"), ("x-ready", "1"), ("x-mode", "live")]
    assert http_verdict(m, 200, good, b'{"status": "ok"}') == ""
    assert http_verdict(m, 304, good, b"ok") == ""
    assert http_verdict(m, 500, good, b"ok") == "status 500"
    assert "content-type" in http_verdict(m, 200, [("content-type", "text/html"), *good[1:]], b"ok")
    assert "x-ready" in http_verdict(m, 200, [good[0], good[2]], b"ok")
    assert "x-down" in http_verdict(m, 200, [*good, ("x-down", "1")], b"ok")
    assert "x-mode" in http_verdict(m, 200, [*good[:2], ("x-mode", "test")], b"ok")
    assert http_verdict(m, 200, good, b"nope") == "body does not match"
    negated = HttpMatch("n", _status("! 500"))
    assert http_verdict(negated, 503, [], b"") == "" and http_verdict(negated, 500, [], b"") != ""
    assert http_verdict(None, 302, [], b"") == "" and http_verdict(None, 404, [], b"") == "status 404"


def test_heads_and_garbage() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: a") == (
        200,
        [("x-a", "1"), ("content-type", "a")],
    )
    for bad in (b"garbage", b"HTTP/1.1 2000 OK", b"SSH-2.0-x", b"HTTP/1.1 200 OK\r\nno colon"):
        with pytest.raises(BadResponse):
            parse_head(bad)


def test_stream_literal_expect() -> None:
    m = StreamMatch("s", b"", (False, b"+OK", None))
    assert stream_verdict(m, b"+OK ready") == "" and stream_verdict(m, b"-ERR") != ""
    r = StreamMatch("r", b"", (True, b"", re.compile(b"PONG")))
    assert stream_verdict(r, b"+PONG") == ""
