"""add_header / proxy_hide_header / proxy_pass_header / proxy_redirect: config and the
sans-IO rules (http/header_rules.py; shared/reference/nginx-semantics-2.md sections 2.5, 3).

On the old code none of the keys loaded (``unknown key``), the response head passed X-Pad
and X-Accel-*, and a Location was never rewritten: every test here fails there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prefork_lb.config.model import LocationConfig, ProxyPass
from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.header_rules import ADD_STATUSES, DEFAULT_RULES, compile_rules
from prefork_lb.http.headers import build_response_head
from tests.unit.test_config import error, load, location, main_file, make


def _ex(path: str = "/x", host: str = "hdr.test", port: int = 8080) -> Exchange:
    return Exchange(
        conn=ConnectionInfo("192.0.2.7", 5555, "127.0.0.1", port, 1),
        method=b"GET",
        target=path.encode("latin-1"),
        path=path,
        args="",
        version=(1, 1),
        headers=[],
        header_index={},
        host=host,
        start_time=0.0,
    )


def _loc(pattern: str = "/rd/", uri: str | None = None, **kw: object) -> LocationConfig:
    proxy = ProxyPass(upstream="be", uri=uri, host_header="be:81")
    return LocationConfig(pattern, "", pattern, None, proxy, None, **kw)  # type: ignore[arg-type]


def _head(rules: object, status: int, fields: list[tuple[bytes, bytes]], ex: Exchange | None = None) -> bytes:
    return build_response_head(
        status,
        b"",
        fields,
        frozenset(),
        b"",
        True,
        0.0,
        rules,
        ex or _ex(),  # type: ignore[arg-type]
    )


# ---- config ----


def test_keys_load_and_inherit_wholesale(tmp_path: Path) -> None:
    """H1: a level's add_header replaces the inherited table; hide/pass lists each inherit."""
    cfg = load(
        tmp_path,
        make(
            server='add_header = { X-Srv = "s" }\nproxy_hide_header = ["X-Powered-By"]',
            location='add_header = { X-Loc = { value = "$uri", always = true } }\n'
            'proxy_pass_header = ["Server"]\nproxy_redirect = ["default", ["http://a/", "/b/"]]',
            more="""
            [[http.servers.locations]]
            match = "/other/"
            proxy_pass = "http://backend"
            proxy_redirect = "off"
            """,
        ),
    )
    loc, other = location(cfg), location(cfg, 0, 1)
    assert loc.add_header == (("X-Loc", "$uri", True),)
    assert other.add_header == (("X-Srv", "s", False),)
    assert loc.proxy_hide_header == ("X-Powered-By",) and loc.proxy_pass_header == ("Server",)
    assert loc.proxy_redirect == ("default", ("http://a/", "/b/"))
    assert other.proxy_redirect == ()


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('add_header = { "X Bad" = "v" }', "add_header", 'invalid header name "X Bad"'),
        ('add_header = { X-A = { value = "v", always = "yes" } }', "add_header", '"X-A".always must be'),
        ("add_header = { X-A = { always = true } }", "add_header", '"X-A" must be a string or a table'),
        ('add_header = { X-A = "a $nosuch" }', "add_header", 'X-A: unknown variable "$nosuch"'),
        ('add_header = { X-A = "a\\r\\nX-B: 1" }', "add_header", "must not contain control characters"),
        ('proxy_hide_header = ["X:Y"]', "proxy_hide_header", 'invalid header name "X:Y"'),
        ('proxy_redirect = "on"', "proxy_redirect", 'must be "default", "off" or a list'),
        ('proxy_redirect = [["/a/"]]', "proxy_redirect", '[0] must be "default" or a ["from", "to"] pair'),
        ('proxy_redirect = [["~^/(.*$", "/m/$1"]]', "proxy_redirect", "[0]: invalid regex"),
        ('proxy_redirect = [["/a/", "/$nosuch/"]]', "proxy_redirect", '[0]: unknown variable "$nosuch"'),
        ('proxy_redirect = [["~^/(.*)$", "/$1/$nosuch"]]', "proxy_redirect", 'variable "$nosuch"'),
        ('proxy_redirect = [["http://$host/", "/"]]', "proxy_redirect", "variables in the prefix"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, line: str, key: str, message: str) -> None:
    msg = error(tmp_path, make(location=line))
    assert msg.startswith(f"{main_file(tmp_path)}: http.servers[0].locations[0].{key}: "), msg
    assert message in msg


# ---- add_header ----


def test_add_header_status_list_always_and_empty() -> None:
    """nginx's list: 200 201 204 206 301 302 303 304 307 308; ``always`` for the rest; an
    empty value adds nothing; added fields come after the upstream's (both X-Foo sent)."""
    assert {200, 201, 204, 206, 301, 302, 303, 304, 307, 308} == ADD_STATUSES
    rules = compile_rules(
        _loc(add_header=(("X-Foo", "mine", False), ("X-A", "a", True), ("X-E", "$args", True)))
    )
    ok = _head(rules, 200, [(b"X-Foo", b"upstream")])
    assert ok.index(b"X-Foo: upstream\r\n") < ok.index(b"X-Foo: mine\r\n") < ok.index(b"X-A: a\r\n")
    assert b"X-E" not in ok
    notfound = _head(rules, 404, [])
    assert b"X-Foo: mine" not in notfound and b"X-A: a\r\n" in notfound


