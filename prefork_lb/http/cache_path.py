"""The request path of a location with ``proxy_cache`` (issue 18; gevent I/O).

The decisions are ``cache/policy.py``'s; the store is ``cache/store.py``'s ``CacheZone``;
this module only wires them into the proxy: ``serve`` replaces ``Proxy(...).run()`` for a
location whose runtime has a ``CachePlan`` (locations without one pay nothing: the
connection checks one attribute).

Rules:
1. A method outside ``proxy_cache_methods``, and an Upgrade (WebSocket) request, is proxied
   untouched ($upstream_cache_status empty). HEAD is fetched upstream as GET
   (``proxy_cache_convert_head``) and stored.
2. ``proxy_cache_bypass`` true: BYPASS, no lookup, the response is still stored.
3. A fresh entry is a HIT: served from the file without the balancer or an upstream (the
   stored head replayed through the location's header rules, our Date, no Age; bodies above
   ``SENDFILE_MIN`` bytes by sendfile on plain connections); $upstream_addr and
   $upstream_status stay empty.
4. No entry: MISS. Before ``proxy_cache_min_uses`` uses the response is not stored. With
   ``proxy_cache_lock`` one request (the lock holder) fetches and stores; the others wait
   (``CacheZone.wait_unlocked``: woken within milliseconds of the unlock, not nginx's 500
   ms poll) and then HIT, or after ``proxy_cache_lock_timeout`` go upstream as MISS and
   their response is not stored (nginx since 1.7.8).
5. A stale entry: ``policy.stale_action``. STALE spawns a background greenlet that fetches
   (as GET, holding the key's lock) and stores while the client gets the stale entry;
   UPDATING serves the stale entry; EXPIRED goes upstream (with ``proxy_cache_revalidate``
   sending the stored ETag / Last-Modified: a 304 gives REVALIDATED and refreshes the
   entry's validity). On an EXPIRED request, an upstream failure or status listed in
   ``proxy_cache_use_stale`` (or inside stale-if-error) serves the stale entry (STALE); any
   other status is passed on, and stored only when cacheable (the stale entry stays).
6. Upstream requests of a cached location lose Range and the client's conditionals
   (``policy.UPSTREAM_DROP``); the client's Range and conditionals are answered here from
   the full response (``policy`` rules 6-7): a MISS cuts a single range, a HIT also
   multipart; INM / IMS against the stored validators give 304.
7. A stored entry is the upstream's status line and end-to-end headers (no hop-by-hop
   field, no Content-Length / Transfer-Encoding: the body length is in the entry) and the
   decoded body. A body cut short (the upstream died) never commits:
   ``CacheWriter.commit(expected_length)`` checks the length. The commit happens before the
   client gets the last bytes, so a client holding the whole response finds the entry;
   a client that goes away mid-body does not stop the entry from being filled (nginx).
8. The lock is always released (``finally``), after the commit, so waiters find the entry.
9. Every response counts once in the zone's statistics under its cache status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Final

import gevent

from prefork_lb.cache import policy as P
from prefork_lb.http.client import ClientGone
from prefork_lb.http.exchange import Exchange
from prefork_lb.http.header_rules import HOP_BY_HOP
from prefork_lb.http.headers import build_response_head, error_page, simple_response
from prefork_lb.http.proxy import STATUS_CONDITIONS, Proxy, ProxyOutcome
from prefork_lb.http.response import ChunkedDecoder, ResponseHead, UpstreamProtocolError
from prefork_lb.http.template import Template, compile_template
from prefork_lb.http.upstream import RECV_SIZE
from prefork_lb.netio import recv

if TYPE_CHECKING:
    from prefork_lb.cache.entry import EntryMeta
    from prefork_lb.cache.store import CacheZone, Entry
    from prefork_lb.config.model import LocationConfig
    from prefork_lb.http.client import Client
    from prefork_lb.http.exchange import Attempt
    from prefork_lb.http.header_rules import ResponseRules
    from prefork_lb.http.request import RequestHead
    from prefork_lb.http.runtime import LocationRuntime, StatusZone
    from prefork_lb.http.upstream import UpstreamConnection

log = logging.getLogger("prefork_lb.error")

SENDFILE_MIN: Final = 32 * 1024  # smaller bodies go out with the head in one send
READ_CHUNK: Final = 256 * 1024
_NOT_STORED: Final = HOP_BY_HOP | {b"content-length", b"transfer-encoding"}
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"


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
        self.key: Template = compile_template(loc.proxy_cache_key)
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
    key = plan.key.render(ex).encode("latin-1")
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
        if fill.locked:  # rule 8: after the commit, so waiters find the entry
            fill.locked = False
            fill.plan.zone.unlock(fill.md5)


def _finish(fill: Fill, outcome: ProxyOutcome) -> ProxyOutcome:
    ex = fill.ex
    if ex.cache_status:  # rule 9
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
    validators = _validators(entry) if plan.revalidate else None
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


# ---- the proxy's hook (http/proxy.py ``cache``) ----


class Fill:
    """One upstream fetch of a cached location: what ``Proxy`` asks at its hook points
    (``upstream_head``, ``on_failure``, ``on_status``, ``relay``)."""

    __slots__ = (
        "as_get",
        "background",
        "ex",
        "head",
        "key",
        "locked",
        "lr",
        "md5",
        "plan",
        "stale",
        "stale_meta",
        "store",
        "stored_status",
        "validators",
    )

    def __init__(
        self,
        plan: CachePlan,
        lr: LocationRuntime,
        ex: Exchange,
        head: RequestHead,
        key: bytes,
        md5: bytes,
        store: bool,
        stale: Entry | None = None,
        locked: bool = False,
        background: bool = False,
    ) -> None:
        self.plan = plan
        self.lr = lr
        self.ex = ex
        self.head = head
        self.key = key
        self.md5 = md5
        self.store = store
        self.stale = stale
        self.locked = locked
        self.background = background
        self.as_get = head.method == b"HEAD" and plan.convert_head
        self.validators = _validators(stale) if stale is not None and plan.revalidate else None
        self.stored_status = stale.status if stale is not None else 0
        self.stale_meta = stale.meta if stale is not None else None  # a background update's too

    # -- request (rule 6) --

    def upstream_head(self, raw: bytes) -> bytes:
        """The request head for upstream: GET for HEAD, without Range and the client's
        conditionals, with the stored validators when revalidating."""
        lines = raw.split(b"\r\n")
        first = lines[0]
        if self.as_get:
            first = b"GET" + first[4:]
        out = [first]
        for line in lines[1:]:
            if not line:
                break
            if line.split(b":", 1)[0].lower() not in P.UPSTREAM_DROP:
                out.append(line)
        if self.validators is not None:
            etag, last_modified = self.validators
            if etag:
                out.append(b"If-None-Match: " + etag)
            if last_modified:
                out.append(b"If-Modified-Since: " + last_modified)
        out += [b"", b""]
        return b"\r\n".join(out)

    # -- stale use (rule 5) --

    def _stale_usable(self, condition: str) -> bool:
        stale = self.stale
        if stale is None:
            return False
        meta = stale.meta
        now_ms = int(self.ex.start_time * 1000)
        return P.stale_on_error(
            condition, self.plan.use_stale, meta.valid_until_ms, meta.stale_if_error_s, now_ms
        )

    def on_failure(self, client: Client, condition: str, keep_alive: bool) -> ProxyOutcome | None:
        """An attempt failed for good (``error``, ``timeout``, ``invalid_header``): the stale
        entry instead of the error, when allowed."""
        if not self._stale_usable(condition):
            return None
        assert self.stale is not None
        self.ex.cache_status = "STALE"
        return ProxyOutcome(serve_entry(client, self.ex, self.head, self.lr, self.stale, keep_alive), False)

    def on_status(self, client: Client, resp: ResponseHead, keep_alive: bool) -> Callable[[], bool] | None:
        """A final response head arrived: answer from the entry instead (304 to our
        revalidation -> REVALIDATED; a use_stale status -> STALE)? The returned callable
        sends that answer (the proxy first closes the upstream and frees the peer)."""
        stale = self.stale
        if self.validators is not None and resp.status == 304:
            decision = P.refreshed_validity(
                304,
                self.stored_status,
                resp.headers,
                int(client.clock() * 1000),
                self.plan.valid,
                self.plan.ignore,
            )
            if decision is not None:
                meta = _refreshed_meta(self.validators, decision, resp.headers, self.stale_meta)
                self.plan.zone.refresh(self.md5, meta, self.key)
            self.ex.cache_status = "REVALIDATED"
            if stale is None:  # a background update: nothing to send
                return lambda: False
            return lambda: serve_entry(client, self.ex, self.head, self.lr, stale, keep_alive)
        condition = STATUS_CONDITIONS.get(resp.status)
        if condition is not None and stale is not None and self._stale_usable(condition):
            self.ex.cache_status = "STALE"
            return lambda: serve_entry(client, self.ex, self.head, self.lr, stale, keep_alive)
        return None

    # -- the response (rules 6-7) --

    def relay(
        self,
        client: Client,
        ex: Exchange,
        req: RequestHead,
        conn: UpstreamConnection,
        resp: ResponseHead,
        leftover: bytes,
        attempt: Attempt,
        keep_alive: bool,
        read_timeout_s: float,
        now: float,
        rules: ResponseRules,
    ) -> tuple[bool, bool]:
        """``relay.relay``'s contract, plus storing the body (rule 7)."""
        plan = self.plan
        now_ms = int(now * 1000)
        writer = None
        if self.store:
            no_cache = bool(plan.no_cache) and P.predicate(t.render(ex) for t in plan.no_cache)
            decision = P.store_decision(resp.status, resp.headers, now_ms, plan.valid, plan.ignore, no_cache)
            if decision is not None:
                meta = _meta(decision, resp.headers, ex)
                counted = ex.cache_status.lower() or "miss"
                w = plan.zone.writer(self.key, meta, stored_head(resp), counted)
                writer = (
                    None
                    if w is None
                    else _Store(w, resp.content_length if resp.framing == "length" else None)
                )
        framing = resp.framing
        length = resp.content_length if framing == "length" else None
        client_head_only = req.method == b"HEAD" or self.background
        status, reason = resp.status, resp.reason
        headers = resp.headers
        window: tuple[int, int] | None = None  # the slice of the body the client gets
        if ex.status_override:
            status, reason = ex.status_override, b""
        elif status == 200 and not client_head_only and length is not None:
            etag, last_modified = _validators_of(headers)
            index = ex.header_index
            if P.not_modified(
                200, index.get(b"if-none-match"), index.get(b"if-modified-since"), etag, last_modified
            ):
                status, reason, client_head_only = 304, b"", True
            elif (
                b"range" in index
                and (plan.force_ranges or _has(headers, b"accept-ranges"))
                and P.if_range_matches(index.get(b"if-range"), etag, last_modified)
            ):
                ranges = P.parse_ranges(index[b"range"], length)
                if ranges == P.UNSATISFIABLE:
                    return self._unsatisfiable(
                        client,
                        ex,
                        conn,
                        resp,
                        leftover,
                        attempt,
                        writer,
                        length,
                        keep_alive,
                        read_timeout_s,
                        now,
                        rules,
                    )
                if isinstance(ranges, list) and len(ranges) == 1:  # a MISS: one range only
                    first, last = ranges[0]
                    window = (first, last + 1)
                    status, reason = 206, b""
                    headers = [*headers, (b"Content-Range", P.content_range(first, last, length))]
        if status == 304:
            field = b""
        elif window is not None:
            field = b"Content-Length: %d\r\n" % (window[1] - window[0])
        elif length is not None or (framing == "none" and resp.content_length is not None):
            field = b"Content-Length: %d\r\n" % (resp.content_length or 0)
        elif framing == "none" or client_head_only:
            field = b""
        elif req.version >= (1, 1):
            field = _CHUNKED
        else:
            field, keep_alive = b"", False
        ex.status = status
        out_head = build_response_head(
            status, reason, headers, resp.connection_tokens, field, keep_alive, now, rules, ex
        )
        ex.bytes_sent = len(out_head)
        sink = _Sink(client, ex, out_head, window, client_head_only, field == _CHUNKED)
        sink.keep_reading = writer is not None
        try:
            complete, reusable = _read_body(conn, resp, leftover, attempt, read_timeout_s, sink, writer)
        except ClientGone:
            if writer is not None:
                writer.finish(False)
            return False, False
        if writer is not None:
            writer.finish(complete)
        if sink.gone:
            return False, False
        if not complete:
            client.abort()
            return False, False
        try:
            sink.finish()
        except ClientGone:
            return False, False
        return keep_alive, reusable

    def _unsatisfiable(
        self,
        client: Client,
        ex: Exchange,
        conn: UpstreamConnection,
        resp: ResponseHead,
        leftover: bytes,
        attempt: Attempt,
        writer: _Store | None,
        length: int,
        keep_alive: bool,
        read_timeout_s: float,
        now: float,
        rules: ResponseRules,
    ) -> tuple[bool, bool]:
        """416 to the client; the body is still read (and stored) behind it."""
        out, body_len = _range_not_satisfiable(ex, length, keep_alive, now, rules)
        ex.status = 416
        ex.bytes_sent = len(out) - body_len
        sink = _Sink(client, ex, out, None, True, False)
        try:
            sink.flush_head()
            ex.body_bytes_sent += body_len
            complete, reusable = _read_body(conn, resp, leftover, attempt, read_timeout_s, sink, writer)
        except ClientGone:
            if writer is not None:
                writer.finish(False)
            return False, False
        if writer is not None:
            writer.finish(complete)
        return keep_alive and complete, reusable and complete


