from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest

from prefork_lb.config.model import Address, ListenConfig, LocationConfig, ProxyPass, ServerConfig
from prefork_lb.http.exchange import Attempt, ConnectionInfo, Exchange
from prefork_lb.http.template import compile_template, parse_template
from prefork_lb.http.variables import VariableError, compile_variable, lookup_variable

START = 1_700_000_000.0


def make_exchange(
    headers: list[tuple[bytes, bytes]] | None = None,
    target: bytes = b"/index.html?a=1&b=two",
    **kw: Any,
) -> Exchange:
    if headers is None:
        headers = [(b"Host", b"example.com"), (b"User-Agent", b"curl/8.0"), (b"Accept", b"*/*")]
    index: dict[bytes, bytes] = {}
    for name, value in headers:
        key = name.lower()
        index[key] = index[key] + b", " + value if key in index else value
    path, _, args = target.decode("latin-1").partition("?")
    fields: dict[str, Any] = {
        "conn": ConnectionInfo("192.0.2.7", 54321, "127.0.0.1", 8080, 42, 3),
        "method": b"GET",
        "target": target,
        "path": path,
        "args": args,
        "version": (1, 1),
        "headers": headers,
        "header_index": index,
        "host": "example.com",
        "start_time": START,
        "end_time": START + 0.25,
        "status": 200,
        "body_bytes_sent": 612,
        "bytes_sent": 850,
        "request_length": 77,
    }
    fields.update(kw)
    return Exchange(**fields)


def server(*names: str) -> ServerConfig:
    listen = (ListenConfig(Address("inet", "127.0.0.1", 8080)),)
    return ServerConfig(listen=listen, server_names=names, locations=())


def render(name: str, ex: Exchange) -> str:
    return compile_variable(name)(ex)


# --- simple variables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("remote_addr", "192.0.2.7"),
        ("remote_port", "54321"),
        ("server_addr", "127.0.0.1"),
        ("server_port", "8080"),
        ("connection", "42"),
        ("connection_requests", "3"),
        ("request", "GET /index.html?a=1&b=two HTTP/1.1"),
        ("request_method", "GET"),
        ("request_uri", "/index.html?a=1&b=two"),
        ("uri", "/index.html"),
        ("document_uri", "/index.html"),
        ("args", "a=1&b=two"),
        ("query_string", "a=1&b=two"),
        ("is_args", "?"),
        ("host", "example.com"),
        ("http_host", "example.com"),
        ("scheme", "http"),
        ("server_protocol", "HTTP/1.1"),
        ("server_name", ""),
        ("proxy_host", ""),
        ("status", "200"),
        ("body_bytes_sent", "612"),
        ("bytes_sent", "850"),
        ("request_length", "77"),
        ("request_time", "0.250"),
        ("msec", "1700000000.250"),
        ("remote_user", ""),
        ("proxy_add_x_forwarded_for", "192.0.2.7"),
        ("http_user_agent", "curl/8.0"),
        ("http_referer", ""),
        ("arg_b", "two"),
        ("cookie_session", ""),
        ("upstream_addr", ""),
        ("upstream_status", ""),
        ("upstream_response_time", ""),
    ],
)
def test_simple_values(name: str, expected: str) -> None:
    assert render(name, make_exchange()) == expected


@pytest.mark.parametrize("name", ["REMOTE_ADDR", "Remote_Addr", "HTTP_USER_AGENT", "Http_User_Agent"])
def test_names_are_case_insensitive(name: str) -> None:
    assert render(name, make_exchange()) in ("192.0.2.7", "curl/8.0")


def test_pid_and_hostname() -> None:
    ex = make_exchange()
    assert render("pid", ex) == str(os.getpid())
    assert render("hostname", ex) == socket.gethostname().lower()


@pytest.mark.parametrize(("status", "expected"), [(0, "000"), (7, "007"), (200, "200"), (499, "499")])
def test_status_three_digits(status: int, expected: str) -> None:
    assert render("status", make_exchange(status=status)) == expected


