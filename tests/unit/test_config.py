"""The TOML config loader: the demo config, exact error messages, inheritance, includes, units, paths."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Address, Config, LocationConfig

DEMO = Path(__file__).resolve().parents[2] / "conf" / "prefork-lb.toml"
BAD_TIMEOUT = 'proxy_read_timeout = "5x"'
RE_TIMEOUT_5X = 'invalid duration \'5x\' (use e.g. "500ms", "5s", "1m", "1h")'


def main_file(tmp_path: Path) -> Path:
    return tmp_path / "lb.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def make(
    *,
    top: str = "",
    http: str = "",
    upstream: str = "",
    server2: str = "",
    server: str = "",
    location: str = "",
    more: str = "",
) -> str:
    """A small valid config; each argument adds lines to one table (``more`` adds tables at the end)."""
    return "\n".join(
        [
            top,
            "[http]",
            http,
            "[http.upstreams.backend]",
            upstream,
            "servers = [",
            '  { address = "127.0.0.1:9001" },',
            f'  {{ address = "127.0.0.1:9002"{server2} }},',
            "]",
            "[[http.servers]]",
            'listen = ["127.0.0.1:8080"]',
            server,
            "[[http.servers.locations]]",
            'match = "/"',
            'proxy_pass = "http://backend"',
            location,
            textwrap.dedent(more),
        ]
    )


def load(tmp_path: Path, text: str, prefix: str | None = None) -> Config:
    return load_config(str(write(tmp_path / "lb.toml", text)), prefix)


def error(tmp_path: Path, text: str) -> str:
    main = write(tmp_path / "lb.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(str(main))
    return str(info.value)


def location(config: Config, server: int = 0, index: int = 0) -> LocationConfig:
    return config.http.servers[server].locations[index]


# ---- the demo config -------------------------------------------------------------------------------


def test_demo_config_loads() -> None:
    config = load_config(str(DEMO))
    conf_dir = str(DEMO.parent)
    assert config.path == str(DEMO)
    assert config.prefix == conf_dir
    assert config.files == (str(DEMO),)
    assert config.workers == 2
    assert config.pid_path == os.path.join(conf_dir, "prefork-lb.pid")
    assert config.error_log_path == os.path.join(conf_dir, "error.log")
    assert config.error_log_level == "notice"

    backend = config.http.upstreams["backend"]
    assert not backend.implicit
    assert backend.keepalive == 64
    assert [s.address for s in backend.servers] == [
        Address("inet", "127.0.0.1", 9001),
        Address("inet", "127.0.0.1", 9002),
    ]
    first, second = backend.servers
    assert (first.weight, first.max_fails, first.fail_timeout_s) == (1, 3, 30.0)
    assert (second.weight, second.max_fails, second.fail_timeout_s) == (1, 1, 10.0)

    server, status = config.http.servers  # the proxy, then the status API/dashboard server
    assert [loc.status for loc in status.locations] == ["api", "metrics", "dashboard"]
    assert [lc.address.text for lc in server.listen] == ["127.0.0.1:8080"]
    assert server.server_names == ("localhost",)
    root, health = server.locations
    assert root.proxy_pass is not None and root.proxy_pass.upstream == "backend"
    assert root.proxy_pass.uri is None
    assert root.proxy_connect_timeout_s == 5.0
    assert root.proxy_read_timeout_s == 60.0
    assert root.proxy_send_timeout_s == 60.0  # default
    assert dict(root.proxy_set_header) == {
        "Host": "$host",
        "X-Real-IP": "$remote_addr",
        "X-Forwarded-For": "$proxy_add_x_forwarded_for",
    }
    assert (health.modifier, health.pattern) == ("=", "/healthz")
    assert health.return_ is not None and (health.return_.status, health.return_.text) == (200, "ok")
    assert health.proxy_set_header == ()  # set only in the other location
    # access_log from [http], log_format from the server, both inherited by every location
    for loc in (root, health):
        (log,) = loc.access_logs
        assert log.path == os.path.join(conf_dir, "access.log")
        assert log.format_name == "upstreamlog"
        assert log.format.startswith("$remote_addr $upstream_addr")


def test_demo_config_with_prefix(tmp_path: Path) -> None:
    config = load_config(str(DEMO), str(tmp_path))
    assert config.prefix == str(tmp_path)
    assert config.pid_path == str(tmp_path / "prefork-lb.pid")
    assert config.error_log_path == str(tmp_path / "error.log")
    assert location(config).access_logs[0].path == str(tmp_path / "access.log")


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, make())
    assert config.workers == 1
    assert config.daemon is False
    assert config.worker_connections == 1024
    loc = location(config)
    assert loc.proxy_read_timeout_s == 60.0
    assert loc.proxy_next_upstream == frozenset({"error", "timeout"})
    (log,) = loc.access_logs
    assert (log.path, log.format_name) == (str(tmp_path / "access.log"), "combined")


# ---- error messages: "<file>: <key path>: <message>" ----------------------------------------------


@pytest.mark.parametrize("weight", ["0", "-1", '"2"', "true"])
def test_upstream_weight_must_be_positive_integer(tmp_path: Path, weight: str) -> None:
    msg = error(tmp_path, make(server2=f", weight = {weight}"))
    key_path = "http.upstreams.backend.servers[1].weight"
    assert msg == f"{main_file(tmp_path)}: {key_path}: must be a positive integer"


def test_error_is_a_config_error_with_parts(tmp_path: Path) -> None:
    main = write(tmp_path / "lb.toml", make(server2=", weight = 0"))
    with pytest.raises(ConfigError) as info:
        load_config(str(main))
    assert info.value.file == str(main)
    assert info.value.key_path == "http.upstreams.backend.servers[1].weight"
    assert info.value.message == "must be a positive integer"


def test_bad_duration_in_second_location(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "/b"
    proxy_pass = "http://backend"
    proxy_read_timeout = "5x"
    """
    msg = error(tmp_path, make(more=more))
    assert msg == f"{tmp_path / 'lb.toml'}: http.servers[0].locations[1].proxy_read_timeout: {RE_TIMEOUT_5X}"


