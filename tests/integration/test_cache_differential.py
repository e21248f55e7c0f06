"""Differential: the content cache of nginx 1.22 and prefork-lb on one nginx.conf (prefork-lb
converts it: tests/nginx_conf.py), scenarios C1-C25 of shared/reference/nginx-semantics-2.md
section 1.9, each run on both servers against the same real upstream (tests/cache_upstream.py:
its body carries ``n=<requests for the path>``, and it records what reached it).

Every scenario is parametrized over ``nginx`` and ``prefork-lb`` and asserts the same expected
outcome on both, written out here from the reference (and passing on nginx): the sequence of
``$upstream_cache_status`` (the ``X-Cache-Status`` header, ``add_header ... always``), the
status, which upstream answer the client got (``n``) and how many requests reached the
upstream. So the nginx run proves each expectation is nginx's, and the prefork-lb run is the
differential.

Waits: expiry is measured by the servers' clocks in whole seconds compared with ``<``, so a
scenario waits TTL + 1.1 s for an entry to expire (``expire``); that is a wait on the clock
the behaviour is defined by, not a synchronisation sleep. Everything else waits on
conditions (the upstream's request count).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_harness import Rig, Seen, expire, settled
from tests.cache_upstream import CacheUpstream
from tests.harness import wait_for
from tests.nginx_conf import NGINX

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]

TARGETS = ("nginx", "prefork-lb")
EXPIRES_2037 = "Expires:Thu, 01 Jan 2037 00:00:00 GMT".replace(" ", "%20").replace(",", "%2C")


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend() -> Iterator[CacheUpstream]:
    with CacheUpstream() as b:
        yield b


# ---- C1-C9: what is stored -------------------------------------------------------------------


def test_c1_valid_time_alone_caches_200_301_302(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: ``proxy_cache_valid 10s`` (a time alone) caching another status than 200, 301
    and 302, or not caching those."""
    cached = (200, 301, 302)
    others = (201, 203, 204, 206, 303, 307, 308, 404, 410, 500, 503)
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        seen = {code: rig.rows(f"/c1/{code}?s={code}", 2) for code in (*cached, *others)}
    for code in cached:
        assert seen[code] == [(code, "MISS", 1), (code, "HIT", 1)], code
        assert backend.count(f"/c1/{code}") == 1
    for code in others:
        first, second = (0, 0) if code == 204 else (1, 2)  # a 204 has no body
        assert seen[code] == [(code, "MISS", first), (code, "MISS", second)], code
        assert backend.count(f"/c1/{code}") == 2


