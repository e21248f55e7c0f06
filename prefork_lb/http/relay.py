"""Relay an upstream response to the client: head, then body by its framing (gevent I/O).

``proxy.Proxy`` calls ``relay`` once a final response head was read; it owns the upstream
connection afterwards (pool or close) and the attempt's timing.

Rules (shared/reference/nginx-semantics.md sections 5.2 and 7):
1. Once the response head went to the client there is no retry (``proxy.py`` rule 5). A
   later upstream error, timeout, EOF before the announced length or an invalid chunk ends
   the client connection without completing the response (``Client.abort``: the client
   sees truncation, never a padded or "completed" body). Errors, timeouts and invalid
   chunks are logged; none is charged to the peer.
2. Framing toward the client: a Content-Length body keeps its length; a body-less response
   (to HEAD, or 204, 304) keeps the upstream's Content-Length for HEAD and 304; a chunked or
   close-delimited body is re-chunked for an HTTP/1.1 client and sent as it comes to an
   HTTP/1.0 one, whose connection then closes after it.
3. The upstream connection is reusable only when the upstream allows keep-alive and the
   response ended exactly at its framing (no byte beyond Content-Length or the last
   chunk); never after a close-delimited body or an error. The proxy pools it only if the
   request body was sent whole, too.
4. ``relay`` returns (client keep-alive allowed, upstream reusable, complete); a client
   that failed (``ClientGone``) or was aborted allows neither. ``complete``: the whole
   response went to the client (sticky learn stores a session only then, issue 19).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gevent import socket

from prefork_lb.http.client import ClientGone
from prefork_lb.http.header_rules import DEFAULT_RULES, ResponseRules
from prefork_lb.http.headers import CHUNKED_FIELD, build_response_head
from prefork_lb.http.request_body import LAST_CHUNK
from prefork_lb.http.response import ChunkedDecoder, ResponseHead, UpstreamProtocolError
from prefork_lb.http.upstream import RECV_SIZE, UpstreamConnection
from prefork_lb.netio import recv

if TYPE_CHECKING:
    from prefork_lb.http.client import Client
    from prefork_lb.http.exchange import Attempt, Exchange
    from prefork_lb.http.request import RequestHead

log = logging.getLogger("prefork_lb.error")



class Truncated(Exception):
    """The response was cut short and the client connection aborted (rule 1)."""


def relay(
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
    rules: ResponseRules = DEFAULT_RULES,
    extra: bytes = b"",
) -> tuple[bool, bool, bool]:
    """Send ``resp`` and its body (``leftover`` first) to the client; rule 4's triple.
    ``rules``: the location's header rules (http/header_rules.py); ``extra``: ready fields
    of our own (sticky's Set-Cookie), sent before the framing field, never hidden."""
    http11 = req.version >= (1, 1)
    framing = resp.framing
    if framing == "length":
        field = b"Content-Length: %d\r\n" % (resp.content_length or 0)
    elif framing == "none":
        field = (
            b"Content-Length: %d\r\n" % resp.content_length
            if resp.content_length is not None and (req.method == b"HEAD" or resp.status == 304)
            else b""
        )
    elif http11:
        field = CHUNKED_FIELD
    else:
        field, keep_alive = b"", False
    if extra:
        field = extra + field
    status, reason = resp.status, resp.reason
    if ex.status_override:  # issue 16: error_page "=CODE" (or the original status) over its target
        status, reason = ex.status_override, b""
    ex.status = status  # before the head: add_header may render $status
    head = build_response_head(
        status, reason, resp.headers, resp.connection_tokens, field, keep_alive, now, rules, ex
    )
    ex.bytes_sent = len(head)
    try:
        if framing == "none":
            client.send(head)
            reusable = resp.keep_alive and not leftover
        elif framing == "length":
            reusable = _relay_length(client, ex, conn, resp, head, leftover, attempt, read_timeout_s)
        else:
            reusable = _relay_stream(client, ex, conn, resp, head, leftover, attempt, read_timeout_s, http11)
    except (ClientGone, Truncated):
        return False, False, False
    return keep_alive, reusable, True


def _truncate(client: Client) -> Truncated:
    client.abort()
    return Truncated()


def _relay_length(
    client: Client,
    ex: Exchange,
    conn: UpstreamConnection,
    resp: ResponseHead,
    head: bytes,
    leftover: bytes,
    attempt: Attempt,
    read_timeout_s: float,
) -> bool:
    remaining = resp.content_length or 0
    first = leftover[:remaining]
    client.send(head + first if first else head)
    ex.body_bytes_sent += len(first)
    remaining -= len(first)
    extra = len(leftover) > len(first)
    sock = conn.sock
    while remaining > 0:
        data = _upstream_recv(sock, read_timeout_s)
        if not data:  # EOF or error before Content-Length was reached: never pad
            raise _truncate(client)
        attempt.bytes_received += len(data)
        if len(data) > remaining:
            data = data[:remaining]
            extra = True
        client.send(data)
        remaining -= len(data)
        ex.body_bytes_sent += len(data)
    return resp.keep_alive and not extra


def _relay_stream(
    client: Client,
    ex: Exchange,
    conn: UpstreamConnection,
    resp: ResponseHead,
    head: bytes,
    leftover: bytes,
    attempt: Attempt,
    read_timeout_s: float,
    rechunk: bool,
) -> bool:
    """Chunked or close-delimited upstream body: re-chunked for HTTP/1.1 clients."""
    decoder = ChunkedDecoder() if resp.framing == "chunked" else None
    pending = head
    data = leftover
    sock = conn.sock
    while True:
        if decoder is not None:
            try:
                pieces = decoder.feed(data) if data else []
            except UpstreamProtocolError as e:
                log.error("upstream sent invalid chunked response: %s, upstream: %s", e, conn.addr)
                if pending:
                    client.send(pending)
                raise _truncate(client) from None
        else:
            pieces = [data] if data else []
        out = [pending] if pending else []
        for piece in pieces:
            if piece:
                ex.body_bytes_sent += len(piece)
                out.append(b"%x\r\n%b\r\n" % (len(piece), piece) if rechunk else piece)
        finished = decoder is not None and decoder.done
        if finished and rechunk:
            out.append(LAST_CHUNK)
        if out:
            client.send(b"".join(out) if len(out) > 1 else out[0])
        pending = b""
        if finished:
            return resp.keep_alive and decoder is not None and not decoder.extra
        received = _upstream_recv(sock, read_timeout_s)
        if received == b"" and decoder is None:  # close-delimited: EOF is the normal end
            if rechunk:
                client.send(LAST_CHUNK)
            return False
        if not received:  # an error, or a chunked body cut short: never pretend it completed
            raise _truncate(client)
        data = received
        attempt.bytes_received += len(data)


def _upstream_recv(sock: socket.socket, timeout_s: float) -> bytes | None:
    """The next bytes of the body; b"" at EOF, None after an error or timeout."""
    try:
        return recv(sock, RECV_SIZE, timeout_s)
    except TimeoutError:
        log.error("upstream timed out (110: Connection timed out) while reading upstream")
        return None
    except OSError as e:
        log.error("recv() failed (%s: %s) while reading upstream", e.errno, e.strerror)
        return None
