from __future__ import annotations

import re

import pytest

from prefork_lb.config.model import Address, ListenConfig, LocationConfig, ProxyPass, ServerConfig
from prefork_lb.http.routing import LocationMatcher, ServerRouter, build_routers
from prefork_lb.http.uri import normalize_host, normalize_path

# --- locations ------------------------------------------------------------------------------

_PROXY = ProxyPass(upstream="backend", uri=None, host_header="backend")


def loc(match: str, *, proxy: bool = False) -> LocationConfig:
    modifier, _, pattern = match.rpartition(" ")
    regex = None
    if modifier in ("~", "~*"):
        regex = re.compile(pattern, re.IGNORECASE if modifier == "~*" else 0)
    return LocationConfig(
        match=match,
        modifier=modifier,  # type: ignore[arg-type]
        pattern=pattern,
        regex=regex,
        proxy_pass=_PROXY if proxy else None,
        return_=None,
    )


# http://nginx.org/en/docs/http/ngx_http_core_module.html#location
NGINX_DOC = {
    "A": loc("= /"),
    "B": loc("/"),
    "C": loc("/documents/"),
    "D": loc("^~ /images/"),
    "E": loc(r"~* \.(gif|jpg|jpeg)$"),
}


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/", "A"),
        ("/index.html", "B"),
        ("/documents/document.html", "C"),
        ("/images/1.gif", "D"),
        ("/documents/1.jpg", "E"),
        ("/documents/1.JPG", "E"),
        ("/1.jpeg", "E"),
        ("/documents", "B"),
        ("/images", "B"),
        ("/images/", "D"),
        ("/x.gif.txt", "B"),
    ],
)
def test_nginx_doc_example(path: str, name: str) -> None:
    matcher = LocationMatcher(list(NGINX_DOC.values()))
    assert matcher.match(path) is NGINX_DOC[name]


def test_doc_example_in_any_order() -> None:
    matcher = LocationMatcher(list(reversed(NGINX_DOC.values())))
    assert matcher.match("/images/1.gif") is NGINX_DOC["D"]
    assert matcher.match("/documents/1.jpg") is NGINX_DOC["E"]
    assert matcher.match("/documents/x") is NGINX_DOC["C"]


def test_longest_prefix_wins_regardless_of_order() -> None:
    short, long_, longer = loc("/a"), loc("/a/b"), loc("/a/b/c")
    matcher = LocationMatcher([short, longer, long_])
    assert matcher.match("/a/b/c/d") is longer
    assert matcher.match("/a/bx") is long_
    assert matcher.match("/ax") is short
    assert matcher.match("/b") is None


def test_prefix_is_plain_startswith() -> None:
    api = loc("/api")
    matcher = LocationMatcher([api])
    assert matcher.match("/api") is api
    assert matcher.match("/apix/1") is api
    assert matcher.match("/ap") is None
    assert matcher.match("/API") is None  # case-sensitive


def test_exact_only_matches_whole_path() -> None:
    exact, root = loc("= /x"), loc("/")
    matcher = LocationMatcher([root, exact])
    assert matcher.match("/x") is exact
    assert matcher.match("/x/") is root
    assert matcher.match("/xy") is root


def test_exact_beats_regex_and_caret_tilde() -> None:
    exact, stop, regex = loc("= /img/a.png"), loc("^~ /img/"), loc(r"~ \.png$")
    matcher = LocationMatcher([regex, stop, exact])
    assert matcher.match("/img/a.png") is exact
    assert matcher.match("/img/b.png") is stop
    assert matcher.match("/b.png") is regex


def test_caret_tilde_only_stops_when_longest() -> None:
    stop, longer, regex = loc("^~ /static/"), loc("/static/js/"), loc(r"~ \.js$")
    matcher = LocationMatcher([stop, longer, regex])
    assert matcher.match("/static/a.js") is stop
    assert matcher.match("/static/js/a.js") is regex  # longest prefix is a plain one
    assert matcher.match("/static/js/a.css") is longer


def test_first_regex_in_config_order_wins() -> None:
    first, second = loc(r"~ ^/a"), loc(r"~ ^/a/b")
    matcher = LocationMatcher([first, second])
    assert matcher.match("/a/b") is first
    matcher = LocationMatcher([second, first])
    assert matcher.match("/a/b") is second