@pytest.mark.parametrize(
    ("version", "line", "protocol"),
    [
        ((1, 1), "GET /index.html?a=1&b=two HTTP/1.1", "HTTP/1.1"),
        ((1, 0), "GET /index.html?a=1&b=two HTTP/1.0", "HTTP/1.0"),
        ((2, 0), "GET /index.html?a=1&b=two HTTP/2.0", "HTTP/2.0"),  # issue 20, as nginx
    ],
)
def test_request_line_and_protocol(version: tuple[int, int], line: str, protocol: str) -> None:
    ex = make_exchange(version=version)
    assert render("request", ex) == line == ex.request_line
    assert render("server_protocol", ex) == protocol


def test_http2_variable() -> None:
    """nginx's $http2: "h2" over TLS, "h2c" in clear text, empty for HTTP/1.x (issue 20)."""
    from prefork_lb.tls.info import TlsInfo

    assert render("http2", make_exchange()) == ""
    assert render("http2", make_exchange(version=(2, 0))) == "h2c"
    tls_conn = ConnectionInfo("192.0.2.7", 54321, "127.0.0.1", 8443, 42, 3, tls=object.__new__(TlsInfo))
    assert render("http2", make_exchange(version=(2, 0), conn=tls_conn)) == "h2"


def test_raw_bytes_decode_latin1() -> None:
    ex = make_exchange(target=b"/caf\xe9?x=%41\xff", headers=[(b"User-Agent", b"\xe9t\xe9")])
    assert render("request_uri", ex) == "/caf\xe9?x=%41\xff"
    assert render("http_user_agent", ex) == "\xe9t\xe9"
    assert render("arg_x", ex) == "%41\xff"  # raw, not percent-decoded


@pytest.mark.parametrize(
    ("args", "target", "is_args"), [("", "/p", ""), ("", "/p?", ""), ("x=1", "/p?x=1", "?")]
)
def test_is_args(args: str, target: str, is_args: str) -> None:
    ex = make_exchange(target=target.encode())
    assert ex.args == args
    assert render("is_args", ex) == is_args
    assert compile_template("$uri$is_args$args").render(ex) == target.rstrip("?")


def test_host_falls_back_to_server_name() -> None:
    ex = make_exchange(host="", server=server("www.example.org", "example.org"))
    assert render("host", ex) == "www.example.org"
    assert render("server_name", ex) == "www.example.org"
    assert render("host", make_exchange(host="", server=None)) == ""
    assert render("server_name", make_exchange(server=server())) == ""


def test_connection_upgrade() -> None:
    """Catches: nginx's canonical WebSocket config (``Connection $connection_upgrade``,
    from the documented ``map``) failing to load, or rendering other than the map."""
    assert render("connection_upgrade", make_exchange()) == "close"
    ws = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    assert render("connection_upgrade", make_exchange(ws)) == "upgrade"


def test_proxy_host() -> None:
    loc = LocationConfig(
        match="/",
        modifier="",
        pattern="/",
        regex=None,
        proxy_pass=ProxyPass(upstream="backend", uri=None, host_header="backend:8081"),
        return_=None,
    )
    assert render("proxy_host", make_exchange(location=loc)) == "backend:8081"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], "192.0.2.7"),
        ([(b"X-Forwarded-For", b"10.0.0.1")], "10.0.0.1, 192.0.2.7"),
        (
            [(b"x-forwarded-for", b"10.0.0.1"), (b"X-Forwarded-For", b"10.0.0.2")],
            "10.0.0.1, 10.0.0.2, 192.0.2.7",
        ),
    ],
)
def test_proxy_add_x_forwarded_for(headers: list[tuple[bytes, bytes]], expected: str) -> None:
    assert render("proxy_add_x_forwarded_for", make_exchange(headers=headers)) == expected


# --- times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (START, START + 0.1234, "0.123"),
        (START, START + 1.5, "1.500"),
        (START, START + 61.0, "61.000"),
        (START, START, "0.000"),
        (START, START - 0.5, "0.000"),  # clock went backwards: clamped
    ],
)
def test_request_time_three_decimals(start: float, end: float, expected: str) -> None:
    assert render("request_time", make_exchange(start_time=start, end_time=end)) == expected


def test_request_time_while_running_uses_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: START + 2.0)
    ex = make_exchange(end_time=0.0)
    assert render("request_time", ex) == "2.000"
    assert render("msec", ex) == "1700000002.000"


def test_time_local_and_iso8601_utc(utc: None) -> None:
    ex = make_exchange(end_time=1_795_255_200.5)  # 2026-11-21T10:00:00Z
    assert render("time_local", ex) == "21/Nov/2026:10:00:00 +0000"
    assert render("time_iso8601", ex) == "2026-11-21T10:00:00+00:00"


