"""Response header rules of a location: add_header, proxy_hide_header/proxy_pass_header,
proxy_redirect (sans-IO; shared/reference/nginx-semantics-2.md section 3).

Rules:
1. ``add_header`` fields are appended after the upstream's (an upstream ``X-Foo`` and an
   added ``X-Foo`` are both sent, as nginx), only for ``ADD_STATUSES`` unless ``always``;
   ``always`` covers every status, the proxy's own error pages included; an answer given
   before a location matched (404) gets the server level's fields. A value that
   renders empty adds nothing. Values are rendered when the head is built, so
   ``$upstream_response_time`` is "-" for the attempt being relayed (nginx).
2. Hidden upstream response fields: ``DEFAULT_HIDDEN`` (Date, Server, X-Pad, X-Accel-Expires,
   X-Accel-Redirect, X-Accel-Limit-Rate, X-Accel-Buffering, X-Accel-Charset; an unknown
   X-Accel-Foo passes), plus ``proxy_hide_header``, minus ``proxy_pass_header``. A passed
   Server or Date replaces ours, as in nginx; when the upstream sent none, ours is sent.
   Hop-by-hop and framing fields never pass (headers.py rule 1), whatever
   ``proxy_pass_header`` says.
3. Inheritance is nginx's, all or nothing per key: an ``add_header`` table at a level
   replaces the inherited one, and so does a ``proxy_hide_header`` or ``proxy_pass_header``
   list, each on its own (nginx 1.22: a location's ``proxy_pass_header`` keeps the server's
   ``proxy_hide_header``; config/load_http.py).
4. ``proxy_redirect`` rewrites only ``Location`` and ``Refresh`` (after ``url=``), by prefix,
   case-sensitively, or by ``~regex``/``~*regex`` (the whole value replaced, ``$1``..``$9``
   its captures), first matching rule wins. ``default`` (nginx's default) maps the
   proxy_pass URL to the location prefix (``http://B/app/`` -> ``/front/``), or, without a
   URI part, ``http://B/`` -> ``/``. A rewritten Location starting with "/" is made
   absolute (``$scheme://$host[:port]``, the port left out when it is the scheme's
   default), as nginx's header filter does; an unrewritten relative one passes unchanged,
   and Refresh stays relative. ``off`` passes both unchanged.
5. Better than nginx (security): every byte 0x00-0x1f but HTAB, and 0x7f, that a variable
   puts into an added field, a rewritten Location/Refresh or a made-absolute host is
   percent-encoded (``%0D``), so no variable (a decoded ``$uri`` with ``%0d%0a``) can split
   a field or inject one; the reference payloads of section 2.5 emit exactly one field.
6. Cost: a location with none of these keys set shares ``DEFAULT_RULES`` (the default hidden
   set, ``proxy_redirect default``); the head builder pays one set lookup per upstream field
   as before, and looks at Location/Refresh only when a rule could rewrite them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prefork_lb.http.template import Template, compile_template, parse_template

if TYPE_CHECKING:
    from prefork_lb.config.model import LocationConfig
    from prefork_lb.http.exchange import Exchange

# Rule 1: nginx's ngx_http_headers_filter status list.
ADD_STATUSES: Final = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})
# Rule 2: ngx_http_proxy_hide_headers (1.22).
DEFAULT_HIDDEN: Final = frozenset(
    {
        b"date",
        b"server",
        b"x-pad",
        b"x-accel-expires",
        b"x-accel-redirect",
        b"x-accel-limit-rate",
        b"x-accel-buffering",
        b"x-accel-charset",
    }
)
# Hop-by-hop fields (headers.py rule 1): never forwarded either way.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)
# Never passed, whatever proxy_pass_header says: hop-by-hop (headers.py rule 1) and framing.
NEVER_PASSED: Final = HOP_BY_HOP | frozenset({b"content-length"})
# Rule 5: every CTL except HTAB, and DEL.
UNSAFE: Final = str.maketrans({c: f"%{c:02X}" for c in (*range(0x09), *range(0x0A, 0x20), 0x7F)})


def safe_value(text: str) -> bytes:
    """Rule 5: a rendered value as field bytes, control characters percent-encoded."""
    if text.isprintable():  # the usual case: no control character, nothing to translate
        return text.encode("latin-1")
    return text.translate(UNSAFE).encode("latin-1")


@dataclass(frozen=True, slots=True)
class Redirect:
    """One ``proxy_redirect`` rule: a literal prefix and its replacement template."""

    prefix: str
    replacement: Template

    def apply(self, text: str, ex: Exchange) -> str | None:
        if text.startswith(self.prefix):
            return self.replacement.render(ex) + text[len(self.prefix) :]
        return None


@dataclass(frozen=True, slots=True)
class RegexRedirect:
    """``["~regex", "replacement"]`` (``~*``: caseless): a match replaces the whole value;
    ``$1``..``$9`` in the replacement are the captures (nginx's regex proxy_redirect)."""

    regex: re.Pattern[str]
    parts: tuple[int | Template, ...]  # capture numbers and templates, in order

    def apply(self, text: str, ex: Exchange) -> str | None:
        m = self.regex.search(text)
        if m is None:
            return None
        groups = m.groups()
        return "".join(
            (groups[p - 1] or "" if p <= len(groups) else "") if isinstance(p, int) else p.render(ex)
            for p in self.parts
        )


def compile_regex_redirect(pattern: str, replacement: str) -> RegexRedirect:
    """Raises ``re.error`` or ``VariableError``."""
    caseless = pattern.startswith("~*")
    regex = re.compile(pattern[2 if caseless else 1 :], re.IGNORECASE if caseless else 0)
    parts: list[int | Template] = []
    for is_var, value in parse_template(replacement):
        if is_var and value.isdigit():
            parts.append(int(value))
        else:
            # a literal re-parses to itself (its "$" is followed by no name char)
            parts.append(compile_template("${" + value + "}" if is_var else value))
    return RegexRedirect(regex, tuple(parts))


@dataclass(frozen=True, slots=True)
class ResponseRules:
    drop: frozenset[bytes]  # lowercased upstream fields not sent (hop-by-hop included)
    own_server: bool  # we send our Server (upstream's hidden)
    own_date: bool
    redirects: tuple[Redirect | RegexRedirect, ...]  # empty: proxy_redirect off
    add: tuple[tuple[bytes, Template, bool], ...]  # (name, value, always)

    def added(self, ex: Exchange, status: int) -> list[bytes]:
        """Rule 1: the add_header field lines for a response with ``status``."""
        out: list[bytes] = []
        if not self.add:
            return out
        listed = status in ADD_STATUSES
        for name, template, always in self.add:
            if always or listed:
                value = template.render(ex)
                if value:
                    out.append(name + b": " + safe_value(value) + b"\r\n")
        return out

    def rewrite(self, lname: bytes, value: bytes, ex: Exchange) -> bytes:
        """Rule 4: a Location or Refresh value after proxy_redirect."""
        text = value.decode("latin-1")
        if lname == b"location":
            new = self._rewrite(text, ex)
            if new is None:
                return value
            if new.startswith("/"):
                new = absolute_prefix(ex) + new
            return safe_value(new)
        at = text.lower().find("url=")
        if at < 0:
            return value
        new = self._rewrite(text[at + 4 :], ex)
        return value if new is None else safe_value(text[: at + 4] + new)

    def _rewrite(self, text: str, ex: Exchange) -> str | None:
        for rule in self.redirects:
            new = rule.apply(text, ex)
            if new is not None:
                return new
        return None


def absolute_prefix(ex: Exchange) -> str:
    """``scheme://host[:port]`` for making a relative redirect absolute (nginx's header
    filter with server_name_in_redirect off and port_in_redirect on: the request's host,
    else the local address the connection came in on)."""
    scheme = "http" if ex.conn.tls is None else "https"
    host = ex.host
    if not host:
        addr = ex.conn.server_addr
        host = f"[{addr}]" if ":" in addr else addr
    port = ex.conn.server_port
    default = 80 if scheme == "http" else 443
    suffix = "" if port == default or port <= 0 else f":{port}"
    return f"{scheme}://{host}{suffix}"


def _rules(
    hide: Sequence[str],
    pass_: Sequence[str],
    redirects: tuple[Redirect | RegexRedirect, ...],
    add: tuple[tuple[bytes, Template, bool], ...],
) -> ResponseRules:
    hidden = (DEFAULT_HIDDEN | {h.lower().encode("latin-1") for h in hide}) - {
        p.lower().encode("latin-1") for p in pass_
    }
    return ResponseRules(
        drop=hidden | NEVER_PASSED,
        own_server=b"server" in hidden,
        own_date=b"date" in hidden,
        redirects=redirects,
        add=add,
    )


def default_redirect(loc: LocationConfig) -> Redirect | None:
    """``proxy_redirect default``: the proxy_pass URL -> the location prefix (rule 4)."""
    proxy = loc.proxy_pass
    if proxy is None or loc.modifier in ("~", "~*") or loc.pattern.startswith("@"):
        return None
    base = f"{'https' if proxy.ssl else 'http'}://{proxy.host_header}"
    if proxy.uri is not None:
        return Redirect(base + proxy.uri, compile_template(loc.pattern))
    return Redirect(base + "/", compile_template("/"))


def compile_rules(loc: LocationConfig) -> ResponseRules:
    """A location's rules, compiled once at config load (``DEFAULT_RULES``-like when none of
    the keys is set; only the default redirect differs per location)."""
    redirects: list[Redirect | RegexRedirect] = []
    for item in loc.proxy_redirect:
        if isinstance(item, str):  # "default"
            rule = default_redirect(loc)
            if rule is not None:
                redirects.append(rule)
        elif item[0].startswith("~"):
            redirects.append(compile_regex_redirect(*item))
        else:
            redirects.append(Redirect(item[0], compile_template(item[1])))
    added = compile_added(loc.add_header).add
    return _rules(loc.proxy_hide_header, loc.proxy_pass_header, tuple(redirects), added)


def compile_added(add_header: Sequence[tuple[str, str, bool]]) -> ResponseRules:
    """Rules with only ``add_header`` (a server's, for answers given before a location
    matched)."""
    add = tuple(
        (name.encode("latin-1"), compile_template(value), always) for name, value, always in add_header
    )
    return _rules((), (), (), add)


DEFAULT_RULES: Final = _rules((), (), (), ())