def test_regex_is_unanchored_search_and_case() -> None:
    sensitive, insensitive = loc(r"~ \.php"), loc(r"~* /admin")
    matcher = LocationMatcher([sensitive, insensitive])
    assert matcher.match("/x/index.php/y") is sensitive
    assert matcher.match("/x/index.PHP") is None
    assert matcher.match("/x/ADMIN/y") is insensitive


def test_no_locations() -> None:
    assert LocationMatcher([]).match("/") is None


def test_regex_location_needs_compiled_regex() -> None:
    broken = LocationConfig(match="~ x", modifier="~", pattern="x", regex=None, proxy_pass=None, return_=None)
    with pytest.raises(ValueError, match="compiled regex"):
        LocationMatcher([broken])


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"/%69mages/1.gif", "D"),
        (b"/documents/../images/1.gif", "D"),
        (b"//images//1.gif", "D"),
        (b"/images/..%2fdocuments/x", "C"),
        (b"/%2Fdocuments%2F1.jpg", "E"),
    ],
)
def test_matching_uses_normalized_path(raw: bytes, name: str) -> None:
    matcher = LocationMatcher(list(NGINX_DOC.values()))
    assert matcher.match(normalize_path(raw)) is NGINX_DOC[name]


def test_slash_redirect() -> None:
    api = loc("/api/", proxy=True)
    exact = loc("= /exact/", proxy=True)
    plain = loc("/noproxy/")
    named = loc("/named/", proxy=True)
    named_bare = loc("/named")
    root = loc("/", proxy=True)
    matcher = LocationMatcher([api, exact, plain, named, named_bare, root, loc(r"~ api")])
    assert matcher.needs_slash_redirect("/api")
    assert matcher.needs_slash_redirect("/exact")
    assert not matcher.needs_slash_redirect("/api/")
    assert not matcher.needs_slash_redirect("/noproxy")  # no proxy_pass
    assert not matcher.needs_slash_redirect("/named")  # a location is named exactly so
    assert not matcher.needs_slash_redirect("")
    assert not matcher.needs_slash_redirect("/")


# --- servers --------------------------------------------------------------------------------

KEY80 = ("inet", "0.0.0.0", 80)
KEY81 = ("inet", "0.0.0.0", 81)


def listen(port: int = 80, *, default: bool = False) -> ListenConfig:
    return ListenConfig(address=Address("inet", "0.0.0.0", port), default_server=default)


def server(*names: str, listens: tuple[ListenConfig, ...] | None = None, index: int = 0) -> ServerConfig:
    return ServerConfig(listen=listens or (listen(),), server_names=names, locations=(), index=index)


FIRST = server("first.test")
EXACT = server("www.example.com", "example.com")
HEAD = server("*.example.com")
LONGER_HEAD = server("*.a.example.com")
TAIL = server("www.example.*")
LONGER_TAIL = server("mail.example.co.*")
SHORT_TAIL = server("mail.*")
DOT = server(".example.net")
REGEX = server(r"~^(?P<sub>[a-z]+)\.example\.org$")
REGEX2 = server(r"~example")
EMPTY = server("")
ALL = [FIRST, EXACT, HEAD, LONGER_HEAD, TAIL, LONGER_TAIL, SHORT_TAIL, DOT, REGEX, REGEX2, EMPTY]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("first.test", FIRST),
        ("example.com", EXACT),
        ("www.example.com", EXACT),  # exact beats *.example.com and www.example.*
        ("x.example.com", HEAD),
        ("x.y.example.com", HEAD),
        ("a.example.com", HEAD),  # *.a.example.com needs a label before a.example.com
        ("x.a.example.com", LONGER_HEAD),
        ("z.x.a.example.com", LONGER_HEAD),
        ("www.example.org", TAIL),  # head wildcards are tried first, none matches
        ("www.example.co.uk", TAIL),
        ("mail", FIRST),  # mail.* needs a label after the dot
        ("mail.example.co.uk", LONGER_TAIL),
        ("mail.example.com", HEAD),  # leading wildcard beats trailing wildcard
        ("mail.test", SHORT_TAIL),
        ("example.net", DOT),
        ("a.b.example.net", DOT),
        ("abc.example.org", REGEX),  # tail www.example.* does not apply
        ("a.b.example.org", REGEX2),  # first regex does not match, second does
        ("myexample.io", REGEX2),
        ("", EMPTY),
        ("unknown.test", FIRST),  # default: first server for the address
        ("com", FIRST),
    ],
)
def test_server_name_precedence(host: str, expected: ServerConfig) -> None:
    router = ServerRouter(ALL, KEY80)
    assert router.select(host) is expected