def test_time_local_offset(utc: None) -> None:
    os.environ["TZ"] = "XYZ-05:30"  # POSIX sign: 5h30 east of UTC
    time.tzset()
    ex = make_exchange(end_time=1_795_255_201.0)
    assert render("time_local", ex) == "21/Nov/2026:15:30:01 +0530"
    assert render("time_iso8601", ex) == "2026-11-21T15:30:01+05:30"
    os.environ["TZ"] = "XYZ+03"
    time.tzset()
    ex = make_exchange(end_time=1_795_255_202.0)
    assert render("time_local", ex) == "21/Nov/2026:07:00:02 -0300"


def test_time_formatted_once_per_second(utc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = time.localtime

    def counting(secs: float) -> time.struct_time:
        calls.append(secs)
        return real(secs)

    monkeypatch.setattr(time, "localtime", counting)
    get = compile_variable("time_local")
    base = 1_795_255_300.0
    texts = [get(make_exchange(end_time=base + frac)) for frac in (0.1, 0.5, 0.999)]
    assert len(set(texts)) == 1 and len(calls) == 1
    assert get(make_exchange(end_time=base + 1.0)) == "21/Nov/2026:10:01:41 +0000"
    assert len(calls) == 2


# --- headers, arguments, cookies ---------------------------------------------------------------------


def test_http_name_maps_underscores_and_case() -> None:
    ex = make_exchange(headers=[(b"X-Request-ID", b"abc"), (b"X-Multi", b"1"), (b"x-multi", b"2")])
    assert render("http_x_request_id", ex) == "abc"
    assert render("http_X_Request_Id", ex) == "abc"
    assert render("http_x_multi", ex) == "1, 2"
    assert render("http_x_absent", ex) == ""
    assert lookup_variable("http_x_absent").lookup is not None


def test_http_cookie_joins_lines_with_semicolon() -> None:
    ex = make_exchange(headers=[(b"Cookie", b"a=1"), (b"Cookie", b"b=2")])
    assert render("http_cookie", ex) == "a=1; b=2"
    assert render("http_cookie", make_exchange()) == ""


@pytest.mark.parametrize(
    ("args", "name", "expected"),
    [
        ("a=1&b=2", "b", "2"),
        ("a=1&a=2", "a", "1"),  # first occurrence
        ("xa=1&a=2", "a", "2"),  # must start the string or follow "&"
        ("ab=1&a=2", "a", "2"),  # name must be followed by "="
        ("a", "a", None),  # no "=": not found
        ("a&b=1", "a", None),
        ("a=", "a", ""),  # set but empty
        ("a=&b=1", "a", ""),
        ("A=1", "a", "1"),  # nginx: caseless
        ("a=1", "A", "1"),
        ("a=b=c&d", "a", "b=c"),
        ("a=%20x+y", "a", "%20x+y"),  # raw, not decoded
        ("a=1;b=2", "b", None),  # only "&" separates
        ("&a=1", "a", "1"),
        ("", "a", None),
        ("foo_bar=1", "foo_bar", "1"),
    ],
)
def test_arg(args: str, name: str, expected: str | None) -> None:
    target = f"/p?{args}".encode() if args else b"/p"
    ex = make_exchange(target=target)
    var = lookup_variable(f"arg_{name}")
    assert var.lookup is not None
    assert var.lookup(ex) == expected
    assert var.get(ex) == (expected or "")


@pytest.mark.parametrize(
    ("cookie", "name", "expected"),
    [
        (b"a=1; b=2", "b", "2"),
        (b"a=1;b=2", "b", "2"),
        (b"a=1, b=2", "b", "2"),  # "," separates too
        (b"b = 2", "b", "2"),  # spaces around "="
        (b"ab=1; b=2", "b", "2"),  # no prefix match
        (b"b=1; b=2", "b", "1"),  # first occurrence
        (b"b=", "b", ""),  # set but empty
        (b"B=1", "b", "1"),  # nginx compares names caselessly
        (b"b=1", "B", "1"),
        (b"a=1", "b", None),
        (b"b", "b", None),  # no "="
        (b"a;b=1", "a", None),  # nginx quirk: the ";" after a bare name is consumed, "b=1" skipped
        (b"a;b=1", "b", "1"),
        (b"b=1, c=2", "b", "1, c=2"),  # the value runs to ";" only
        (b"session=abc123def; theme=dark", "session", "abc123def"),
        (b"x_y=1", "x_y", "1"),
    ],
)
def test_cookie(cookie: bytes, name: str, expected: str | None) -> None:
    ex = make_exchange(headers=[(b"Cookie", cookie)])
    var = lookup_variable(f"cookie_{name}")
    assert var.lookup is not None
    assert var.lookup(ex) == expected
    assert var.get(ex) == (expected or "")


def test_cookie_lines_are_parsed_one_by_one() -> None:
    ex = make_exchange(headers=[(b"Cookie", b"a=1"), (b"cookie", b"b=2; a=3")])
    assert render("cookie_a", ex) == "1"  # not "1, b=2" from the joined header_index value
    assert render("cookie_b", ex) == "2"
    assert render("cookie_a", make_exchange(headers=[])) == ""


# --- upstream attempts (nginx-semantics.md section 9) ---------------------------------------------

UPSTREAM_VARS = (
    "upstream_addr",
    "upstream_status",
    "upstream_connect_time",
    "upstream_header_time",
    "upstream_response_time",
)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        pytest.param(
            [
                Attempt("127.0.0.1:24089", 502, None, None, 0.0),
                Attempt("127.0.0.1:24081", 200, 0.0, 0.0, 0.0),
            ],
            ("127.0.0.1:24089, 127.0.0.1:24081", "502, 200", "-, 0.000", "-, 0.000", "0.000, 0.000"),
            id="/u?r=2 next upstream after error",
        ),
        pytest.param(
            [
                Attempt("127.0.0.1:24081", 504, 0.004, None, 1.006),
                Attempt("127.0.0.1:24082", 200, 0.009, 0.028, 0.028),
            ],
            ("127.0.0.1:24081, 127.0.0.1:24082", "504, 200", "0.004, 0.009", "-, 0.028", "1.006, 0.028"),
            id="/t?hang=1 timeout",
        ),
        pytest.param(
            [
                Attempt("127.0.0.1:24082", 503, 0.0, 0.005, 0.005),
                None,
                Attempt("127.0.0.1:24081", 200, 0.0, 0.0, 0.0),
            ],
            (
                "127.0.0.1:24082 : 127.0.0.1:24081",
                "503 : 200",
                "0.000 : 0.000",
                "0.005 : 0.000",
                "0.005 : 0.000",
            ),
            id="/x error_page phase separator",
        ),
        pytest.param(
            [Attempt("dn", 502, None, None, 0.0)],
            ("dn", "502", "-", "-", "0.000"),
            id="/dn no live upstreams: group name",
        ),
        pytest.param(
            [
                Attempt("127.0.0.1:24083", 503, response_time_s=0.0),
                Attempt("127.0.0.1:24082", 503, response_time_s=0.0),
                Attempt("t3", 502, response_time_s=0.0),
            ],
            (
                "127.0.0.1:24083, 127.0.0.1:24082, t3",
                "503, 503, 502",
                "-, -, -",
                "-, -, -",
                "0.000, 0.000, 0.000",
            ),
            id="/t0 tries exhausted",
        ),
        pytest.param(
            [Attempt("127.0.0.1:1", None, None, None, None)],
            ("127.0.0.1:1", "-", "-", "-", "-"),
            id="unset status and times (the attempt being relayed, as add_header sees it)",
        ),
        pytest.param(
            [Attempt("127.0.0.1:1", 200, -0.001, -0.5, -1.0)],
            ("127.0.0.1:1", "200", "0.000", "0.000", "0.000"),
            id="negative clamped",
        ),
        pytest.param(
            [Attempt("127.0.0.1:1", 200, 0.0004, 0.0015, 12.3456)],
            ("127.0.0.1:1", "200", "0.000", "0.002", "12.346"),
            id="three decimals",
        ),
        pytest.param([], ("", "", "", "", ""), id="nothing proxied"),
    ],
)
def test_upstream_variables(attempts: list[Attempt | None], expected: tuple[str, ...]) -> None:
    ex = make_exchange(attempts=attempts)
    assert tuple(render(name, ex) for name in UPSTREAM_VARS) == expected


