"""Proxy one request to an upstream group: attempts and retries (gevent I/O).

The request body is ``request_body.RequestBody``, the response relay ``relay.relay``; the
client connection is seen only through ``client.Client`` (rule 9).

Rules (shared/reference/nginx-semantics.md sections 5-7 and 9):
1. Each attempt picks a peer, takes a pooled connection to it or connects, sends the head
   and body, and reads the response head. Connect/send/read errors, timeouts and invalid
   headers are failures: the peer is charged (``peers.free(failed=True)``) whether or not
   the request is retried.
2. A retry needs: tries left, the condition listed in ``proxy_next_upstream`` ("off"
   disables all), nothing sent to the client yet, a replayable body, a method nginx treats
   as idempotent (``IDEMPOTENT``; any other method, unknown tokens included, only with
   ``non_idempotent``) once the request was sent, and ``proxy_next_upstream_timeout`` not
   exceeded.
3. Status conditions (http_500 ...) are checked before anything reaches the client and
   need ``tries > 1``; on the last try the upstream's response is passed through and the
   peer is not charged. 403/404 never charge the peer.
4. No usable peer: an attempt named after the group with status 502, "no live upstreams".
5. Once the response head went to the client there is no retry; later errors close the
   client connection and are not charged to the peer (``relay.py`` rule 1).
6. Request bodies up to ``client_body_buffer_size`` are kept so a retry can resend them;
   a larger body is streamed and makes the request non-replayable once sent
   (``request_body.py`` rule 1).
7. A reused keep-alive connection the upstream closed under us is not the peer's failure
   and costs no try: the request is resent once, on a new connection to the same peer,
   and nothing is charged or logged as an attempt, when the failure proves the request was
   not processed (``Unprocessed``: a send failed with EPIPE/ECONNRESET, or a reset arrived
   before any response byte: the upstream closed the socket with our request unread, or
   before it arrived; any method), or when the upstream closed cleanly before any response byte and the
   request could be retried under rule 2 (the usual idle-close race). Timeouts and invalid
   responses on reused connections are ordinary failures (charged, rule 2 applies).
8. ``socket()`` failing for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
   ENOMEM) is the worker's problem: 500, the peer is not charged, no retry (nginx); the
   line is logged at alert, at most once a second.
9. The proxy never writes the connection's state: ``run`` returns a ``ProxyOutcome``
   (keep-alive still allowed; whether the server's status zone was recorded in the last
   peer release's critical section) and the connection applies it.
10. Upgrade (issue 14, http/tunnel.py): a client upgrade request is sent with Upgrade and
   ``Connection: upgrade``; a 101 answer to it ends the head reading like a final
   response and the exchange becomes a tunnel (no pooling, the connection ends after it).
   A 101 to any other request is an invalid response (502, charged, as any invalid head).
11. TLS to upstreams (issue 14, http/upstream_tls.py): a new connection is handshaken in
   ``_open`` within ``proxy_connect_timeout``; a failure is the attempt's (502, charged,
   retried as "error"). Pooled TLS connections are looked up by their own key.
12. Sticky (issue 19, balance/sticky.py): an upstream with ``sticky`` picks through its
   ``Sticky`` with the request's ``Binding`` (in the pick's critical section, which also
   sets ``$upstream_sticky_status``); the head of the relayed response gets the cookie
   naming the peer that answered, or gives the learn table its session (right away with
   ``header``, else in the last release's critical section, and only when the whole
   response reached the client: one cut short, by the upstream or the client, binds
   nothing, as nginx learns from successful responses). Without sticky: one flag test.
13. Content cache (issue 18, http/cache_path.py): a ``cache`` fill (``None`` for locations
   without proxy_cache: one attribute check) rewrites the request head (HEAD as GET, no
   Range or client conditionals, the stored validators), may answer from the stale entry
   instead of an error or a listed status (after the retries, the peer charged as without
   it), answers a 304 to a revalidation from the entry, and relays the body with a copy
   into the cache (``Fill.relay``, ``relay.relay``'s contract); an error intercepted for
   error_page is remembered by the cache when it would be stored (``Fill.on_intercept``).
"""

