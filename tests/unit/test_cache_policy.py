"""prefork_lb/cache/policy.py: nginx's cache decisions (reference nginx-semantics-2.md 1.2-1.5).

Each case names the differential scenario (C1...) whose observed nginx outcome it encodes.
"""

from __future__ import annotations

import pytest

from prefork_lb.cache import policy as P

NOW_MS = 1_700_000_000_000
NOW_S = NOW_MS // 1000
VALID_10S = (P.parse_valid_rule("10s"),)


def store(status: int, *headers: tuple[bytes, bytes], rules=VALID_10S, ignore=frozenset(), no_cache=False):
    return P.store_decision(status, list(headers), NOW_MS, rules, ignore, no_cache)


# ---- proxy_cache_valid (rule 2) ----


def test_time_alone_means_200_301_302() -> None:
    """C1: valid 10s caches 200, 301, 302 only."""
    for status in (200, 301, 302):
        assert store(status) == P.StoreDecision(NOW_MS + 10_000)
    for status in (201, 203, 204, 303, 307, 308, 404, 410, 500, 503):
        assert store(status) is None


def test_206_is_never_stored() -> None:
    assert store(206, rules=(P.parse_valid_rule("any 10s"),)) is None


def test_valid_rules_first_match_wins_any_at_its_position() -> None:
    """C14: "any 1s" before "200 60s" gives 1 s to a 200."""
    rules = (P.parse_valid_rule("any 1s"), P.parse_valid_rule("200 60s"))
    assert P.valid_seconds(rules, 200) == 1
    rules = (P.parse_valid_rule("200 302 10m"), P.parse_valid_rule("404 1m"), P.parse_valid_rule("any 5s"))
    assert [P.valid_seconds(rules, s) for s in (200, 302, 404, 500, 301)] == [600, 600, 60, 5, 5]
    assert P.valid_seconds((P.parse_valid_rule("404 1m"),), 200) == 0


@pytest.mark.parametrize("bad", ["", "abc 10s", "99 10s", "600 1m", "any 200 1m", "200 1x"])
def test_invalid_valid_rules(bad: str) -> None:
    with pytest.raises(ValueError):
        P.parse_valid_rule(bad)


def test_no_valid_rules_nothing_cached_without_headers() -> None:
    """C2: without proxy_cache_valid only max-age / Expires / X-Accel-Expires cache."""
    assert store(200, rules=()) is None
    assert store(200, (b"Cache-Control", b"max-age=10"), rules=()) == P.StoreDecision(NOW_MS + 10_000)
    assert store(200, (b"X-Accel-Expires", b"10"), rules=()) == P.StoreDecision(NOW_MS + 10_000)
    d = store(200, (b"Expires", b"Thu, 01 Jan 2037 00:00:00 GMT"), rules=())
    assert d is not None and d.valid_until_ms == 2114380800 * 1000


def test_header_validity_applies_to_any_status() -> None:
    assert store(500, (b"Cache-Control", b"max-age=5"), rules=()) == P.StoreDecision(NOW_MS + 5000)


# ---- upstream headers (rule 1, C3/C4) ----


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Cache-Control", b"no-cache")],
        [(b"Cache-Control", b"no-store")],
        [(b"Cache-Control", b"private")],
        [(b"Cache-Control", b"max-age=0")],
        [(b"Cache-Control", b"public, max-age=0")],
        [(b"Cache-Control", b"max-age=abc")],
        [(b"Cache-Control", b"s-maxage=0, max-age=10")],
        [(b"Cache-Control", b'no-cache="Set-Cookie"')],
        [(b"Cache-Control", b'private="x", max-age=60')],
        [(b"cache-control", b"NO-STORE")],
        [(b"Expires", b"Thu, 01 Jan 1970 00:00:00 GMT")],
        [(b"Expires", b"garbage")],
        [(b"X-Accel-Expires", b"0")],
        [(b"Set-Cookie", b"a=1")],
        [(b"Vary", b"*")],
        [(b"Vary", b"Accept, *")],
        [(b"Vary", b"X-" + b"a" * 130)],
        [(b"Cache-Control", b"max-age=10, stale-while-revalidate=x")],
    ],
)
def test_not_cacheable(headers: list[tuple[bytes, bytes]]) -> None:
    """C3: each of these is MISS, MISS on nginx."""
    assert store(200, *headers) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Cache-Control", b"must-revalidate")],
        [(b"Pragma", b"no-cache")],
        [(b"Cache-Control", b"public")],
        [(b"Age", b"100")],
    ],
)
def test_ignored_directives_keep_valid_rule(headers: list[tuple[bytes, bytes]]) -> None:
    """C4: must-revalidate, Pragma, public, Age change nothing."""
    assert store(200, *headers) == P.StoreDecision(NOW_MS + 10_000)