def test_unknown_top_level_key_with_hint(tmp_path: Path) -> None:
    msg = error(tmp_path, make(top="wokers = 2"))
    assert msg == f'{tmp_path / "lb.toml"}: wokers: unknown key (did you mean "workers"?)'


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"server2": ", wieght = 2"},
            'http.upstreams.backend.servers[1].wieght: unknown key (did you mean "weight"?)',
        ),
        (
            {"location": 'proxy_read_timout = "1s"'},
            "http.servers[0].locations[0].proxy_read_timout: "
            'unknown key (did you mean "proxy_read_timeout"?)',
        ),
        ({"http": 'acess_log = "x.log"'}, 'http.acess_log: unknown key (did you mean "access_log"?)'),
        ({"http": "frobnicate = 1"}, "http.frobnicate: unknown key"),
        (
            {"server": 'server_nam = "x"'},
            'http.servers[0].server_nam: unknown key (did you mean "server_name"?)',
        ),
        (
            {"upstream": "keepalve = 2"},
            'http.upstreams.backend.keepalve: unknown key (did you mean "keepalive"?)',
        ),
    ],
)
def test_unknown_keys(tmp_path: Path, kwargs: dict[str, str], expected: str) -> None:
    assert error(tmp_path, make(**kwargs)) == f"{tmp_path / 'lb.toml'}: {expected}"


def test_missing_listen(tmp_path: Path) -> None:
    text = make().replace('listen = ["127.0.0.1:8080"]', "")
    assert error(tmp_path, text) == f"{tmp_path / 'lb.toml'}: http.servers[0].listen: is required"


@pytest.mark.parametrize("servers", ["", "servers = []"])
def test_missing_upstream_servers(tmp_path: Path, servers: str) -> None:
    text = f"""
    [http.upstreams.backend]
    keepalive = 2
    {servers}

    [[http.servers]]
    listen = ["127.0.0.1:8080"]
      [[http.servers.locations]]
      match = "/"
      return = 204
    """
    assert error(tmp_path, text) == (
        f"{tmp_path / 'lb.toml'}: http.upstreams.backend.servers: must list at least one server"
        ' (or name a "state" file for the write API)'
    )


def test_missing_locations(tmp_path: Path) -> None:
    text = """
    [[http.servers]]
    listen = ["127.0.0.1:8080"]
    """
    assert error(tmp_path, text) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations: "
        "must contain at least one [[http.servers.locations]] entry"
    )


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1:99999", '"127.0.0.1:99999": port must be between 1 and 65535'),
        ("127.0.0.1:0", '"127.0.0.1:0": port must be between 1 and 65535'),
        ("[::1", '"[::1": missing "]" in IPv6 address'),
        ("[::1]", '"[::1]": missing ":port"'),
        ("[::zz]:80", '"[::zz]:80": invalid IPv6 address'),
        ("localhost:80", '"localhost:80": listen needs an IP address, not a hostname'),
        (
            "127.0.0.1:80 bogus_flag",
            'unknown listen parameter "bogus_flag" (default_server, reuseport, backlog=N, ssl, http2; '
            "stream: udp, so_keepalive=on)",
        ),
        ("127.0.0.1:80 backlog=0", '"backlog=0": backlog must be a positive integer'),
        ("unix:relative.sock", '"unix:relative.sock": a unix socket path must be absolute'),
    ],
)
def test_invalid_listen(tmp_path: Path, listen: str, message: str) -> None:
    text = make().replace('listen = ["127.0.0.1:8080"]', f'listen = ["127.0.0.1:8080", "{listen}"]')
    assert error(tmp_path, text) == f"{tmp_path / 'lb.toml'}: http.servers[0].listen[1]: {message}"


def test_valid_listen_forms(tmp_path: Path) -> None:
    listen = '["8080", "*:8081", "[::1]:8082", "127.0.0.1:8083 default_server reuseport backlog=128"]'
    config = load(tmp_path, make().replace('["127.0.0.1:8080"]', listen))
    lcs = config.http.servers[0].listen
    assert [lc.address.text for lc in lcs] == ["0.0.0.0:8080", "0.0.0.0:8081", "[::1]:8082", "127.0.0.1:8083"]
    assert (lcs[3].default_server, lcs[3].reuseport, lcs[3].backlog) == (True, True, 128)
    assert (lcs[0].default_server, lcs[0].reuseport, lcs[0].backlog) == (False, False, 511)


def test_duplicate_default_server(tmp_path: Path) -> None:
    more = """
    [[http.servers]]
    listen = ["127.0.0.1:8081", "127.0.0.1:8080 default_server"]
      [[http.servers.locations]]
      match = "/"
      return = 204
    """
    text = make(more=more).replace('"127.0.0.1:8080"', '"127.0.0.1:8080 default_server"', 1)
    assert error(tmp_path, text) == (
        f"{tmp_path / 'lb.toml'}: http.servers[1].listen[1]: "
        "a duplicate default server for 127.0.0.1:8080 (already http.servers[0])"
    )