from __future__ import annotations

import errno
import logging
import socket as stdsocket
from typing import TYPE_CHECKING, Final, NamedTuple

from prefork_lb.balance.members import refresh_locked, retarget
from prefork_lb.balance.peers import Peer, Selection, free, log_disabled, new_selection
from prefork_lb.config.model import Address
from prefork_lb.http.exchange import Attempt, Exchange
from prefork_lb.http.headers import build_upstream_head, upgrade_value
from prefork_lb.http.relay import relay
from prefork_lb.http.request import RequestHead
from prefork_lb.http.request_body import RequestBody
from prefork_lb.http.response import ResponseHead, UpstreamProtocolError, head_end, parse_buffered_head
from prefork_lb.http.tunnel import Tunnel, switch_head
from prefork_lb.http.upstream import RECV_SIZE, UpstreamConnection, open_connection
from prefork_lb.http.upstream_tls import HANDSHAKING, handshake_error, start_tls
from prefork_lb.http.uri import encode_path
from prefork_lb.netio import recv, send_all
from prefork_lb.worker.fdbudget import RESOURCE_ERRORS, alert
from prefork_lb.zone.stats import record_http_peer

if TYPE_CHECKING:
    from prefork_lb.http.cache_fill import Fill
    from prefork_lb.http.client import Client
    from prefork_lb.http.runtime import LocationRuntime, StatusZone, UpstreamRuntime

log = logging.getLogger("prefork_lb.error")

# nginx retries every method it knows except POST, LOCK and PATCH; a method it does not know
# (any other token, RFC 9110 section 9.1) is treated as non-idempotent here.
IDEMPOTENT: Final = frozenset(
    {
        b"GET",
        b"HEAD",
        b"PUT",
        b"DELETE",
        b"OPTIONS",
        b"TRACE",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"PROPFIND",
        b"PROPPATCH",
        b"UNLOCK",
    }
)
RESET_ERRNOS: Final = frozenset({errno.ECONNRESET, errno.EPIPE})
STATUS_CONDITIONS: Final = {
    500: "http_500",
    502: "http_502",
    503: "http_503",
    504: "http_504",
    403: "http_403",
    404: "http_404",
    429: "http_429",
}
MAX_INTERIM: Final = 10


CONNECTING: Final = "connecting to upstream"
SENDING: Final = "sending request to upstream"
READING_HEAD: Final = "reading response header from upstream"


class AttemptFailed(Exception):
    def __init__(self, condition: str, status: int, message: str, phase: str = READING_HEAD) -> None:
        super().__init__(message)
        self.condition = condition  # "error" | "timeout" | "invalid_header"
        self.status = status  # 502 or 504, as nginx logs the attempt
        self.phase = phase  # what nginx's error log says we were doing


class OutOfResources(Exception):
    """``socket()`` failed for lack of descriptors or memory: the worker's fault, not the
    peer's. nginx ends the request with 500, charges nobody and does not retry (rule 8)."""


class Unprocessed(AttemptFailed):
    """The upstream reset the connection before it read the request (rule 7)."""


class ClosedBeforeResponse(AttemptFailed):
    """The upstream closed the connection cleanly before any response byte (rule 7)."""


def upstream_target(ex: Exchange, head: RequestHead, lr: LocationRuntime) -> bytes:
    """The request-target sent upstream (nginx's proxy_pass URI rules)."""
    proxy = lr.config.proxy_pass
    assert proxy is not None
    if ex.uri_rewritten:  # issue 16: the rewritten $uri, re-escaped, plus $args (nginx)
        query = b"?" + ex.args.encode("latin-1") if ex.args else b""
        if proxy.uri is None or ex.rewrite_break:
            return encode_path(ex.path) + query
    elif proxy.uri is None:
        if head.authority is None:
            return head.target
        return head.raw_path + (b"?" + head.query if head.query else b"")
    else:
        query = b"?" + head.query if head.query else b""
    loc = lr.config
    path = ex.path
    if loc.modifier in ("", "^~", "=") and path.startswith(loc.pattern):
        path = proxy.uri + path[len(loc.pattern) :]
    else:
        path = proxy.uri
    return encode_path(path) + query


