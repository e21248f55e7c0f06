"""Sticky sessions and drain, sans-IO (balance/sticky.py, balance/learn.py, peers.py rule 11).

Expected values come from shared/reference/nginx-semantics.md sections 10.2 and 10.4: the
server identifier (route, else md5 of "ip:port"), nginx's cookie format and fixed
expires=max date, the round-robin accounting of bound requests, drain.
"""

from __future__ import annotations

import hashlib
import mmap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.balance import learn
from prefork_lb.balance.peers import PeerGroup, free, new_selection
from prefork_lb.balance.registry import make_balancer
from prefork_lb.balance.sticky import Binding, Sticky, cookie_time, upstream_cookie, upstream_header
from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Address, StickyConfig, UpstreamConfig, UpstreamServer
from prefork_lb.http.template import compile_template
from prefork_lb.limits.table import LimitTable
from tests.unit.groups import private_group

NOW = 1_000


class Req:
    """A request as the hint templates see it: only the Cookie field matters here."""

    def __init__(self, cookie: str = "", addr: str = "127.0.0.1") -> None:
        from prefork_lb.http.exchange import ConnectionInfo, Exchange

        headers = [(b"Cookie", cookie.encode())] if cookie else []
        self.ex = Exchange(
            conn=ConnectionInfo(addr, 1, "127.0.0.1", 80, 1),
            method=b"GET",
            target=b"/",
            path="/",
            args="",
            version=(1, 1),
            headers=headers,
            header_index={k.lower(): v for k, v in headers},
            host="",
            start_time=0.0,
        )


def servers(n: int, **options: Any) -> tuple[UpstreamServer, ...]:
    return tuple(
        UpstreamServer(
            address=Address("inet", "127.0.0.1", 9001 + i), name=f"127.0.0.1:{9001 + i}", **options
        )
        for i in range(n)
    )


def build(
    srv: tuple[UpstreamServer, ...], method: str = "round_robin", strict: bool = False, **sticky: Any
) -> tuple[PeerGroup, Sticky]:
    cfg = StickyConfig(**({"mode": "cookie", "cookie": "srv"} | sticky))
    up = UpstreamConfig(name="g", method=method, servers=srv, sticky=cfg, sticky_strict=strict)  # type: ignore[arg-type]
    group = private_group(up)
    table = LimitTable(learn.KIND_STICKY, 64 * 1024) if cfg.mode == "learn" else None
    return group, Sticky(up, group, make_balancer(up, group, compile_template), compile_template, table)


def one(
    group: PeerGroup, st: Sticky, cookie: str = "", now: int = NOW, addr: str = "127.0.0.1"
) -> tuple[str, str]:
    """One request picked and released: (address of the peer, sticky status)."""
    b = Binding()
    sel = new_selection(group, 0)
    peer = st.pick(b, sel, Req(cookie, addr).ex, now, now * 1000)
    assert peer is not None
    free(sel, peer, False, now)
    return peer.addr, b.status


def test_server_identifier_is_md5_of_ip_port_or_route() -> None:
    group, _st = build((*servers(2), UpstreamServer(Address("inet", "127.0.0.1", 9009), "x", route="a")))
    peers = group.all_peers()
    assert peers[0].sid == hashlib.md5(b"127.0.0.1:9001").hexdigest()
    assert len(peers[0].sid) == 32 and peers[0].sid == peers[0].sid.lower()
    assert peers[2].sid == "a"