def test_default_server_on_different_addresses_is_fine(tmp_path: Path) -> None:
    more = """
    [[http.servers]]
    listen = ["127.0.0.1:8081 default_server"]
      [[http.servers.locations]]
      match = "/"
      return = 204
    """
    text = make(more=more).replace('"127.0.0.1:8080"', '"127.0.0.1:8080 default_server"', 1)
    config = load(tmp_path, text)
    assert [s.listen[0].default_server for s in config.http.servers] == [True, True]


@pytest.mark.parametrize(("first", "second"), [("/x", "/x"), ("/x", "^~ /x"), ("= /x", "= /x")])
def test_duplicate_location(tmp_path: Path, first: str, second: str) -> None:
    more = f"""
    [[http.servers.locations]]
    match = "{first}"
    return = 204
    [[http.servers.locations]]
    match = "{second}"
    return = 204
    """
    assert error(tmp_path, make(more=more)) == (
        f'{tmp_path / "lb.toml"}: http.servers[0].locations[2].match: duplicate location "/x"'
    )


def test_exact_and_prefix_location_with_same_path_are_distinct(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "/x"
    return = 204
    [[http.servers.locations]]
    match = "= /x"
    return = 204
    """
    config = load(tmp_path, make(more=more))
    assert [loc.modifier for loc in config.http.servers[0].locations] == ["", "", "="]


def test_location_without_proxy_pass_or_return(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "/x"
    """
    assert error(tmp_path, make(more=more)) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[1].match: "
        'location needs "proxy_pass", "return", "rewrite_rules", "api", "metrics" or "dashboard"'
    )


def test_location_with_proxy_pass_and_return(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "/x"
    proxy_pass = "http://backend"
    return = 204
    """
    assert error(tmp_path, make(more=more)) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[1].return: "
        'cannot be combined with "proxy_pass" in one location'
    )


def test_invalid_regex_location(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "~ ("
    return = 204
    """
    msg = error(tmp_path, make(more=more))
    assert msg.startswith(f"{tmp_path / 'lb.toml'}: http.servers[0].locations[1].match: invalid regex: ")


def test_prefix_location_must_start_with_slash(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "x"
    return = 204
    """
    assert error(tmp_path, make(more=more)) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[1].match: "
        'a prefix location must start with "/" (or use "~ regex")'
    )


def test_regex_locations_compile(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "~* \\\\.PNG$"
    return = 204
    """
    loc = location(load(tmp_path, make(more=more)), index=1)
    assert loc.modifier == "~*"
    assert loc.regex is not None and loc.regex.search("/a/b.png")


def test_proxy_pass_scheme(tmp_path: Path) -> None:
    text = make().replace('"http://backend"', '"ftp://x"')
    assert error(tmp_path, text) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[0].proxy_pass: "
        'must start with "http://" or "https://"'
    )


def test_proxy_pass_https(tmp_path: Path) -> None:
    """Catches: https upstreams rejected (old code), or the implicit port not 443."""
    loc = location(load(tmp_path, make().replace('"http://backend"', '"https://backend"')))
    assert loc.proxy_pass is not None and loc.proxy_pass.ssl
    assert not loc.proxy_ssl_verify and not loc.proxy_ssl_server_name  # nginx's defaults
    config = load(tmp_path, make().replace('"http://backend"', '"https://127.0.0.1"'))
    assert config.http.upstreams["127.0.0.1"].servers[0].address.port == 443


def test_proxy_ssl_verify_needs_trusted_certificate(tmp_path: Path) -> None:
    """Catches: verification configured with nothing to verify against (nginx: config error)."""
    text = make(location="proxy_ssl_verify = true").replace('"http://backend"', '"https://backend"')
    assert error(tmp_path, text) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[0].proxy_ssl_verify: "
        'needs "proxy_ssl_trusted_certificate" (the CA certificates to verify the upstream with)'
    )


def test_proxy_ssl_trusted_certificate_unreadable(tmp_path: Path) -> None:
    """Catches: a missing or invalid CA file found only at the first request."""
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    for name, reason in (("missing.crt", "No such file or directory"), ("bad.crt", "")):
        text = make(location=f'proxy_ssl_verify = true\nproxy_ssl_trusted_certificate = "{name}"').replace(
            '"http://backend"', '"https://backend"'
        )
        message = error(tmp_path, text)
        assert message.startswith(
            f"{tmp_path / 'lb.toml'}: http.servers[0].locations[0].proxy_ssl_trusted_certificate: "
            f'cannot load "{tmp_path / name}"'
        ), message
        assert reason in message


STREAM_SSL = """
[stream.upstreams.b]
servers = [{{ address = "127.0.0.1:9001" }}]
[[stream.servers]]
listen = ["127.0.0.1:7000{udp}"]
proxy_pass = "b"
{extra}
"""


@pytest.mark.parametrize(
    ("udp", "extra", "message"),
    [
        ("", "proxy_ssl_verify = true", 'stream.servers[0].proxy_ssl_verify: needs "proxy_ssl = true"'),
        (
            "",
            "proxy_ssl = true\nproxy_ssl_verify = true",
            'stream.servers[0].proxy_ssl_verify: needs "proxy_ssl_trusted_certificate" '
            "(the CA certificates to verify the upstream with)",
        ),
        ("", 'proxy_ssl = true\nproxy_ssl_name = "$host"', "stream.servers[0].proxy_ssl_name: variables"),
        (" udp", "proxy_ssl = true", "stream.servers[0].proxy_ssl: is for TCP listeners (no DTLS)"),
    ],
)
def test_stream_proxy_ssl_errors(tmp_path: Path, udp: str, extra: str, message: str) -> None:
    """Catches: stream proxy_ssl_* keys silently ignored without proxy_ssl, verification
    with nothing to verify against, or TLS configured on a UDP server."""
    text = make() + STREAM_SSL.format(udp=udp, extra=extra)
    assert error(tmp_path, text).startswith(f"{tmp_path / 'lb.toml'}: {message}")