class _Sink:
    """Where the decoded body goes on the client side: all of it, a window of it (one
    range), or nothing (HEAD, 304, background); the head goes out with the first bytes.
    With ``keep_reading`` (an entry is being stored) a client that goes away is noted
    (``gone``) and the body is still read into the entry, as nginx fills the cache after a
    client abort; without it ClientGone propagates."""

    __slots__ = ("chunked", "client", "ex", "gone", "head", "head_only", "keep_reading", "pos", "window")

    def __init__(
        self,
        client: Client,
        ex: Exchange,
        head: bytes,
        window: tuple[int, int] | None,
        head_only: bool,
        chunked: bool,
    ) -> None:
        self.client = client
        self.ex = ex
        self.head = head
        self.window = window
        self.head_only = head_only
        self.chunked = chunked
        self.pos = 0
        self.keep_reading = False
        self.gone = False

    def _send(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            self.client.send(data)
        except ClientGone:
            if not self.keep_reading:
                raise
            self.gone = True

    def flush_head(self) -> None:
        if self.head:
            head, self.head = self.head, b""
            self._send(head)

    def feed(self, piece: bytes) -> None:
        start = self.pos
        self.pos += len(piece)
        if self.head_only:
            self.flush_head()
            return
        window = self.window
        if window is not None:
            a, b = window
            if self.pos <= a or start >= b:
                if not self.head:
                    return
                piece = b""
            else:
                piece = piece[max(0, a - start) : min(len(piece), b - start)]
        if piece:
            self.ex.body_bytes_sent += len(piece)
            if self.chunked:
                piece = b"%x\r\n%b\r\n" % (len(piece), piece)
        data = self.head + piece if self.head else piece
        self.head = b""
        if data:
            self._send(data)

    def finish(self) -> None:
        self.flush_head()
        if self.chunked and not self.head_only:
            self._send(_LAST_CHUNK)
        if self.gone:
            raise ClientGone


def _read_body(
    conn: UpstreamConnection,
    resp: ResponseHead,
    leftover: bytes,
    attempt: Attempt,
    read_timeout_s: float,
    sink: _Sink,
    writer: _Store | None,
) -> tuple[bool, bool]:
    """Read the upstream body by its framing into ``sink`` and ``writer``: (complete,
    upstream reusable). The entry is committed before the client gets the last bytes, so
    a client that has the whole response finds the entry (rule 7). ClientGone from the
    sink propagates."""
    framing = resp.framing
    sock = conn.sock
    if framing == "none":
        return True, resp.keep_alive and not leftover
    if framing == "length":
        remaining = resp.content_length or 0
        data = leftover
        extra = False
        while True:
            if data:
                if len(data) > remaining:
                    data, extra = data[:remaining], True
                remaining -= len(data)
                if writer is not None:
                    writer.write(data)
                    if remaining <= 0:
                        writer.finish(True)
                sink.feed(data)
            if remaining <= 0:
                return True, resp.keep_alive and not extra
            got = _upstream_recv(sock, read_timeout_s)
            if not got:
                return False, False
            attempt.bytes_received += len(got)
            data = got
    decoder = ChunkedDecoder() if framing == "chunked" else None
    data = leftover
    while True:
        if decoder is not None:
            try:
                pieces = decoder.feed(data) if data else []
            except UpstreamProtocolError as e:
                log.error("upstream sent invalid chunked response: %s, upstream: %s", e, conn.addr)
                return False, False
        else:
            pieces = [data] if data else []
        if writer is not None:
            for piece in pieces:
                writer.write(piece)
            if decoder is not None and decoder.done:
                writer.finish(True)
        for piece in pieces:
            if piece:
                sink.feed(piece)
        if decoder is not None and decoder.done:
            return True, resp.keep_alive and not decoder.extra
        got = _upstream_recv(sock, read_timeout_s)
        if got == b"" and decoder is None:
            return True, False  # close-delimited: EOF is the end
        if not got:
            return False, False
        attempt.bytes_received += len(got)
        data = got


class _Store:
    """The entry being written: committed once complete (the body length checked against
    the announced one), aborted otherwise; ``finish`` acts once."""

    __slots__ = ("done", "expected", "writer")

    def __init__(self, writer: Any, expected: int | None) -> None:
        self.writer = writer
        self.expected = expected
        self.done = False

    def write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)

    def finish(self, complete: bool) -> None:
        if self.done:
            return
        self.done = True
        if complete:
            self.writer.commit(self.expected)
        else:
            self.writer.abort()


