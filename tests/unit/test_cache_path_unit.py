"""http/cache_path.py's sans-IO helpers: the stored head and the upstream request head."""

from __future__ import annotations

from prefork_lb.cache.entry import EntryMeta
from prefork_lb.http.cache_fill import stored_head
from prefork_lb.http.cache_serve import parse_stored_head
from prefork_lb.http.response import parse_response_head

UPSTREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n"
    b'Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nETag: "v1"'
)


def test_stored_head_keeps_end_to_end_fields_only() -> None:
    """Hop-by-hop fields, fields Connection names and framing never reach the entry; the rest
    is kept in order and parses back exactly."""
    resp = parse_response_head(UPSTREAM, False)
    head = stored_head(resp)
    assert head == (b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nETag: "v1"\r\n\r\n')
    assert parse_stored_head(head) == (
        200,
        b"OK",
        [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1"), (b"ETag", b'"v1"')],
    )


def test_stored_head_without_reason() -> None:
    resp = parse_response_head(b"HTTP/1.1 404\r\nX: y", False)
    assert parse_stored_head(stored_head(resp)) == (404, b"", [(b"X", b"y")])


class _Plan:
    convert_head = True
    revalidate = True


def _fill(method: bytes, validators: tuple[bytes, bytes] | None):  # type: ignore[no-untyped-def]
    from prefork_lb.http.cache_fill import Fill

    fill = Fill.__new__(Fill)
    fill.as_get = method == b"HEAD"
    fill.validators = validators
    return fill


def test_upstream_head_drops_client_conditionals_and_range() -> None:
    """Rule 6: HEAD becomes GET; Range, If-* of the client are dropped; our validators added."""
    raw = (
        b'HEAD /x?a=1 HTTP/1.1\r\nHost: be\r\nRange: bytes=1-2\r\nIf-None-Match: "c"\r\n'
        b"if-modified-since: x\r\nIf-Range: y\r\nIf-Match: z\r\nIf-Unmodified-Since: w\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n"
    )
    out = _fill(b"HEAD", (b'"v1"', b"Wed, 21 Oct 2015 07:28:00 GMT")).upstream_head(raw)
    assert out == (
        b"GET /x?a=1 HTTP/1.1\r\nHost: be\r\nAccept: */*\r\nConnection: close\r\n"
        b'If-None-Match: "v1"\r\nIf-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n'
    )
    plain = b"GET / HTTP/1.1\r\nHost: be\r\n\r\n"
    assert _fill(b"GET", None).upstream_head(plain) == plain


def test_entry_meta_is_the_stores() -> None:
    """The path builds the store's EntryMeta (a rename there must fail here)."""
    meta = EntryMeta(valid_until_ms=1, etag=b'"v"', vary=b"accept", variant_md5=b"x" * 16)
    assert meta.vary == b"accept"


def test_compiled_default_key_is_the_templates_bytes() -> None:
    """Rule 10: the precompiled default key gives exactly the bytes the template renders, for
    plain and TLS connections and any target bytes (a wrong scheme, host or target here would
    move every entry to another file); another key still renders its template."""
    from dataclasses import replace

    from prefork_lb.config.model import LocationConfig, ProxyPass
    from prefork_lb.http.cache_path import DEFAULT_KEY, compile_key
    from prefork_lb.http.template import compile_template
    from tests.unit.test_variables import make_exchange

    loc = LocationConfig(
        match="/",
        modifier="",
        pattern="/",
        regex=None,
        proxy_pass=ProxyPass(upstream="backend", uri=None, host_header="backend:8081"),
        return_=None,
    )
    assert loc.proxy_cache_key == DEFAULT_KEY
    fast, template = compile_key(loc), compile_template(DEFAULT_KEY)
    assert fast.__name__ == "default_key"
    plain = make_exchange(location=loc, target=b"/a%20b?x=\xff")
    tls = make_exchange(location=loc, target=b"/t")
    tls.conn.tls = object()  # type: ignore[assignment]
    assert fast(plain) == b"httpbackend:8081/a%20b?x=\xff" == template.render(plain).encode("latin-1")
    assert fast(tls) == b"httpsbackend:8081/t" == template.render(tls).encode("latin-1")
    other = compile_key(replace(loc, proxy_cache_key="$host$request_uri"))
    assert other(plain) == b"example.com/a%20b?x=\xff"