def test_cookie_time_and_set_cookie_format() -> None:
    assert cookie_time(2145916555) == "Thu, 31-Dec-37 23:55:55 GMT"  # nginx's expires=max date
    assert cookie_time(1_800_000_000) == "Fri, 15-Jan-27 08:00:00 GMT"
    assert cookie_time(2_200_000_000) == "Sun, 18-Sep-2039 23:06:40 GMT"  # 4 digits after 2037
    group, st = build(
        servers(1),
        expires_s=3600.0,
        domain=".example.com",
        path="/",
        httponly=True,
        secure=True,
        samesite="lax",
    )
    peer = group.primary.peers[0]
    assert st.set_cookie(peer, 1_800_000_000, Req().ex) == (
        b"srv=" + peer.sid.encode() + b"; expires=Fri, 15-Jan-27 09:00:00 GMT; max-age=3600"
        b"; domain=.example.com; httponly; secure; samesite=lax; path=/"
    )
    group, st = build(servers(1), expires_max=True)
    assert st.set_cookie(group.primary.peers[0], NOW, Req().ex).endswith(
        b"; expires=Thu, 31-Dec-37 23:55:55 GMT; max-age=315360000"
    )
    group, st = build(servers(1))  # no expires: a session cookie, nothing else
    assert (
        st.set_cookie(group.primary.peers[0], NOW, Req().ex) == b"srv=" + group.primary.peers[0].sid.encode()
    )


def test_samesite_variable_rendered_and_dropped_when_empty_or_unsafe() -> None:
    group, st = build(servers(1), samesite="$arg_ss", path="/p")
    peer = group.primary.peers[0]
    base = b"srv=" + peer.sid.encode()

    def with_args(args: str) -> bytes:
        ex = Req().ex
        ex.args = args
        return st.set_cookie(peer, NOW, ex)

    assert with_args("ss=Strict") == base + b"; samesite=Strict; path=/p"
    assert with_args("") == base + b"; path=/p"
    assert with_args("ss=a;b") == base + b"; path=/p"  # never a second attribute from a variable


def test_cookie_hit_new_miss() -> None:
    group, st = build(servers(3))
    b_sid = group.primary.peers[1].sid
    assert one(group, st) == ("127.0.0.1:9001", "NEW")
    for _ in range(5):
        assert one(group, st, f"srv={b_sid}") == ("127.0.0.1:9002", "HIT")
    _addr, status = one(group, st, "srv=nosuchserver")
    assert status == "MISS"


def test_round_robin_accounts_bound_requests() -> None:
    """nginx: the bound peer pays the total in the winner's place, so with equal weights
    and every other request bound to b, all unbound requests go to a."""
    group, st = build(servers(2))
    b_sid = group.primary.peers[1].sid
    got = [one(group, st, f"srv={b_sid}" if i % 2 == 0 else "")[0] for i in range(10)]
    assert got == ["127.0.0.1:9002", "127.0.0.1:9001"] * 5
    # without sticky's accounting the unbound ones would alternate a, b


@pytest.mark.parametrize("peers", [3, 14])
def test_bound_accounting_same_on_both_builds(peers: int) -> None:
    """``account`` with the compiled loops leaves exactly the words of the pure pass, with
    failures (irregular effective weights), tried bits and varied weights."""
    import random

    from prefork_lb.balance.sticky import account
    from prefork_lb.zone import layout as L

    rng = random.Random(peers)
    srv = tuple(
        UpstreamServer(Address("inet", "127.0.0.1", 9001 + i), f"s{i}", weight=1 + i % 4, max_fails=2)
        for i in range(peers)
    )
    groups = [build(srv)[0] for _ in range(2)]
    if groups[1].primary.table.native is None:
        pytest.skip("compiled loops not built")
    groups[0].primary.table.native = None
    for step in range(300):
        target = rng.randrange(peers)
        tried = 0 if step % 3 else 1 << ((target + 1) % peers)
        for g in groups:
            account(g.primary.table, target, tried, NOW, NOW * 1000, False)
        if step % 17 == 0:  # a failure: effective weights irregular for a while
            victim = rng.randrange(peers)
            for g in groups:
                p = g.primary.peers[victim]
                p._mv[p._b + L.P_EW] = max(0, p.effective_weight - 2)
        words = [[(p.current_weight, p.effective_weight) for p in g.primary.peers] for g in groups]
        assert words[0] == words[1]


