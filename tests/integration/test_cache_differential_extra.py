"""Differential beyond the reference's list (C1-C25 are in test_cache_differential.py): more of
nginx 1.22's proxy_cache behaviour, each scenario run on nginx and on prefork-lb with one
nginx.conf and the same upstream (tests/cache_upstream.py), asserting the same outcome on
both: client conditionals, revalidation by Last-Modified, uncached methods, proxy_cache off
under an inherited cache, an upstream dying mid-body, chunked and large bodies, use_stale
timeout / http_404 / http_503, stale-if-error, upstream validity beating proxy_cache_valid,
proxy_ignore_headers X-Accel-Expires, convert_head off, and the headers of a HIT.

Waits as in test_cache_differential.py: ``expire`` is the servers' whole-second clock.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.backends import free_port
from tests.cache_harness import Rig, expire, settled
from tests.cache_upstream import CacheUpstream
from tests.nginx_conf import NGINX
from tests.tls_certs import TestCA

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]


@pytest.fixture(params=("nginx", "prefork-lb"))
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_difference(request: pytest.FixtureRequest, target: str, reason: str) -> None:
    """prefork-lb's side of a scenario that still differs from nginx: expected to fail
    (strict: once fixed, the XPASS fails the run, so the mark is removed with the fix)."""
    if target == "prefork-lb":
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
def backend() -> Iterator[CacheUpstream]:
    with CacheUpstream() as b:
        yield b


def test_x1_client_conditionals_answered_from_the_entry(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: a client's If-None-Match / If-Modified-Since sent upstream (nginx drops them
    with caching on) or not answered by the proxy itself: 304 on MISS and on HIT when they
    match the entry, the full 200 when they do not."""
    path = "/x1?etag=v1&lm=1000000000"
    ims = "Sun, 09 Sep 2001 01:46:40 GMT"  # = lm
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        miss = rig.ask(path, headers={"If-None-Match": '"v1"'})
        hit = rig.ask(path, headers={"If-None-Match": '"v1"'})
        other = rig.ask(path, headers={"If-None-Match": '"v2"'})
        since = rig.ask(path, headers={"If-Modified-Since": ims})
        plain = rig.ask(path)
    assert [(s.status, s.cache) for s in (miss, hit, other, since, plain)] == [
        (304, "MISS"),
        (304, "HIT"),
        (200, "HIT"),
        (304, "HIT"),
        (200, "HIT"),
    ]
    assert (miss.body, hit.body, other.body) == (b"", b"", b"n=1\n")
    assert hit.headers["etag"] == '"v1"'
    (received,) = backend.received("/x1")
    assert "if-none-match" not in received.headers and "if-modified-since" not in received.headers