def test_s_maxage_preferred_and_max_age_delimiters() -> None:
    assert store(200, (b"Cache-Control", b"max-age=100, s-maxage=20")) == P.StoreDecision(NOW_MS + 20_000)
    assert store(200, (b"Cache-Control", b"max-age=30;x")) == P.StoreDecision(NOW_MS + 30_000)
    assert store(200, (b"Cache-Control", b"public, MAX-AGE=7")) == P.StoreDecision(NOW_MS + 7000)


def test_stale_windows() -> None:
    d = store(200, (b"Cache-Control", b"max-age=1, stale-while-revalidate=30"))
    assert d == P.StoreDecision(NOW_MS + 1000, updating_s=30, error_s=30)
    d = store(200, (b"Cache-Control", b"max-age=1, stale-while-revalidate=30, stale-if-error=90"))
    assert d == P.StoreDecision(NOW_MS + 1000, updating_s=30, error_s=90)


def test_x_accel_expires_wins_whatever_the_order() -> None:
    """1.23 rule (reference 1.2): X-Accel-Expires beats Cache-Control in either order."""
    a = store(200, (b"Cache-Control", b"no-cache"), (b"X-Accel-Expires", b"10"))
    b = store(200, (b"X-Accel-Expires", b"10"), (b"Cache-Control", b"no-cache"))
    assert a == b == P.StoreDecision(NOW_MS + 10_000)
    assert store(200, (b"Cache-Control", b"max-age=50"), (b"X-Accel-Expires", b"0")) is None
    assert store(200, (b"X-Accel-Expires", b"@%d" % (NOW_S + 99))) == P.StoreDecision((NOW_S + 99) * 1000)
    # unparsable X-Accel-Expires: as if absent
    assert store(200, (b"X-Accel-Expires", b"soon"), (b"Cache-Control", b"max-age=3")) == P.StoreDecision(
        NOW_MS + 3000
    )


def test_max_age_beats_expires_whatever_the_order() -> None:
    past = (b"Expires", b"Thu, 01 Jan 1970 00:00:00 GMT")
    cc = (b"Cache-Control", b"max-age=10")
    assert store(200, past, cc) == store(200, cc, past) == P.StoreDecision(NOW_MS + 10_000)


def test_expires_in_future_without_max_age() -> None:
    d = store(200, (b"Cache-Control", b"public"), (b"Expires", b"Thu, 01 Jan 2037 00:00:00 GMT"))
    assert d is not None and d.valid_until_ms == 2114380800 * 1000


def test_proxy_ignore_headers() -> None:
    """C6: ignoring Set-Cookie and Cache-Control stores a response with both."""
    ignore = frozenset({"set-cookie", "cache-control"})
    d = store(200, (b"Set-Cookie", b"a=1"), (b"Cache-Control", b"no-store"), ignore=ignore)
    assert d == P.StoreDecision(NOW_MS + 10_000)
    assert store(200, (b"X-Accel-Expires", b"0"), ignore=frozenset({"x-accel-expires"})) is not None
    assert store(200, (b"Expires", b"garbage"), ignore=frozenset({"expires"})) is not None
    assert store(200, (b"Vary", b"*"), ignore=frozenset({"vary"})) == P.StoreDecision(NOW_MS + 10_000)


def test_no_cache_predicate_wins() -> None:
    assert store(200, (b"Cache-Control", b"max-age=10"), no_cache=True) is None


def test_vary_names_stored_sorted_lowercased() -> None:
    """C4/C5: Vary stores a variant keyed by the named request headers."""
    d = store(200, (b"Vary", b"Accept-Language, accept-encoding"), (b"Vary", b"Accept-Language"))
    assert d is not None and d.vary == (b"accept-encoding", b"accept-language")


def test_variant_md5_separates_values() -> None:
    names = (b"accept-language",)
    en = P.variant_md5(names, {b"accept-language": b"en"})
    de = P.variant_md5(names, {b"accept-language": b"de"})
    assert en != de and en == P.variant_md5(names, {b"accept-language": b"en", b"x": b"y"})
    assert P.variant_md5(names, {}) != en


def test_refreshed_validity_after_304() -> None:
    """C11: a 304 restarts validity from proxy_cache_valid (or the 304's headers)."""
    assert P.refreshed_validity(304, 200, [], NOW_MS, VALID_10S) == P.StoreDecision(NOW_MS + 10_000)
    d = P.refreshed_validity(304, 200, [(b"Cache-Control", b"max-age=3")], NOW_MS, VALID_10S)
    assert d == P.StoreDecision(NOW_MS + 3000)
    assert P.refreshed_validity(200, 200, [], NOW_MS, VALID_10S) is None


# ---- predicates (rule 3) ----


def test_predicate() -> None:
    assert not P.predicate([])
    assert not P.predicate(["", "0"])
    assert P.predicate(["", "1"])
    assert P.predicate(["00"])
    assert P.predicate(["yes"])


# ---- lookup (rule 4/5) ----


def test_freshness_boundary() -> None:
    assert P.is_fresh(NOW_MS, NOW_MS)
    assert not P.is_fresh(NOW_MS - 1, NOW_MS)