def test_round_robin_update_skipped_at_the_floor() -> None:
    """Bound b keeps paying until cw <= -(total - weight); then the update is skipped."""
    group, st = build(servers(3))
    a, b, c = group.primary.peers
    one(group, st, f"srv={b.sid}")  # a +1, b +1 -3, c +1: b at the floor -(3 - 1)
    assert [p.current_weight for p in (a, b, c)] == [1, -2, 1]
    for _ in range(20):  # every later bound request skips the update
        assert one(group, st, f"srv={b.sid}") == (b.addr, "HIT")
    assert [p.current_weight for p in (a, b, c)] == [1, -2, 1]
    assert one(group, st) == (a.addr, "NEW")  # unbound: a wins (cw 2 vs c 2: the first), pays 3
    assert [p.current_weight for p in (a, b, c)] == [-1, -1, 2]


def test_least_conn_takes_the_bound_peer_directly() -> None:
    group, st = build(servers(3), method="least_conn")
    c = group.primary.peers[2]
    before = [p.current_weight for p in group.primary.peers]
    assert one(group, st, f"srv={c.sid}") == (c.addr, "HIT")
    assert [p.current_weight for p in group.primary.peers] == before  # no tie-break pass ran


def test_unusable_bound_peer_rebalances_or_strict_502() -> None:
    group, st = build(servers(2))
    b = group.primary.peers[1]
    sel = new_selection(group, 0)
    from prefork_lb.balance.peers import take

    take(sel, b, NOW)
    free(sel, b, True, NOW)  # max_fails=1: b unavailable for fail_timeout
    assert one(group, st, f"srv={b.sid}") == ("127.0.0.1:9001", "MISS")
    group, st = build(servers(2), strict=True)
    b = group.primary.peers[1]
    sel = new_selection(group, 0)
    take(sel, b, NOW)
    free(sel, b, True, NOW)
    bind = Binding()
    assert st.pick(bind, new_selection(group, 0), Req(f"srv={b.sid}").ex, NOW, NOW * 1000) is None
    assert bind.status == "MISS"


def test_retry_after_failure_rebinds() -> None:
    """The bound peer failed in this request: the retry goes elsewhere (the cookie then names it)."""
    group, st = build(servers(2))
    b = group.primary.peers[1]
    bind = Binding()
    sel = new_selection(group, 0)
    ex = Req(f"srv={b.sid}").ex
    first = st.pick(bind, sel, ex, NOW, NOW * 1000)
    assert first is b and bind.status == "HIT"
    free(sel, b, True, NOW)
    second = st.pick(bind, sel, ex, NOW, NOW * 1000)
    assert second is group.primary.peers[0] and bind.status == "MISS"


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("method", ["round_robin", "least_conn", "random", "ip_hash", "least_time"])
def test_drain_gets_only_bound_requests(method: str, native: bool) -> None:
    srv = servers(14)
    srv = (*srv[:3], UpstreamServer(srv[3].address, srv[3].name, drain=True), *srv[4:])
    group, st = build(srv, method=method)
    for plist in (group.primary,):
        if not native:
            plist.table.native = None
        elif plist.table.native is None:
            pytest.skip("compiled loops not built")
    drained = group.primary.peers[3]
    assert drained.drain and drained.out and not drained.down
    unbound = [one(group, st, addr=f"10.{i}.{i % 7}.1")[0] for i in range(200)]
    assert drained.addr not in unbound
    assert len(set(unbound)) == 13  # every other peer still gets traffic
    assert all(one(group, st, f"srv={drained.sid}") == (drained.addr, "HIT") for _ in range(5))


def test_drain_single_server_only_bound() -> None:
    group, st = build(servers(1, drain=True))
    bind = Binding()
    assert st.pick(bind, new_selection(group, 0), Req().ex, NOW, NOW * 1000) is None
    assert one(group, st, f"srv={group.primary.peers[0].sid}")[1] == "HIT"


