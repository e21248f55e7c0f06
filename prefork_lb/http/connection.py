"""One client connection: read requests, route, answer or proxy, log (gevent I/O).

Rules:
1. One greenlet per connection and no other greenlet per request.
2. Timeouts as nginx: waiting for the first byte of a request uses ``keepalive_timeout``
   (``client_header_timeout`` for the first request); once a head has started, the whole
   head must arrive within ``client_header_timeout`` of its first byte (an absolute
   deadline, so a drip-fed slowloris head is cut); body reads use ``client_body_timeout``
   per read. A header timeout closes silently, as nginx does (it logs 408, sends nothing).
3. Requests are answered strictly in order. A request whose body was not consumed
   (``return``, errors) closes the connection: its unread bytes never become a request.
4. Every answer the proxy makes itself (errors, ``return``) is logged like a proxied one.
5. While the worker drains, every response carries ``Connection: close``; a connection
   waiting for its next request stays open for it (the worker closes only connections
   idle for a while with nothing pending), so no request on its way is reset.
6. A ``parkable`` connection idle for ``PARK_AFTER_S`` between requests (nothing buffered,
   no head started) is parked: ``serve`` returns True with the socket open and the
   connection still counted as idle, and the worker watches the socket without a
   greenlet until it is readable (then ``serve`` runs again in a new greenlet) or the
   idle timeout, which keeps running from where it was, expires. A waiting greenlet
   costs ~10 KiB; a parked connection keeps no greenlet and no request parser (~2 KiB
   of it), measured with 4,000 socketpairs.
7. Lingering close (nginx's ``lingering_close``/``lingering_time``/``lingering_timeout``):
   when the connection closes after a response, with ``on`` (the default) and client data
   still unread (a body answered early, e.g. 413 or ``return``, or pipelined bytes), the
   write side is shut down after the response and input is read and discarded until the
   client closes, for at most ``lingering_timeout`` per wait and ``lingering_time`` in
   total. Closing with unread data would send an RST, and the client's kernel may then drop
   the response before the client reads it (RFC 9112 section 9.6). ``always`` lingers
   after every closing response, ``off`` never. The settings are the matched location's,
   else the server's. A draining worker ends a lingering connection like an idle one.
"""

from __future__ import annotations

import _socket
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Final

import gevent
from gevent import socket

from prefork_lb.http.cache_path import serve as cache_serve
from prefork_lb.http.client import ClientGone
from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.headers import error_page, simple_response
from prefork_lb.http.proxy import Proxy
from prefork_lb.http.request import MESSAGE_END, HttpError, RequestHead, RequestReader
from prefork_lb.http.rewrite import MAX_URI_CHANGES, SEARCH, Respond, absolute_url
from prefork_lb.http.rewrite import run as run_rewrite
from prefork_lb.http.uri import UriError, encode_path, normalize_path
from prefork_lb.limits.engine import release_conns
from prefork_lb.netio import ClientSocket, peek_readable, recv, send_all, wait_writable

if TYPE_CHECKING:
    from prefork_lb.config.model import ErrorPage, LocationConfig, ServerConfig
    from prefork_lb.http.routing import ServerRouter
    from prefork_lb.http.runtime import HttpRuntime, LocationRuntime, StatusZone
    from prefork_lb.http.tunnel import Tunnel

log = logging.getLogger("prefork_lb.error")

RECV_SIZE: Final = 65536
# Rule 6. Long enough that a client sending requests back to back never parks (a park and
# resume cost a greenlet spawn), short next to keep-alive timeouts (75 s by default).
PARK_AFTER_S: Final = 1.0
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_NO_STORE: Final = ((b"Cache-Control", b"no-store"),)