@pytest.mark.parametrize(
    "payload", ["/h/\r\nX-Inj: 1", "/h/\nX-Inj: 1", "/h/\rX-Inj: 1", "/h/\x00x", "/h/\x0bx\x7f"]
)
def test_added_value_never_splits_a_field(payload: str) -> None:
    """Section 2.5 (better than nginx): a decoded ``$uri`` with CR/LF/NUL/CTL is
    percent-encoded into the one field."""
    rules = compile_rules(_loc(add_header=(("X-U", "$uri", True),)))
    head = _head(rules, 200, [], _ex(payload))
    lines = head.split(b"\r\n")
    assert not any(line.startswith(b"X-Inj") for line in lines)
    (field,) = [line for line in lines if line.startswith(b"X-U: ")]
    assert not any((b < 0x20 and b != 0x09) or b == 0x7F for b in field)


# ---- hide / pass ----


def test_default_hidden_set_and_pass() -> None:
    """H3: X-Pad and nginx's X-Accel-* hidden, X-Accel-Foo passes, Server/Date ours;
    proxy_pass_header Server sends the upstream's and no second one."""
    upstream = [
        (b"Server", b"up"),
        (b"Date", b"then"),
        (b"X-Pad", b"1"),
        (b"X-Accel-Buffering", b"no"),
        (b"X-Accel-Redirect", b"/x"),
        (b"X-Accel-Foo", b"f"),
        (b"X-Powered-By", b"php"),
    ]
    head = _head(DEFAULT_RULES, 200, upstream)
    assert b"Server: prefork-lb" in head and b"Server: up" not in head and b"then" not in head
    assert b"X-Pad" not in head and b"X-Accel-Buffering" not in head and b"X-Accel-Redirect" not in head
    assert b"X-Accel-Foo: f" in head and b"X-Powered-By: php" in head
    rules = compile_rules(
        _loc(proxy_hide_header=("x-powered-by",), proxy_pass_header=("Server", "Transfer-Encoding"))
    )
    head = _head(rules, 200, [*upstream, (b"Transfer-Encoding", b"chunked")])
    assert head.count(b"Server: ") == 1 and b"Server: up" in head
    assert b"X-Powered-By" not in head and b"Transfer-Encoding" not in head  # framing is never passed
    bare = _head(rules, 200, [(b"X-A", b"1")])  # passed but not sent upstream: ours (nginx)
    assert bare.count(b"Server: prefork-lb\r\n") == 1 and bare.count(b"Date: ") == 1


# ---- proxy_redirect ----


def test_proxy_redirect_default_without_uri() -> None:
    """3.5: ``http://be:81/rd/new`` -> absolute ``http://hdr.test:8080/rd/new``; Refresh
    rewritten and left relative; relative and foreign Locations unchanged."""
    rules = compile_rules(_loc())
    ex = _ex()
    assert rules.rewrite(b"location", b"http://be:81/rd/new", ex) == b"http://hdr.test:8080/rd/new"
    assert rules.rewrite(b"refresh", b"5; URL=http://be:81/rd/r", ex) == b"5; URL=/rd/r"
    assert rules.rewrite(b"location", b"/rel/new", ex) == b"/rel/new"
    assert rules.rewrite(b"location", b"http://other/x", ex) == b"http://other/x"
    assert rules.rewrite(b"location", b"HTTP://BE:81/rd/", ex) == b"HTTP://BE:81/rd/"  # case-sensitive
    assert rules.rewrite(b"location", b"http://be:81/x", _ex(port=80)) == b"http://hdr.test/x"


def test_proxy_redirect_default_with_uri_pairs_and_off() -> None:
    rules = compile_rules(_loc("/front/", "/app/", proxy_redirect=(("http://x/", "https://y/"), "default")))
    ex = _ex()
    assert rules.rewrite(b"location", b"http://be:81/app/after", ex) == b"http://hdr.test:8080/front/after"
    assert rules.rewrite(b"location", b"http://x/p?q=1", ex) == b"https://y/p?q=1"
    off = compile_rules(_loc(proxy_redirect=()))
    assert (
        _head(off, 302, [(b"Location", b"http://be:81/rd/new")]).count(b"Location: http://be:81/rd/new") == 1
    )


def test_proxy_redirect_regex_with_captures() -> None:
    """3.5: ``proxy_redirect ~^/(.*)$ /mapped/$1`` gives ``http://host:port/mapped/b``; ``~*``
    is caseless; a regex replaces the whole value (after ``url=`` for Refresh)."""
    rules = compile_rules(
        _loc(proxy_redirect=(("~^/(.*)$", "/mapped/$1"), ("~*^HTTP://X/(\\w+)", "/$1$host$9")))
    )
    ex = _ex()
    assert rules.rewrite(b"location", b"/b", ex) == b"http://hdr.test:8080/mapped/b"
    assert rules.rewrite(b"location", b"http://x/abc/def", ex) == b"http://hdr.test:8080/abchdr.test"
    assert rules.rewrite(b"refresh", b"0;url=/r", ex) == b"0;url=/mapped/r"
    assert rules.rewrite(b"location", b"https://y/", ex) == b"https://y/"