def _upstream_recv(sock: Any, timeout_s: float) -> bytes | None:
    try:
        return recv(sock, RECV_SIZE, timeout_s)
    except TimeoutError:
        log.error("upstream timed out (110: Connection timed out) while reading upstream")
        return None
    except OSError as e:
        log.error("recv() failed (%s: %s) while reading upstream", e.errno, e.strerror)
        return None


# ---- stored heads and metadata (rule 7) ----


def stored_head(resp: ResponseHead) -> bytes:
    """The status line and end-to-end headers as stored."""
    drop = _NOT_STORED | resp.connection_tokens if resp.connection_tokens else _NOT_STORED
    parts = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason)]
    for name, value in resp.headers:
        if name.lower() not in drop:
            parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


# Parsed stored heads by their bytes, per worker: a HIT on a known entry skips the parse.
# Bounded (emptied when full); the values are never mutated (callers copy to add fields).
PARSED_MAX: Final = 1024
_PARSED: dict[bytes, tuple[int, bytes, list[tuple[bytes, bytes]]]] = {}


def parse_stored_head(head: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, reason, headers) of a head written by ``stored_head`` (checksummed in the
    entry, so it is trusted)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else b""
    headers = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return status, reason, headers


def _has(headers: list[tuple[bytes, bytes]], lname: bytes) -> bool:
    return any(n.lower() == lname for n, _ in headers)


