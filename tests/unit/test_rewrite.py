"""The rewrite module's statement parser and engine (http/rewrite.py) and map (http/maps.py):
the nginx 1.22 examples of shared/reference/nginx-semantics-2.md sections 2.2 to 2.4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefork_lb.http.exchange import Exchange
from prefork_lb.http.maps import compile_map
from prefork_lb.http.rewrite import (
    BREAK,
    CONTINUE,
    SEARCH,
    Respond,
    RuleError,
    absolute_url,
    compile_rules,
    declared_sets,
    run,
    tokenize,
)
from prefork_lb.http.template import compile_template
from prefork_lb.http.variables import install_user_variables, lookup_variable, set_variable
from tests.unit.test_config import error, load, make
from tests.unit.test_variables import make_exchange


def ex_for(target: bytes, **kw: Any) -> Exchange:
    return make_exchange(target=target, **kw)


def go(rules: list[str], target: bytes, **kw: Any) -> tuple[int | Respond, Exchange]:
    """Run ``rules`` as the config loader would: their ``set`` names declared first."""
    old = install_user_variables({name: set_variable(name) for name in declared_sets(rules)})
    try:
        block = compile_rules(rules)
    finally:
        install_user_variables(old)
    ex = ex_for(target, **kw)
    return run(block, ex), ex


DOWNLOAD = [
    r"rewrite ^(/download/.*)/media/(\w+)\.?.*$ $1/mp3/$2.mp3 last",
    r"rewrite ^(/download/.*)/audio/(\w+)\.?.*$ $1/mp3/$2.ra last",
]


def test_download_media_rewrite_from_the_issue() -> None:
    result, ex = go(DOWNLOAD, b"/download/x/media/song.wma?q=1")
    assert result == SEARCH
    assert (ex.path, ex.args) == ("/download/x/mp3/song.mp3", "q=1")
    result, ex = go(DOWNLOAD, b"/download/y/audio/talk.ogg")
    assert result == SEARCH and ex.path == "/download/y/mp3/talk.ra"
    result, ex = go(DOWNLOAD, b"/download/y/other/talk.ogg")
    assert result == CONTINUE and ex.path == "/download/y/other/talk.ogg" and not ex.uri_rewritten


def test_flagless_rewrite_continues_then_searches_at_the_end_of_the_block() -> None:
    # R6: rewrite without a flag, then set: both run, then a re-search
    result, ex = go([r"rewrite ^/nf/(.*)$ /loc/$1", "set $x 1"], b"/nf/foo?z=1")
    assert result == SEARCH and ex.path == "/loc/foo" and ex.args == "z=1"
    assert ex.vars == {"x": "1"}


def test_break_flag_stays_and_stops_later_statements() -> None:
    result, ex = go([r"rewrite ^/brkp/(.*)$ /other/$1 break", "return 403"], b"/brkp/foo?z=1")
    assert result == BREAK and ex.path == "/other/foo" and ex.rewrite_break
    result, ex = go(["set $a 1", "break", "return 200"], b"/x")
    assert result == BREAK and ex.vars == {"a": "1"}


def test_args_rules() -> None:
    # R8: ?new keeps the old args after it; a trailing "?" drops them
    _, ex = go([r"rewrite ^/a/(\w+)$ /loc/new?x=$1 last"], b"/a/v1?orig=1")
    assert ex.args == "x=v1&orig=1"
    _, ex = go([r"rewrite ^/a/(\w+)$ /loc/new?x=$1? last"], b"/a/v1?orig=1")
    assert ex.args == "x=v1"
    _, ex = go([r"rewrite ^/a/(\w+)$ /loc/$1? last"], b"/a/v1?orig=1")
    assert (ex.path, ex.args) == ("/loc/v1", "")


def test_captures_in_args_are_escaped_when_the_uri_was_quoted() -> None:
    # /capq/a%20b%26c%3F -> args v=a%20b%26c%3F (nginx 1.22, V)
    ex = ex_for(b"/capq/a%20b%26c%3F", path="/capq/a b&c?")
    assert run(compile_rules([r"rewrite ^/capq/(.*)$ /loc/x?v=$1 last"]), ex) == SEARCH
    assert ex.args == "v=a%20b%26c%3F"


def test_redirect_and_permanent_flags_and_absolute_replacements() -> None:
    result, _ = go([r"rewrite ^/red/(.*)$ /target/$1 redirect"], b"/red/foo?q=1")
    assert result == Respond(302, None, "/target/foo?q=1")
    result, _ = go([r"rewrite ^/red/(.*)$ /target/$1 permanent"], b"/red/foo")
    assert result == Respond(301, None, "/target/foo")
    result, _ = go([r"rewrite ^/t/(.*)$ https://x.test/t/$1?n=1"], b"/t/v1?orig=1")
    assert result == Respond(302, None, "https://x.test/t/v1?n=1&orig=1")


def test_redirect_captures_cannot_inject_headers() -> None:
    # 2.5: CR LF in a capture of a redirect become %0D%0A
    ex = ex_for(b"/rs/%0d%0aX-Inj:%201", path="/rs/\r\nX-Inj: 1")
    result = run(compile_rules([r'rewrite "^/rs/([\s\S]*)$" https://x.test/$1 redirect']), ex)
    assert result == Respond(302, None, "https://x.test/%0D%0AX-Inj:%201")


def test_dot_does_not_match_a_newline() -> None:
    ex = ex_for(b"/x/a%0ab", path="/x/a\nb")
    assert run(compile_rules([r"rewrite ^/x/(.*)$ /y/$1 last"]), ex) == CONTINUE


def test_return_forms() -> None:
    assert go(["return 403"], b"/")[0] == Respond(403)
    assert go(['return 200 "text $uri"'], b"/p")[0] == Respond(200, "text /p")
    assert go(["return 418 x"], b"/")[0] == Respond(418, "x")
    assert go(["return 301 https://e.test$request_uri"], b"/a?b")[0] == Respond(
        301, None, "https://e.test/a?b"
    )
    assert go(["return https://e.test/"], b"/")[0] == Respond(302, None, "https://e.test/")
    assert go(["return 200 /x"], b"/")[0] == Respond(200, "/x")
    assert go(["return 301 not-a-url"], b"/")[0] == Respond(301, None, "not-a-url")


def test_if_conditions() -> None:
    ua = [(b"Host", b"h"), (b"User-Agent", b"Mozilla BadBot/1")]
    rule = ['if ($http_user_agent ~* "badbot") { return 403; }']
    assert go(rule, b"/", headers=ua)[0] == Respond(403)
    assert go(rule, b"/")[0] == CONTINUE
    # truthiness: "" and "0" are false, "00" and "false" true
    for value, expected in (("", CONTINUE), ("0", CONTINUE), ("00", Respond(204)), ("false", Respond(204))):
        assert go([f'set $v "{value}"', "if ($v) { return 204; }"], b"/")[0] == expected
    assert go(['if ($arg_a = "1") { return 204; }'], b"/?a=1")[0] == Respond(204)
    assert go(['if ($arg_a != "1") { return 204; }'], b"/?a=1")[0] == CONTINUE
    # a regex in if sets the captures for what follows
    result, _ex = go([r"if ($uri ~ ^/u/(\d+)$) { set $id $1; }", "return 200 $id"], b"/u/42")
    assert result == Respond(200, "42")
    assert go(["if ($uri !~ ^/u/) { return 204; }"], b"/v")[0] == Respond(204)


def test_if_file_tests(tmp_path: Any) -> None:
    (tmp_path / "exists.txt").write_text("x")
    assert go([f"if (-f {tmp_path}/exists.txt) {{ return 204; }}"], b"/")[0] == Respond(204)
    assert go([f"if (!-f {tmp_path}/missing) {{ return 204; }}"], b"/")[0] == Respond(204)
    assert go([f"if (-d {tmp_path}) {{ return 204; }}"], b"/")[0] == Respond(204)
    assert go([f"if (-e {tmp_path}/missing) {{ return 204; }}"], b"/")[0] == CONTINUE


def test_set_interpolates() -> None:
    result, _ex = go(['set $v "a-$arg_b-c"', "return 200 $v"], b"/?b=X")
    assert result == Respond(200, "a-X-c")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("rewrite ^/( /x", "invalid regex"),
        ("rewrite ^/ /x lastt", 'unknown flag "lastt"'),
        ("rewrite ^/ $nope_nope", 'unknown variable "$nope_nope"'),
        ("rewrite ^/(a) /$2", "capture the regex does not have"),
        ("return abc", "invalid return code"),
        ("return 301", "needs a URL"),
        ("rewrit ^/ /x", 'unknown statement "rewrit"'),
        ("if ($uri) { if ($uri) { return 200; } }", "cannot be nested"),
        ("if $uri { return 200; }", "must be written"),
        ("set x 1", '"set" needs'),
        ("if ($uri ~ ^/$host) { return 200; }", "variables in a regex"),
    ],
)
def test_bad_statements_name_their_index(rule: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_rules(["set $ok 1", rule])
    assert info.value.index == 1
    assert message in str(info.value)


def test_tokenize_quotes() -> None:
    assert tokenize("rewrite \"^/a b/(\\w+)$\" '/x y' last;") == ["rewrite", r"^/a b/(\w+)$", "/x y", "last"]
    assert tokenize(r'set $a "q\"uote"') == ["set", "$a", 'q"uote']


def test_declared_sets() -> None:
    assert declared_sets(["set $Backend_pool blue", "if ($x) { set $y 1; }", "rewrite ^ /x"]) == {
        "backend_pool",
        "y",
    }


def test_absolute_url() -> None:
    ex = ex_for(b"/a")
    assert absolute_url(ex, "/t") == "http://example.com:8080/t"
    ex = ex_for(b"/a", host="")
    assert absolute_url(ex, "/t") == "http://127.0.0.1:8080/t"
    assert absolute_url(ex, "https://x/") == "https://x/"


def test_map_exact_regex_default_hostnames() -> None:
    src = compile_template("$http_upgrade").render
    get = lambda n: lookup_variable(n).get  # noqa: E731
    upgrade = compile_map("cu", src, {"default": "upgrade", "": "close"}, False, get)
    assert upgrade.get(make_exchange()) == "close"
    assert upgrade.get(make_exchange(headers=[(b"Upgrade", b"websocket")])) == "upgrade"
    by_uri = compile_map(
        "m",
        compile_template("$uri").render,
        {"/exact": "e", "~^/api/(?P<v>v\\d)/": "api-$1", "~*^/CASE": "c", "default": "d"},
        False,
        get,
    )
    assert by_uri.get(ex_for(b"/exact")) == "e"
    assert by_uri.get(ex_for(b"/api/v2/x")) == "api-v2"
    assert by_uri.get(ex_for(b"/case/x")) == "c"
    assert by_uri.get(ex_for(b"/other")) == "d"
    hosts = compile_map(
        "h",
        compile_template("$host").render,
        {"*.example.com": "wild", ".example.org": "dot", "www.example.*": "tail", "default": "none"},
        True,
        get,
    )
    assert hosts.get(ex_for(b"/", host="a.example.com")) == "wild"
    assert hosts.get(ex_for(b"/", host="example.org")) == "dot"
    assert hosts.get(ex_for(b"/", host="x.example.org")) == "dot"
    assert hosts.get(ex_for(b"/", host="www.example.net")) == "tail"
    assert hosts.get(ex_for(b"/", host="example.com")) == "none"


# ---- config loading (keys, errors with file, key and statement index) -----------------------------


def test_config_errors_name_the_key_and_statement_index(tmp_path: Path) -> None:
    msg = error(tmp_path, make(location="rewrite_rules = ['set $a 1', 'rewrite ^/( /x last']"))
    assert "lb.toml" in msg and "http.servers[0].locations[0].rewrite_rules[1]" in msg
    assert "invalid regex" in msg
    msg = error(tmp_path, make(server="rewrite_rules = ['rewrite ^ $nosuchvar']"))
    assert "http.servers[0].rewrite_rules[0]" in msg and 'unknown variable "$nosuchvar"' in msg
    msg = error(tmp_path, make(location="rewrite_rules = ['rewrite ^ /x bogus']"))
    assert 'unknown flag "bogus"' in msg
    msg = error(tmp_path, make(server='error_page = { "502" = "@nowhere" }'))
    assert "http.servers[0].error_page" in msg and '"@nowhere" does not exist' in msg
    msg = error(tmp_path, make(server='error_page = { "200" = "/x" }'))
    assert "between 300 and 599" in msg
    msg = error(tmp_path, make(more='[http.maps.m]\nsource = "$uri"\nvalues = { "~^(" = "x" }'))
    assert "http.maps.m.values" in msg and "invalid regex" in msg
    msg = error(tmp_path, make(more='[http.maps.uri]\nsource = "$uri"\nvalues = { default = "x" }'))
    assert 'cannot define the variable "$uri"' in msg
    loop = (
        '[http.maps.a]\nsource = "$b"\nvalues = {}\n'
        '[http.maps.b]\nsource = "$uri"\nvalues = { default = "$a" }'
    )
    msg = error(tmp_path, make(more=loop))
    assert "http.maps.a" in msg and '"$a" depends on itself' in msg


def test_config_set_and_map_variables_are_known_everywhere(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        make(
            server="rewrite_rules = ['set $pool blue']",
            location='proxy_set_header = { X-Pool = "$pool", X-M = "$m" }',
            more='[http.maps.m]\nsource = "$pool"\nvalues = { blue = "b", default = "other" }',
        ),
    )
    server = config.http.servers[0]
    assert server.rewrite is not None and set(config.http.user_variables) == {"pool", "m"}
    ex = ex_for(b"/")
    assert run(server.rewrite, ex) == CONTINUE
    assert compile_template("$pool/$m").render(ex) == "blue/b"


def test_rewrite_log_at_notice(caplog: pytest.LogCaptureFixture) -> None:
    """Catches: rewrite_log not logging a matching rewrite at notice (25), or logging misses."""
    block = compile_rules([r"rewrite ^/old/(.*)$ /new/$1 last", "rewrite ^/never$ /x"], log_matches=True)
    with caplog.at_level(25, logger="prefork_lb.error"):
        assert run(block, ex_for(b"/old/a")) == SEARCH
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (25, '"^/old/(.*)$" matches "/old/a", client: 192.0.2.7')
    ]
