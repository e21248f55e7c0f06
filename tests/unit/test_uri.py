from __future__ import annotations

import pytest

from prefork_lb.http.uri import UriError, encode_path, normalize_host, normalize_path, split_target

# --- split_target ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", (None, b"/", b"")),
        (b"/p?q", (None, b"/p", b"q")),
        (b"/p?", (None, b"/p", b"")),
        (b"/p?a=1?b=2", (None, b"/p", b"a=1?b=2")),
        (b"/?x", (None, b"/", b"x")),
        (b"//secret/x", (None, b"//secret/x", b"")),
        (b"/caf\xc3\xa9?q=\xff", (None, b"/caf\xc3\xa9", b"q=\xff")),  # obs-text kept raw
        (b"/a%20b", (None, b"/a%20b", b"")),
        (b"http://Host:8080/p?q", ("host:8080", b"/p", b"q")),
        (b"HTTP://example.com", ("example.com", b"/", b"")),
        (b"https://example.com/", ("example.com", b"/", b"")),
        (b"hTTpS://Example.COM?x=1", ("example.com", b"/", b"x=1")),
        (b"http://[::1]:8080/x", ("[::1]:8080", b"/x", b"")),
        (b"http://example.com//a/../b", ("example.com", b"//a/../b", b"")),
    ],
)
def test_split_target(target: bytes, expected: tuple[str | None, bytes, bytes]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        b"",
        b"*",
        b"p",
        b"example.com:80",  # authority-form
        b"ftp://example.com/",
        b"http:/example.com/",
        b"http://",
        b"http:///x",
        b"http://u:p@host/",
        b"http://u@host/",
        b"http://a b/",
        b"http://a:b:c/",
        b"http://exa..mple/",
        b"/a#frag",
        b"/a b",
        b"/a\x00",
        b"/a\x7f",
        b"/a\t",
        b"/a\r\n",
        b"/a?q#f",
    ],
)
def test_split_target_rejects(target: bytes) -> None:
    with pytest.raises(UriError) as info:
        split_target(target)
    assert info.value.status == 400


# --- normalize_path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # fast path
        (b"/", "/"),
        (b"/index.html", "/index.html"),
        (b"/a/b/", "/a/b/"),
        (b"/a.b/c..d/...", "/a.b/c..d/..."),
        (b"/SECRET/x", "/SECRET/x"),
        (b"/caf\xc3\xa9", "/caf\xc3\xa9"),  # one char per byte
        # nginx's observed behaviours
        (b"/secret/../secret/x", "/secret/x"),
        (b"/x/../secret/x", "/secret/x"),
        (b"/%73ecret/x", "/secret/x"),
        (b"/a/%2e%2e/secret/x", "/secret/x"),
        (b"/a/%2E%2E/secret/x", "/secret/x"),
        (b"/a/..%2fsecret/x", "/secret/x"),
        (b"//secret/x", "/secret/x"),
        (b"/./secret/x", "/secret/x"),
        (b"/secret%2fx", "/secret/x"),
        (b"/secret%2Fx", "/secret/x"),
        (b"/secret%2f%2fx", "/secret/x"),
        # dot segments and slashes
        (b"/a/.", "/a/"),
        (b"/a/..", "/"),
        (b"/a/b/..", "/a/"),
        (b"/a/b/../", "/a/"),
        (b"/a/./b", "/a/b"),
        (b"/a//b//", "/a/b/"),
        (b"///", "/"),
        (b"/.", "/"),
        (b"/./", "/"),
        (b"/.hidden/x", "/.hidden/x"),
        (b"/a/.../b", "/a/.../b"),
        (b"/a/b/../../c", "/c"),
        # decoding
        (b"/a%20b", "/a b"),
        (b"/%25", "/%"),
        (b"/%252e%252e/x", "/%2e%2e/x"),  # decoded once only
        (b"/a%3Fb", "/a?b"),
        (b"/%C3%A9", "/\xc3\xa9"),
        (b"/%ff", "/\xff"),
    ],
)
def test_normalize_path(raw: bytes, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/%2e%2e/secret/x",
        b"/a/../../secret/x",
        b"/..",
        b"/../",
        b"/%2e%2e",
        b"/a/%2e%2e%2f..",
        b"/%zz",
        b"/%4",
        b"/%",
        b"/a%g1",
        b"/%00",
        b"/a%00b",
        b"",
        b"a/b",
    ],
)
def test_normalize_path_rejects(raw: bytes) -> None:
    with pytest.raises(UriError) as info:
        normalize_path(raw)
    assert info.value.status == 400


# --- encode_path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", b"/"),
        ("/a/b.html", b"/a/b.html"),
        ("/a-b_c~d/!$&'()*+,;=:@", b"/a-b_c~d/!$&'()*+,;=:@"),
        ("/a b", b"/a%20b"),
        ("/a%b", b"/a%25b"),
        ("/a?b#c", b"/a%3Fb%23c"),
        ("/\x00\x1f\x7f", b"/%00%1F%7F"),
        ('/"<>\\^`{|}', b"/%22%3C%3E%5C%5E%60%7B%7C%7D"),
        ("/\xc3\xa9", b"/%C3%A9"),  # latin-1 chars are bytes
        ("/\xff", b"/%FF"),
        ("/é", b"/%E9"),
        ("/€", b"/%E2%82%AC"),  # beyond latin-1 (config text): UTF-8
    ],
)
def test_encode_path(path: str, expected: bytes) -> None:
    assert encode_path(path) == expected


@pytest.mark.parametrize(
    "path",
    ["/", "/a/b/", "/a b/c%d", "/q?x#y", "/\xc3\xa9\xff", "/%2e%2e", "/a;b=c/@:"],
)
def test_encode_path_round_trip(path: str) -> None:
    assert normalize_path(encode_path(path)) == path


# --- normalize_host -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"example.com:", "example.com"),  # RFC 3986: port = *DIGIT
        (b"example.com.", "example.com"),
        (b"Example.com.:80", "example.com"),
        (b"localhost", "localhost"),
        (b"127.0.0.1:80", "127.0.0.1"),
        (b"[::1]", "[::1]"),
        (b"[::1]:8080", "[::1]"),
        (b"[FE80::A]:1", "[fe80::a]"),
        (b"[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]"),
        (b"under_score.x", "under_score.x"),
        (b"a-b~c!$&'()*+,;=%41", "a-b~c!$&'()*+,;=%41"),
        (b"x:65535", "x"),
    ],
)
def test_normalize_host(value: bytes, expected: str) -> None:
    assert normalize_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b":80",
        b"x/y",
        b"x\\y",
        b"x y",
        b"a:b:c",
        b"a:b",
        b"a:123456",
        b"a\x00b",
        b"a..b",
        b"..",
        b".",
        b".example.com",
        b"example.com..",
        b"caf\xc3\xa9.com",
        b"[::1",
        b"[::1]x",
        b"[::1].",
        b"[::1]:8080:1",
        b"[example.com]",
        b"::1",
        b"u@host",
        b"host\t",
    ],
)
def test_normalize_host_rejects(value: bytes) -> None:
    with pytest.raises(UriError) as info:
        normalize_host(value)
    assert info.value.status == 400