def test_c2_without_valid_only_upstream_validity_caches(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: a default validity where no proxy_cache_valid is set (nginx caches nothing
    then), or Cache-Control max-age / Expires / X-Accel-Expires not giving one."""
    cases = {
        "plain": ("", False),
        "maxage": ("h=Cache-Control:max-age%3D10", True),
        "expires": (f"h={EXPIRES_2037}", True),
        "accel": ("h=X-Accel-Expires:10", True),
    }
    with Rig(target, tmp_path, backend, "") as rig:
        seen = {name: rig.rows(f"/c2/{name}?{q}", 2) for name, (q, _) in cases.items()}
    for name, (_, stored) in cases.items():
        assert seen[name] == [(200, "MISS", 1), (200, "HIT", 1) if stored else (200, "MISS", 2)], name


C3_NOT_STORED = {
    "cc-no-cache": "h=Cache-Control:no-cache",
    "cc-no-store": "h=Cache-Control:no-store",
    "cc-private": "h=Cache-Control:private",
    "cc-max-age-0": "h=Cache-Control:max-age%3D0",
    "cc-public-max-age-0": "h=Cache-Control:public%2C%20max-age%3D0",
    "cc-max-age-abc": "h=Cache-Control:max-age%3Dabc",
    "cc-s-maxage-0": "h=Cache-Control:s-maxage%3D0%2C%20max-age%3D10",
    "cc-no-cache-field": "h=Cache-Control:no-cache%3D%22Set-Cookie%22",
    "expires-1970": "h=Expires:Thu%2C%2001%20Jan%201970%2000:00:00%20GMT",
    "expires-garbage": "h=Expires:garbage",
    "accel-0": "h=X-Accel-Expires:0",
    "set-cookie": "h=Set-Cookie:a%3Db",
    "vary-star": "h=Vary:*",
}


def test_c3_upstream_headers_that_forbid_storing(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: any of nginx's not-cacheable rules missed (Cache-Control no-cache / no-store /
    private anywhere, max-age 0 or garbage, s-maxage=0 beating max-age, a past or unparsable
    Expires, X-Accel-Expires 0, Set-Cookie, Vary: *) while proxy_cache_valid would cache."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        seen = {name: rig.rows(f"/c3/{name}?{q}", 2) for name, q in C3_NOT_STORED.items()}
    for name in C3_NOT_STORED:
        assert seen[name] == [(200, "MISS", 1), (200, "MISS", 2)], name


def test_c4_headers_nginx_ignores(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: must-revalidate or Pragma: no-cache treated as not cacheable, or a plain Vary
    (stored per variant) refused."""
    cases = {
        "must-revalidate": "h=Cache-Control:must-revalidate",
        "pragma": "h=Pragma:no-cache",
        "vary": "h=Vary:Accept-Language",
    }
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        seen = {name: rig.rows(f"/c4/{name}?{q}", 2) for name, q in cases.items()}
    for name in cases:
        assert seen[name] == [(200, "MISS", 1), (200, "HIT", 1)], name


def test_c5_vary_stores_one_variant_per_value(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a Vary response served to a client with another value of the varying header
    (one entry per key instead of per variant), or a variant overwriting the other."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        path = "/c5?h=Vary:Accept-Language"
        seen = [rig.ask(path, headers={"Accept-Language": lang}).row for lang in ("en", "de", "en", "de")]
    assert seen == [(200, "MISS", 1), (200, "MISS", 2), (200, "HIT", 1), (200, "HIT", 2)]
    assert backend.count("/c5") == 2


def test_c6_ignored_headers_are_replayed(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: proxy_ignore_headers not applied (Set-Cookie or no-store still forbidding the
    store), or the HIT dropping the stored Set-Cookie (nginx replays stored headers verbatim)."""
    location = "proxy_cache_valid 10s; proxy_ignore_headers Set-Cookie Cache-Control;"
    with Rig(target, tmp_path, backend, location) as rig:
        path = "/c6?h=Set-Cookie:s%3D1&h=Cache-Control:no-store"
        first, second = rig.ask(path), rig.ask(path)
    assert (first.row, second.row) == ((200, "MISS", 1), (200, "HIT", 1))
    assert second.headers.get("set-cookie") == "s=1"
    assert second.headers.get("cache-control") == "no-store"


def test_c7_head_is_fetched_as_get(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a HEAD sent upstream as HEAD (nothing to store) or its entry not serving the
    GET after it (proxy_cache_convert_head is on by default)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        head1 = rig.ask("/c7", method="HEAD")
        rig.wait_stored(1)
        get = rig.ask("/c7")
        head2 = rig.ask("/c7", method="HEAD")
    assert [head1.cache, get.cache, head2.cache] == ["MISS", "HIT", "HIT"]
    assert (get.body, head1.body, head2.body) == (b"n=1\n", b"", b"")
    assert [r.method for r in backend.received("/c7")] == ["GET"]


def test_c8_cached_post_answers_a_get(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: proxy_cache_methods POST putting the body or method into the key (nginx does
    neither: the second POST and a GET hit the first POST's entry)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s; proxy_cache_methods POST;") as rig:
        seen = [
            rig.ask("/c8", method="POST", body=b"x").row,
            rig.ask("/c8", method="POST", body=b"y").row,
            rig.ask("/c8").row,
        ]
    assert seen == [(200, "MISS", 1), (200, "HIT", 1), (200, "HIT", 1)]
    assert backend.count("/c8") == 1


def test_c9_min_uses(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: min_uses counted off by one (the response is stored on the Nth request)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s; proxy_cache_min_uses 3;") as rig:
        seen = rig.rows("/c9", 4)
    assert seen == [(200, "MISS", 1), (200, "MISS", 2), (200, "MISS", 3), (200, "HIT", 3)]


# ---- C10-C14: stale, revalidate, background update ------------------------------------------


def test_c10_use_stale_on_error_and_5xx(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: use_stale not covering a refused upstream or a 500, a status outside the list
    (404) replacing or dropping the stale entry, or the stale entry lost after it."""
    location = "proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_cache_use_stale error timeout http_500;"
    with Rig(target, tmp_path, backend, location) as rig:
        seed = rig.ask("/c10").row
        expire(1)
        backend.refuse()
        try:
            refused = rig.ask("/c10").row
        finally:
            backend.listen()
        error500 = rig.ask("/c10?s=500").row
        notfound = rig.ask("/c10?s=404").row
        again500 = rig.ask("/c10?s=500").row
    assert seed == (200, "MISS", 1)
    assert refused == (200, "STALE", 1)
    assert error500 == (200, "STALE", 1)
    assert notfound == (404, "EXPIRED", 3)
    assert again500 == (200, "STALE", 1)
    assert backend.count("/c10") == 4  # the refused one never arrived


def test_c11_revalidate(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: an expired entry refetched whole instead of revalidated (If-None-Match with the
    stored ETag), the 304 not refreshing the entry (REVALIDATED, then HIT on the same body)."""
    location = "proxy_cache_valid 200 1s; proxy_cache_revalidate on;"
    with Rig(target, tmp_path, backend, location) as rig:
        seed = rig.ask("/c11?etag=v1").row
        expire(1)
        seen = rig.rows("/c11?etag=v1", 2)
    assert seed == (200, "MISS", 1)
    assert seen == [(200, "REVALIDATED", 1), (200, "HIT", 1)]
    received = backend.received("/c11")
    assert len(received) == 2 and received[1].headers.get("if-none-match") == '"v1"'
    assert "if-none-match" not in received[0].headers


def test_c12_background_update(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: the client that finds the entry expired waiting for the upstream (with
    background_update it gets the stale entry at once: STALE), later clients not getting
    UPDATING while the update runs, or the update's answer not stored (HIT, n=2)."""
    location = (
        "proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_cache_use_stale updating; "
        "proxy_cache_background_update on;"
    )
    with Rig(target, tmp_path, backend, location) as rig:
        seed = rig.ask("/c12").row
        expire(1)
        stale = rig.ask("/c12?d=1500")
        updating = rig.ask("/c12?d=1500")
        settled(backend, "/c12", 2)
        wait_for(lambda: rig.ask("/c12").cache == "HIT", timeout_s=5, what="the update to land")
        hit = rig.ask("/c12").row
    assert seed == (200, "MISS", 1)
    assert (stale.row, updating.row) == ((200, "STALE", 1), (200, "UPDATING", 1))
    assert stale.elapsed_s < 1.0 and updating.elapsed_s < 1.0  # the upstream takes 1.5 s
    assert hit == (200, "HIT", 2)
    assert backend.count("/c12") == 2


def test_c13_stale_while_revalidate_from_upstream(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: Cache-Control stale-while-revalidate not allowing a stale answer where
    proxy_cache_use_stale is not set (background_update alone)."""
    with Rig(target, tmp_path, backend, "proxy_cache_background_update on;") as rig:
        path = "/c13?h=Cache-Control:max-age%3D1%2C%20stale-while-revalidate%3D30"
        seed = rig.ask(path).row
        expire(1)
        stale = rig.ask(path).row
        settled(backend, "/c13", 2)
    assert (seed, stale) == ((200, "MISS", 1), (200, "STALE", 1))


def test_c14_first_valid_match_wins(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: proxy_cache_valid picking the most specific line instead of the first match in
    config order (``any 1s`` before ``200 60s``: the entry expires after 1 s)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid any 1s; proxy_cache_valid 200 60s;") as rig:
        seed = rig.ask("/c14").row
        expire(1)
        again = rig.ask("/c14").row
    assert (seed, again) == ((200, "MISS", 1), (200, "EXPIRED", 2))


# ---- C15-C20, C25: the lock and microcaching bursts ------------------------------------------


def test_c15_lock_collapses_a_new_key(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a burst on a new key sending more than one request upstream with the lock on,
    or the waiters not served from the entry once it lands (29 HIT)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s; proxy_cache_lock on;") as rig:
        seen = rig.burst("/c15?d=1000", 30)
    assert sorted(s.cache for s in seen) == ["HIT"] * 29 + ["MISS"]
    assert {s.n for s in seen} == {1}
    assert backend.count("/c15") == 1


@pytest.mark.parametrize("workers", [2, 4])
def test_c15_lock_across_workers(target: str, tmp_path: Path, backend: CacheUpstream, workers: int) -> None:
    """Catches: the lock on a new key being per worker (each worker would send its own
    request upstream): one upstream request for the 30 with 2 and 4 workers."""
    location = "proxy_cache_valid 10s; proxy_cache_lock on;"
    with Rig(target, tmp_path, backend, location, workers=workers) as rig:
        seen = rig.burst("/c15w?d=1000", 30)
    assert sorted(s.cache for s in seen) == ["HIT"] * 29 + ["MISS"]
    assert backend.count("/c15w") == 1


def test_c16_lock_timeout(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a waiter whose lock_timeout passed still waiting (it goes upstream: 6 upstream
    requests), or its response stored over the lock holder's (nginx stores only the holder's:
    the next GET is a HIT on n=1)."""
    location = "proxy_cache_valid 10s; proxy_cache_lock on; proxy_cache_lock_timeout 1s;"
    with Rig(target, tmp_path, backend, location) as rig:
        seen = rig.burst("/c16?d=3000", 6)
        after = rig.ask("/c16?d=3000")
    assert [s.cache for s in seen] == ["MISS"] * 6
    assert backend.count("/c16") == 6
    assert max(s.elapsed_s for s in seen) < 6.0  # nginx: 4.0 s (1 s + up to 0.5 s poll + 3 s)
    assert (after.cache, after.elapsed_s < 1.0) == ("HIT", True)
    holder = min(seen, key=lambda s: s.elapsed_s)  # the lock holder answered first (3 s)
    assert after.n == holder.n


BURST_EXPIRED = {
    # C17-C20: config -> (the 30 statuses, sorted; upstream requests in the burst)
    "lock+updating": (
        "proxy_cache_lock on; proxy_cache_use_stale updating;",
        ["EXPIRED"] + ["UPDATING"] * 29,
        1,
    ),
    "lock+updating+background": (
        "proxy_cache_lock on; proxy_cache_use_stale updating; proxy_cache_background_update on;",
        ["STALE"] + ["UPDATING"] * 29,
        1,
    ),
    "lock only": ("proxy_cache_lock on;", ["EXPIRED"] * 30, 30),
    "updating only": ("proxy_cache_use_stale updating;", ["EXPIRED"] + ["UPDATING"] * 29, 1),
    "neither": ("", ["EXPIRED"] * 30, 30),
}


def expired_burst(
    target: str, tmp_path: Path, backend: CacheUpstream, case: str, workers: int
) -> tuple[list[Seen], int]:
    extra, _, _ = BURST_EXPIRED[case]
    location = f"proxy_cache_key $uri; proxy_cache_valid 200 1s; {extra}"
    with Rig(target, tmp_path, backend, location, workers=workers) as rig:
        assert rig.ask("/burst").row == (200, "MISS", 1)
        expire(1)
        seen = rig.burst("/burst?d=1000", 30)
        if "background" in case:  # its upstream request may land after the answers
            settled(backend, "/burst", 2)
    return seen, backend.count("/burst") - 1


@pytest.mark.parametrize("case", list(BURST_EXPIRED))
def test_c17_to_c20_burst_on_an_expired_key(
    target: str, tmp_path: Path, backend: CacheUpstream, case: str
) -> None:
    """Catches (nginx's trap 2): the lock taken to protect an expired key (it does not: lock
    only sends all 30 upstream), or use_stale updating not collapsing the burst to one upstream
    request; with background update the 30 are answered from the stale entry at once."""
    _, statuses, upstream = BURST_EXPIRED[case]
    seen, sent = expired_burst(target, tmp_path, backend, case, workers=1)
    assert sorted(s.cache for s in seen) == sorted(statuses)
    assert sent == upstream
    if "background" in case:
        assert max(s.elapsed_s for s in seen) < 0.9  # the upstream takes 1 s


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("case", ["lock+updating", "lock+updating+background"])
def test_c25_bursts_with_several_workers(
    target: str, tmp_path: Path, backend: CacheUpstream, case: str, workers: int
) -> None:
    """Catches: the updating mark or the lock being per worker (each worker would send its
    own upstream request): the microcaching burst is one upstream request with 2 and 4 workers."""
    _, statuses, upstream = BURST_EXPIRED[case]
    seen, sent = expired_burst(target, tmp_path, backend, case, workers=workers)
    assert sorted(s.cache for s in seen) == sorted(statuses)
    assert sent == upstream == 1


# ---- C21-C24: ranges, keys ---------------------------------------------------------------------


def test_c21_ranges_with_accept_ranges(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a range answered wrongly from the cache: a single range on MISS and HIT (206),
    a multi-range on a HIT (206 multipart) but not on a MISS (200 full), an unsatisfiable
    range (416 with ``bytes */len``)."""
    path = "/c21?h=Accept-Ranges:bytes&b=abcdefghij"  # body "n=1 abcdefghij\n", 15 bytes
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        miss = rig.ask(path, headers={"Range": "bytes=2-5"})
        hit = rig.ask(path, headers={"Range": "bytes=2-5"})
        multi = rig.ask(path, headers={"Range": "bytes=1-2,5-6"})
        multi_miss = rig.ask(path + "&x=2", headers={"Range": "bytes=1-2,5-6"})
        unsatisfiable = rig.ask(path, headers={"Range": "bytes=20-30"})
    assert (miss.status, miss.cache, miss.body) == (206, "MISS", b"1 ab")
    assert miss.headers["content-range"] == "bytes 2-5/15"
    assert (hit.status, hit.cache, hit.body) == (206, "HIT", b"1 ab")
    assert (multi.status, multi.cache) == (206, "HIT")
    assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert b"Content-Range: bytes 1-2/15\r\n\r\n=1\r\n" in multi.body
    assert b"Content-Range: bytes 5-6/15\r\n\r\nbc\r\n" in multi.body
    assert (multi_miss.status, multi_miss.cache, multi_miss.body) == (200, "MISS", b"n=2 abcdefghij\n")
    assert (unsatisfiable.status, unsatisfiable.cache) == (416, "HIT")
    assert unsatisfiable.headers["content-range"] == "bytes */15"
    assert all("range" not in r.headers for r in backend.requests)  # Range never goes upstream


def test_c22_no_ranges_without_accept_ranges(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a range served from a cached response whose upstream did not advertise
    Accept-Ranges (nginx answers 200 with the full body, on MISS and HIT)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        seen = [rig.ask("/c22?b=abcdefghij", headers={"Range": "bytes=2-5"}) for _ in range(2)]
    assert [(s.status, s.cache, s.body) for s in seen] == [
        (200, "MISS", b"n=1 abcdefghij\n"),
        (200, "HIT", b"n=1 abcdefghij\n"),
    ]


def test_c23_default_key_ignores_host(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a default key that differs from nginx's ``$scheme$proxy_host$request_uri``:
    nginx serves b.test the entry a.test filled (documented in docs/cache.md; the next test
    shows the key that separates them)."""
    server = "server_name a.test b.test;"
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;", server=server) as rig:
        seen = [rig.ask("/c23", headers={"Host": host}).row for host in ("a.test", "b.test")]
    assert seen == [(200, "MISS", 1), (200, "HIT", 1)]


def test_c23_host_in_the_key_separates_hosts(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches (cache poisoning, http-conformance-and-faults.md 6.6): ``$host`` in
    proxy_cache_key not separating two virtual hosts, so one host's response (or a forged
    Host's) would be served to the other."""
    server = "server_name a.test b.test;"
    location = "proxy_cache_valid 10s; proxy_cache_key $scheme$host$request_uri;"
    with Rig(target, tmp_path, backend, location, server=server) as rig:
        seen = [rig.ask("/k", headers={"Host": h}).row for h in ("a.test", "b.test", "a.test", "B.TEST")]
    assert seen == [(200, "MISS", 1), (200, "MISS", 2), (200, "HIT", 1), (200, "HIT", 2)]


def test_c24_authorization_is_not_in_the_key(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a difference from nginx on a request with Authorization: nginx stores its
    response and serves it to a request without (docs/cache.md: use proxy_no_cache
    $http_authorization, or put it in the key)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        seen = [rig.ask("/c24", headers=h).row for h in ({"Authorization": "Basic eDp5"}, {})]
    assert seen == [(200, "MISS", 1), (200, "HIT", 1)]


def test_c24_no_cache_and_bypass(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: proxy_no_cache not applied (a response to a request with Authorization stored
    and served to everyone), a bypass value "0" counted as true, or proxy_cache_bypass not
    skipping the lookup while still storing (BYPASS, then a HIT on the new body)."""
    location = (
        "proxy_cache_key $uri; proxy_cache_valid 10s; "
        "proxy_no_cache $http_authorization; proxy_cache_bypass $arg_nocache;"
    )
    with Rig(target, tmp_path, backend, location) as rig:
        seen = [
            rig.ask("/c24b", headers={"Authorization": "Basic eDp5"}).row,
            rig.ask("/c24b").row,
            rig.ask("/c24b").row,
            rig.ask("/c24b?nocache=0").row,
            rig.ask("/c24b?nocache=1").row,
            rig.ask("/c24b").row,
        ]
    assert seen == [
        (200, "MISS", 1),
        (200, "MISS", 2),
        (200, "HIT", 2),
        (200, "HIT", 2),
        (200, "BYPASS", 3),
        (200, "HIT", 3),
    ]