def test_x2_revalidate_by_last_modified(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: revalidation without If-Modified-Since from the stored Last-Modified (no ETag),
    or a 304 not refreshing the entry."""
    location = "proxy_cache_valid 200 1s; proxy_cache_revalidate on;"
    with Rig(target, tmp_path, backend, location) as rig:
        seed = rig.ask("/x2?lm=1000000000").row
        expire(1)
        seen = rig.rows("/x2?lm=1000000000", 2)
    assert (seed, seen) == ((200, "MISS", 1), [(200, "REVALIDATED", 1), (200, "HIT", 1)])
    second = backend.received("/x2")[1]
    assert second.headers.get("if-modified-since") == "Sun, 09 Sep 2001 01:46:40 GMT"


def test_x3_uncached_method_and_cache_off(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a POST (not in proxy_cache_methods) looked up or stored, or ``proxy_cache off``
    in a location not cancelling the server-level cache it inherits: both give an empty
    $upstream_cache_status and every request goes upstream."""
    server = f"""proxy_cache c;
        location /off/ {{
            proxy_pass http://{backend.addr};
            proxy_cache off;
            add_header X-Cache-Status "[$upstream_cache_status]" always;
        }}"""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;", server=server) as rig:
        posts = [rig.ask("/x3", method="POST", body=b"x").row for _ in range(2)]
        get = rig.ask("/x3").row
        off = rig.rows("/off/x3", 2)
    assert posts == [(200, "", 1), (200, "", 2)]
    assert get == (200, "MISS", 3)
    assert off == [(200, "[]", 1), (200, "[]", 2)]


def _raw_get(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return data


def test_x4_upstream_dying_mid_body_leaves_no_entry(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: a response cut short by the upstream (Content-Length not reached, or a chunked
    body without its last chunk) stored and served complete-looking to everyone after: the
    next request must go upstream, and its complete answer is stored."""
    location = "proxy_cache_key $uri; proxy_cache_valid 10s;"
    with Rig(target, tmp_path, backend, location) as rig:
        cut = _raw_get(rig.port, "/x4?short=1")
        assert cut.startswith(b"HTTP/1.1 200") and b"n=1\n" in cut
        second = rig.ask("/x4").row
        rig.wait_stored(1)
        third = rig.ask("/x4").row
        cut_chunked = _raw_get(rig.port, "/x4c?short=1&chunked=1&size=2000")
        assert cut_chunked.startswith(b"HTTP/1.1 200") and b"n=1\n" in cut_chunked
        after_chunked = rig.ask("/x4c").row
    assert (second, third) == ((200, "MISS", 2), (200, "HIT", 2))
    assert after_chunked == (200, "MISS", 2)


def test_x5_chunked_and_large_bodies(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a chunked upstream body stored with its chunk framing or cut, or a large body
    (served from the file, sendfile) differing from the upstream's in any byte; a HEAD HIT
    with a Content-Length other than the body's."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        chunked = [rig.ask("/x5c?chunked=1&size=5000") for _ in range(2)]
        large = [rig.ask("/x5l?size=300000") for _ in range(2)]
        head = rig.ask("/x5l?size=300000", method="HEAD")
    assert [(s.status, s.cache, len(s.body)) for s in chunked] == [(200, "MISS", 5000), (200, "HIT", 5000)]
    assert chunked[0].body == chunked[1].body
    assert [(s.status, s.cache, len(s.body)) for s in large] == [(200, "MISS", 300000), (200, "HIT", 300000)]
    assert large[0].body == large[1].body and large[1].body.startswith(b"n=1\n0123")
    assert (head.cache, head.headers["content-length"], head.body) == ("HIT", "300000", b"")


def test_x6_use_stale_timeout_and_listed_statuses(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: use_stale timeout not covering a proxy_read_timeout, a listed status
    (http_404, http_503) not answered stale, or an unlisted one (502) answered stale."""
    location = (
        "proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_read_timeout 1s; "
        "proxy_cache_use_stale timeout http_404 http_503;"
    )
    with Rig(target, tmp_path, backend, location) as rig:
        seed = rig.ask("/x6").row
        expire(1)
        timeout = rig.ask("/x6?d=2500")
        notfound = rig.ask("/x6?s=404").row
        unavailable = rig.ask("/x6?s=503").row
        bad_gateway = rig.ask("/x6?s=502").row
    assert seed == (200, "MISS", 1)
    assert timeout.row == (200, "STALE", 1) and 0.9 < timeout.elapsed_s < 2.4
    assert (notfound, unavailable) == ((200, "STALE", 1), (200, "STALE", 1))
    assert bad_gateway == (502, "EXPIRED", 5)


def test_x7_stale_if_error_from_upstream(
    request: pytest.FixtureRequest, target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: Cache-Control stale-if-error ignored where proxy_cache_use_stale is not set
    (nginx serves the stale entry on an upstream error within that window), or applied to a
    5xx that is no error condition (nginx passes a 500 through without http_500)."""
    with Rig(target, tmp_path, backend, "proxy_cache_key $uri;") as rig:
        seed = rig.ask("/x7?h=Cache-Control:max-age%3D1%2C%20stale-if-error%3D30").row
        expire(1)
        backend.refuse()
        try:
            refused = rig.ask("/x7").row
        finally:
            backend.listen()
        error500 = rig.ask("/x7?s=500").row
    assert seed == (200, "MISS", 1)
    assert refused == (200, "STALE", 1)
    assert error500 == (500, "EXPIRED", 2)


def test_x8_upstream_validity_beats_proxy_cache_valid(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: proxy_cache_valid winning over the upstream's Cache-Control max-age or
    X-Accel-Expires @epoch (nginx uses the headers first), or proxy_ignore_headers
    X-Accel-Expires not ignoring an ``X-Accel-Expires: 0``."""
    at = int(time.time()) + 60
    with Rig(target, tmp_path, backend, "proxy_cache_valid 1s;") as rig:
        seed = [
            rig.ask(p).row for p in ("/x8a?h=Cache-Control:max-age%3D30", f"/x8b?h=X-Accel-Expires:@{at}")
        ]
        expire(1)
        again = [
            rig.ask(p).row for p in ("/x8a?h=Cache-Control:max-age%3D30", f"/x8b?h=X-Accel-Expires:@{at}")
        ]
    assert seed == [(200, "MISS", 1)] * 2
    assert again == [(200, "HIT", 1)] * 2
    location = "proxy_cache_valid 10s; proxy_ignore_headers X-Accel-Expires;"
    with Rig(target, tmp_path / "ignore", backend, location) as rig:
        ignored = rig.rows("/x8c?h=X-Accel-Expires:0", 2)
    assert ignored == [(200, "MISS", 1), (200, "HIT", 1)]


def test_x9_convert_head_off(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: ``proxy_cache_convert_head off`` still fetching HEAD as GET (the upstream
    must see HEAD, and with $request_method in the key a GET is another entry)."""
    location = "proxy_cache_valid 10s; proxy_cache_convert_head off; proxy_cache_key $request_method$uri;"
    with Rig(target, tmp_path, backend, location) as rig:
        seen = [rig.ask("/x9", method=m).row[:2] for m in ("HEAD", "HEAD", "GET", "GET")]
    assert seen == [(200, "MISS"), (200, "HIT"), (200, "MISS"), (200, "HIT")]
    assert [r.method for r in backend.received("/x9")] == ["HEAD", "GET"]


def test_x10_headers_of_a_hit(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a HIT replaying the stored Date (nginx sends its own, current one), adding an
    Age header (nginx adds none), losing a stored upstream header, or passing X-Accel-Expires
    to the client (nginx hides it on MISS and HIT)."""
    path = "/x10?h=X-Accel-Expires:30&h=X-Custom:kept&h=Content-Type:text/x-test"
    with Rig(target, tmp_path, backend, "") as rig:
        miss = rig.ask(path)
        time.sleep(1.1)  # so a replayed Date differs from the current one by a second
        hit = rig.ask(path)
    assert (miss.row, hit.row) == ((200, "MISS", 1), (200, "HIT", 1))
    for seen in (miss, hit):
        assert "x-accel-expires" not in seen.headers and "age" not in seen.headers
        assert (seen.headers["x-custom"], seen.headers["content-type"]) == ("kept", "text/x-test")
    assert parsedate_to_datetime(hit.headers["date"]) > parsedate_to_datetime(miss.headers["date"])


def test_x11_valid_per_status(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a status cached without a proxy_cache_valid line for it (only 404 is listed:
    a 200 is not stored), or ``any`` not matching a status the other lines leave out."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 404 1m;") as rig:
        ok = rig.rows("/x11a", 2)
        notfound = rig.rows("/x11b?s=404", 2)
    assert ok == [(200, "MISS", 1), (200, "MISS", 2)]
    assert notfound == [(404, "MISS", 1), (404, "HIT", 1)]
    with Rig(target, tmp_path / "any", backend, "proxy_cache_valid 200 1m; proxy_cache_valid any 1m;") as rig:
        gone = rig.rows("/x11c?s=410", 2)
    assert gone == [(410, "MISS", 1), (410, "HIT", 1)]


def test_x12_background_update_without_use_stale(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: proxy_cache_background_update serving stale without a stale permission
    (no use_stale updating, no stale-while-revalidate): nginx then goes upstream (EXPIRED)."""
    location = "proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_cache_background_update on;"
    with Rig(target, tmp_path, backend, location) as rig:
        seed = rig.ask("/x12").row
        expire(1)
        again = rig.ask("/x12").row
        settled(backend, "/x12", 2)
    assert (seed, again) == ((200, "MISS", 1), (200, "EXPIRED", 2))
    assert backend.count("/x12") == 2


def test_x13_client_cache_headers_do_not_bypass(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a client's Cache-Control: no-cache, Pragma: no-cache or a Cookie turning a HIT
    into a fetch (nginx ignores them all: only proxy_cache_bypass skips the lookup)."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        seed = rig.ask("/x13").row
        seen = [
            rig.ask("/x13", headers=h).row
            for h in ({"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}, {"Cookie": "a=b"})
        ]
    assert (seed, seen) == ((200, "MISS", 1), [(200, "HIT", 1)] * 3)


def test_x14_hits_on_one_keep_alive_connection(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a HIT's framing breaking the keep-alive connection it is on (a wrong
    Content-Length, a body sent for a HEAD or a 304, a range's body length): every answer of
    a mixed sequence on one connection is read back whole and the next one follows it."""
    path = "/x14?h=Accept-Ranges:bytes&etag=e&size=20000"
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        conn = http.client.HTTPConnection("127.0.0.1", rig.port, timeout=10)
        seen = []
        for method, headers in (
            ("GET", {}),
            ("GET", {}),
            ("HEAD", {}),
            ("GET", {"Range": "bytes=100-199"}),
            ("GET", {"If-None-Match": '"e"'}),
            ("GET", {"Range": "bytes=0-0,-1"}),
            ("GET", {}),
        ):
            if seen:  # the entry lands after the MISS's answer
                rig.wait_stored(1)
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            seen.append((resp.status, resp.getheader("X-Cache-Status"), len(body)))
        conn.close()
    assert seen[:5] == [
        (200, "MISS", 20000),
        (200, "HIT", 20000),
        (200, "HIT", 0),
        (206, "HIT", 100),
        (304, "HIT", 0),
    ]
    assert seen[5][:2] == (206, "HIT") and seen[6] == (200, "HIT", 20000)
    assert backend.count("/x14") == 1


def test_x15_revalidation_answered_with_a_new_body(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: a 200 to a revalidation (the upstream's ETag changed) not replacing the entry
    (EXPIRED with the new body, then HIT on it)."""
    location = "proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_cache_revalidate on;"
    with Rig(target, tmp_path, backend, location) as rig:
        seed = rig.ask("/x15?etag=v1").row
        expire(1)
        changed = rig.ask("/x15?etag=v2")
        rig.wait_stored(1)
        after = rig.ask("/x15?etag=v2")
    assert seed == (200, "MISS", 1)
    assert (changed.row, changed.headers["etag"]) == ((200, "EXPIRED", 2), '"v2"')
    assert (after.row, after.headers["etag"]) == ((200, "HIT", 2), '"v2"')
    assert backend.received("/x15")[1].headers.get("if-none-match") == '"v1"'


def test_x16_empty_body_is_cached(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a 200 with Content-Length: 0 not stored, or its HIT sent with a body or
    without its length."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        seen = [rig.ask("/x16?size=0") for _ in range(2)]
    assert [(s.status, s.cache, s.body) for s in seen] == [(200, "MISS", b""), (200, "HIT", b"")]
    assert seen[1].headers["content-length"] == "0"


def test_x17_range_inside_a_large_entry(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a range of a large cached body (served from the file, sendfile with an
    offset) sending the wrong bytes, or a suffix range miscomputed."""
    path = "/x17?h=Accept-Ranges:bytes&size=300000"
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        full = rig.ask(path)
        rig.wait_stored(1)
        middle = rig.ask(path, headers={"Range": "bytes=150000-150099"})
        suffix = rig.ask(path, headers={"Range": "bytes=-70000"})
        open_ended = rig.ask(path, headers={"Range": "bytes=299990-"})
    assert (full.status, full.cache, len(full.body)) == (200, "MISS", 300000)
    assert (middle.status, middle.cache, middle.body) == (206, "HIT", full.body[150000:150100])
    assert middle.headers["content-range"] == "bytes 150000-150099/300000"
    assert (suffix.status, suffix.body) == (206, full.body[-70000:])
    assert suffix.headers["content-range"] == "bytes 230000-299999/300000"
    assert (open_ended.status, open_ended.body) == (206, full.body[299990:])


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def test_x18_http10_and_pipelined_hits(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a HIT framed wrongly for an HTTP/1.0 client (it needs Content-Length and a
    close), or pipelined requests answered out of order or merged when some are HITs and
    some go upstream."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        assert rig.ask("/x18a").cache == "MISS"
        rig.wait_stored(1)
        old = _raw(rig.port, b"GET /x18a HTTP/1.0\r\n\r\n")
        pipelined = _raw(
            rig.port,
            b"GET /x18a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /x18b HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /x18a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /x18a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    head, _, body = old.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"\r\nContent-Length: 4" in head and body == b"n=1\n"
    assert b"X-Cache-Status: HIT" in head
    answers = pipelined.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"200 OK"] * 4
    statuses = [a.split(b"X-Cache-Status: ", 1)[1].split(b"\r\n", 1)[0] for a in answers]
    assert statuses == [b"HIT", b"MISS", b"HIT", b"HIT"]
    ends = (b"n=1\n", b"n=1\n", b"\r\n\r\n", b"n=1\n")  # the HEAD answer ends with its head
    assert all(a.endswith(end) for a, end in zip(answers, ends, strict=True))


def test_x19_validity_arithmetic(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: s-maxage not preferred over max-age (``s-maxage=30, max-age=0`` is cached),
    an ``X-Accel-Expires: @epoch`` in the past or an ``Expires`` in the near future handled
    differently from nginx."""
    past = int(time.time()) - 10
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30)).replace(" ", "%20")
    soon = soon.replace(",", "%2C")
    cases = {
        "/x19a?h=Cache-Control:s-maxage%3D30%2C%20max-age%3D0": "HIT",
        f"/x19b?h=X-Accel-Expires:@{past}": "EXPIRED",
        f"/x19c?h=Expires:{soon}": "HIT",
    }
    with Rig(target, tmp_path, backend, "") as rig:
        seen = {}
        for i, path in enumerate(cases):
            first = rig.ask(path).cache
            rig.wait_stored(i + 1)  # each is stored, the past @epoch one already expired
            seen[path] = (first, rig.ask(path).cache)
    assert seen == {path: ("MISS", second) for path, second in cases.items()}


def test_x20_vary_variants(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a variant keyed wrongly: an absent varying header not a variant of its own,
    two varying headers not both in the variant, or a HIT dropping the Vary header."""
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;") as rig:
        ae = [
            rig.ask("/x20a?h=Vary:Accept-Encoding", headers=h).row
            for h in ({"Accept-Encoding": "gzip"}, {}, {"Accept-Encoding": "gzip"}, {})
        ]
        two = [
            rig.ask("/x20b?h=Vary:Accept-Language%2C%20X-Tenant", headers=h).row
            for h in (
                {"Accept-Language": "en", "X-Tenant": "a"},
                {"Accept-Language": "en", "X-Tenant": "b"},
                {"Accept-Language": "en", "X-Tenant": "a"},
            )
        ]
        hit = rig.ask("/x20a?h=Vary:Accept-Encoding", headers={"Accept-Encoding": "gzip"})
    assert ae == [(200, "MISS", 1), (200, "MISS", 2), (200, "HIT", 1), (200, "HIT", 2)]
    assert two == [(200, "MISS", 1), (200, "MISS", 2), (200, "HIT", 1)]
    assert hit.headers["vary"] == "Accept-Encoding"


def test_x21_no_live_upstreams_is_an_error_for_use_stale(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: use_stale error not covering "no live upstreams" (every server of the group
    marked failed by max_fails): nginx serves the stale entry then too."""
    dead = free_port()
    servers = (backend.addr, f"127.0.0.1:{dead}")
    http = "upstream u { " + " ".join(f"server {a} max_fails=1 fail_timeout=30s;" for a in servers) + " }"
    location = "proxy_cache_valid 200 1s; proxy_cache_use_stale error;"
    with Rig(target, tmp_path, backend, location, http=http, upstream="u") as rig:
        seed = rig.ask("/x21").row
        expire(1)
        backend.refuse()
        try:
            first = rig.ask("/x21").row  # both servers fail: marked down
            second = rig.ask("/x21").row  # no live upstreams
        finally:
            backend.listen()
    assert seed[:2] == (200, "MISS")
    assert (first, second) == ((200, "STALE", seed[2]), (200, "STALE", seed[2]))


_X22_STATUS = 'add_header X-Cache-Status "[$upstream_cache_status]" always;'
_X22_ERR = f'location = /err {{ {_X22_STATUS} return 404 "custom\\n"; }}'


def test_x22_intercepted_error_is_cached_without_a_body(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: an upstream error that proxy_intercept_errors hands to error_page sent
    upstream again on every request: nginx records the status in the cache's index (valid per
    proxy_cache_valid, no file) and answers the next requests' error_page from it, with no
    upstream request and $upstream_cache_status HIT (seen in the error page's location)."""
    location = "proxy_cache_valid 404 1m; proxy_intercept_errors on; error_page 404 /err;"
    server = _X22_ERR
    with Rig(target, tmp_path, backend, location, server=server) as rig:
        seen = [rig.ask("/x22?s=404") for _ in range(3)]
        files = rig.stored()
    assert [(s.status, s.cache, s.body) for s in seen] == [
        (404, "[MISS]", b"custom\n"),
        (404, "[HIT]", b"custom\n"),
        (404, "[HIT]", b"custom\n"),
    ]
    assert backend.count("/x22") == 1
    assert files == 0


def test_x22_remembered_error_expires(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a remembered upstream error served past its proxy_cache_valid time, or one
    remembered without a validity for its status (here 410 has none: every 410 goes
    upstream): once the 404's second ends, the next request goes upstream again (MISS)."""
    location = (
        "proxy_cache_valid 404 1s; proxy_cache_valid 200 1m; proxy_intercept_errors on;"
        " error_page 404 410 /err;"
    )
    server = _X22_ERR
    with Rig(target, tmp_path, backend, location, server=server) as rig:
        gone = [(s.status, s.cache) for s in (rig.ask("/x22g?s=410") for _ in range(2))]
        first = rig.ask("/x22e?s=404")
        hit = rig.ask("/x22e?s=404")
        expire(1)
        after = rig.ask("/x22e?s=404")
    assert gone == [(410, "[MISS]"), (410, "[MISS]")]
    assert backend.count("/x22g") == 2
    assert [(s.status, s.cache) for s in (first, hit, after)] == [
        (404, "[MISS]"),
        (404, "[HIT]"),
        (404, "[MISS]"),
    ]
    assert backend.count("/x22e") == 2


def test_x22_lock_waiters_get_the_remembered_error(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: requests waiting on proxy_cache_lock going upstream themselves when the
    holder's answer was an intercepted error that the cache remembered: they find the error
    once the lock is released and answer the error page (nginx: 1 upstream request)."""
    location = (
        "proxy_cache_valid 404 1m; proxy_cache_lock on; proxy_cache_lock_timeout 5s;"
        " proxy_intercept_errors on; error_page 404 /err;"
    )
    with Rig(target, tmp_path, backend, location, server=_X22_ERR) as rig:
        seen = rig.burst("/x22l?s=404&d=300", 4)
    assert sorted((s.status, s.body) for s in seen) == [(404, b"custom\n")] * 4
    assert sorted(s.cache for s in seen) == ["[HIT]"] * 3 + ["[MISS]"]
    assert backend.count("/x22l") == 1


def test_x23_lock_holder_gets_an_uncacheable_answer(
    target: str, tmp_path: Path, backend: CacheUpstream
) -> None:
    """Catches: lock waiters served the holder's uncacheable answer, or left waiting for an
    entry that never lands: when the holder's response is not stored (a 500 without a
    proxy_cache_valid for it), every waiter goes upstream itself (nginx: 5 MISS, 5 upstream
    requests), within the lock timeout."""
    location = "proxy_cache_valid 200 10s; proxy_cache_lock on; proxy_cache_lock_timeout 5s;"
    with Rig(target, tmp_path, backend, location) as rig:
        seen = rig.burst("/x23?s=500&d=500", 5)
    assert sorted((s.status, s.cache) for s in seen) == [(500, "MISS")] * 5
    assert backend.count("/x23") == 5
    assert max(s.elapsed_s for s in seen) < 5.0


def test_x24_bypass_under_the_lock(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a bypassing request waiting on another request's lock, or its answer not
    replacing the entry: proxy_cache_bypass skips the lookup (and so the lock) and stores."""
    location = (
        "proxy_cache_key $uri; proxy_cache_valid 10s; proxy_cache_lock on; proxy_cache_bypass $arg_nocache;"
    )
    with Rig(target, tmp_path, backend, location) as rig:
        assert rig.ask("/x24").row == (200, "MISS", 1)
        rig.wait_stored(1)
        bypass = rig.ask("/x24?nocache=1&d=300")
        after = rig.ask("/x24").row
    assert (bypass.row, after) == ((200, "BYPASS", 2), (200, "HIT", 2))


def test_x25_hits_over_tls(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: a HIT over TLS written to the raw socket (sendfile bypasses TLS: the client
    reads cleartext where records belong, or nothing), for a small body, a 300 KB one (the
    sendfile size) and a range of it, on one keep-alive TLS connection."""
    pair = TestCA(tmp_path / "ca").issue("localhost", kind="ec")
    path = "/x25?h=Accept-Ranges:bytes&size=300000"
    with Rig(target, tmp_path, backend, "proxy_cache_valid 10s;", ssl=f"{pair.cert} {pair.key}") as rig:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", rig.port, timeout=10, context=ctx)
        seen = []
        for target_path, headers in (
            ("/x25s", {}),
            ("/x25s", {}),
            (path, {}),
            (path, {}),
            (path, {"Range": "bytes=200000-200009"}),
        ):
            if seen and seen[-1][1] == "MISS":
                rig.wait_stored(len([s for s in seen if s[1] == "MISS"]))
            conn.request("GET", target_path, headers=headers)
            resp = conn.getresponse()
            seen.append((resp.status, resp.getheader("X-Cache-Status"), resp.read()))
        conn.close()
    assert [(s, c) for s, c, _ in seen] == [
        (200, "MISS"),
        (200, "HIT"),
        (200, "MISS"),
        (200, "HIT"),
        (206, "HIT"),
    ]
    assert seen[0][2] == seen[1][2] == b"n=1\n"
    assert len(seen[2][2]) == 300000 and seen[3][2] == seen[2][2]
    assert seen[4][2] == seen[2][2][200000:200010]
