"""proxy_cache's request path end to end (issue 18; reference nginx-semantics-2.md 1.3-1.5):
the real master and workers, a real upstream counting its requests (tests/cache_backend.py),
real HTTP clients. Each test asserts the sequence of $upstream_cache_status (the
X-Cache-Status header and the access log) and the number of upstream requests; the
scenario numbers (C1...) are the reference's differential scenarios.

Expiry needs time to pass: ``until_stale`` sleeps until an entry's validity (1 s) is over,
the only sleeps here; every other wait is on a condition."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import free_port
from tests.cache_backend import CacheBackend
from tests.harness import LB, request, wait_for


@pytest.fixture
def be() -> Iterator[CacheBackend]:
    with CacheBackend() as b:
        yield b


def config(port: int, be: CacheBackend, loc: str = "", workers: int = 1, server: str = "") -> str:
    return f"""
workers = {workers}
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "access.log"
[http.log_formats]
c = '$request|$status|$upstream_cache_status|$upstream_addr|$upstream_status'
[http.proxy_cache_paths.one]
path = "cache"
levels = "1:2"
keys_zone = "1m"
[http.upstreams.backend]
servers = [{{ address = "{be.addr}" }}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
server_name = ["a.test", "b.test"]
log_format = "c"
{server}
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_read_timeout = "5s"
  proxy_cache = "one"
  add_header = {{ "X-Cache-Status" = {{ value = "$upstream_cache_status", always = true }} }}
  {loc}
"""


def start(tmp_path: Path, be: CacheBackend, loc: str = "", workers: int = 1, server: str = "") -> LB:
    port = free_port()
    return LB(tmp_path, config(port, be, loc, workers, server), port)


def get(
    lb: LB, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, str, bytes, dict[str, str]]:
    status, hdrs, body = request(lb.port, method, path, headers=headers)
    return status, hdrs.get("x-cache-status", ""), body, hdrs


def statuses(lb: LB, path: str, n: int, method: str = "GET", **kw: dict[str, str]) -> list[tuple[str, bytes]]:
    return [get(lb, path, method, kw.get("headers"))[1:3] for _ in range(n)]


def until_stale(seconds: float = 1.2) -> None:
    """Let an entry valid for 1 s expire (the only sleep in these tests)."""
    time.sleep(seconds)


VALID_10S = 'proxy_cache_valid = ["10s"]'


def test_miss_then_hit_without_the_upstream(tmp_path: Path, be: CacheBackend) -> None:
    """The second GET is a HIT with the first body; the upstream saw one request; the HIT's
    $upstream_addr / $upstream_status are empty and Date is now, not stored."""
    be.route("/a", headers=[("Date", "Thu, 01 Jan 2015 00:00:00 GMT"), ("X-Up", "1")])
    with start(tmp_path, be, VALID_10S) as lb:
        first = get(lb, "/a")
        second = get(lb, "/a")
        rows = [line.split("|") for line in lb.access_log(2)]
    assert first[:3] == (200, "MISS", b"n=1\n")
    assert second[:3] == (200, "HIT", b"n=1\n")
    assert second[3]["x-up"] == "1" and "2015" not in second[3]["date"] and "age" not in second[3]
    assert second[3]["content-length"] == "4"
    assert be.hits["/a"] == 1
    assert rows[0][2:4] == ["MISS", be.addr] and rows[1][2:] == ["HIT", "-", "-"]


def test_valid_time_alone_caches_200_301_302_only(tmp_path: Path, be: CacheBackend) -> None:
    """C1: "10s" alone caches 200, 301, 302; 404 and 500 go upstream every time."""
    for code in (200, 301, 302, 404, 500):
        be.route(f"/s{code}", status=code, headers=[("Location", "/x")] if code in (301, 302) else [])
    with start(tmp_path, be, VALID_10S) as lb:
        seen = {code: [get(lb, f"/s{code}")[1] for _ in range(2)] for code in (200, 301, 302, 404, 500)}
    assert seen == {
        200: ["MISS", "HIT"],
        301: ["MISS", "HIT"],
        302: ["MISS", "HIT"],
        404: ["MISS", "MISS"],
        500: ["MISS", "MISS"],
    }
    assert [be.hits[f"/s{c}"] for c in (200, 301, 302, 404, 500)] == [1, 1, 1, 2, 2]


def test_upstream_headers_decide(tmp_path: Path, be: CacheBackend) -> None:
    """C2/C3/C4/C6: max-age caches without proxy_cache_valid; no-store, Set-Cookie, Vary: *
    never; ignored Set-Cookie is cached and replayed on the HIT."""
    be.route("/maxage", headers=[("Cache-Control", "max-age=10")])
    be.route("/plain")
    be.route("/nostore", headers=[("Cache-Control", "no-store")])
    be.route("/cookie", headers=[("Set-Cookie", "a=1")])
    be.route("/varystar", headers=[("Vary", "*")])
    with start(tmp_path, be) as lb:
        seen = {
            p: [get(lb, p)[1] for _ in range(2)]
            for p in ("/maxage", "/plain", "/nostore", "/cookie", "/varystar")
        }
    assert seen == {
        "/maxage": ["MISS", "HIT"],
        "/plain": ["MISS", "MISS"],
        "/nostore": ["MISS", "MISS"],
        "/cookie": ["MISS", "MISS"],
        "/varystar": ["MISS", "MISS"],
    }


def test_ignore_headers_replays_set_cookie(tmp_path: Path, be: CacheBackend) -> None:
    """C6: proxy_ignore_headers Set-Cookie Cache-Control: MISS, HIT, the HIT replays Set-Cookie."""
    be.route("/c", headers=[("Set-Cookie", "a=1"), ("Cache-Control", "no-store")])
    loc = VALID_10S + '\n  proxy_ignore_headers = ["Set-Cookie", "Cache-Control"]'
    with start(tmp_path, be, loc) as lb:
        first, second = get(lb, "/c"), get(lb, "/c")
    assert (first[1], second[1]) == ("MISS", "HIT")
    assert second[3]["set-cookie"] == "a=1" and be.hits["/c"] == 1


def test_head_fetched_as_get_and_stored(tmp_path: Path, be: CacheBackend) -> None:
    """C7: HEAD, GET, HEAD -> MISS (upstream saw GET), HIT, HIT; HEAD answers carry no body."""
    be.route("/h")
    with start(tmp_path, be, VALID_10S) as lb:
        a = get(lb, "/h", "HEAD")
        b = get(lb, "/h")
        c = get(lb, "/h", "HEAD")
    assert [x[1] for x in (a, b, c)] == ["MISS", "HIT", "HIT"]
    assert a[2] == b"" and b[2] == b"n=1\n" and c[2] == b""
    assert a[3]["content-length"] == "4" and c[3]["content-length"] == "4"
    assert [m for m, _ in be.seen["/h"]] == ["GET"]


def test_methods_and_bypass_and_no_cache(tmp_path: Path, be: CacheBackend) -> None:
    """POST outside proxy_cache_methods: no cache consulted (empty status). bypass: BYPASS,
    the response still stored (next request HIT with the new body). no_cache: not stored."""
    be.route("/p")
    be.route("/b")
    be.route("/n")
    loc = VALID_10S + '\n  proxy_cache_bypass = ["$arg_nocache"]\n  proxy_no_cache = ["$http_x_nostore"]'
    with start(tmp_path, be, loc) as lb:
        post = get(lb, "/p", "POST")
        seq_b = [get(lb, "/b")[1:3], get(lb, "/b?nocache=1")[1:3], get(lb, "/b")[1:3]]
        seq_n = [get(lb, "/n", headers={"X-Nostore": "1"})[1], get(lb, "/n")[1], get(lb, "/n")[1]]
    assert post[1] == "" and "x-cache-status" not in post[3]
    assert seq_b == [("MISS", b"n=1\n"), ("BYPASS", b"n=1\n"), ("HIT", b"n=1\n")]
    assert be.hits["/b"] == 1 and be.hits["/b?nocache=1"] == 1
    assert seq_n == ["MISS", "MISS", "HIT"]


def test_post_cached_with_methods(tmp_path: Path, be: CacheBackend) -> None:
    """C8: proxy_cache_methods POST: POST x, POST y, GET -> MISS, HIT, HIT (body not keyed)."""
    be.route("/post")
    loc = VALID_10S + '\n  proxy_cache_methods = ["POST"]'
    with start(tmp_path, be, loc) as lb:
        seq = [
            request(lb.port, "POST", "/post", body=b"x")[1].get("x-cache-status"),
            request(lb.port, "POST", "/post", body=b"y")[1].get("x-cache-status"),
            get(lb, "/post")[1],
        ]
    assert seq == ["MISS", "HIT", "HIT"] and be.hits["/post"] == 1


def test_min_uses(tmp_path: Path, be: CacheBackend) -> None:
    """C9: min_uses 3: MISS, MISS, MISS, HIT with n=3."""
    be.route("/m")
    with start(tmp_path, be, VALID_10S + "\n  proxy_cache_min_uses = 3") as lb:
        seq = statuses(lb, "/m", 4)
    assert seq == [("MISS", b"n=1\n"), ("MISS", b"n=2\n"), ("MISS", b"n=3\n"), ("HIT", b"n=3\n")]


def test_vary_variants(tmp_path: Path, be: CacheBackend) -> None:
    """C5: Vary: Accept-Language; en, de, en, de -> MISS n1, MISS n2, HIT n1, HIT n2."""
    be.route("/v", headers=[("Vary", "Accept-Language")])
    with start(tmp_path, be, VALID_10S) as lb:
        seq = [get(lb, "/v", headers={"Accept-Language": lang})[1:3] for lang in ("en", "de", "en", "de")]
    assert seq == [("MISS", b"n=1\n"), ("MISS", b"n=2\n"), ("HIT", b"n=1\n"), ("HIT", b"n=2\n")]


def test_host_not_in_default_key_but_in_a_host_key(tmp_path: Path, be: CacheBackend) -> None:
    """C23 and reference 6.6: the default key leaves Host out (b.test gets a.test's entry,
    as nginx); a key with $host separates the hosts."""
    be.route("/k")
    be.route("/h")
    server_loc = '\n  [[http.servers.locations]]\n  match = "/h"\n  proxy_pass = "http://backend"\n'
    server_loc += '  proxy_cache = "one"\n  proxy_cache_valid = ["10s"]\n'
    server_loc += '  proxy_cache_key = "$scheme$host$request_uri"\n'
    server_loc += '  add_header = { "X-Cache-Status" = "$upstream_cache_status" }\n'
    with start(tmp_path, be, VALID_10S + server_loc) as lb:
        k = [get(lb, "/k", headers={"Host": h})[1] for h in ("a.test", "b.test")]
        h = [get(lb, "/h", headers={"Host": h})[1] for h in ("a.test", "b.test", "a.test")]
    assert k == ["MISS", "HIT"]
    assert h == ["MISS", "MISS", "HIT"] and be.hits["/h"] == 2


def test_lock_burst_new_key_one_upstream_request(tmp_path: Path, be: CacheBackend) -> None:
    """C15: lock on, new key, upstream 0.5 s, 30 concurrent: 1 MISS + 29 HIT, 1 upstream
    request; waiters wake when the entry lands (well under nginx's 500 ms poll). With the
    lock branch disabled on purpose this failed with 30 MISS."""
    be.route("/lock", delay_s=0.5)
    with start(tmp_path, be, VALID_10S + "\n  proxy_cache_lock = true", workers=2) as lb:
        results = burst(lb, "/lock", 30)
    assert Counter(s for s, _ in results) == {"MISS": 1, "HIT": 29}
    assert be.hits["/lock"] == 1
    assert max(t for _, t in results) < 1.0  # measured 0.515 s (1 and 4 workers); nginx 0.51 / 1.0 s


def burst(lb: LB, path: str, n: int) -> list[tuple[str, float]]:
    barrier = threading.Barrier(n)
    out: list[tuple[str, float]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        t0 = time.monotonic()
        status = get(lb, path)[1]
        with lock:
            out.append((status, time.monotonic() - t0))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(out) == n
    return out


UPDATING = 'proxy_cache_lock = true\n  proxy_cache_use_stale = ["updating"]'


@pytest.mark.parametrize(
    ("loc", "expected", "upstream", "workers"),
    [
        ("proxy_cache_lock = true", {"EXPIRED": 30}, 30, 2),  # C19: the lock does not protect it
        ("", {"EXPIRED": 30}, 30, 2),  # C20: neither
        ('proxy_cache_use_stale = ["updating"]', {"EXPIRED": 1, "UPDATING": 29}, 1, 2),  # C20
        (UPDATING, {"EXPIRED": 1, "UPDATING": 29}, 1, 2),
        (UPDATING + "\n  proxy_cache_background_update = true", {"STALE": 1, "UPDATING": 29}, 1, 2),
        (UPDATING, {"EXPIRED": 1, "UPDATING": 29}, 1, 4),
    ],
    ids=[
        "C19-lock-only",
        "C20-neither",
        "C20-updating-only",
        "C17-updating",
        "C18-background",
        "C25-4-workers",
    ],
)
def test_expired_burst(
    tmp_path: Path, be: CacheBackend, loc: str, expected: dict[str, int], upstream: int, workers: int
) -> None:
    """C17-C20, C25: valid 1 s, expired key, upstream 0.5 s, 30 concurrent over 2 (4) workers."""
    be.route("/e", delay_s=0.5)
    with start(tmp_path, be, 'proxy_cache_valid = ["200 1s"]\n  ' + loc, workers=workers) as lb:
        assert get(lb, "/e")[1] == "MISS"
        until_stale()
        results = burst(lb, "/e", 30)
        wait_for(lambda: be.hits["/e"] >= upstream + 1, what="the upstream requests")
        wait_for(lambda: get(lb, "/e")[1] == "HIT", what="the refreshed entry")
    assert Counter(s for s, _ in results) == expected
    assert be.hits["/e"] == upstream + 1


def test_background_update_serves_stale_at_once(tmp_path: Path, be: CacheBackend) -> None:
    """C12: use_stale updating + background_update, valid 1 s, upstream 1.5 s: after expiry
    the first GET is STALE at once (old body), the next UPDATING, then HIT with the new body."""
    be.route("/bg", delay_s=0.0)
    loc = 'proxy_cache_valid = ["200 1s"]\n  proxy_cache_use_stale = ["updating"]\n'
    loc += "  proxy_cache_background_update = true"
    with start(tmp_path, be, loc) as lb:
        assert get(lb, "/bg")[1:3] == ("MISS", b"n=1\n")
        be.routes["/bg"].delay_s = 1.5
        until_stale()
        t0 = time.monotonic()
        stale = get(lb, "/bg")
        took = time.monotonic() - t0
        updating = get(lb, "/bg")
        wait_for(lambda: be.hits["/bg"] == 2, what="the background request")
        hit = wait_for(lambda: (r := get(lb, "/bg"))[1] == "HIT" and r, what="the new entry")
    assert stale[1:3] == ("STALE", b"n=1\n") and took < 1.0
    assert updating[1:3] == ("UPDATING", b"n=1\n")
    assert hit[2] == b"n=2\n"


def test_use_stale_on_error_and_status(tmp_path: Path, be: CacheBackend) -> None:
    """C10: use_stale error timeout http_500: after expiry a refused upstream and a 500 give
    STALE with the old body; a 404 is passed on (EXPIRED) and not stored, the stale entry
    stays for the next 500."""
    be.route("/s")
    loc = 'proxy_cache_valid = ["200 1s"]\n  proxy_cache_use_stale = ["error", "timeout", "http_500"]'
    with start(tmp_path, be, loc) as lb:
        assert get(lb, "/s")[1:3] == ("MISS", b"n=1\n")
        until_stale()
        be.routes["/s"].refuse = True
        refused = get(lb, "/s")
        be.routes["/s"].refuse = False
        be.routes["/s"].status = [500]
        five = get(lb, "/s")
        be.routes["/s"].status = [404]
        four = get(lb, "/s")
        be.routes["/s"].status = [500]
        again = get(lb, "/s")
    assert refused[:3] == (200, "STALE", b"n=1\n")
    assert five[:3] == (200, "STALE", b"n=1\n")
    assert four[:2] == (404, "EXPIRED")
    assert again[:3] == (200, "STALE", b"n=1\n")


def test_revalidate(tmp_path: Path, be: CacheBackend) -> None:
    """C11: revalidate, ETag "v1": after expiry the upstream gets If-None-Match "v1", answers
    304: REVALIDATED with the stored body, then HIT (validity restarted)."""
    be.route("/r", headers=[("ETag", '"v1"'), ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")])
    loc = 'proxy_cache_valid = ["200 1s"]\n  proxy_cache_revalidate = true'
    with start(tmp_path, be, loc) as lb:
        assert get(lb, "/r")[1] == "MISS"
        until_stale()
        be.routes["/r"].status = [304]
        reval = get(lb, "/r")
        hit = get(lb, "/r")
    assert reval[:3] == (200, "REVALIDATED", b"n=1\n")
    assert hit[1:3] == ("HIT", b"n=1\n")
    headers = be.seen["/r"][1][1]
    assert headers["if-none-match"] == '"v1"'
    assert headers["if-modified-since"] == "Wed, 21 Oct 2015 07:28:00 GMT"


def test_ranges(tmp_path: Path, be: CacheBackend) -> None:
    """C21/C22: with Accept-Ranges, a MISS cuts one range, a HIT one or several (multipart),
    an unsatisfiable range gets 416; without Accept-Ranges the full 200. The upstream never
    sees Range."""
    be.route("/r", headers=[("Accept-Ranges", "bytes"), ("Content-Type", "text/plain")], body=b"abcdef")
    be.route("/n", body=b"abcdef")
    with start(tmp_path, be, VALID_10S) as lb:
        miss = get(lb, "/r", headers={"Range": "bytes=2-5"})
        hit = get(lb, "/r", headers={"Range": "bytes=2-5"})
        multi = get(lb, "/r", headers={"Range": "bytes=1-2,5-6"})
        bad = get(lb, "/r", headers={"Range": "bytes=20-30"})
        plain = [get(lb, "/n", headers={"Range": "bytes=2-5"}) for _ in range(2)]
    body = b"n=1\nabcdef"
    assert miss[:3] == (206, "MISS", body[2:6]) and miss[3]["content-range"] == "bytes 2-5/10"
    assert hit[:3] == (206, "HIT", body[2:6])
    assert multi[0] == 206 and multi[3]["content-type"] == "multipart/byteranges; boundary=00000000001"
    assert multi[2] == (
        b"\r\n--00000000001\r\nContent-Type: text/plain\r\nContent-Range: bytes 1-2/10\r\n\r\n=1"
        b"\r\n--00000000001\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-6/10\r\n\r\nbc"
        b"\r\n--00000000001--\r\n"
    )
    assert bad[0] == 416 and bad[3]["content-range"] == "bytes */10"
    assert [(p[0], p[1], p[2]) for p in plain] == [(200, "MISS", body), (200, "HIT", body)]
    assert all("range" not in h for _, h in be.seen["/r"])


def test_client_conditionals_answered_from_the_entry(tmp_path: Path, be: CacheBackend) -> None:
    """If-None-Match matching the stored ETag: 304 on a MISS as on a HIT (nginx), and the
    upstream never sees the client's conditional."""
    be.route("/c", headers=[("ETag", '"v1"')])
    with start(tmp_path, be, VALID_10S) as lb:
        miss = get(lb, "/c", headers={"If-None-Match": '"v1"'})
        hit = get(lb, "/c", headers={"If-None-Match": '"v1"'})
        other = get(lb, "/c", headers={"If-None-Match": '"v2"'})
    assert miss[:3] == (304, "MISS", b"") and hit[:3] == (304, "HIT", b"")
    assert other[:3] == (200, "HIT", b"n=1\n")
    assert "if-none-match" not in be.seen["/c"][0][1]


def test_upstream_dying_mid_body_leaves_no_entry(tmp_path: Path, be: CacheBackend) -> None:
    """An upstream that closes after 2 of the announced bytes: the client sees a truncated
    response, nothing is stored (the next request is a MISS again)."""
    be.route("/d", body=b"x" * 1000, die_after=2)
    with start(tmp_path, be, VALID_10S) as lb:
        with pytest.raises(http.client.IncompleteRead):
            get(lb, "/d")
        be.routes["/d"].die_after = None
        again = get(lb, "/d")
        third = get(lb, "/d")
    assert again[1] == "MISS" and third[1] == "HIT" and be.hits["/d"] == 2


def test_chunked_upstream_stored_and_large_body_hit(tmp_path: Path, be: CacheBackend) -> None:
    """A chunked upstream body is stored decoded and a HIT has its Content-Length; a 300 KB
    body comes back whole from the file (sendfile path) on a keep-alive connection."""
    be.route("/ch", chunked=True, body=b"y" * 100)
    big = bytes(range(256)) * 1200
    be.route("/big", body=big)
    with start(tmp_path, be, VALID_10S) as lb:
        a, b = get(lb, "/ch"), get(lb, "/ch")
        c, d = get(lb, "/big"), get(lb, "/big")
        sock = socket.create_connection(("127.0.0.1", lb.port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n" * 2)
        data = b""
        want = 2 * (len(big) + 4)
        while data.count(b"HTTP/1.1 200") < 2 or len(data) < want:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        sock.close()
    assert (a[1], b[1]) == ("MISS", "HIT") and a[2] == b[2] == b"n=1\n" + b"y" * 100
    assert b[3]["content-length"] == str(len(b[2]))
    assert (c[1], d[1]) == ("MISS", "HIT") and d[2] == c[2] == b"n=1\n" + big
    assert data.count(b"n=1\n" + big) == 2


def test_lock_timeout_waiters_go_upstream_unstored(tmp_path: Path, be: CacheBackend) -> None:
    """C16: lock_timeout 1 s, upstream 3 s, 6 concurrent: 6 MISS, 6 upstream requests (the
    waiters give up after 1 s, their responses are not stored); the next GET is a HIT with
    the lock holder's body (n=1)."""
    be.route("/t", delay_s=3.0)
    loc = VALID_10S + '\n  proxy_cache_lock = true\n  proxy_cache_lock_timeout = "1s"'
    with start(tmp_path, be, loc) as lb:
        results = burst(lb, "/t", 6)
        after = get(lb, "/t")
    assert Counter(s for s, _ in results) == {"MISS": 6}
    assert be.hits["/t"] == 6
    assert after[1:3] == ("HIT", b"n=1\n")


def test_stale_while_revalidate_and_first_valid_match(tmp_path: Path, be: CacheBackend) -> None:
    """C13: background_update alone with the upstream's stale-while-revalidate=30: STALE
    after expiry. C14: "any 1s" before "200 60s": a 200 is valid 1 s only (EXPIRED)."""
    be.route("/swr", headers=[("Cache-Control", "max-age=1, stale-while-revalidate=30")])
    be.route("/first")
    loc = 'proxy_cache_valid = ["any 1s", "200 60s"]\n  proxy_cache_background_update = true'
    with start(tmp_path, be, loc) as lb:
        assert [get(lb, p)[1] for p in ("/swr", "/first")] == ["MISS", "MISS"]
        until_stale(2.1)
        swr = get(lb, "/swr")
        first = get(lb, "/first")
        wait_for(lambda: be.hits["/swr"] == 2, what="the background update")
    assert swr[1:3] == ("STALE", b"n=1\n")
    assert first[1:3] == ("EXPIRED", b"n=2\n")


def test_unwritable_cache_serves_uncached(tmp_path: Path, be: CacheBackend) -> None:
    """The cache's temp directory replaced by a file while running (as root, chmod cannot
    make a directory unwritable): every request still gets its full 200, nothing is stored
    (MISS each time, the upstream asked each time) and the error is logged once."""
    be.route("/w")
    with start(tmp_path, be, VALID_10S) as lb:
        tmp = tmp_path / "cache" / "tmp"
        shutil.rmtree(tmp)
        tmp.write_text("not a directory")
        seq = statuses(lb, "/w", 3)
        log = lb.output()
    assert seq == [("MISS", b"n=1\n"), ("MISS", b"n=2\n"), ("MISS", b"n=3\n")]
    assert log.count("cannot create a temp file in") == 1


def test_websocket_upgrade_never_cached(tmp_path: Path, be: CacheBackend) -> None:
    """An Upgrade request on a cached location bypasses the cache entirely: it cannot be
    answered from an entry a plain GET stored (empty $upstream_cache_status)."""
    be.route("/ws")
    with start(tmp_path, be, VALID_10S) as lb:
        assert get(lb, "/ws")[1] == "MISS"
        up = get(lb, "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert up[1] == "" and up[2] == b"n=2\n" and be.hits["/ws"] == 2


def test_client_gone_mid_body_still_fills_the_entry(tmp_path: Path, be: CacheBackend) -> None:
    """A client that resets the connection after the first bytes of an 8 MB MISS: the body
    is still read into the entry (nginx fills the cache after a client abort), so the next
    request is a HIT and the upstream saw one request. Before, the entry was aborted with
    the client (checked: MISS, 2 upstream requests)."""
    body = b"z" * (8 << 20)
    be.route("/big", body=body)
    with start(tmp_path, be, VALID_10S) as lb:
        sock = socket.create_connection(("127.0.0.1", lb.port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST with most of the body unread
        wait_for(lambda: lb.access_log(1), what="the MISS to end")
        again = get(lb, "/big")
    assert again[1] == "HIT" and again[2] == b"n=1\n" + body and be.hits["/big"] == 1


def test_entry_visible_once_the_client_has_the_response(tmp_path: Path, be: CacheBackend) -> None:
    """The entry is committed before the last body bytes go out, so a client that has the
    whole MISS and asks again at once (a new connection, likely another of 4 workers) gets
    a HIT every time (nginx 1.22: 118 of 200 such requests were MISS; so was prefork-lb
    before: commit after the last send)."""
    for i in range(20):
        be.route(f"/v{i}", body=b"q" * 2000)
    with start(tmp_path, be, VALID_10S, workers=4) as lb:
        seq = [(get(lb, f"/v{i}")[1], get(lb, f"/v{i}")[1]) for i in range(20)]
    assert seq == [("MISS", "HIT")] * 20


def test_background_update_revalidates(tmp_path: Path, be: CacheBackend) -> None:
    """use_stale updating + background_update + revalidate: after expiry the client gets
    STALE at once; the background request carries If-None-Match, its 304 refreshes the
    entry in place (the next GET a HIT with the first body, Vary still honoured)."""
    be.route("/br", headers=[("ETag", '"b1"'), ("Vary", "Accept-Language")])
    loc = 'proxy_cache_valid = ["200 1s"]\n  proxy_cache_use_stale = ["updating"]\n'
    loc += "  proxy_cache_background_update = true\n  proxy_cache_revalidate = true"
    en = {"Accept-Language": "en"}
    with start(tmp_path, be, loc) as lb:
        assert get(lb, "/br", headers=en)[1] == "MISS"
        be.routes["/br"].status = [304]
        until_stale()
        stale = get(lb, "/br", headers=en)
        wait_for(lambda: be.hits["/br"] == 2, what="the background revalidation")
        hit = wait_for(
            lambda: (r := get(lb, "/br", headers=en))[1] == "HIT" and r, what="the refreshed entry"
        )
        be.routes["/br"].status = [200]
        de = get(lb, "/br", headers={"Accept-Language": "de"})
    assert stale[1:3] == ("STALE", b"n=1\n")
    assert hit[2] == b"n=1\n"
    assert de[1:3] == ("MISS", b"n=3\n") and be.hits["/br"] == 3
    assert be.seen["/br"][1][1]["if-none-match"] == '"b1"'


def test_head_of_an_uncacheable_response_does_not_read_the_body(tmp_path: Path, be: CacheBackend) -> None:
    """A HEAD fetched as GET whose response is not stored (404 with "10s"): the client gets
    the head at once; the 16 MB upstream body is not read (the upstream connection closes:
    the upstream's write fails; reading it to its end, as before, failed this), and a GET
    after it on the same connection is answered normally."""
    be.route("/nf", status=404, body=b"e" * (16 << 20))
    with start(tmp_path, be, VALID_10S) as lb:
        conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
        conn.request("HEAD", "/nf")
        head = conn.getresponse()
        head.read()
        conn.request("GET", "/nf")
        body = conn.getresponse().read()
        conn.close()
    assert head.status == 404 and head.getheader("X-Cache-Status") == "MISS"
    assert head.getheader("Content-Length") == str(4 + (16 << 20))
    assert body == b"n=2\n" + b"e" * (16 << 20)
    assert [m for m, _ in be.seen["/nf"]] == ["GET", "GET"]
    assert wait_for(lambda: be.write_errors["/nf"] == 1, what="the unread body's write to fail")


def test_hits_over_tls_use_the_read_path(tmp_path: Path, be: CacheBackend) -> None:
    """On a TLS connection sendfile cannot work: a 300 KB HIT (and a small one) goes out
    through reads and TLS sends, byte-exact, twice on one keep-alive connection."""
    import ssl

    from tests.tls_certs import TestCA

    ca = TestCA(tmp_path / "certs")
    pair = ca.issue("a.test")
    big = bytes(range(256)) * 1200
    be.route("/big", body=big)
    port = free_port()
    text = config(port, be, VALID_10S).replace(
        f'listen = ["127.0.0.1:{port}"]',
        f'listen = ["127.0.0.1:{port} ssl"]\nssl_certificate = ["{pair.cert}"]\n'
        f'ssl_certificate_key = ["{pair.key}"]',
    )
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.check_hostname = False
    with LB(tmp_path, text, port):
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        seen = []
        for _ in range(3):
            conn.request("GET", "/big", headers={"Host": "a.test"})
            resp = conn.getresponse()
            seen.append((resp.getheader("X-Cache-Status"), resp.read()))
        conn.close()
    assert [s for s, _ in seen] == ["MISS", "HIT", "HIT"]
    assert all(body == b"n=1\n" + big for _, body in seen)


def test_entry_truncated_while_served(tmp_path: Path, be: CacheBackend) -> None:
    """A cache file cut short while a HIT streams it (sendfile finds its end early): the
    client's connection is closed with the body short (never padded), the error is logged,
    the worker goes on, and the next request is a MISS (the file is no longer valid)."""
    body = b"t" * (32 << 20)
    be.route("/t", body=body)
    with start(tmp_path, be, VALID_10S) as lb:
        assert get(lb, "/t")[1] == "MISS"
        files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.parent.name != "tmp"]
        assert len(files) == 1
        sock = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /t HTTP/1.1\r\nHost: a.test\r\n\r\n")
        got = sock.recv(65536)
        assert b"X-Cache-Status: HIT" in got
        os.truncate(files[0], 1 << 20)
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sock.close()
        wait_for(lambda: "read failed" in lb.output(), what="the error line")
        after = get(lb, "/t")
    assert len(got) < len(body)
    assert after[1] == "MISS" and after[2] == b"n=2\n" + body