def test_exact_hit_is_one_lookup() -> None:
    router = ServerRouter(ALL, KEY80)
    assert router._exact["example.com"] is EXACT


def test_host_with_port_is_normalized_first() -> None:
    router = ServerRouter(ALL, KEY80)
    assert router.select(normalize_host(b"WWW.Example.COM:8080")) is EXACT
    assert router.select(normalize_host(b"example.com.")) is EXACT
    assert router.select(normalize_host(b"X.Example.com:443")) is HEAD


def test_names_are_case_insensitive() -> None:
    upper = server("API.Example.COM", "*.Wild.TEST")
    router = ServerRouter([FIRST, upper], KEY80)
    assert router.select("api.example.com") is upper
    assert router.select("x.wild.test") is upper


def test_regex_with_uppercase_is_caseless_like_nginx() -> None:
    upper, lower = server(r"~^API\."), server(r"~^Z")
    router = ServerRouter([FIRST, upper, lower], KEY80)
    assert router.select("api.test") is upper
    assert router.select("zzz") is lower


def test_regexes_across_servers_in_config_order() -> None:
    one, two = server(r"~\.test$"), server(r"~^a")
    assert ServerRouter([one, two], KEY80).select("a.test") is one
    assert ServerRouter([two, one], KEY80).select("a.test") is two


def test_default_server_flag() -> None:
    plain = server("a.test")
    flagged = server("b.test", listens=(listen(default=True),))
    router = ServerRouter([plain, flagged], KEY80)
    assert router.default is flagged
    assert router.select("nothing.test") is flagged
    assert router.select("a.test") is plain


def test_server_without_names_gets_empty_name() -> None:
    default = server("a.test", listens=(listen(default=True),))
    nameless = server()
    router = ServerRouter([default, nameless], KEY80)
    assert router.select("") is nameless  # like nginx's implicit server_name ""
    assert router.select("other.test") is default


def test_conflicting_names_first_wins() -> None:
    one, two = server("dup.test", "*.dup.test"), server("dup.test", ".dup.test")
    router = ServerRouter([one, two], KEY80)
    assert router.select("dup.test") is one
    assert router.select("x.dup.test") is one


def test_router_ignores_servers_on_other_addresses() -> None:
    other = server("a.test", listens=(listen(81, default=True),))
    here = server("b.test")
    router = ServerRouter([other, here], KEY80)
    assert router.servers == (here,)
    assert router.select("a.test") is here


def test_router_without_servers() -> None:
    with pytest.raises(ValueError, match="no server"):
        ServerRouter([server("a.test")], KEY81)


@pytest.mark.parametrize(
    "name", ["*", "*.*", "www.*.example.com", "*.example.*", "*example.com", "ex*ample.com", ".", "~(", ".*"]
)
def test_invalid_server_names(name: str) -> None:
    with pytest.raises(ValueError, match="server_name"):
        ServerRouter([server(name)], KEY80)


def test_build_routers_groups_by_listen_key() -> None:
    both = server("both.test", listens=(listen(80), listen(81)))
    only80 = server("only80.test", listens=(listen(80), listen(80)))
    only81 = server("only81.test", listens=(listen(81, default=True),))
    routers = build_routers([both, only80, only81])
    assert set(routers) == {KEY80, KEY81}
    assert routers[KEY80].servers == (both, only80)
    assert routers[KEY81].servers == (both, only81)
    assert routers[KEY80].default is both
    assert routers[KEY81].default is only81
    assert routers[KEY80].select("only81.test") is both
    assert routers[KEY81].select("only80.test") is only81
    assert routers[KEY81].listen_key == KEY81


def test_build_routers_empty() -> None:
    assert build_routers([]) == {}