class ClientConnection:
    __slots__ = (
        "body_done",
        "body_timeout_s",
        "clock",
        "continue_pending",
        "head",
        "idle",
        "idle_since",
        "info",
        "keep_alive",
        "linger_from",
        "lingering",
        "park_deadline",
        "parkable",
        "reader",
        "router",
        "runtime",
        "send_timeout_s",
        "sock",
        "status_zone",
        "tunnel",
    )
    # tls/connection.py: a TLS connection that may have to refuse its requests (plain HTTP
    # on the TLS port, no client certificate, 421) sets this (a slot there); here a class
    # constant, so a plain connection pays one attribute read per request
    tls_check = False

    def __init__(
        self,
        sock: ClientSocket,
        info: ConnectionInfo,
        router: ServerRouter,
        runtime: HttpRuntime,
        clock: Callable[[], float],
    ) -> None:
        self.sock = sock
        self.info = info
        self.router = router
        self.runtime = runtime
        self.clock = clock
        self.reader = RequestReader()
        self.keep_alive = True
        self.idle = True
        self.idle_since = clock()
        self.head: RequestHead | None = None
        self.body_done = True
        self.body_timeout_s = 60.0
        self.send_timeout_s = 60.0  # nginx's send_timeout; the location's once one matched
        self.continue_pending = False
        self.status_zone: StatusZone | None = None
        self.parkable = False  # set by the worker (rule 6)
        self.linger_from: ServerConfig | LocationConfig = router.default  # rule 7
        self.lingering = False
        self.park_deadline = 0.0  # while parked: when the idle wait times out
        self.tunnel: Tunnel | None = None  # issue 14: while an upgraded connection is tunnelled

    # ---- the loop ----

    def serve(self) -> bool:
        """Serve requests until the connection ends (False) or is parked (True, rule 6)."""
        if not hasattr(self, "reader"):  # resumed after parking
            self.reader = RequestReader()
        events = self.reader.events
        parked = False
        try:
            while True:
                if not events:
                    more = self._fill_head()
                    if more is None:
                        parked = True
                        return True
                    if not more:
                        return False
                    continue
                event = events.popleft()
                if type(event) is RequestHead:
                    if not self._handle(event):
                        self._linger()
                        return False
                elif isinstance(event, HttpError):
                    self._reject(event)
                    self._linger()
                    return False
                # bytes/MESSAGE_END of an unread body cannot reach here (rule 3)
        except ClientGone:
            return False
        finally:
            if not parked:
                self.close()

    def _fill_head(self) -> bool | None:
        """Wait for request bytes: True once events are queued, False when the connection
        should end quietly, None when it was parked (rule 6)."""
        server = self.router.default
        reader = self.reader
        deadline = 0.0
        while True:
            now = self.clock()
            if reader.in_head:
                if not deadline:
                    deadline = now + server.client_header_timeout_s
                timeout = deadline - now
                if timeout <= 0:
                    return False  # rule 2: 408, silently
            elif self.park_deadline:  # resumed: the idle time spent parked counts
                timeout = self.park_deadline - now
                self.park_deadline = 0.0
                if timeout <= 0:
                    return False
            elif self.info.requests:
                timeout = server.keepalive_timeout_s
            else:
                timeout = server.client_header_timeout_s
            idle = self.idle = not reader.in_head
            self.idle_since = now
            park = idle and self.parkable and timeout > PARK_AFTER_S and not self.runtime.draining
            mv = self.runtime.zone.mv
            idle_cell = self.runtime.idle_cell
            if idle:
                mv[idle_cell] += 1
            parked = False
            try:
                # After a response the next request cannot be there yet unless pipelined
                # (then it is readable at once): wait before the recv (see Proxy._read_head).
                wait_first = idle and self.info.requests > 0
                data = recv(self.sock, RECV_SIZE, PARK_AFTER_S if park else timeout, wait_first)
            except TimeoutError:
                if not park:
                    return False
                parked = True  # still idle, still counted as idle until unpark()
                self.park_deadline = now + timeout
                del self.reader  # nothing in it between requests; ~2 KiB per parked connection
                self.head = None  # the last request's head (its header list and index)
                return None
            except OSError:
                return False
            finally:
                if not parked:
                    self.idle = False
                    if idle:
                        mv[idle_cell] -= 1
            if not data:
                return False
            reader.feed(data)
            if reader.events:
                return True

    def unpark(self) -> None:
        """The worker stopped watching a parked connection (readable, or timed out)."""
        self.idle = False
        self.runtime.zone.mv[self.runtime.idle_cell] -= 1

    def _handle(self, head: RequestHead) -> bool:
        runtime = self.runtime
        info = self.info
        info.requests += 1
        now = self.clock()
        self.head = head
        self.body_done = False
        self.continue_pending = head.expect_continue
        ex = Exchange(
            conn=info,
            method=head.method,
            target=head.target,
            path="",
            args=head.query.decode("latin-1"),
            version=head.version,
            headers=head.headers,
            header_index=head.header_index,
            host=head.host,
            start_time=now,
            request_length=head.head_length,
        )
        server = self.router.select(head.host)
        ex.server = server
        if runtime.realip:  # realip (http/realip.py): a server with set_real_ip_from
            self._realip(ex, server)
        self.linger_from = server
        self.status_zone = runtime.zones[id(server)]
        self.status_zone.begin(runtime.zone.mv)
        # An error later in the pipeline is answered after this request, not instead of it.
        self.keep_alive = head.keep_alive and not runtime.draining and not head.upgrade
        try:
            try:
                ex.path = normalize_path(head.raw_path)
            except UriError as e:
                raise HttpError(e.status, "invalid URI") from None
            if server.rewrite is not None:  # issue 16: SERVER_REWRITE (http/rewrite.py)
                if self.tls_check:  # a TLS refusal (400, 421) comes before any statement
                    self._tls_refuse(ex, server)
                result = run_rewrite(server.rewrite, ex)
                if type(result) is Respond:
                    self._finish_body()
                    self._rewrite_respond(ex, result)
                    return self._done(ex, None)
            return self._done(ex, self._process(ex, head, server, None))
        except HttpError as e:
            self.keep_alive = False
            self.respond_error(ex, e.status)
            self._done(ex, runtime.locations.get(id(ex.location)) if ex.location else None)
            return False
        except ClientGone:
            ex.status = ex.status or 499
            self._done(ex, runtime.locations.get(id(ex.location)) if ex.location else None)
            raise

    def _process(
        self, ex: Exchange, head: RequestHead, server: ServerConfig, named: LocationConfig | None
    ) -> LocationRuntime | None:
        """Find the location (again after a URI change), run its phases and answer; the
        location's runtime (for the log), None when no location answered."""
        runtime = self.runtime
        matcher = runtime.matcher(server)
        while True:
            if named is not None:  # error_page "@name": no search, the URI is kept
                loc = named
                named = None
            else:
                if matcher.needs_slash_redirect(ex.path):
                    self._finish_body()
                    self._slash_redirect(ex)
                    return None
                found = matcher.match(ex.path)
                if self.tls_check and not ex.uri_changes:
                    ex.location = found
                    self._tls_refuse(ex, server)
                if found is None:
                    self._finish_body()
                    self.respond_error(ex, 404)
                    return None
                loc = found
            ex.rewrite_break = False
            lr = runtime.locations[id(loc)]
            ex.location = loc
            self.linger_from = loc
            self.body_timeout_s = loc.client_body_timeout_s
            self.send_timeout_s = loc.send_timeout_s
            # nginx's phase order (shared/reference/nginx-semantics-2.md 2.1): the body size
            # is checked when the location is found, ``return`` runs in the rewrite phase,
            # allow/deny in the access phase after it, then the content (status, proxy).
            if self.info.requests >= loc.keepalive_requests:
                self.keep_alive = False
            max_body = loc.client_max_body_size_bytes
            if max_body and head.content_length and head.content_length > max_body:
                raise HttpError(413, "request entity too large")
            if loc.rewrite is not None:  # issue 16: REWRITE, then POST_REWRITE's re-search
                result = run_rewrite(loc.rewrite, ex)
                if result is SEARCH:
                    self._count_uri_change(ex)
                    continue
                if type(result) is Respond:
                    self._finish_body()
                    self._rewrite_respond(ex, result)
                    return lr
            break
        if loc.return_ is not None:
            self._finish_body()
            self._return(ex, lr)
            return lr
        if lr.limits is not None and self._limits(ex, lr):  # PREACCESS (limits/engine.py)
            return lr
        if lr.access and not lr.allows(ex.conn.remote_addr):  # realip's address (http/realip.py)
            self._finish_body()
            self.respond_error(ex, 403)
            return lr
        if loc.status:
            self._finish_body()
            self._status(ex, lr)
            return lr
        if loc.proxy_pass is None:  # rewrite_rules only: nginx's static content finds nothing
            self._finish_body()
            self.respond_error(ex, 404)
            return lr
        if lr.cache is None:
            outcome = Proxy(self, ex, head, lr, self.keep_alive, self.status_zone).run()
        else:  # issue 18: proxy_cache (http/cache_path.py)
            outcome = cache_serve(self, ex, head, lr, self.keep_alive, self.status_zone)
        if outcome.zone_recorded:  # proxy.py rule 9
            self.status_zone = None
        if not outcome.keep_alive:
            self.keep_alive = False
        self._finish_body()
        return lr

    def _count_uri_change(self, ex: Exchange) -> None:
        ex.uri_changes += 1
        if ex.uri_changes > MAX_URI_CHANGES:
            log.error(
                'rewrite or internal redirection cycle while processing "%s", client: %s',
                ex.path,
                self.info.remote_addr,
            )
            ex.error_paged = True  # the 500 is the default page, with its own status
            ex.status_override = 0
            raise HttpError(500, "rewrite or internal redirection cycle")

    def _rewrite_respond(self, ex: Exchange, result: Respond) -> None:
        """``return`` / a redirecting ``rewrite`` from rewrite_rules (http/rewrite.py rule 6)."""
        status = result.status
        if status == 444:  # nginx: close the connection, send nothing
            ex.status = 444
            self.keep_alive = False
            self.abort()
        elif result.location is not None:
            location = _safe_location(absolute_url(ex, result.location))
            self._send_local(ex, status, error_page(status), extra=[(b"Location", location)])
        elif result.text is not None:
            self._send_local(ex, status, result.text.encode("latin-1", "replace"), b"text/plain")
        elif status >= 400:
            self.respond_error(ex, status)  # error_page applies
        else:
            self._send_local(ex, status, b"", b"text/plain")

    def _error_page(self, ex: Exchange, status: int, page: ErrorPage) -> None:
        """nginx's error_page: an internal redirect to a URI or a named location (counted
        against the URI change limit), or a redirect to a URL. Not recursive (nginx's
        ``recursive_error_pages off``)."""
        ex.error_paged = True
        target = page.target
        if not target.startswith(("/", "@")):
            code = page.status if page.status in _REDIRECTS else 302
            url = _safe_location(target)
            self._send_local(ex, code, error_page(code), extra=[(b"Location", url)])
            return
        self._count_uri_change(ex)
        ex.status_override = page.status or (0 if page.from_target else status)
        if ex.attempts:
            ex.attempts.append(None)  # a new upstream phase: " : " in $upstream_*
        server = ex.server
        assert server is not None
        head = self.head
        assert head is not None
        if target.startswith("@"):
            self._process(ex, head, server, self.runtime.matcher(server).named[target])
            return
        path, _, args = target.partition("?")
        ex.path, ex.args, ex.uri_rewritten = path, args, True
        if ex.method != b"HEAD":
            ex.method = b"GET"
        if server.rewrite is not None:  # an internal redirect starts at SERVER_REWRITE
            result = run_rewrite(server.rewrite, ex)
            if type(result) is Respond:
                self._rewrite_respond(ex, result)
                return
        self._process(ex, head, server, None)

    def _tls_refuse(self, ex: Exchange, server: ServerConfig) -> None:
        """Raise HttpError when a TLS connection must refuse the request (tls/connection.py)."""

    def _realip(self, ex: Exchange, server: ServerConfig) -> None:
        rule = self.runtime.realip.get(id(server))
        if rule is None:
            return
        client = rule.client(self.info.remote_addr, ex.header_index)
        if client is not None:  # this request's view of the connection (nginx restores it too)
            ex.conn = replace(self.info, remote_addr=client, realip_remote_addr=self.info.remote_addr)

    def _limits(self, ex: Exchange, lr: LocationRuntime) -> bool:
        """limit_req, then limit_conn (nginx's order); True when the request was answered.
        Each runs once per request, as nginx (>= 1.17.6) keeps its status on the main request:
        an internal redirect (error_page) to another limited location is not counted again."""
        limits = lr.limits
        assert limits is not None
        zone = self.runtime.zone
        if limits.reqs and not ex.limit_req_status:
            status, delay_s = limits.limit_req(ex, zone)
            if status:
                self._finish_body()
                self.respond_error(ex, status)
                return True
            if delay_s > 0:
                self._delay(delay_s)
        if limits.conns and not ex.limit_conn_status:
            status = limits.limit_conn(ex, zone)
            if status:
                self._finish_body()
                self.respond_error(ex, status)
                return True
        return False

    def _delay(self, delay_s: float) -> None:
        """A delayed request (limit_req) waits holding its connection, as in nginx; a client
        that closes meanwhile is noticed (nginx 1.19.9+): ClientGone, logged as 499. Once
        the client sent more (a body, a pipelined request) the rest is a plain sleep."""
        deadline = time.monotonic() + delay_s
        try:
            socket.wait_read(self.sock.fileno(), timeout=delay_s)
        except TimeoutError:
            return
        if peek_readable(self.sock) == b"":
            raise ClientGone
        left = deadline - time.monotonic()
        if left > 0:
            gevent.sleep(left)

    def _done(self, ex: Exchange, lr: LocationRuntime | None) -> bool:
        ex.end_time = self.clock()
        if ex.limit_conn_held is not None:
            release_conns(ex)
        if self.status_zone is not None:
            self.status_zone.end(
                self.runtime.zone, ex.status, ex.request_length, ex.bytes_sent, ex.status == 499
            )
            self.status_zone = None
        if lr is not None:
            for writer, fmt, cond in lr.logs:
                if cond is not None:
                    value = cond.render(ex)
                    if not value or value == "0":
                        continue
                writer.write(fmt.render(ex))
        return self.keep_alive and self.body_done

    def _linger(self) -> None:
        """Rule 7: after the last response, read and discard what the client still sends."""
        cfg = self.linger_from
        mode = cfg.lingering_close
        if mode == "off" or cfg.lingering_time_s <= 0:
            return
        if mode == "on" and self.body_done and not self.reader.events:
            head = self.head
            if head is not None and not head.keep_alive and not self.reader.closed:
                return  # the client itself closes after this request: no syscall spent
            if not peek_readable(self.sock):
                return  # nothing unread (peek: None = nothing there, b"" = EOF or error)
        try:
            self.sock.shutdown(socket.SHUT_WR)  # the response is complete: FIN after it
        except OSError:
            return
        now = self.clock()
        deadline = now + cfg.lingering_time_s
        wait_s = cfg.lingering_timeout_s
        self.lingering = True
        self.idle_since = now
        while True:
            left_s = deadline - self.clock()
            if left_s <= 0:
                return
            try:
                if not recv(self.sock, RECV_SIZE, min(wait_s, left_s) if wait_s > 0 else left_s):
                    return  # the client closed: nothing was lost
            except OSError:  # TimeoutError included: lingering_timeout without data
                return

    def _finish_body(self) -> None:
        """Drop the rest of an unread body if it is already queued; else close after (rule 3)."""
        if self.body_done:
            return
        events = self.reader.events
        while events:
            event = events[0]
            if event is MESSAGE_END:
                events.popleft()
                self.body_done = True
                return
            if type(event) is not bytes:
                break
            events.popleft()
        self.keep_alive = False

    # ---- what Proxy needs (http/client.py's Client) ----

    def read_body(self, block: bool) -> bytes | bool | None:
        """The next body piece, True at its end, None if ``block`` is False and nothing is queued."""
        if self.body_done:
            return True
        events = self.reader.events
        while not events:
            if not block:
                return None
            if self.reader.closed:
                raise HttpError(400, "request body ended early")
            if self.continue_pending:
                self.continue_pending = False
                self.send(CONTINUE)
            try:
                data = recv(self.sock, RECV_SIZE, self.body_timeout_s)
            except OSError:
                raise ClientGone from None
            if not data:
                raise ClientGone
            self.reader.feed(data)
        event = events.popleft()
        if type(event) is bytes:
            self.continue_pending = False
            return event
        if event is MESSAGE_END:
            self.body_done = True
            return True
        if isinstance(event, HttpError):
            events.appendleft(event)
            raise HttpError(event.status, event.reason)
        raise HttpError(400, "unexpected request data")

    def send(self, data: bytes) -> None:
        try:
            send_all(self.sock, data, self.send_timeout_s)
        except OSError:
            raise ClientGone from None

    def send_file(self, fd: int, offset: int, count: int) -> int:
        """Issue 18 (http/cache_path.py): ``count`` bytes of file ``fd`` from ``offset`` to the
        client, by sendfile(2) on a plain connection, by reads and sends otherwise (TLS).
        The bytes sent; fewer than ``count`` only when the file ended early."""
        sock = self.sock
        sent = 0
        # TLS keeps the ClientSocket and swaps its ``_sock`` (tls/io.py): only a plain
        # kernel socket may take sendfile(2)
        if type(sock) is not ClientSocket or type(sock._sock) is not _socket.socket:
            while sent < count:
                data = os.pread(fd, min(262144, count - sent), offset + sent)
                if not data:
                    break
                self.send(data)
                sent += len(data)
            return sent
        out = sock.fileno()
        try:
            while sent < count:
                try:
                    n = os.sendfile(out, fd, offset + sent, count - sent)
                except BlockingIOError:
                    wait_writable(sock, self.send_timeout_s)
                    continue
                if n == 0:
                    break
                sent += n
        except OSError:
            raise ClientGone from None
        return sent

    def close_if_idle(self, idle_s: float, now: float) -> bool:
        """Draining: close a connection idle for ``idle_s`` with no request bytes waiting.

        A connection that is not idle (or whose client already sent its next request) is
        left alone: that request is answered with ``Connection: close``. nginx closes
        every idle connection at once, which resets requests already on their way.
        """
        if self.lingering:  # rule 7: only discarding input; the response is out
            if now - self.idle_since < idle_s:
                return False
            self.abort()
            return True
        if not self.idle or now - self.idle_since < idle_s:
            return False
        if peek_readable(self.sock):
            return False  # a request has arrived: let the loop answer it
        self.abort()
        return True

    def tunnel_io(self) -> tuple[ClientSocket, bytes]:
        """For a tunnel (client.py rule 4): the socket and the bytes behind the upgrade head."""
        return self.sock, self.reader.upgrade_data

    def hold_tunnel(self, tunnel: Tunnel | None) -> None:
        self.tunnel = tunnel

    def abort(self) -> None:
        """End the connection without completing the response (the client sees truncation)."""
        self.keep_alive = False
        if self.tunnel is not None:  # issue 14: both sockets of the tunnel
            self.tunnel.abort()
            return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def respond_error(self, ex: Exchange, status: int) -> bool:
        loc = ex.location
        pages = loc.error_page if loc is not None else ex.server.error_page if ex.server is not None else None
        if pages and not ex.error_paged:  # issue 16: error_page
            page = pages.get(status)
            if page is not None:
                self._error_page(ex, status, page)
                return self.keep_alive
        self._send_local(ex, status, error_page(status))
        return self.keep_alive

    def _send_local(
        self,
        ex: Exchange,
        status: int,
        body: bytes,
        ctype: bytes = b"text/html",
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Every response the proxy makes itself goes out here; whether it has a body is
        decided from the method and status in ``simple_response`` (headers.py rule 7)."""
        if ex.status_override:  # issue 16: an error_page target answers with the page's status
            status = ex.status_override
        ex.status = status
        added: list[bytes] | tuple[()] = ()
        if ex.location is not None:  # add_header (http/header_rules.py rule 1)
            rules = self.runtime.locations[id(ex.location)].headers
            if rules.add:
                added = rules.added(ex, status)
        elif ex.server is not None and self.runtime.server_headers:
            server_rules = self.runtime.server_headers.get(id(ex.server))
            if server_rules is not None:
                added = server_rules.added(ex, status)
        out, body_len = simple_response(
            status, body, self.keep_alive, self.clock(), ctype, extra, ex.method, added
        )
        ex.bytes_sent += len(out)
        ex.body_bytes_sent += body_len
        self.send(out)

    def _return(self, ex: Exchange, lr: LocationRuntime) -> None:
        action = lr.config.return_
        assert action is not None
        status = action.status
        text = lr.return_text.render(ex) if lr.return_text is not None else None
        if status in _REDIRECTS:
            assert text is not None
            location = _safe_location(absolute_url(ex, text))  # nginx's absolute_redirect on
            self._send_local(ex, status, error_page(status), extra=[(b"Location", location)])
        elif text is not None:
            self._send_local(ex, status, text.encode("latin-1"), b"text/plain")
        elif status >= 400:
            self.respond_error(ex, status)  # nginx: error_page applies to "return 404"
        else:
            self._send_local(ex, status, b"")

    def _status(self, ex: Exchange, lr: LocationRuntime) -> None:
        """api / metrics / dashboard locations, answered from the shared zone."""
        from prefork_lb.http import status_pages

        status, ctype, body = status_pages.answer(ex, lr, self.runtime)
        self._send_local(ex, status, body, ctype, _NO_STORE)

    def _slash_redirect(self, ex: Exchange) -> None:
        """nginx's auto-redirect: ``/api`` -> ``/api/`` when only ``location /api/`` proxies."""
        query = b"?" + ex.args.encode("latin-1") if ex.args else b""
        location = encode_path(ex.path + "/") + query
        self._send_local(ex, 301, error_page(301), extra=[(b"Location", location)])

    def _reject(self, error: HttpError) -> None:
        """A request that could not even be parsed: answer and close (nginx logs it too)."""
        self.keep_alive = False
        self.linger_from = self.router.default
        out, _ = simple_response(error.status, error_page(error.status), False, self.clock())
        try:
            self.send(out)
        except ClientGone:
            pass
        log.info(
            "client sent invalid request (%s) while reading client request headers, client: %s",
            error,
            self.info.remote_addr,
        )

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _safe_location(url: str) -> bytes:
    """A Location value can never carry CR/LF/CTL, whatever the variables expanded to."""
    out = url.encode("latin-1")
    if any(b < 0x21 or b == 0x7F for b in out):
        return encode_path(out.decode("latin-1"))
    return out