def _get(headers: list[tuple[bytes, bytes]], lname: bytes) -> bytes:
    for n, v in headers:
        if n.lower() == lname:
            return v
    return b""


def _validators_of(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    return _get(headers, b"etag"), _get(headers, b"last-modified")


def _validators(entry: Entry) -> tuple[bytes, bytes] | None:
    """(ETag, Last-Modified text) to revalidate ``entry`` with; None when it has neither."""
    etag = entry.meta.etag
    lm = entry.meta.last_modified_s
    last_modified = formatdate(lm, usegmt=True).encode() if lm >= 0 else b""
    return (etag, last_modified) if etag or last_modified else None


def _meta(decision: P.StoreDecision, headers: list[tuple[bytes, bytes]], ex: Exchange) -> EntryMeta:
    from prefork_lb.cache.entry import EntryMeta

    etag, last_modified = _validators_of(headers)
    lm = P.parse_http_date(last_modified) if last_modified else None
    date = P.parse_http_date(_get(headers, b"date")) or 0
    vary = decision.vary
    return EntryMeta(
        valid_until_ms=decision.valid_until_ms,
        date_s=date,
        last_modified_s=-1 if lm is None else lm,
        etag=etag,
        stale_while_revalidate_s=decision.updating_s,
        stale_if_error_s=decision.error_s,
        vary=b",".join(vary),
        variant_md5=P.variant_md5(vary, ex.header_index) if vary else b"",
    )


def _refreshed_meta(
    validators: tuple[bytes, bytes],
    decision: P.StoreDecision,
    headers: list[tuple[bytes, bytes]],
    old: EntryMeta | None,
) -> EntryMeta:
    """The entry's metadata after a 304: new validity, the 304's validators if it sent any."""
    from prefork_lb.cache.entry import EntryMeta

    etag = _get(headers, b"etag") or validators[0]
    base = old if old is not None else EntryMeta(valid_until_ms=0)
    return replace(
        base,
        valid_until_ms=decision.valid_until_ms,
        etag=etag,
        stale_while_revalidate_s=decision.updating_s,
        stale_if_error_s=decision.error_s,
    )


# ---- serving an entry (rules 3, 6) ----


def serve_entry(
    client: Client, ex: Exchange, head: RequestHead, lr: LocationRuntime, entry: Entry, keep_alive: bool
) -> bool:
    """Send ``entry`` to the client (HIT, STALE, UPDATING, REVALIDATED): range and
    conditional answers included. Whether the connection may stay open."""
    parsed = _PARSED.get(entry.head)
    if parsed is None:
        if len(_PARSED) >= PARSED_MAX:
            _PARSED.clear()
        parsed = _PARSED[entry.head] = parse_stored_head(entry.head)
    status, reason, headers = parsed
    length = entry.body_length
    rules = lr.headers
    now = client.clock()
    index = ex.header_index
    head_only = ex.method == b"HEAD"
    window: list[tuple[bytes, int, int]] | None = None  # (part head, first, last)
    multipart = False
    plan = lr.cache
    if ex.status_override:
        status, reason = ex.status_override, b""
    elif status == 200 and (b"if-none-match" in index or b"if-modified-since" in index or b"range" in index):
        etag, last_modified = _validators_of(headers)
        if P.not_modified(
            200, index.get(b"if-none-match"), index.get(b"if-modified-since"), etag, last_modified
        ):
            status, reason, head_only = 304, b"", True
        elif (
            b"range" in index
            and ((plan is not None and plan.force_ranges) or _has(headers, b"accept-ranges"))
            and P.if_range_matches(index.get(b"if-range"), etag, last_modified)
        ):
            ranges = P.parse_ranges(index[b"range"], length)
            if ranges == P.UNSATISFIABLE:
                out, body_len = _range_not_satisfiable(ex, length, keep_alive, now, rules)
                ex.status = 416
                ex.bytes_sent = len(out)
                ex.body_bytes_sent = body_len
                client.send(out)
                return keep_alive
            if isinstance(ranges, list):
                status, reason = 206, b""
                if len(ranges) == 1:
                    first, last = ranges[0]
                    headers = [*headers, (b"Content-Range", P.content_range(first, last, length))]
                    window = [(b"", first, last)]
                else:
                    ctype = _get(headers, b"content-type") or None
                    window = P.multipart_parts(ranges, length, ctype)
                    multipart = True
                    headers = [(n, v) for n, v in headers if n.lower() != b"content-type"]
                    headers.append((b"Content-Type", b"multipart/byteranges; boundary=" + P.BOUNDARY))
    if status == 304:
        field = b""
    elif window is not None:
        total = P.multipart_length(window) if multipart else window[0][2] - window[0][1] + 1
        field = b"Content-Length: %d\r\n" % total
    else:
        field = b"Content-Length: %d\r\n" % length
    ex.status = status
    out = build_response_head(status, reason, headers, frozenset(), field, keep_alive, now, rules, ex)
    ex.bytes_sent = len(out)
    if head_only or status in (204, 304):
        client.send(out)
        return keep_alive
    if window is None:
        _send_body(client, ex, entry, out, 0, length)
    else:
        pending = out
        for part_head, first, last in window:
            pending += part_head
            ex.bytes_sent += len(part_head)
            _send_body(client, ex, entry, pending, first, last + 1 - first)
            pending = b""
        if multipart:
            tail = P.multipart_tail()
            client.send(tail)
            ex.bytes_sent += len(tail)
    return keep_alive


def _send_body(client: Client, ex: Exchange, entry: Entry, head: bytes, pos: int, count: int) -> None:
    """``head`` then ``count`` body bytes from ``pos``: one send when small, else sendfile
    where the connection offers it (``send_file``), else reads of ``READ_CHUNK``."""
    if count <= SENDFILE_MIN:
        data = entry.pread(count, pos)
        if len(data) != count:
            raise ClientGone  # the file changed under us: end the connection, never pad
        client.send(head + data if head else data)
        ex.body_bytes_sent += count
        ex.bytes_sent += count
        return
    if head:
        client.send(head)
    send_file: Callable[[int, int, int], int] | None = getattr(client, "send_file", None)
    if send_file is not None:
        sent = send_file(entry.fd, entry.body_offset + pos, count)
        ex.body_bytes_sent += sent
        ex.bytes_sent += sent
        if sent != count:
            raise ClientGone
        return
    end = pos + count
    while pos < end:
        data = entry.pread(min(READ_CHUNK, end - pos), pos)
        if not data:
            raise ClientGone
        client.send(data)
        pos += len(data)
        ex.body_bytes_sent += len(data)
        ex.bytes_sent += len(data)


def _range_not_satisfiable(
    ex: Exchange, length: int, keep_alive: bool, now: float, rules: ResponseRules
) -> tuple[bytes, int]:
    """416 with ``Content-Range: bytes */len`` (nginx's range filter)."""
    added = rules.added(ex, 416) if rules.add else ()
    return simple_response(
        416,
        error_page(416),
        keep_alive,
        now,
        b"text/html",
        [(b"Content-Range", b"bytes */%d" % length)],
        ex.method,
        added,
    )


__all__ = ["CachePlan", "Fill", "build_plan", "serve", "serve_entry", "stored_head"]
