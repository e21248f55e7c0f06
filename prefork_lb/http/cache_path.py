"""The request path of a location with ``proxy_cache`` (issue 18; gevent I/O).

The decisions are ``cache/policy.py``'s; the store is ``cache/store.py``'s ``CacheZone``;
serving an entry is ``http/cache_serve.py``, filling one from the upstream
``http/cache_fill.py`` (the ``Proxy`` hook). ``serve`` replaces ``Proxy(...).run()`` for a
location whose runtime has a ``CachePlan`` (locations without one pay nothing: the
connection checks one attribute).

Rules:
1. A method outside ``proxy_cache_methods``, and an Upgrade (WebSocket) request, is proxied
   untouched ($upstream_cache_status empty). HEAD is fetched upstream as GET
   (``proxy_cache_convert_head``) and stored.
2. ``proxy_cache_bypass`` true: BYPASS, no lookup, the response is still stored.
3. A fresh entry is a HIT: served from the file without the balancer or an upstream;
   $upstream_addr and $upstream_status stay empty.
4. No entry: MISS. Before ``proxy_cache_min_uses`` uses the response is not stored. With
   ``proxy_cache_lock`` one request (the lock holder) fetches and stores; the others wait
   (``CacheZone.wait_unlocked``: woken within milliseconds of the unlock, not nginx's 500
   ms poll) and then HIT, or after ``proxy_cache_lock_timeout`` go upstream as MISS and
   their response is not stored (nginx since 1.7.8).
5. A stale entry: ``policy.stale_action``. STALE spawns a background greenlet that fetches
   (as GET, holding the key's lock, with a client that discards everything) and stores
   while the client gets the stale entry; UPDATING serves the stale entry; EXPIRED goes
   upstream (``cache_fill``: revalidation, stale answers on failure).
6. A Vary entry whose variant differs from the request's sends the lookup to the variant's
   own key (the request's key plus the variant md5); the first variant stored lives under
   the plain key, as nginx.
7. The lock is always released (``finally``), after the commit, so waiters find the entry.
8. Every response counts once in the zone's statistics under its cache status.
9. A remembered upstream error (an error ``proxy_intercept_errors`` handed to
   ``error_page`` while ``proxy_cache_valid`` or the upstream gave it a validity:
   ``Fill.on_intercept``, cache/store.py rule 9) is a HIT while valid: the request gets
   ``error_page`` for that status (as the first one did) without the upstream, as nginx
   1.22 (``ngx_http_file_cache_exists``: ``fcn->error``). Lock waiters woken by its holder
   get it too.
10. The key is compiled at worker start (``compile_key``): the default
   ``$scheme$proxy_host$request_uri`` is one of two prebuilt prefixes (by TLS) plus the
   request target's bytes, no template; any other key renders its template.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import gevent

from prefork_lb.cache import policy as P
from prefork_lb.http.cache_fill import Fill, entry_validators
from prefork_lb.http.cache_serve import serve_entry
from prefork_lb.http.client import ClientGone
from prefork_lb.http.exchange import Exchange
from prefork_lb.http.proxy import Proxy, ProxyOutcome
from prefork_lb.http.template import Template, compile_template

if TYPE_CHECKING:
    from prefork_lb.cache.store import CacheZone, Entry
    from prefork_lb.config.model import LocationConfig
    from prefork_lb.http.client import Client
    from prefork_lb.http.request import RequestHead
    from prefork_lb.http.runtime import LocationRuntime, StatusZone

log = logging.getLogger("prefork_lb.error")


class CachePlan:
    """A location's cache settings, compiled at worker start (templates, flags, the zone)."""

    __slots__ = (
        "background",
        "bypass",
        "convert_head",
        "force_ranges",
        "ignore",
        "key",
        "lock",
        "lock_age_ms",
        "lock_timeout_s",
        "methods",
        "min_uses",
        "no_cache",
        "revalidate",
        "stale_updating",
        "use_stale",
        "valid",
        "zone",
    )

    def __init__(self, loc: LocationConfig, zone: CacheZone) -> None:
        self.zone = zone
        self.key: Callable[[Exchange], bytes] = compile_key(loc)
        self.bypass = tuple(compile_template(t) for t in loc.proxy_cache_bypass)
        self.no_cache = tuple(compile_template(t) for t in loc.proxy_no_cache)
        self.methods = loc.proxy_cache_methods
        self.valid = loc.proxy_cache_valid
        self.min_uses = loc.proxy_cache_min_uses
        self.lock = loc.proxy_cache_lock
        self.lock_timeout_s = loc.proxy_cache_lock_timeout_s
        self.lock_age_ms = int(loc.proxy_cache_lock_age_s * 1000)
        self.use_stale = loc.proxy_cache_use_stale
        self.stale_updating = "updating" in loc.proxy_cache_use_stale
        self.background = loc.proxy_cache_background_update
        self.revalidate = loc.proxy_cache_revalidate
        self.convert_head = loc.proxy_cache_convert_head
        self.ignore = loc.proxy_ignore_headers
        self.force_ranges = loc.proxy_force_ranges