def test_learn_table_store_lookup_expiry_eviction() -> None:
    table = LimitTable(learn.KIND_STICKY, learn.MIN_BYTES)  # one bucket of 8 ways
    mv, buckets = table.mv, table.buckets
    assert buckets == 1 and learn.capacity(learn.MIN_BYTES) == 8
    assert learn.capacity(1024 * 1024) == 32760
    for i in range(8):
        assert not learn.store(mv, buckets, learn.session_key(f"s{i}"), 100 + i, 1000 + i, 60_000)
    assert learn.lookup(mv, buckets, learn.session_key("s3"), 2000, 60_000) == 103
    assert learn.lookup(mv, buckets, learn.session_key("s0"), 2001, 60_000) == 100  # refreshed: s1 now oldest
    assert learn.store(mv, buckets, learn.session_key("new"), 999, 3000, 60_000)  # evicts s1 (LRU)
    assert learn.evictions(mv) == 1
    assert learn.lookup(mv, buckets, learn.session_key("s1"), 3001, 60_000) == 0
    assert learn.lookup(mv, buckets, learn.session_key("new"), 3002, 60_000) == 999
    # unused for longer than the timeout: forgotten
    assert learn.lookup(mv, buckets, learn.session_key("s2"), 1002 + 60_001, 60_000) == 0
    assert learn.live(mv, buckets, 3003, 60_000) == 7


def test_learn_binds_created_sessions() -> None:
    group, st = build(
        servers(3),
        mode="learn",
        cookie="",
        create=("$upstream_cookie_sessionid",),
        lookup=("$cookie_sessionid",),
        zone="z",
        zone_size_bytes=64 * 1024,
        timeout_s=60.0,
    )
    c = group.primary.peers[2]
    head = [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"SessionID=abc123; Path=/")]
    assert st.created(head) == "abc123"
    st.learn("abc123", c, NOW * 1000)
    assert one(group, st, "sessionid=abc123") == (c.addr, "HIT")
    assert one(group, st, "sessionid=other")[1] == "MISS"
    assert one(group, st)[1] == "NEW"


def test_upstream_variables_from_the_head() -> None:
    head = [(b"X-Session-Id", b"h1"), (b"Set-Cookie", b"a=1"), (b"set-cookie", b"sid = v2 ; HttpOnly")]
    assert upstream_cookie(head, "sid") == "v2"
    assert upstream_cookie(head, "none") == ""
    assert upstream_header(head, "x_session_id") == "h1"


# ---- config ----

BASE = """
[http.upstreams.backend]
{extra}
servers = [
  {{ address = "127.0.0.1:9001", route = "a" }},
  {{ address = "127.0.0.1:9002", route = "b", drain = true }},
]
[[http.servers]]
listen = ["127.0.0.1:8080"]
[[http.servers.locations]]
match = "/"
proxy_pass = "http://backend"
"""


def load_text(tmp_path: Path, text: str) -> Any:
    tomllib.loads(text)
    path = tmp_path / "lb.toml"
    path.write_text(text)
    return load_config(str(path))


@pytest.fixture
def load(tmp_path: Path) -> Any:
    return lambda extra: load_text(tmp_path, BASE.format(extra=extra))


def test_config_forms(load: Any) -> None:
    cfg = load(
        'method = "least_conn"\n'
        'sticky = { cookie = "srv_id", expires = "1h", domain = ".example.com", path = "/", httponly = true,'
        ' secure = true, samesite = "lax" }\nsticky_strict = true'
    )
    up = cfg.http.upstreams["backend"]
    assert up.sticky == StickyConfig(
        "cookie", "srv_id", 3600.0, False, ".example.com", "/", True, True, "lax"
    )
    assert up.sticky_strict
    assert [s.route for s in up.servers] == ["a", "b"] and [s.drain for s in up.servers] == [False, True]
    up = load('sticky = { route = ["$cookie_route", "$arg_route"] }').http.upstreams["backend"]
    assert up.sticky.route == ("$cookie_route", "$arg_route")
    cfg = load(
        'sticky = { learn = true, create = ["$upstream_cookie_sessionid"], lookup = ["$cookie_sessionid"],'
        ' zone = "client_sessions:1m", timeout = "1h", header = false }'
    )
    st = cfg.http.upstreams["backend"].sticky
    assert (st.zone, st.zone_size_bytes, st.timeout_s) == ("client_sessions", 1024 * 1024, 3600.0)
    assert cfg.http.limit_zone_sizes()[(learn.KIND_STICKY, "client_sessions")] == 1024 * 1024