def test_stream_proxy_ssl_defaults(tmp_path: Path) -> None:
    """Catches: nginx's defaults (verify off, no SNI, the proxy_pass host as the name)."""
    config = load(tmp_path, make() + STREAM_SSL.format(udp="", extra="proxy_ssl = true"))
    ssl = config.stream.servers[0].upstream_ssl
    assert ssl is not None
    assert (ssl.verify, ssl.server_name, ssl.name, ssl.session_reuse) == (False, False, "b", True)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('proxy_ssl_protocols = ["TLSv1.4"]', 'proxy_ssl_protocols: unknown protocol "TLSv1.4"'),
        ('proxy_ssl_ciphers = "NOPE"', 'proxy_ssl_ciphers: no cipher matches "NOPE"'),
    ],
)
def test_proxy_ssl_bad_values(tmp_path: Path, line: str, message: str) -> None:
    assert message in error(tmp_path, make(location=line))


def test_proxy_pass_to_undefined_name(tmp_path: Path) -> None:
    text = make().replace('"http://backend"', '"http://no_such_group"')
    assert error(tmp_path, text) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[0].proxy_pass: "
        '"no_such_group" is neither an upstream name nor an address: "no_such_group:80": invalid host'
    )


def test_proxy_pass_uri_in_regex_location(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "~ ^/api"
    proxy_pass = "http://backend/v1/"
    """
    assert error(tmp_path, make(more=more)) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[1].proxy_pass: "
        "cannot have a URI part in a regex location (as in nginx)"
    )


def test_unknown_variable_in_location_proxy_set_header(tmp_path: Path) -> None:
    msg = error(tmp_path, make(location='proxy_set_header = { Host = "$host", X-Foo = "a $nosuch b" }'))
    assert msg == (
        f"{main_file(tmp_path)}: http.servers[0].locations[0].proxy_set_header: "
        'X-Foo: unknown variable "$nosuch"'
    )


@pytest.mark.parametrize(
    ("kwargs", "key_path"),
    [
        ({"http": 'proxy_set_header = { X-Foo = "$nosuch" }'}, "http.proxy_set_header"),
        ({"server": 'proxy_set_header = { X-Foo = "$nosuch" }'}, "http.servers[0].proxy_set_header"),
    ],
)
def test_unknown_variable_in_inherited_proxy_set_header(
    tmp_path: Path, kwargs: dict[str, str], key_path: str
) -> None:
    msg = error(tmp_path, make(**kwargs))
    assert msg == f'{tmp_path / "lb.toml"}: {key_path}: X-Foo: unknown variable "$nosuch"'


def test_invalid_header_name(tmp_path: Path) -> None:
    msg = error(tmp_path, make(location='proxy_set_header = { "Bad Name" = "x" }'))
    assert msg == (
        f"{main_file(tmp_path)}: http.servers[0].locations[0].proxy_set_header: "
        'invalid header name "Bad Name"'
    )


def test_unknown_variable_in_log_format(tmp_path: Path) -> None:
    text = make(top='[http.log_formats]\nmine = "$remote_addr $nosuch"')
    msg = error(tmp_path, text)
    assert msg == f'{main_file(tmp_path)}: http.log_formats.mine: unknown variable "$nosuch"'


@pytest.mark.parametrize(
    ("kwargs", "key_path"),
    [
        ({"http": 'log_format = "nope"'}, "http.log_format"),
        ({"server": 'log_format = "nope"'}, "http.servers[0].log_format"),
        ({"location": 'log_format = "nope"'}, "http.servers[0].locations[0].log_format"),
    ],
)
def test_unknown_log_format_name(tmp_path: Path, kwargs: dict[str, str], key_path: str) -> None:
    assert error(tmp_path, make(**kwargs)) == (
        f'{tmp_path / "lb.toml"}: {key_path}: unknown log format "nope" (define it in [http.log_formats])'
    )


@pytest.mark.parametrize("value", ['"301"', "301", '"302 "'])
def test_redirect_return_needs_url(tmp_path: Path, value: str) -> None:
    text = make().replace('proxy_pass = "http://backend"', f"return = {value}")
    code = value.strip('" ')
    assert error(tmp_path, text) == (
        f"{tmp_path / 'lb.toml'}: http.servers[0].locations[0].return: a {code} redirect needs a URL"
    )


def test_return_forms(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "/a"
    return = 204
    [[http.servers.locations]]
    match = "/b"
    return = "301 https://example.com$request_uri"
    [[http.servers.locations]]
    match = "/c"
    return = "200 hello world"
    """
    locs = load(tmp_path, make(more=more)).http.servers[0].locations[1:]
    got = [(loc.return_.status, loc.return_.text) for loc in locs if loc.return_]
    assert got == [(204, None), (301, "https://example.com$request_uri"), (200, "hello world")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"abc"', 'must be "CODE [TEXT|URL]", e.g. "301 https://example.com$request_uri"'),
        ("99", "status code must be between 100 and 999"),
        ('"200 $nosuch"', 'unknown variable "$nosuch"'),
    ],
)
def test_invalid_return(tmp_path: Path, value: str, message: str) -> None:
    text = make().replace('proxy_pass = "http://backend"', f"return = {value}")
    assert error(tmp_path, text) == f"{tmp_path / 'lb.toml'}: http.servers[0].locations[0].return: {message}"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    msg = error(tmp_path, make() + "\nx = [\n")
    assert msg.startswith(f"{tmp_path / 'lb.toml'}: invalid TOML: ")


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert str(info.value) == f"{missing}: cannot open {missing}"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"top": "workers = 0"}, 'workers: must be a positive integer or "auto"'),
        ({"top": "workers = true"}, 'workers: must be a positive integer or "auto"'),
        (
            {"top": 'error_log_level = "loud"'},
            "error_log_level: must be one of: "
            + ", ".join(("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")),
        ),
        ({"top": 'daemon = "yes"'}, "daemon: must be true or false"),
        (
            {"upstream": 'method = "fastest"'},
            "http.upstreams.backend.method: must be one of: "
            "round_robin, least_conn, ip_hash, hash, random, least_time",
        ),
        (
            {"server2": ", max_fails = -1"},
            "http.upstreams.backend.servers[1].max_fails: must be a non-negative integer",
        ),
        ({"server2": ", backup = 1"}, "http.upstreams.backend.servers[1].backup: must be true or false"),
        (
            {"location": "proxy_read_timeout = -5"},
            "http.servers[0].locations[0].proxy_read_timeout: must not be negative",
        ),
        (
            {"location": 'client_max_body_size = "1x"'},
            "http.servers[0].locations[0].client_max_body_size: "
            'invalid size \'1x\' (use e.g. "512", "16k", "1m", "1g")',
        ),
        (
            {"location": 'proxy_next_upstream = ["error", "http_999"]'},
            'http.servers[0].locations[0].proxy_next_upstream: unknown condition "http_999"; allowed: '
            + "error, http_403, http_404, http_429, http_500, http_502, http_503, http_504, "
            "invalid_header, non_idempotent, off, timeout",
        ),
    ],
)
def test_value_errors(tmp_path: Path, kwargs: dict[str, str], expected: str) -> None:
    assert error(tmp_path, make(**kwargs)) == f"{tmp_path / 'lb.toml'}: {expected}"