DEFAULT_KEY = "$scheme$proxy_host$request_uri"


def compile_key(loc: LocationConfig) -> Callable[[Exchange], bytes]:
    """Rule 10: the request's cache key as bytes (the same bytes the template renders)."""
    if loc.proxy_cache_key == DEFAULT_KEY and loc.proxy_pass is not None:
        try:
            host = loc.proxy_pass.host_header.encode("latin-1")
        except UnicodeEncodeError:  # the template's encode would fail per request: keep it
            pass
        else:
            plain, tls = b"http" + host, b"https" + host

            def default_key(ex: Exchange) -> bytes:
                return (plain if ex.conn.tls is None else tls) + ex.target

            return default_key
    template: Template = compile_template(loc.proxy_cache_key)
    return lambda ex: template.render(ex).encode("latin-1")


def build_plan(loc: LocationConfig, zones: dict[str, Any]) -> CachePlan | None:
    """The location's plan, None without a cache (or when its zone is not open here)."""
    if not loc.proxy_cache or loc.proxy_pass is None:
        return None
    zone = zones.get(loc.proxy_cache)
    return None if zone is None else CachePlan(loc, zone)


def _now_ms(client: Client) -> int:
    return int(client.clock() * 1000)


# ---- the entry point (rules 1-5) ----


def serve(
    client: Client,
    ex: Exchange,
    head: RequestHead,
    lr: LocationRuntime,
    keep_alive: bool,
    status_zone: StatusZone | None,
) -> ProxyOutcome:
    plan = lr.cache
    assert plan is not None
    if ex.method not in plan.methods or head.upgrade:  # rule 1
        return Proxy(client, ex, head, lr, keep_alive, status_zone).run()
    zone = plan.zone
    key = plan.key(ex)
    if plan.bypass and P.predicate(t.render(ex) for t in plan.bypass):  # rule 2
        ex.cache_status = "BYPASS"
        fill = Fill(plan, lr, ex, head, key, P.key_md5(key), store=True)
        return _finish(fill, _fetch(client, ex, head, lr, keep_alive, status_zone, fill))
    now_ms = _now_ms(client)
    found = zone.lookup(key, now_ms)
    entry = found.entry
    if entry is not None and entry.meta.vary:
        variant = P.variant_md5(tuple(entry.meta.vary.split(b",")), ex.header_index)
        if variant != entry.meta.variant_md5:  # another variant: its own key
            entry.close()
            key = key + b"\0variant\0" + variant.hex().encode()
            found = zone.lookup(key, now_ms)
            entry = found.entry
    md5 = found.md5
    if entry is None:
        if found.error:  # rule 9
            return _remembered_error(client, ex, zone, found.error)
        return _miss(client, ex, head, lr, keep_alive, status_zone, plan, key, md5, found.uses)
    meta = entry.meta
    if P.is_fresh(meta.valid_until_ms, now_ms):  # rule 3
        ex.cache_status = "HIT"
        try:
            return ProxyOutcome(serve_entry(client, ex, head, lr, entry, keep_alive), False)
        finally:
            entry.close()
            zone.count("hit", ex.body_bytes_sent)
    locked = zone.try_lock(md5, now_ms, plan.lock_age_ms)  # rule 5
    may_stale = P.stale_ok(plan.stale_updating, meta.valid_until_ms, meta.stale_while_revalidate_s, now_ms)
    action = P.stale_action(locked, may_stale, plan.background)
    if action != "EXPIRED":
        ex.cache_status = action
        if action == "STALE":
            _background(client, ex, head, lr, plan, key, md5, entry)
        try:
            return ProxyOutcome(serve_entry(client, ex, head, lr, entry, keep_alive), False)
        finally:
            entry.close()
            zone.count(action.lower(), ex.body_bytes_sent)
    ex.cache_status = "EXPIRED"
    fill = Fill(plan, lr, ex, head, key, md5, store=True, stale=entry, locked=locked)
    try:
        return _finish(fill, _fetch(client, ex, head, lr, keep_alive, status_zone, fill))
    finally:
        entry.close()