def test_stale_actions_match_nginx_matrix() -> None:
    """C17-C20: the lock does not protect expired keys; use_stale updating does."""
    # the request that marks the node
    assert P.stale_action(True, False, False) == "EXPIRED"  # lock only / neither
    assert P.stale_action(True, True, False) == "EXPIRED"  # updating only: goes upstream
    assert P.stale_action(True, True, True) == "STALE"  # + background update
    assert P.stale_action(True, False, True) == "EXPIRED"  # background alone needs stale use
    # the others
    assert P.stale_action(False, True, False) == "UPDATING"
    assert P.stale_action(False, False, False) == "EXPIRED"


def test_stale_while_revalidate_window() -> None:
    """C13: stale-while-revalidate allows stale use without use_stale updating."""
    assert P.stale_ok(True, NOW_MS - 10**9, 0, NOW_MS)
    assert P.stale_ok(False, NOW_MS - 1000, 30, NOW_MS)
    assert not P.stale_ok(False, NOW_MS - 31_000, 30, NOW_MS)
    assert not P.stale_ok(False, NOW_MS - 1, 0, NOW_MS)


def test_stale_on_error() -> None:
    """C10: error/timeout/http_500 listed -> STALE; a 404 not listed -> passed through."""
    use = frozenset({"error", "timeout", "http_500"})
    assert P.stale_on_error("error", use, NOW_MS - 5000, 0, NOW_MS)
    assert P.stale_on_error("http_500", use, NOW_MS - 5000, 0, NOW_MS)
    assert not P.stale_on_error("http_404", use, NOW_MS - 5000, 0, NOW_MS)
    assert P.stale_on_error("http_502", frozenset(), NOW_MS - 5000, 60, NOW_MS)  # stale-if-error
    assert not P.stale_on_error("http_502", frozenset(), NOW_MS - 61_000, 60, NOW_MS)


# ---- ranges (rule 6, C21/C22) ----


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"bytes=2-5", [(2, 5)]),
        (b"bytes=2-", [(2, 9)]),
        (b"bytes=-3", [(7, 9)]),
        (b"bytes=-30", [(0, 9)]),
        (b"bytes=5-100", [(5, 9)]),
        (b"bytes=1-2,5-6", [(1, 2), (5, 6)]),
        (b"BYTES=0-0", [(0, 0)]),
        (b"bytes=20-30", "unsatisfiable"),
        (b"bytes=20-30, 40-", "unsatisfiable"),
        (b"bytes=20-30, 2-3", [(2, 3)]),
        (b"bytes=-0", "unsatisfiable"),
        (b"bytes=5-2", None),
        (b"bytes=a-b", None),
        (b"bytes=1", None),
        (b"items=1-2", None),
        (b"bytes=0-9,0-9", None),  # more than the whole: full response (nginx)
    ],
)
def test_parse_ranges(header: bytes, expected: object) -> None:
    assert P.parse_ranges(header, 10) == expected


def test_if_range() -> None:
    assert P.if_range_matches(None, b'"v1"', b"")
    assert P.if_range_matches(b'"v1"', b'"v1"', b"")
    assert not P.if_range_matches(b'"v2"', b'"v1"', b"")
    assert not P.if_range_matches(b'W/"v1"', b'W/"v1"', b"")
    lm = b"Wed, 21 Oct 2015 07:28:00 GMT"
    assert P.if_range_matches(lm, b"", lm)
    assert not P.if_range_matches(b"Wed, 21 Oct 2015 07:28:01 GMT", b"", lm)


def test_multipart_layout() -> None:
    parts = P.multipart_parts([(1, 2), (5, 6)], 10, b"text/plain")
    assert parts[0] == (
        b"\r\n--00000000001\r\nContent-Type: text/plain\r\nContent-Range: bytes 1-2/10\r\n\r\n",
        1,
        2,
    )
    body = b"0123456789"
    out = b"".join(h + body[a : b + 1] for h, a, b in parts) + P.multipart_tail()
    assert out.endswith(b"56\r\n--00000000001--\r\n")
    assert len(out) == P.multipart_length(parts)


# ---- client conditionals (rule 7) ----


def test_not_modified() -> None:
    etag, lm = b'"v1"', b"Wed, 21 Oct 2015 07:28:00 GMT"
    assert P.not_modified(200, b'"v1"', None, etag, lm)
    assert P.not_modified(200, b'"x", W/"v1"', None, etag, lm)
    assert P.not_modified(200, b"*", None, etag, lm)
    assert not P.not_modified(200, b'"v2"', lm, etag, lm)  # INM decides when present
    assert P.not_modified(200, None, lm, etag, lm)
    assert not P.not_modified(200, None, b"Wed, 21 Oct 2015 07:28:01 GMT", etag, lm)
    assert not P.not_modified(404, b'"v1"', None, etag, lm)
    assert not P.not_modified(200, b'"v1"', None, b"", lm)


def test_upstream_drop_set() -> None:
    assert {
        b"range",
        b"if-range",
        b"if-match",
        b"if-unmodified-since",
        b"if-none-match",
        b"if-modified-since",
    } == P.UPSTREAM_DROP
