"""Serving a stored cache entry to the client (issue 18; gevent I/O): HIT, STALE, UPDATING,
REVALIDATED answers, built from the entry's stored head and body file.

Rules (``cache/policy.py`` makes the decisions):
1. The stored head is replayed through the location's header rules (hide/pass, add_header,
   proxy_redirect) with our Date and no Age; parsed heads are kept per worker by their
   bytes (``PARSED_MAX``), so a HIT on a known entry does not parse it again.
2. A 200 answers the client's conditionals (If-None-Match against the stored ETag, an
   exact If-Modified-Since: 304) and Range when the stored head has Accept-Ranges (or
   ``proxy_force_ranges``): one range (206 + Content-Range), several (multipart/byteranges,
   nginx's layout), none satisfiable (416, ``Content-Range: bytes */N``). Requests without
   either skip the validator scan.
   A plain answer (the stored status, no conditional or range) of an entry from the
   worker's memo (cache/store.py rule 8) uses a head prebuilt once per entry and location
   (``Heads``): status line, Server, the stored fields after the location's hide/pass rules
   and Content-Length are fixed; only Date, add_header lines and Connection are per request.
   Not prebuilt (``build_response_head`` per request): proxy_pass_header Server/Date, or
   proxy_redirect with a stored Location/Refresh.
3. Bodies up to ``SENDFILE_MIN`` go out with the head in one send; larger ones by
   sendfile(2) where the connection offers ``send_file`` (plain sockets), else by reads.
4. A file that cannot be read to its end while served (an I/O error, cut short) is logged
   and ends the client connection: a short body, never a padded one; the worker goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from prefork_lb.cache import policy as P
from prefork_lb.http.client import ClientGone
from prefork_lb.http.exchange import Exchange
from prefork_lb.http.headers import (
    DATES,
    SERVER_HEADER,
    build_response_head,
    error_page,
    simple_response,
    status_line,
)

if TYPE_CHECKING:
    from prefork_lb.cache.store import Entry
    from prefork_lb.http.client import Client
    from prefork_lb.http.header_rules import ResponseRules
    from prefork_lb.http.request import RequestHead
    from prefork_lb.http.runtime import LocationRuntime

log = logging.getLogger("prefork_lb.error")

SENDFILE_MIN: Final = 32 * 1024  # smaller bodies go out with the head in one send
READ_CHUNK: Final = 256 * 1024


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


def has_header(headers: list[tuple[bytes, bytes]], lname: bytes) -> bool:
    return any(n.lower() == lname for n, _ in headers)


def header_value(headers: list[tuple[bytes, bytes]], lname: bytes) -> bytes:
    for n, v in headers:
        if n.lower() == lname:
            return v
    return b""


def validators_of(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    return header_value(headers, b"etag"), header_value(headers, b"last-modified")


class Heads:
    """An entry's response head for one location's rules, prebuilt (rule 2): ``pre`` (status
    line, Server), Date goes after it, ``mid`` (stored fields), add_header lines, then
    ``tail_ka`` or ``tail_close`` (Content-Length, Connection). ``pre`` is b"" when the
    rules need the per-request build."""

    __slots__ = ("mid", "pre", "rules", "tail_close", "tail_ka")

    def __init__(self, rules: ResponseRules, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 length: int) -> None:  # fmt: skip
        self.rules = rules
        self.pre = self.mid = self.tail_ka = self.tail_close = b""
        if not (rules.own_server and rules.own_date):
            return
        if rules.redirects and any(n.lower() in (b"location", b"refresh") for n, _ in headers):
            return
        drop = rules.drop
        self.pre = status_line(status, reason) + SERVER_HEADER
        self.mid = b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() not in drop)
        field = b"Content-Length: %d\r\n" % length
        self.tail_ka = field + b"Connection: keep-alive\r\n\r\n"
        self.tail_close = field + b"Connection: close\r\n\r\n"


def _prebuilt(entry: Entry, rules: ResponseRules, status: int, reason: bytes,
              headers: list[tuple[bytes, bytes]]) -> Heads | None:  # fmt: skip
    shared = entry.shared
    if shared is None:
        return None
    heads = shared.heads
    if not isinstance(heads, Heads) or heads.rules is not rules:
        heads = shared.heads = Heads(rules, status, reason, headers, entry.body_length)
    return heads if heads.pre else None


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
    checks = b"if-none-match" in index or b"if-modified-since" in index or b"range" in index
    if ex.status_override:
        status, reason = ex.status_override, b""
    elif not (status == 200 and checks):
        heads = _prebuilt(entry, rules, status, reason, headers)
        if heads is not None:  # rule 2: a plain answer from a prebuilt head
            ex.status = status
            tail = heads.tail_ka if keep_alive else heads.tail_close
            if rules.add:
                out = b"".join((heads.pre, DATES.field(now), heads.mid, *rules.added(ex, status), tail))
            else:
                out = b"".join((heads.pre, DATES.field(now), heads.mid, tail))
            if head_only or status in (204, 304):
                ex.bytes_sent = len(out)
                client.send(out)
            elif entry.body is not None:  # in the memo: head and body in one send
                ex.bytes_sent = len(out) + length
                ex.body_bytes_sent = length
                client.send(out + entry.body)
            else:
                ex.bytes_sent = len(out)
                _send_body(client, ex, entry, out, 0, length)
            return keep_alive
    elif status == 200 and checks:
        etag, last_modified = validators_of(headers)
        if P.not_modified(
            200, index.get(b"if-none-match"), index.get(b"if-modified-since"), etag, last_modified
        ):
            status, reason, head_only = 304, b"", True
        elif (
            b"range" in index
            and ((plan is not None and plan.force_ranges) or has_header(headers, b"accept-ranges"))
            and P.if_range_matches(index.get(b"if-range"), etag, last_modified)
        ):
            ranges = P.parse_ranges(index[b"range"], length)
            if ranges == P.UNSATISFIABLE:
                out, body_len = range_not_satisfiable(ex, length, keep_alive, now, rules)
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
                    ctype = header_value(headers, b"content-type") or None
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
    """``head`` then ``count`` body bytes from ``pos``. A cache file that cannot be read to
    the end (an I/O error, shorter than its header said) ends the connection: the client
    sees a truncated response, never a padded one, and the worker goes on."""
    try:
        _send_file_part(client, ex, entry, head, pos, count)
    except OSError as e:
        entry.invalidate()  # a worker's memo drops it: the next lookup verifies the file again
        log.error(
            "cache file %s read failed (%s: %s), client connection closed", entry.path, e.errno, e.strerror
        )
        client.abort()
        raise ClientGone from None


def _send_file_part(client: Client, ex: Exchange, entry: Entry, head: bytes, pos: int, count: int) -> None:
    """One send when small, else sendfile where the connection offers it (``send_file``),
    else reads of ``READ_CHUNK``."""
    if count <= SENDFILE_MIN:
        data = entry.pread(count, pos)
        if len(data) != count:
            raise OSError(0, "file shorter than its header says")
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
            raise OSError(0, "file shorter than its header says")
        return
    end = pos + count
    while pos < end:
        data = entry.pread(min(READ_CHUNK, end - pos), pos)
        if not data:
            raise OSError(0, "file shorter than its header says")
        client.send(data)
        pos += len(data)
        ex.body_bytes_sent += len(data)
        ex.bytes_sent += len(data)


def range_not_satisfiable(
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


__all__ = ["parse_stored_head", "serve_entry"]