# ---- inheritance -----------------------------------------------------------------------------------


INHERIT_MORE = """
[[http.servers.locations]]
match = "/loc"
proxy_pass = "http://backend"
proxy_read_timeout = "30s"
proxy_set_header = { C = "3" }

[[http.servers]]
listen = ["127.0.0.1:8081"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
"""


def test_inheritance_http_server_location(tmp_path: Path) -> None:
    text = make(
        http='proxy_read_timeout = "10s"\nproxy_set_header = { A = "1", B = "$host" }',
        server='proxy_read_timeout = "20s"',
        more=INHERIT_MORE,
    )
    config = load(tmp_path, text)
    server0_root = location(config, 0, 0)
    server0_loc = location(config, 0, 1)
    server1_root = location(config, 1, 0)
    # http value inherited where nothing overrides it
    assert server1_root.proxy_read_timeout_s == 10.0
    # server overrides http
    assert server0_root.proxy_read_timeout_s == 20.0
    # location overrides both
    assert server0_loc.proxy_read_timeout_s == 30.0
    # proxy_set_header: inherited as a whole ...
    assert server0_root.proxy_set_header == (("A", "1"), ("B", "$host"))
    assert server1_root.proxy_set_header == (("A", "1"), ("B", "$host"))
    # ... and replaced as a whole, never merged (nginx semantics)
    assert server0_loc.proxy_set_header == (("C", "3"),)


def test_proxy_set_header_server_level_replaces_http(tmp_path: Path) -> None:
    text = make(http='proxy_set_header = { A = "1" }', server='proxy_set_header = { S = "2" }')
    assert location(load(tmp_path, text)).proxy_set_header == (("S", "2"),)


def test_empty_proxy_set_header_clears_inherited(tmp_path: Path) -> None:
    text = make(http='proxy_set_header = { A = "1" }', location="proxy_set_header = {}")
    assert location(load(tmp_path, text)).proxy_set_header == ()


def test_keepalive_timeout_inherited_by_server_config(tmp_path: Path) -> None:
    config = load(tmp_path, make(http='keepalive_timeout = "5s"', server="client_header_timeout = 7"))
    server = config.http.servers[0]
    assert server.keepalive_timeout_s == 5.0
    assert server.client_header_timeout_s == 7.0
    assert location(config).keepalive_timeout_s == 5.0


