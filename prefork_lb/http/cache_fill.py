"""Filling a cache entry from the upstream: the hook ``Proxy`` calls for a cached location
(``http/proxy.py`` rule 13; issue 18; gevent I/O).

Rules (``cache/policy.py`` makes the decisions):
1. ``upstream_head``: HEAD goes upstream as GET (``proxy_cache_convert_head``); Range and
   the client's conditionals are dropped (``policy.UPSTREAM_DROP``); a revalidation adds
   the stored ETag / Last-Modified as If-None-Match / If-Modified-Since.
2. ``on_failure`` / ``on_status``: an EXPIRED request whose upstream failed (after the
   retries) with a condition in ``proxy_cache_use_stale``, or inside stale-if-error, is
   answered from the stale entry (STALE); a 304 to a revalidation refreshes the entry's
   validity (REVALIDATED) and answers from it.
3. ``relay`` keeps ``relay.relay``'s contract and writes the decoded body into the entry as
   it goes to the client. The stored entry is the upstream's status line and end-to-end
   headers (no hop-by-hop field, no Content-Length / Transfer-Encoding: the body length is
   in the entry) and the decoded body. A body cut short (the upstream died) never commits
   (``CacheWriter.commit(expected_length)``). The commit happens before the client gets the
   last bytes, so a client holding the whole response finds the entry; a client that goes
   away mid-body does not stop the entry from being filled (nginx).
4. A MISS answers the client's Range (one range only) and conditionals from the full
   response, as nginx; a HEAD or a 304 whose response is not stored closes the upstream
   instead of reading a body nobody needs.
5. ``on_intercept``: an upstream error that ``proxy_intercept_errors`` sends to
   ``error_page`` stores no file; when the response would be stored (the same decision as
   a body: Set-Cookie, no-cache, ``proxy_no_cache``... keep it out), its status and
   validity are remembered in the index (differential scenario X22) and the lookups answer it until
   then. ``proxy_no_cache`` is honoured here (nginx 1.22 only tests it when it sends a
   body, so it remembers the error anyway: docs/cache.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Final

from prefork_lb.cache import policy as P
from prefork_lb.http.cache_serve import (
    has_header,
    header_value,
    range_not_satisfiable,
    serve_entry,
    validators_of,
)
from prefork_lb.http.client import ClientGone
from prefork_lb.http.exchange import Exchange
from prefork_lb.http.header_rules import HOP_BY_HOP
from prefork_lb.http.headers import CHUNKED_FIELD, build_response_head
from prefork_lb.http.proxy import STATUS_CONDITIONS, ProxyOutcome
from prefork_lb.http.response import ChunkedDecoder, ResponseHead, UpstreamProtocolError
from prefork_lb.http.upstream import RECV_SIZE
from prefork_lb.netio import recv

if TYPE_CHECKING:
    from prefork_lb.cache.entry import EntryMeta
    from prefork_lb.cache.store import Entry
    from prefork_lb.http.cache_path import CachePlan
    from prefork_lb.http.client import Client
    from prefork_lb.http.exchange import Attempt
    from prefork_lb.http.header_rules import ResponseRules
    from prefork_lb.http.request import RequestHead
    from prefork_lb.http.runtime import LocationRuntime
    from prefork_lb.http.upstream import UpstreamConnection

log = logging.getLogger("prefork_lb.error")

_NOT_STORED: Final = HOP_BY_HOP | {b"content-length", b"transfer-encoding"}
_LAST_CHUNK: Final = b"0\r\n\r\n"


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
        self.validators = entry_validators(stale) if stale is not None and plan.revalidate else None
        self.stored_status = stale.status if stale is not None else 0
        self.stale_meta = stale.meta if stale is not None else None  # a background update's too

    # -- request (rule 1) --

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

    # -- stale use (rule 2) --

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
        # an upstream status uses the stale entry only when proxy_cache_use_stale lists it:
        # stale-if-error covers failed attempts (on_failure), not statuses (nginx 1.22's
        # ngx_http_upstream_test_next: the differential scenario X7)
        condition = STATUS_CONDITIONS.get(resp.status)
        if condition is not None and stale is not None and condition in self.plan.use_stale:
            self.ex.cache_status = "STALE"
            return lambda: serve_entry(client, self.ex, self.head, self.lr, stale, keep_alive)
        return None

    def on_intercept(self, resp: ResponseHead) -> None:
        """``proxy_intercept_errors`` hands ``resp``'s status to ``error_page`` (rule 5):
        remember it in the index when it would be stored (nginx 1.22's
        ``ngx_http_upstream_intercept_errors``: its validity from the upstream's headers or
        ``proxy_cache_valid``), so the next lookups answer the error page without the
        upstream (cache/store.py rule 9)."""
        if not self.store:
            return
        plan, ex = self.plan, self.ex
        no_cache = bool(plan.no_cache) and P.predicate(t.render(ex) for t in plan.no_cache)
        now_ms = int(self.ex.start_time * 1000)
        decision = P.store_decision(resp.status, resp.headers, now_ms, plan.valid, plan.ignore, no_cache)
        if decision is not None:
            plan.zone.remember_error(self.md5, resp.status, decision.valid_until_ms)

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
        extra: bytes = b"",
    ) -> tuple[bool, bool, bool]:
        """``relay.relay``'s contract (keep-alive, reusable, complete), plus storing the body
        (rules 3-4). ``extra`` (sticky's Set-Cookie) goes to this client only: the entry
        stores the upstream's own head."""
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
            etag, last_modified = validators_of(headers)
            index = ex.header_index
            if P.not_modified(
                200, index.get(b"if-none-match"), index.get(b"if-modified-since"), etag, last_modified
            ):
                status, reason, client_head_only = 304, b"", True
            elif (
                b"range" in index
                and (plan.force_ranges or has_header(headers, b"accept-ranges"))
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
            field = CHUNKED_FIELD
        else:
            field, keep_alive = b"", False
        if extra:
            field = extra + field
        ex.status = status
        out_head = build_response_head(
            status, reason, headers, resp.connection_tokens, field, keep_alive, now, rules, ex
        )
        ex.bytes_sent = len(out_head)
        if client_head_only and writer is None and resp.framing != "none":
            # a HEAD (fetched as GET) or a 304 whose body nobody needs: the upstream
            # connection is closed rather than read to its end
            try:
                client.send(out_head)
            except ClientGone:
                return False, False, False
            return keep_alive, False, True
        sink = _Sink(client, ex, out_head, window, client_head_only, field == CHUNKED_FIELD)
        sink.keep_reading = writer is not None
        try:
            complete, reusable = _read_body(conn, resp, leftover, attempt, read_timeout_s, sink, writer)
        except ClientGone:
            if writer is not None:
                writer.finish(False)
            return False, False, False
        if writer is not None:
            writer.finish(complete)
        if sink.gone:
            return False, False, False
        if not complete:
            client.abort()
            return False, False, False
        try:
            sink.finish()
        except ClientGone:
            return False, False, False
        return keep_alive, reusable, True

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
    ) -> tuple[bool, bool, bool]:
        """416 to the client; the body is still read (and stored) behind it."""
        out, body_len = range_not_satisfiable(ex, length, keep_alive, now, rules)
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
            return False, False, False
        if writer is not None:
            writer.finish(complete)
        return keep_alive and complete, reusable and complete, complete


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
    a client that has the whole response finds the entry (rule 3). ClientGone from the
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


# ---- stored heads and metadata (rule 3) ----


def stored_head(resp: ResponseHead) -> bytes:
    """The status line and end-to-end headers as stored."""
    drop = _NOT_STORED | resp.connection_tokens if resp.connection_tokens else _NOT_STORED
    parts = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason)]
    for name, value in resp.headers:
        if name.lower() not in drop:
            parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def entry_validators(entry: Entry) -> tuple[bytes, bytes] | None:
    """(ETag, Last-Modified text) to revalidate ``entry`` with; None when it has neither."""
    etag = entry.meta.etag
    lm = entry.meta.last_modified_s
    last_modified = formatdate(lm, usegmt=True).encode() if lm >= 0 else b""
    return (etag, last_modified) if etag or last_modified else None


def _meta(decision: P.StoreDecision, headers: list[tuple[bytes, bytes]], ex: Exchange) -> EntryMeta:
    from prefork_lb.cache.entry import EntryMeta

    etag, last_modified = validators_of(headers)
    lm = P.parse_http_date(last_modified) if last_modified else None
    date = P.parse_http_date(header_value(headers, b"date")) or 0
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

    etag = header_value(headers, b"etag") or validators[0]
    base = old if old is not None else EntryMeta(valid_until_ms=0)
    return replace(
        base,
        valid_until_ms=decision.valid_until_ms,
        etag=etag,
        stale_while_revalidate_s=decision.updating_s,
        stale_if_error_s=decision.error_s,
    )