@pytest.mark.parametrize(
    ("extra", "where", "says"),
    [
        ('sticky = { cookie = "s", lookup = ["$x"] }', "sticky.lookup", 'belongs to sticky "learn"'),
        ('sticky = { cookie = "s", route = ["$x"] }', "sticky", "exactly one"),
        ('sticky = { cookie = "s", samesite = "maybe" }', "sticky.samesite", "strict"),
        ('sticky = { route = ["$no_such_variable"] }', "sticky.route", "no_such_variable"),
        (
            'sticky = { learn = true, create = ["$cookie_x"], lookup = ["$cookie_x"], zone = "z:1m" }',
            "sticky.create",
            "$upstream_cookie_NAME",
        ),
        (
            'sticky = { learn = true, create = ["$upstream_cookie_x"], lookup = ["$cookie_x"] }',
            "sticky.zone",
            "required",
        ),
        ("sticky_strict = true", "sticky_strict", "needs sticky"),
    ],
)
def test_config_errors_name_the_key(load: Any, extra: str, where: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(extra)
    assert e.value.key_path == f"http.upstreams.backend.{where}"
    assert says in e.value.message


def test_stream_rejects_sticky(tmp_path: Path) -> None:
    text = """
[stream.upstreams.db]
sticky = { cookie = "x" }
servers = [{ address = "127.0.0.1:9001" }]
[[stream.servers]]
listen = ["127.0.0.1:8081"]
proxy_pass = "db"
"""
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert e.value.key_path == "stream.upstreams.db.sticky"
    assert "http only" in e.value.message


def test_mmap_is_shared_after_fork() -> None:
    """The learn table is the limits tables' anonymous MAP_SHARED mapping (shared by fork)."""
    assert LimitTable(learn.KIND_STICKY, learn.MIN_BYTES)._mmap is not None
    assert mmap.MAP_SHARED


NGINX_CONF = """
events {}
http {
    upstream backend {
        least_conn;
        sticky cookie srv_id expires=1h domain=.example.com path=/ httponly secure samesite=lax;
        server 127.0.0.1:9001 route=a;
        server 127.0.0.1:9002 route=b drain;
    }
    upstream learned {
        sticky learn create=$upstream_cookie_sessionid lookup=$cookie_sessionid zone=client_sessions:1m
                     timeout=1h header sync;
        server 127.0.0.1:9003;
    }
    upstream routed {
        sticky route $cookie_route $arg_route;
        sticky_strict on;
        server 127.0.0.1:9004 sid=x;
    }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://backend; }
        location /l/ { proxy_pass http://learned; }
        location /r/ { proxy_pass http://routed; }
    }
}
"""


def test_convert_maps_nginx_sticky(tmp_path: Path) -> None:
    """``prefork-lb convert`` / ``-c nginx.conf``: sticky, sticky_strict, route=/sid=, drain."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF)
    ups = load_config(str(conf)).http.upstreams
    assert ups["backend"].sticky == StickyConfig(
        "cookie", "srv_id", 3600.0, False, ".example.com", "/", True, True, "lax"
    )
    assert [(s.route, s.drain) for s in ups["backend"].servers] == [("a", False), ("b", True)]
    learned = ups["learned"].sticky
    assert learned is not None
    assert (learned.create, learned.lookup, learned.zone, learned.timeout_s, learned.header) == (
        ("$upstream_cookie_sessionid",),
        ("$cookie_sessionid",),
        "client_sessions",
        3600.0,
        True,
    )
    routed = ups["routed"]
    assert routed.sticky is not None and routed.sticky.route == ("$cookie_route", "$arg_route")
    assert routed.sticky_strict and routed.servers[0].route == "x"