def test_upstream_bytes() -> None:
    ex = make_exchange(
        attempts=[
            Attempt("127.0.0.1:24081", 504, bytes_sent=120, bytes_received=0),
            Attempt("127.0.0.1:24082", 200, bytes_sent=120, bytes_received=89),
        ]
    )
    assert render("upstream_bytes_received", ex) == "0, 89"
    assert render("upstream_bytes_sent", ex) == "120, 120"


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["foo", "remote_addrx", "http", "upstream_foo", "1"])
def test_unknown_variable(name: str) -> None:
    with pytest.raises(VariableError) as info:
        compile_variable(name)
    assert str(info.value) == f'unknown variable "${name}"'


@pytest.mark.parametrize("name", ["http_", "arg_", "cookie_", "HTTP_"])
def test_prefix_needs_a_name(name: str) -> None:
    with pytest.raises(VariableError, match=rf'unknown variable "\${name}"'):
        compile_variable(name)


def test_variable_error_is_value_error() -> None:
    assert issubclass(VariableError, ValueError)


# --- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", []),
        ("plain", [(False, "plain")]),
        ("$host", [(True, "host")]),
        ("${host}", [(True, "host")]),
        ("${host}name", [(True, "host"), (False, "name")]),
        ("x$host-$uri", [(False, "x"), (True, "host"), (False, "-"), (True, "uri")]),
        ("$host$uri", [(True, "host"), (True, "uri")]),
        ("$", [(False, "$")]),
        ("a$", [(False, "a$")]),
        ("$ $-$.x", [(False, "$ $-$.x")]),
        ("$$host", [(False, "$"), (True, "host")]),
        ("100$", [(False, "100$")]),
        ("$Http_X_Y", [(True, "Http_X_Y")]),
    ],
)
def test_parse_template(text: str, parts: list[tuple[bool, str]]) -> None:
    assert parse_template(text) == parts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${host", 'the closing bracket in "${host" variable is missing'),
        ("${", 'the closing bracket in "${" variable is missing'),
        ("${ho st}", 'the closing bracket in "${ho" variable is missing'),
        ("${}", 'invalid variable name "${}"'),
        ("x $foo y", 'unknown variable "$foo"'),
        ("${foo}", 'unknown variable "$foo"'),
        ("$hostname_x", 'unknown variable "$hostname_x"'),
    ],
)
def test_template_errors(text: str, message: str) -> None:
    with pytest.raises(VariableError) as info:
        compile_template(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$host", "example.com"),
        ("${host}:8080", "example.com:8080"),
        ("${request_method}x", "GETx"),
        ("$scheme://$host$request_uri", "http://example.com/index.html?a=1&b=two"),
        ("https://example.test$uri", "https://example.test/index.html"),
        ('"$http_user_agent"', '"curl/8.0"'),  # no log escaping
        ("[$http_referer][$remote_user]", "[][]"),  # no "-" substitution
        ("cost: 5$ $", "cost: 5$ $"),
        ("$uri$is_args$args", "/index.html?a=1&b=two"),
    ],
)
def test_template_render(text: str, expected: str) -> None:
    assert compile_template(text).render(make_exchange()) == expected


def test_template_metadata() -> None:
    t = compile_template("$Host ${uri} $host $arg_x")
    assert t.variables == ("host", "uri", "arg_x")
    assert not t.is_literal
    lit = compile_template("no variables $")
    assert lit.is_literal and lit.variables == ()
    assert lit.render(make_exchange()) == "no variables $"
    folded = compile_template("[$remote_user]static")  # constants fold into the literal
    assert folded.is_literal and folded.variables == ("remote_user",)
    assert folded.render(make_exchange()) == "[]static"
    assert compile_template("").render(make_exchange()) == ""


def test_template_literal_text_is_utf8_bytes_as_latin1() -> None:
    t = compile_template("caf\u00e9 \u2192 $host")
    out = t.render(make_exchange())
    assert out.encode("latin-1") == "caf\u00e9 \u2192 example.com".encode()


def test_template_single_variable_fast_path_matches() -> None:
    ex = make_exchange(headers=[(b"X-Forwarded-For", b"10.0.0.1")])
    assert compile_template("$proxy_add_x_forwarded_for").render(ex) == "10.0.0.1, 192.0.2.7"