def _miss(
    client: Client,
    ex: Exchange,
    head: RequestHead,
    lr: LocationRuntime,
    keep_alive: bool,
    status_zone: StatusZone | None,
    plan: CachePlan,
    key: bytes,
    md5: bytes,
    uses: int,
) -> ProxyOutcome:
    """Rule 4: no entry."""
    zone = plan.zone
    ex.cache_status = "MISS"
    store = uses >= plan.min_uses
    locked = False
    if store and plan.lock:
        deadline = client.clock() + plan.lock_timeout_s
        while True:
            now_ms = _now_ms(client)
            if zone.try_lock(md5, now_ms, plan.lock_age_ms):
                locked = True
                break
            left = deadline - client.clock()
            if left <= 0 or not zone.wait_unlocked(md5, left):
                store = False  # a waiter that timed out: not stored (nginx 1.7.8)
                break
            found = zone.lookup(key, _now_ms(client))
            entry = found.entry
            if found.error:  # the holder's upstream error was remembered (rule 9)
                return _remembered_error(client, ex, zone, found.error)
            if entry is not None:
                if P.is_fresh(entry.meta.valid_until_ms, _now_ms(client)):
                    ex.cache_status = "HIT"
                    try:
                        return ProxyOutcome(serve_entry(client, ex, head, lr, entry, keep_alive), False)
                    finally:
                        entry.close()
                        zone.count("hit", ex.body_bytes_sent)
                entry.close()
            # unlocked without a usable entry (not cacheable, or expired already): try again
    fill = Fill(plan, lr, ex, head, key, md5, store=store, locked=locked)
    return _finish(fill, _fetch(client, ex, head, lr, keep_alive, status_zone, fill))


def _remembered_error(client: Client, ex: Exchange, zone: CacheZone, status: int) -> ProxyOutcome:
    """Rule 9: a HIT on a remembered upstream error answers the location's error_page."""
    ex.cache_status = "HIT"
    try:
        return ProxyOutcome(client.respond_error(ex, status), False)
    finally:
        zone.count("hit", ex.body_bytes_sent)


def _fetch(
    client: Client,
    ex: Exchange,
    head: RequestHead,
    lr: LocationRuntime,
    keep_alive: bool,
    status_zone: StatusZone | None,
    fill: Fill,
) -> ProxyOutcome:
    try:
        return Proxy(client, ex, head, lr, keep_alive, status_zone, fill).run()
    finally:
        if fill.locked:  # rule 7: after the commit, so waiters find the entry
            fill.locked = False
            fill.plan.zone.unlock(fill.md5)


def _finish(fill: Fill, outcome: ProxyOutcome) -> ProxyOutcome:
    ex = fill.ex
    if ex.cache_status:  # rule 8
        fill.plan.zone.count(ex.cache_status.lower(), ex.body_bytes_sent)
    return outcome


# ---- background update (rule 5) ----


class _Discard:
    """The client of a background update: nothing is sent anywhere (``client.Client``)."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def read_body(self, block: bool) -> bytes | bool | None:
        return True

    def send(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        pass

    def respond_error(self, ex: Exchange, status: int) -> bool:
        ex.status = status
        return False

    def tunnel_io(self) -> tuple[Any, bytes]:
        raise ClientGone

    def hold_tunnel(self, tunnel: Any) -> None:
        pass

    def trailers(self) -> bytes:
        return b""  # a background update sends no request body


def _background(
    client: Client,
    ex: Exchange,
    head: RequestHead,
    lr: LocationRuntime,
    plan: CachePlan,
    key: bytes,
    md5: bytes,
    entry: Entry,
) -> None:
    """Fetch ``key`` as GET in a greenlet of its own (the key's lock is held: released when
    it ends) while the client gets the stale entry."""
    bex = replace(
        ex,
        method=b"GET",
        attempts=[],
        status=0,
        bytes_sent=0,
        body_bytes_sent=0,
        cache_status="",
        status_override=0,
        limit_conn_held=None,
    )
    bhead = replace(
        head, method=b"GET", content_length=None, chunked=False, expect_continue=False, upgrade=False
    )
    validators = entry_validators(entry) if plan.revalidate else None
    stored_status = entry.status
    stale_meta = entry.meta

    def run() -> None:
        fill = Fill(plan, lr, bex, bhead, key, md5, store=True, locked=True, background=True)
        fill.validators = validators
        fill.stored_status = stored_status
        fill.stale_meta = stale_meta
        try:
            _fetch(_Discard(client.clock), bex, bhead, lr, True, None, fill)
        except Exception:  # never let a background update take the worker down
            log.exception("cache background update failed")
        finally:
            if fill.locked:
                plan.zone.unlock(md5)

    gevent.spawn(run)


__all__ = ["CachePlan", "build_plan", "serve"]