def test_access_log_inheritance(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "/quiet"
    return = 204
    access_log = "off"
    [[http.servers.locations]]
    match = "/abs"
    return = 204
    access_log = "/var/log/abs.log"
    log_format = "combined"
    """
    text = make(
        top='[http.log_formats]\nshort = "$remote_addr $status"',
        http='access_log = "logs/a.log"',
        server='log_format = "short"',
        more=more,
    )
    locs = load(tmp_path, text).http.servers[0].locations
    got = [(log.path, log.format_name) for log in locs[0].access_logs]
    assert got == [(str(tmp_path / "logs/a.log"), "short")]
    assert locs[1].access_logs == ()
    assert [(log.path, log.format_name) for log in locs[2].access_logs] == [("/var/log/abs.log", "combined")]


# ---- includes --------------------------------------------------------------------------------------


SERVER_TOML = """
[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  {extra}
"""


def test_include_upstream_from_included_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    write(
        etc / "conf.d" / "upstreams.toml",
        """
        [http.upstreams.shared]
        servers = [{ address = "127.0.0.1:9005", weight = 3 }]
        """,
    )
    main = write(
        etc / "lb.toml",
        """
        include = ["conf.d/*.toml"]

        [[http.servers]]
        listen = ["127.0.0.1:8080"]
          [[http.servers.locations]]
          match = "/"
          proxy_pass = "http://shared"
        """,
    )
    # the glob is relative to the including file, not to the working directory
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/lb.toml")
    assert config.files == (str(main), str(etc / "conf.d" / "upstreams.toml"))
    shared = config.http.upstreams["shared"]
    assert not shared.implicit
    assert [(s.address.text, s.weight) for s in shared.servers] == [("127.0.0.1:9005", 3)]
    proxy_pass = location(config).proxy_pass
    assert proxy_pass is not None and proxy_pass.upstream == "shared"


def test_include_single_string_and_nested_relative(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "a.toml", 'include = "sub/*.toml"\n')
    write(tmp_path / "conf.d" / "sub" / "b.toml", "workers = 3\n")
    config = load(tmp_path, 'include = "conf.d/a.toml"\n' + make())
    assert config.workers == 3
    assert config.files[1:] == (str(tmp_path / "conf.d/a.toml"), str(tmp_path / "conf.d/sub/b.toml"))


def test_include_server_arrays_concatenate(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "b.toml", SERVER_TOML.format(port=8082, extra=""))
    write(tmp_path / "conf.d" / "a.toml", SERVER_TOML.format(port=8081, extra=""))
    config = load(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    ports = [s.listen[0].address.port for s in config.http.servers]
    assert ports == [8080, 8081, 8082]  # main first, then includes in sorted glob order
    assert [s.index for s in config.http.servers] == [0, 1, 2]


def test_include_same_scalar_key_is_an_error(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "a.toml", "workers = 3\n")
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\nworkers = 2\n' + make())
    assert msg == f"{inc}: workers: already set in {tmp_path / 'lb.toml'}; includes may not override keys"


def test_include_same_key_in_two_included_files(tmp_path: Path) -> None:
    a = write(tmp_path / "conf.d" / "a.toml", '[http]\nproxy_read_timeout = "1s"\n')
    b = write(tmp_path / "conf.d" / "b.toml", '[http]\nproxy_read_timeout = "2s"\n')
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    assert msg == f"{b}: http.proxy_read_timeout: already set in {a}; includes may not override keys"


def test_include_tables_merge_key_by_key(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "a.toml", '[http]\nproxy_read_timeout = "7s"\n')
    config = load(tmp_path, 'include = ["conf.d/*.toml"]\n' + make(http='proxy_send_timeout = "8s"'))
    assert (location(config).proxy_read_timeout_s, location(config).proxy_send_timeout_s) == (7.0, 8.0)


def test_error_in_included_upstream_names_that_file(tmp_path: Path) -> None:
    inc = write(
        tmp_path / "conf.d" / "up.toml",
        """
        [http.upstreams.shared]
        servers = [{ address = "127.0.0.1:9005" }, { address = "127.0.0.1:9006", weight = 0 }]
        """,
    )
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    assert msg == f"{inc}: http.upstreams.shared.servers[1].weight: must be a positive integer"


def test_error_in_included_server_names_that_file(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "a.toml", SERVER_TOML.format(port=8081, extra=""))
    b = write(tmp_path / "conf.d" / "b.toml", SERVER_TOML.format(port=8082, extra=BAD_TIMEOUT))
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    assert msg == f"{b}: http.servers[2].locations[0].proxy_read_timeout: {RE_TIMEOUT_5X}"


def test_error_in_main_server_still_names_main_file(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "a.toml", SERVER_TOML.format(port=8081, extra=""))
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\n' + make(location='proxy_read_timeout = "5x"'))
    assert msg == f"{tmp_path / 'lb.toml'}: http.servers[0].locations[0].proxy_read_timeout: {RE_TIMEOUT_5X}"


def test_unknown_key_in_included_http_names_that_file(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "a.toml", '[http]\nacess_log = "x"\n')
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    assert msg == f'{inc}: http.acess_log: unknown key (did you mean "access_log"?)'


def test_invalid_toml_in_included_file_names_that_file(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "bad.toml", "x = [\n")
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    assert msg.startswith(f"{inc}: invalid TOML: ")


def test_error_in_nested_include_names_the_innermost_file(tmp_path: Path) -> None:
    a_text = 'include = ["sub/*.toml"]\n' + SERVER_TOML.format(port=8081, extra="")
    write(tmp_path / "conf.d" / "a.toml", a_text)
    b = write(tmp_path / "conf.d" / "sub" / "b.toml", SERVER_TOML.format(port=8082, extra=BAD_TIMEOUT))
    msg = error(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    assert msg == f"{b}: http.servers[2].locations[0].proxy_read_timeout: {RE_TIMEOUT_5X}"


def test_missing_literal_include_is_an_error(tmp_path: Path) -> None:
    msg = error(tmp_path, 'include = ["conf.d/missing.toml"]\n' + make())
    assert msg == f"{tmp_path / 'lb.toml'}: include: cannot open {tmp_path / 'conf.d/missing.toml'}"


def test_empty_glob_include_is_fine(tmp_path: Path) -> None:
    config = load(tmp_path, 'include = ["conf.d/*.toml"]\n' + make())
    assert config.files == (str(tmp_path / "lb.toml"),)


def test_include_must_be_paths(tmp_path: Path) -> None:
    msg = error(tmp_path, "include = [1]\n" + make())
    assert msg == f"{tmp_path / 'lb.toml'}: include: must be a list of file paths or globs"


def test_file_included_twice_is_an_error(tmp_path: Path) -> None:
    a = write(tmp_path / "conf.d" / "a.toml", "workers = 3\n")
    msg = error(tmp_path, 'include = ["conf.d/a.toml", "conf.d/*.toml"]\n' + make())
    assert msg == f"{tmp_path / 'lb.toml'}: include: {a} is included more than once"


# ---- units and workers -----------------------------------------------------------------------------


def test_durations_and_sizes(tmp_path: Path) -> None:
    text = make(
        server2=', fail_timeout = "1m", max_fails = 0, max_conns = 5, backup = true',
        location="\n".join(
            [
                'proxy_connect_timeout = "500ms"',
                'proxy_read_timeout = "1m"',
                "proxy_send_timeout = 5",
                'send_timeout = "1m30s"',
                'client_body_timeout = "1h 30m"',
                'proxy_next_upstream_timeout = "2s"',
                'proxy_buffer_size = "16k"',
                'client_max_body_size = "1m"',
                "client_body_buffer_size = 100",
                'proxy_next_upstream = ["error", "http_502"]',
                "proxy_next_upstream_tries = 3",
                "keepalive_requests = 10",
            ]
        ),
        top='worker_shutdown_timeout = "250ms"',
    )
    config = load(tmp_path, text)
    assert config.worker_shutdown_timeout_s == 0.25
    loc = location(config)
    assert loc.proxy_connect_timeout_s == 0.5
    assert loc.proxy_read_timeout_s == 60.0
    assert loc.proxy_send_timeout_s == 5.0
    assert loc.send_timeout_s == 90.0
    assert loc.client_body_timeout_s == 5400.0
    assert loc.proxy_next_upstream_timeout_s == 2.0
    assert loc.proxy_buffer_size_bytes == 16 * 1024
    assert loc.client_max_body_size_bytes == 1024 * 1024
    assert loc.client_body_buffer_size_bytes == 100
    assert loc.proxy_next_upstream == frozenset({"error", "http_502"})
    assert loc.proxy_next_upstream_tries == 3
    assert loc.keepalive_requests == 10
    up = config.http.upstreams["backend"].servers[1]
    assert (up.fail_timeout_s, up.max_fails, up.max_conns, up.backup, up.down) == (60.0, 0, 5, True, False)


def test_proxy_next_upstream_off_wins(tmp_path: Path) -> None:
    config = load(tmp_path, make(location='proxy_next_upstream = ["error", "off"]'))
    assert location(config).proxy_next_upstream == frozenset({"off"})


def test_workers_auto(tmp_path: Path) -> None:
    config = load(tmp_path, make(top='workers = "auto"'))
    assert config.workers == (os.cpu_count() or 1)


# ---- proxy_pass and implicit upstreams -------------------------------------------------------------


def test_implicit_upstream_from_address(tmp_path: Path) -> None:
    text = make().replace('"http://backend"', '"http://127.0.0.1:9001"')
    config = load(tmp_path, text)
    group = config.http.upstreams["127.0.0.1:9001"]
    assert group.implicit
    assert group.name == "127.0.0.1:9001"
    assert group.method == "round_robin"
    (only,) = group.servers
    assert only.address == Address("inet", "127.0.0.1", 9001)
    assert (only.weight, only.max_fails, only.fail_timeout_s) == (1, 1, 10.0)
    proxy_pass = location(config).proxy_pass
    assert proxy_pass is not None
    assert proxy_pass.upstream == proxy_pass.host_header == "127.0.0.1:9001"
    assert proxy_pass.uri is None


def test_implicit_upstream_shared_by_two_locations(tmp_path: Path) -> None:
    more = """
    [[http.servers.locations]]
    match = "/b"
    proxy_pass = "http://127.0.0.1:9001/b/"
    """
    config = load(tmp_path, make(more=more).replace('"http://backend"', '"http://127.0.0.1:9001"'))
    assert sorted(config.http.upstreams) == ["127.0.0.1:9001", "backend"]
    proxy_pass = location(config, index=1).proxy_pass
    assert proxy_pass is not None and (proxy_pass.upstream, proxy_pass.uri) == ("127.0.0.1:9001", "/b/")


def test_implicit_ipv6_upstream_gets_port_80(tmp_path: Path) -> None:
    config = load(tmp_path, make().replace('"http://backend"', '"http://[::1]"'))
    (only,) = config.http.upstreams["[::1]"].servers
    assert only.address == Address("inet6", "::1", 80)


def test_proxy_pass_with_uri(tmp_path: Path) -> None:
    config = load(tmp_path, make().replace('"http://backend"', '"http://backend/api/"'))
    proxy_pass = location(config).proxy_pass
    assert proxy_pass is not None
    assert (proxy_pass.upstream, proxy_pass.uri, proxy_pass.host_header) == ("backend", "/api/", "backend")
    assert not config.http.upstreams["backend"].implicit
    assert sorted(config.http.upstreams) == ["backend"]


# ---- paths -----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_config_dir_by_default(tmp_path: Path) -> None:
    config = load(tmp_path, make(top='pid = "run/lb.pid"\nerror_log = "logs/error.log"'))
    assert config.prefix == str(tmp_path)
    assert config.pid_path == str(tmp_path / "run" / "lb.pid")
    assert config.error_log_path == str(tmp_path / "logs" / "error.log")


def test_relative_paths_resolve_against_prefix_argument(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    config = load(tmp_path, make(top='pid = "run/lb.pid"\nerror_log = "logs/error.log"'), str(prefix))
    assert config.prefix == str(prefix)
    assert config.pid_path == str(prefix / "run" / "lb.pid")
    assert config.error_log_path == str(prefix / "logs" / "error.log")
    assert location(config).access_logs[0].path == str(prefix / "access.log")


def test_default_paths(tmp_path: Path) -> None:
    config = load(tmp_path, make())
    assert config.pid_path == str(tmp_path / "prefork-lb.pid")
    assert config.error_log_path == str(tmp_path / "error.log")


def test_stderr_and_absolute_paths_are_kept(tmp_path: Path) -> None:
    text = make(top='pid = "/run/lb.pid"\nerror_log = "stderr"', http='access_log = "stderr"')
    config = load(tmp_path, text)
    assert config.pid_path == "/run/lb.pid"
    assert config.error_log_path == "stderr"
    assert location(config).access_logs[0].path == "stderr"


def test_upstream_defined_in_two_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    main = tmp_path / "lb.toml"
    main.write_text(
        'include = ["conf.d/*.toml"]\n[http.upstreams.u]\nservers = [{ address = "127.0.0.1:1" }]\n'
    )
    (tmp_path / "conf.d" / "a.toml").write_text(
        '[http.upstreams.u]\nservers = [{ address = "127.0.0.1:2" }]\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(str(main))
    assert "http.upstreams.u.servers: already set in" in str(e.value)


def test_fail_timeout_must_be_whole_seconds(tmp_path: Path) -> None:
    main = tmp_path / "lb.toml"
    main.write_text('[http.upstreams.u]\nservers = [{ address = "127.0.0.1:1", fail_timeout = "500ms" }]\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(main))
    assert "http.upstreams.u.servers[0].fail_timeout: must be whole seconds" in str(e.value)


def test_misspelt_proxy_pass_gets_a_hint_not_a_missing_action(tmp_path: Path) -> None:
    main = tmp_path / "lb.toml"
    main.write_text(
        '[[http.servers]]\nlisten = ["127.0.0.1:8080"]\n'
        '[[http.servers.locations]]\nmatch = "/"\nproxy_pas = "http://127.0.0.1:1"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(str(main))
    assert 'http.servers[0].locations[0].proxy_pas: unknown key (did you mean "proxy_pass"?)' in str(e.value)


# ---- issue 12: operator checks -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["api", "metrics", "dashboard"])
def test_every_status_location_off_loopback_needs_allow(tmp_path: Path, kind: str) -> None:
    """Catches metrics/dashboard on a public address accepted without allow (only api was refused)."""
    more = f"""
    [[http.servers]]
    listen = ["0.0.0.0:8081"]
      [[http.servers.locations]]
      match = "/s/"
      {kind} = true
    """
    msg = error(tmp_path, make(more=more))
    assert msg.startswith(f"{tmp_path / 'lb.toml'}: http.servers[1].locations[0].{kind}: ")
    assert "listens on 0.0.0.0:8081, which is not loopback: add an allow list" in msg
    allowed = make(more=more.replace(f"{kind} = true", f'{kind} = true\n      allow = ["10.0.0.0/8"]'))
    assert location(load(tmp_path, allowed), 1).status == kind


@pytest.mark.parametrize(
    ("match", "hint"),
    [
        ("~^ /images/", '(did you mean "^~ /images/"?)'),
        ("*~ \\\\.php$", '(did you mean "~* \\.php$"?)'),
        ("== /exact", '(did you mean "= /exact"?)'),
        ("^~/images/", '(did you mean "^~ /images/"? a modifier needs a space after it)'),
    ],
)
def test_mistyped_match_modifier_gets_a_hint(tmp_path: Path, match: str, hint: str) -> None:
    """Catches a mistyped modifier reported only as 'must start with "/"' with no hint."""
    more = f"""
    [[http.servers.locations]]
    match = "{match}"
    return = 204
    """
    msg = error(tmp_path, make(more=more))
    assert msg.startswith(f"{tmp_path / 'lb.toml'}: http.servers[0].locations[1].match: ")
    assert hint in msg


def test_zone_size_error_counts_peers_and_zones_apart(tmp_path: Path) -> None:
    """Catches one lumped "peers" figure that silently included the server status zones."""
    msg = error(tmp_path, make(top='zone_size = "1k"'))
    assert msg.startswith(f"{tmp_path / 'lb.toml'}: zone_size: 1024 bytes hold 0 slots, ")
    assert msg.endswith("the configuration needs 3: 2 upstream peers + 1 server status zones")


def test_access_logs_know_their_key_and_dev_stdout_maps_to_stdout(tmp_path: Path) -> None:
    """Catches startup errors that cannot name the key, and /dev/stdout opened as a path
    (a symlink, which log files refuse)."""
    config = load(
        tmp_path,
        make(http='access_log = "/dev/stdout"', server='access_log = ["a.log", { path = "b.log" }]'),
    )
    files = config.log_files()
    assert files[str(tmp_path / "a.log")] == "http.servers[0].access_log[0]"
    assert files[str(tmp_path / "b.log")] == "http.servers[0].access_log[1]"
    assert files[str(tmp_path / "error.log")] == "error_log"
    other = load(tmp_path, make(http='access_log = "/dev/stdout"'))
    assert other.log_files() == {str(tmp_path / "error.log"): "error_log", "stdout": "http.access_log"}


def test_regex_server_name_keeps_its_case(tmp_path: Path) -> None:
    """Catches: the loader lowercasing regex server names with the others, which turns
    ``(?P<name>`` into ``(?p<name>`` (a config error) and ``\\D`` into ``\\d``; plain names are
    still lowercased (matching is case-insensitive, as nginx's)."""
    from prefork_lb.http.routing import build_routers

    config = load(
        tmp_path, make(server='server_name = ["WWW.Example.com", "~^(?P<sub>\\\\D+)\\\\.example\\\\.org$"]')
    )
    server = config.http.servers[0]
    assert server.server_names == ("www.example.com", "~^(?P<sub>\\D+)\\.example\\.org$")
    (router,) = build_routers(config.http.servers).values()
    assert router.select("ab.example.org") is server
