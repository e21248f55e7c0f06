"""Building the head sent upstream and the head sent back to the client (sans-IO).

Rules:
1. Hop-by-hop fields never cross the proxy in either direction: Connection and every
   field it names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade,
   HTTP2-Settings (RFC 9110 section 7.6.1). Client Proxy-Authorization is dropped too.
2. Upstream requests are HTTP/1.1. Host is always set: ``proxy_set_header Host`` if
   configured, else ``$proxy_host`` (nginx's default). A ``proxy_set_header`` with an
   empty value removes the field, as in nginx. Expect is handled by the proxy itself.
3. Body framing upstream is ours: ``Content-Length`` (canonical digits) or chunked.
4. ``Connection: close`` goes upstream only when the group has no keep-alive pool.
5. Responses carry our ``Server`` and ``Date`` (as nginx replaces them) and an explicit
   ``Connection: keep-alive|close``; upstream framing fields are replaced by ours.
6. A head is built with one ``b"".join`` and never contains a control character inside a
   field value except HTAB: values rendered from variables (``proxy_set_header``) have every
   byte 0x00-0x1f but HTAB, and 0x7f, percent-encoded (``%0B``), whatever the source (a
   decoded ``$uri``, a header, an argument, a cookie, config text). Encoding, not 400: the
   value came through the request checks, and one rendered field must not fail a request
   the backend may not even look at (the redirect ``Location`` of ``return`` does the same).
   One function does it for every field: ``header_rules.safe_value``.
7. Whether a response the proxy generates itself has a body is decided in one place,
   ``has_body`` (as h11's ``_body_framing``): never for HEAD requests (the head still
   describes the body a GET would get, Content-Length included), never for 1xx, 204 and
   304 (no Content-Length either). Every local response (``return``, redirects, error
   pages, api, metrics, dashboard) is built by ``simple_response`` with the request
   method, so a pipelined next response always starts right after the head.
8. Upgrade (http/tunnel.py): for a client upgrade request, ``build_upstream_head`` gets the
   Upgrade value to send (``upgrade_value``: the client's, or what ``proxy_set_header
   Upgrade`` rendered) and adds ``Upgrade`` (unless the plan already set it) and
   ``Connection: upgrade`` (unless the plan set a non-empty Connection; an empty one, the
   keep-alive idiom, does not stop an upgrade) in place of ``Connection: close``. So no
   config is needed, and nginx's canonical config renders the same fields.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Final

from prefork_lb.http.exchange import Exchange
from prefork_lb.http.header_rules import DEFAULT_HIDDEN, DEFAULT_RULES, HOP_BY_HOP, ResponseRules, safe_value
from prefork_lb.http.template import Template, compile_template

# Dropped from client requests besides the hop-by-hop set: we set framing and Host ourselves.
_REQUEST_DROP: Final = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"proxy-authorization"}
# Dropped from upstream responses: framing is ours; nginx's default hidden set
# (header_rules.py rule 2: Server and Date are replaced, X-Pad and X-Accel-* hidden).
_RESPONSE_DROP: Final = HOP_BY_HOP | {b"content-length"} | DEFAULT_HIDDEN
SERVER_HEADER: Final = b"Server: prefork-lb\r\n"
CHUNKED_FIELD: Final = b"Transfer-Encoding: chunked\r\n"  # request and response heads


@dataclass(frozen=True, slots=True)
class HeaderPlan:
    """proxy_set_header of one location, compiled at config load."""

    fields: tuple[tuple[bytes, Template], ...]  # in config order, Host first
    overridden: frozenset[bytes]  # lowercased names the plan replaces

    @classmethod
    def compile(cls, set_headers: Sequence[tuple[str, str]]) -> HeaderPlan:
        items = list(set_headers)
        if not any(name.lower() == "host" for name, _ in items):
            items.insert(0, ("Host", "$proxy_host"))
        else:
            items.sort(key=lambda kv: kv[0].lower() != "host")
        fields = tuple((name.encode("latin-1"), compile_template(value)) for name, value in items)
        return cls(fields, frozenset(name.lower() for name, _ in fields))


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    if not value:
        return frozenset()
    return frozenset(t.strip(b" \t").lower() for t in value.split(b","))


def build_upstream_head(
    ex: Exchange,
    plan: HeaderPlan,
    target: bytes,
    body_length: int | None,
    chunked: bool,
    pooled: bool,
    upgrade: bytes | None = None,
) -> bytes:
    parts = [ex.method, b" ", target, b" HTTP/1.1\r\n"]
    connection_set = False
    for name, template in plan.fields:
        rendered = template.render(ex)
        if rendered:
            parts += [name, b": ", safe_value(rendered), b"\r\n"]
            if upgrade is not None and name.lower() == b"connection":
                connection_set = True
    drop = _REQUEST_DROP | plan.overridden
    listed = ex.header_index.get(b"connection")
    if listed:
        drop = drop | connection_tokens(listed)
    for name, value in ex.headers:
        if name.lower() not in drop:
            parts += [name, b": ", value, b"\r\n"]
    if chunked:
        parts.append(CHUNKED_FIELD)
    elif body_length is not None and (body_length or ex.method in (b"POST", b"PUT", b"PATCH")):
        parts += [b"Content-Length: ", str(body_length).encode(), b"\r\n"]
    if upgrade is not None:  # rule 8
        if b"upgrade" not in plan.overridden:
            parts += [b"Upgrade: ", upgrade, b"\r\n"]
        if not connection_set:
            parts.append(b"Connection: upgrade\r\n")
    elif not pooled:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def upgrade_value(ex: Exchange, plan: HeaderPlan) -> bytes | None:
    """Rule 8: the Upgrade value an upgrade request sends upstream, None when none is sent
    (``proxy_set_header Upgrade ""``): then a 101 is unsolicited."""
    if b"upgrade" in plan.overridden:
        for name, template in plan.fields:
            if name.lower() == b"upgrade":
                rendered = template.render(ex)
                return safe_value(rendered) if rendered else None
    return ex.header_index.get(b"upgrade") or None


class DateCache:
    """The ``Date:`` field, formatted once per second (nginx keeps a cached time string)."""

    __slots__ = ("_field", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._field = b""

    def field(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._field = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
        return self._field


DATES = DateCache()


def status_line(status: int, reason: bytes = b"") -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def build_response_head(
    status: int,
    reason: bytes,
    upstream_headers: list[tuple[bytes, bytes]],
    connection_listed: frozenset[bytes],
    framing: bytes,
    keep_alive: bool,
    now: float,
    rules: ResponseRules = DEFAULT_RULES,
    ex: Exchange | None = None,
) -> bytes:
    """``framing`` is the ready field(s): b"Content-Length: N\\r\\n", chunked, or b"".
    ``rules``/``ex``: the location's header rules (http/header_rules.py) and the exchange
    its templates render from."""
    if rules.own_server and rules.own_date:
        parts = [status_line(status, reason), SERVER_HEADER, DATES.field(now)]
    else:  # proxy_pass_header Server/Date: the upstream's, else ours (nginx's header filter)
        names = {name.lower() for name, _ in upstream_headers}
        parts = [status_line(status, reason)]
        if rules.own_server or b"server" not in names:
            parts.append(SERVER_HEADER)
        if rules.own_date or b"date" not in names:
            parts.append(DATES.field(now))
    drop = rules.drop | connection_listed if connection_listed else rules.drop
    if rules.redirects and ex is not None:
        for name, value in upstream_headers:
            lname = name.lower()
            if lname not in drop:
                if lname == b"location" or lname == b"refresh":
                    value = rules.rewrite(lname, value, ex)
                parts += [name, b": ", value, b"\r\n"]
    else:  # the loop as it was before header rules
        for name, value in upstream_headers:
            if name.lower() not in drop:
                parts += [name, b": ", value, b"\r\n"]
    if rules.add and ex is not None:
        parts += rules.added(ex, status)
    parts.append(framing)
    parts.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    return b"".join(parts)


_ERROR_PAGE = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>prefork-lb</center>\r\n</body>\r\n</html>\r\n"
)


def error_page(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _ERROR_PAGE.format(code=status, phrase=phrase).encode()


def has_body(method: bytes, status: int) -> bool:
    """Rule 7: does a response to ``method`` with ``status`` carry a message body?"""
    return method != b"HEAD" and status >= 200 and status != 204 and status != 304


def simple_response(
    status: int,
    body: bytes,
    keep_alive: bool,
    now: float | None = None,
    content_type: bytes = b"text/html",
    extra: Sequence[tuple[bytes, bytes]] = (),
    method: bytes = b"GET",
    added: Sequence[bytes] = (),
) -> tuple[bytes, int]:
    """A complete response the proxy generates itself (errors, ``return``, status pages):
    (the bytes to send, how many of them are body). ``method`` is the request's (rule 7);
    ``added``: ready add_header field lines (http/header_rules.py rule 1)."""
    parts = [status_line(status), SERVER_HEADER, DATES.field(time.time() if now is None else now)]
    if status >= 200 and status != 204 and status != 304:
        parts += [
            b"Content-Type: ",
            content_type,
            b"\r\n",
            b"Content-Length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
    for name, value in extra:
        parts += [name, b": ", value, b"\r\n"]
    if added:
        parts += added
    parts.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    if not has_body(method, status) or not body:
        return b"".join(parts), 0
    parts.append(body)
    return b"".join(parts), len(body)