class ProxyOutcome(NamedTuple):
    """What the connection applies once the proxy is done (rule 9)."""

    keep_alive: bool  # False: the connection must close after this request
    zone_recorded: bool  # the server's status zone was recorded with the peer's release


class Proxy:
    """One request through one location's upstream group."""

    __slots__ = (
        "binding",
        "body",
        "cache",
        "client",
        "ex",
        "head",
        "keep_alive",
        "lr",
        "now",
        "status_zone",
        "up",
        "upgrade",
    )

    def __init__(
        self,
        client: Client,
        ex: Exchange,
        head: RequestHead,
        lr: LocationRuntime,
        keep_alive: bool,
        status_zone: StatusZone | None,
        cache: Fill | None = None,
    ) -> None:
        """``keep_alive``: the connection's intent for this response so far;
        ``status_zone``: the server's zone, recorded with the last release (rule 9);
        ``cache``: the content cache's fill (rule 13)."""
        assert lr.upstream is not None
        self.client = client
        self.ex = ex
        self.head = head
        self.lr = lr
        self.up: UpstreamRuntime = lr.upstream
        self.body = RequestBody(client, head, lr)
        self.now = client.clock
        self.keep_alive = keep_alive
        self.status_zone = status_zone
        self.upgrade = False  # rule 10: an Upgrade went upstream, so a 101 is a switch
        sticky = self.up.sticky
        self.binding = None if sticky is None else sticky.new_binding()  # rule 12
        self.cache = cache

    def run(self) -> ProxyOutcome:
        """Proxy the request (rule 9: the connection applies the outcome)."""
        ex, lr, up, head = self.ex, self.lr, self.up, self.head
        loc = lr.config
        assert lr.plan is not None
        content_length, chunked = head.content_length, head.chunked
        if ex.error_paged:  # issue 16: an error_page target never gets the body (sent before)
            content_length, chunked = None, False
        has_body = chunked or bool(content_length)
        if has_body:
            self.body.prefetch()
        target = upstream_target(ex, head, lr)
        upgrade = upgrade_value(ex, lr.plan) if head.upgrade else None  # rule 10
        self.upgrade = upgrade is not None
        request_head = build_upstream_head(
            ex, lr.plan, target, content_length, chunked, up.pool.enabled, upgrade
        )
        cache = self.cache
        if cache is not None:  # rule 13
            request_head = cache.upstream_head(request_head)
        sel = new_selection(up.group, loc.proxy_next_upstream_tries)
        conditions = loc.proxy_next_upstream
        start = self.now()
        while True:
            now = self.now()
            peer = self._pick(sel)
            if peer is None and up.queue is not None and not ex.attempts and self._all_busy():
                log.info('every server is at max_conns, request queued, upstream: "%s"', up.group.name)
                peer = up.queue.wait(lambda: self._pick(sel), self.now)
                now = self.now()
            if peer is None:
                ex.attempts.append(Attempt(up.group.name, 502, None, None, 0.0))
                log.error('no live upstreams while connecting to upstream, upstream: "%s"', up.group.name)
                if cache is not None:  # rule 13: use_stale error covers "no live upstreams"
                    from_cache = cache.on_failure(self.client, "error", self.keep_alive)
                    if from_cache is not None:
                        return from_cache
                return ProxyOutcome(self.client.respond_error(ex, 502), False)
            attempt = Attempt(peer.addr)
            ex.attempts.append(attempt)
            conn: UpstreamConnection | None = None
            sent = False
            try:
                conn = self._connect(peer.server.address, peer.addr, attempt, now)
                sent = True
                try:
                    resp, leftover = self._exchange(conn, request_head, has_body, attempt, now)
                except (Unprocessed, ClosedBeforeResponse) as stale:
                    if not conn.reused or not self._resend_allowed(stale, conditions, start):
                        raise
                    conn.close()
                    log.info("%s on a keep-alive connection, request resent, upstream: %s", stale, peer.addr)
                    conn = None
                    conn = self._open(peer.server.address, attempt, now)
                    attempt.bytes_received = 0
                    resp, leftover = self._exchange(conn, request_head, has_body, attempt, now)
            except OutOfResources:
                attempt.response_time_s = self.now() - now
                self._free(sel, peer, False, None)
                return ProxyOutcome(self.client.respond_error(ex, 500), False)
            except AttemptFailed as fail:
                attempt.status = fail.status
                attempt.response_time_s = self.now() - now
                if conn is not None:
                    conn.close()
                log.error("%s while %s, upstream: %s", fail, fail.phase, peer.addr)
                self._free(sel, peer, True, None, phase=fail.phase)
                if self._may_retry(sel.tries, fail.condition, conditions, sent, start):
                    continue
                if cache is not None:  # rule 13
                    from_cache = cache.on_failure(self.client, fail.condition, self.keep_alive)
                    if from_cache is not None:
                        return from_cache
                return ProxyOutcome(self.client.respond_error(ex, fail.status), False)
            except BaseException:
                # The client failed us (body error, 413, gone): not the peer's fault.
                attempt.response_time_s = self.now() - now
                if conn is not None:
                    conn.close()
                self._free(sel, peer, False, None)
                raise
            assert conn is not None
            status = resp.status
            attempt.status = status
            condition = STATUS_CONDITIONS.get(status)
            if (
                condition is not None
                and condition in conditions
                and sel.tries > 1
                and self._may_retry(sel.tries, condition, conditions, True, start)
            ):
                attempt.response_time_s = self.now() - now
                conn.close()
                self._free(sel, peer, status not in (403, 404), None)
                continue
            if cache is not None:  # rule 13: a 304 to our revalidation, a use_stale status
                answer = cache.on_status(self.client, resp, self.keep_alive)
                if answer is not None:
                    attempt.response_time_s = self.now() - now
                    conn.close()
                    keep_alive = answer()
                    return ProxyOutcome(keep_alive, self._free(sel, peer, False, attempt, last=True))
            if (
                loc.proxy_intercept_errors
                and status >= 300
                and status in loc.error_page
                and not ex.error_paged
            ):
                # issue 16: the error_page answers instead of the upstream's response
                attempt.response_time_s = self.now() - now
                conn.close()
                if cache is not None:  # rule 13: remembered by the cache (differential scenario X22)
                    cache.on_intercept(resp)
                self._free(sel, peer, False, attempt)
                return ProxyOutcome(self.client.respond_error(ex, status), False)
            cookie = self._sticky_head(peer, resp) if self.binding is not None else b""
            if status == 101:  # rule 10: the tunnel holds the peer until it ends
                keep_alive = self._tunnel(conn, resp, leftover, attempt, now)
            else:
                keep_alive = self._relay(conn, resp, leftover, attempt, now, cookie)
            return ProxyOutcome(keep_alive, self._free(sel, peer, False, attempt, last=True))

    def _pick(self, sel: Selection) -> Peer | None:
        up = self.up
        zone = up.group.zone
        binding = self.binding
        zone.lock()
        try:
            m = up.members
            if m is not None:  # issue 19, balance/members.py rules 2-3
                if m.mv[m.word] != m.seen:  # one word read
                    refresh_locked(up)
                if sel.group is not up.group:
                    retarget(sel, up.group)
                    if binding is not None:
                        binding.resolved = False  # bound to a Peer of the old group: resolve again
            if binding is None:
                return up.balancer.pick(sel, self.ex, int(self.now()))
            sticky = up.sticky
            assert sticky is not None
            now = self.now()
            peer = sticky.pick(binding, sel, self.ex, int(now), int(now * 1000))
        finally:
            zone.unlock()
        self.ex.sticky_status = binding.status
        return peer

    def _sticky_head(self, peer: Peer, resp: ResponseHead) -> bytes:
        """Rule 12: the cookie field naming the peer that answered (our own field, so
        ``proxy_hide_header Set-Cookie`` does not remove it, as in nginx), or b"" after
        teaching the learn table a session (at once with ``header``, else at the last release)."""
        sticky = self.up.sticky
        binding = self.binding
        assert sticky is not None and binding is not None
        if sticky.cfg.mode == "cookie":
            return b"Set-Cookie: " + sticky.set_cookie(peer, int(self.now()), self.ex) + b"\r\n"
        if sticky.table is not None:
            value = sticky.created(resp.headers)
            if value and sticky.cfg.header:
                zone = self.up.group.zone
                zone.lock()
                try:
                    sticky.learn(value, peer, int(self.now() * 1000))
                finally:
                    zone.unlock()
            else:
                binding.learned = value
        return b""

    def _all_busy(self) -> bool:
        """Queue only for max_conns: some server would be usable but for its limit."""
        group = self.up.group
        return any(p.max_conns and not p.out and p.conns >= p.max_conns for p in group.all_peers())

    def _free(
        self,
        sel: Selection,
        peer: Peer,
        failed: bool,
        attempt: Attempt | None,
        last: bool = False,
        phase: str = READING_HEAD,
    ) -> bool:
        """Release the peer under the zone lock (the method's ``release`` first: a completed
        attempt feeds least_time).

        ``last``: the response is complete, so the server's status zone is recorded in the
        same critical section (one lock round trip per request fewer); True when it was.
        """
        now = self.now()
        up = self.up
        zone = up.group.zone
        recorded = False
        zone.lock()
        try:
            balancer = up.balancer
            if balancer.releases:  # least_time; the other methods have nothing to release
                if attempt is None:
                    balancer.release(peer, sel, None, None)
                else:
                    balancer.release(peer, sel, attempt.header_time_s, attempt.response_time_s)
            if attempt is not None and attempt.status is not None:
                header = attempt.header_time_s
                record_http_peer(
                    peer._mv,
                    peer._b,
                    attempt.status,
                    attempt.bytes_sent,
                    attempt.bytes_received,
                    None if header is None else int(header * 1000),
                    int((attempt.response_time_s or 0.0) * 1000),
                )
            disabled = free(sel, peer, failed, int(now), int(now * 1000))
            binding = self.binding
            if last and binding is not None and binding.learned and up.sticky is not None:
                up.sticky.learn(binding.learned, peer, int(now * 1000))  # rule 12: at the end
            status_zone = self.status_zone
            if last and status_zone is not None:
                ex = self.ex
                status_zone.end_locked(zone.mv, ex.status, ex.request_length, ex.bytes_sent, False)
                recorded = True
        finally:
            zone.unlock()
        if disabled:  # logged outside the lock: no I/O in the critical section
            log_disabled(peer, phase)
        if up.queue is not None:
            up.queue.notify()
        return recorded

    def _may_retry(
        self, tries: int, condition: str, conditions: frozenset[str], sent: bool, start: float
    ) -> bool:
        if tries <= 0 or condition not in conditions:
            return False
        if sent and self.head.method not in IDEMPOTENT and "non_idempotent" not in conditions:
            return False
        if sent and not self.body.replayable:
            return False
        timeout = self.lr.config.proxy_next_upstream_timeout_s
        return not (timeout and self.now() - start >= timeout)

    def _resend_allowed(self, stale: AttemptFailed, conditions: frozenset[str], start: float) -> bool:
        """Rule 7: may the request go out again on a new connection to the same peer?"""
        if not self.body.replayable:
            return False
        if isinstance(stale, Unprocessed):
            return True
        return self._may_retry(1, stale.condition, conditions, True, start)

    def _exchange(
        self, conn: UpstreamConnection, request_head: bytes, has_body: bool, attempt: Attempt, start: float
    ) -> tuple[ResponseHead, bytes]:
        self._send(conn, request_head, has_body)
        attempt.bytes_sent = len(request_head) + self.body.received
        return self._read_head(conn, attempt, start)

    def _connect(self, address: Address, addr: str, attempt: Attempt, start: float) -> UpstreamConnection:
        pool = self.up.pool
        tls = self.lr.tls  # rule 11: TLS connections are pooled by their own key
        key = addr if tls is None else tls.pool_key(addr, tls.server_name(self.ex))
        conn = pool.get(key, start) if pool.enabled else None
        if conn is not None:
            attempt.connect_time_s = 0.0
            return conn
        return self._open(address, attempt, start)

    def _open(self, address: Address, attempt: Attempt, start: float) -> UpstreamConnection:
        loc = self.lr.config
        try:
            conn = open_connection(address, loc.proxy_connect_timeout_s, start)
        except TimeoutError:
            raise AttemptFailed(
                "timeout", 504, "upstream timed out (110: Connection timed out)", CONNECTING
            ) from None
        except OSError as e:
            if e.errno in RESOURCE_ERRORS:  # rule 8: local, not the peer's
                alert("socket", "socket() failed (%s: %s) while %s", e.errno, e.strerror, CONNECTING)
                raise OutOfResources from None
            raise AttemptFailed(
                "error", 502, f"connect() failed ({e.errno}: {e.strerror})", CONNECTING
            ) from None
        if self.lr.tls is not None:
            self._start_tls(conn, loc.proxy_connect_timeout_s)
        attempt.connect_time_s = self.now() - start
        return conn

    def _start_tls(self, conn: UpstreamConnection, timeout_s: float) -> None:
        """Rule 11: the TLS handshake on a new connection (http/upstream_tls.py)."""
        tls = self.lr.tls
        assert tls is not None
        name = tls.server_name(self.ex)
        conn.key = tls.pool_key(conn.addr, name)
        try:
            start_tls(conn, tls, name, conn.key, timeout_s)
        except TimeoutError:
            conn.close()
            raise AttemptFailed(
                "timeout", 504, "upstream timed out (110: Connection timed out)", HANDSHAKING
            ) from None
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            conn.close()
            raise AttemptFailed("error", 502, handshake_error(e, name), HANDSHAKING) from None

    def _send(self, conn: UpstreamConnection, request_head: bytes, has_body: bool) -> None:
        sock = conn.sock
        timeout_s = self.lr.config.proxy_send_timeout_s
        body = self.body
        try:
            if not has_body:
                send_all(sock, request_head, timeout_s)
            elif body.complete and body.replayable:
                send_all(sock, request_head + body.framed(), timeout_s)
            else:
                send_all(sock, request_head, timeout_s)
                body.send_to(sock, timeout_s)
        except TimeoutError:
            raise AttemptFailed(
                "timeout", 504, "upstream timed out (110: Connection timed out)", SENDING
            ) from None
        except OSError as e:
            # a reset while we send: the upstream closed with our request (partly) unread
            kind = Unprocessed if e.errno in RESET_ERRNOS else AttemptFailed
            raise kind("error", 502, f"send() failed ({e.errno}: {e.strerror})", SENDING) from None
        conn.requests += 1

    def _read_head(
        self, conn: UpstreamConnection, attempt: Attempt, start: float
    ) -> tuple[ResponseHead, bytes]:
        sock = conn.sock
        loc = self.lr.config
        timeout_s = loc.proxy_read_timeout_s
        limit = loc.proxy_buffer_size_bytes
        head_request = self.head.method == b"HEAD" and (self.cache is None or not self.cache.as_get)
        buf = b""
        scan = 0
        interim = 0
        # The response cannot be there the moment the request was sent: waiting first saves
        # a failing recv(), and measured (wrk -c50, 3 A/B pairs) it halves p99 (16-17 -> 7-8
        # ms) at the same throughput: the greenlet yields to the other connections first.
        wait_first = True
        got_any = False
        try:
            while True:
                end, after = head_end(buf, scan) if buf else (-1, -1)
                if end < 0:
                    if len(buf) > limit:
                        raise AttemptFailed("invalid_header", 502, "upstream sent too big header")
                    scan = max(0, len(buf) - 3)
                    try:
                        data = recv(sock, RECV_SIZE, timeout_s, wait_first)
                    except ConnectionResetError as e:
                        if got_any:
                            raise
                        raise Unprocessed("error", 502, f"recv() failed ({e.errno}: {e.strerror})") from None
                    wait_first = False
                    if not data:
                        if got_any:
                            raise AttemptFailed("error", 502, "upstream prematurely closed connection")
                        # A reset behind the FIN means our request reached a closed socket.
                        if sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ERROR) in RESET_ERRNOS:
                            raise Unprocessed("error", 502, "upstream closed the connection before reading")
                        raise ClosedBeforeResponse("error", 502, "upstream prematurely closed connection")
                    got_any = True
                    attempt.bytes_received += len(data)
                    buf += data
                    continue
                if end > limit:
                    raise AttemptFailed("invalid_header", 502, "upstream sent too big header")
                resp, after = parse_buffered_head(buf, end, after, head_request)
                buf = buf[after:]  # what follows may already hold the final head (after a 1xx)
                scan = 0
                if resp.status >= 200 or (resp.status == 101 and self.upgrade):
                    attempt.header_time_s = self.now() - start
                    return resp, buf
                interim += 1
                if resp.status == 101 or interim > MAX_INTERIM:
                    raise AttemptFailed("invalid_header", 502, "upstream sent an unexpected interim response")
                wait_first = not buf
        except UpstreamProtocolError as e:
            raise AttemptFailed("invalid_header", 502, f"upstream sent invalid header: {e}") from None
        except TimeoutError:
            raise AttemptFailed("timeout", 504, "upstream timed out (110: Connection timed out)") from None
        except OSError as e:
            raise AttemptFailed("error", 502, f"recv() failed ({e.errno}: {e.strerror})") from None

    # ---- response relay (rule 5: no retry from here on; http/relay.py) ----

    def _tunnel(
        self, conn: UpstreamConnection, resp: ResponseHead, leftover: bytes, attempt: Attempt, start: float
    ) -> bool:
        """Rule 10: relay the 101 and tunnel until both sides are done (http/tunnel.py); the
        connection ends after it (False)."""
        client, ex, loc = self.client, self.ex, self.lr.config
        ex.status = 101
        sock, early = client.tunnel_io()
        tunnel = Tunnel(
            sock,
            conn.sock,
            conn.addr,
            ex,
            attempt,
            loc.proxy_read_timeout_s,
            loc.send_timeout_s,
            loc.proxy_send_timeout_s,
            self.now,
        )
        client.hold_tunnel(tunnel)  # abort() reaches it (worker_shutdown_timeout)
        try:
            tunnel.run(switch_head(resp, self.now()), leftover, early)
        finally:
            client.hold_tunnel(None)
            attempt.response_time_s = self.now() - start
            conn.close()
        return False

    def _relay(
        self,
        conn: UpstreamConnection,
        resp: ResponseHead,
        leftover: bytes,
        attempt: Attempt,
        start: float,
        extra: bytes = b"",
    ) -> bool:
        """Relay the response; whether the client connection may stay open. ``extra``: our
        own fields for the head (sticky's Set-Cookie)."""
        ex = self.ex
        keep_alive = reusable = complete = False
        relay_ = relay if self.cache is None else self.cache.relay  # rule 13
        try:
            keep_alive, reusable, complete = relay_(
                self.client,
                ex,
                self.head,
                conn,
                resp,
                leftover,
                attempt,
                self.keep_alive,
                self.lr.config.proxy_read_timeout_s,
                self.now(),
                self.lr.headers,
                extra,
            )
        finally:
            attempt.response_time_s = self.now() - start
            ex.bytes_sent += ex.body_bytes_sent
            if not complete and self.binding is not None:
                self.binding.learned = ""  # rule 12: a response cut short teaches no session
            if reusable and self.body.complete:
                self.up.pool.put(conn, self.now())
            else:
                conn.close()
        return keep_alive
