"""An upstream's ``sticky`` key: nginx's ``sticky cookie | route | learn`` (issue 19).

The three forms, as tables (one of ``cookie``, ``route``, ``learn`` decides the form)::

    sticky = { cookie = "srv_id", expires = "1h", domain = ".example.com", path = "/",
               httponly = true, secure = true, samesite = "lax" }
    sticky = { route = ["$route_cookie", "$route_uri"] }
    sticky = { learn = true, create = ["$upstream_cookie_sessionid"], lookup = ["$cookie_sessionid"],
               zone = "client_sessions:1m", timeout = "1h", header = false }

Rules:
1. A key of another form is an error naming it (never ignored); ``expires`` is a duration
   or "max"; ``samesite`` is strict, lax, none or a ``$variable``.
2. ``route`` and ``lookup`` are request templates; they are compiled by
   ``check_variables`` once the config's own variables (maps, ``set``) are installed, so
   ``$route_cookie`` may be a map, as in nginx's documented example.
3. ``create`` values are read from the upstream response: each must be exactly
   ``$upstream_cookie_NAME`` or ``$upstream_http_NAME`` (balance/sticky.py reads them from
   the response head).
4. ``zone = "name:size"``: the learn table (balance/learn.py), one per name; two upstreams
   naming the same zone is an error (nginx: a zone belongs to one ``sticky learn``).
5. Stream upstreams have no ``sticky`` (nginx has none): the stream loader rejects it.
"""

from __future__ import annotations

import re

from prefork_lb.config.model import StickyConfig, UpstreamConfig
from prefork_lb.config.source import Table, boolean, duration, size, string, string_list

SAMESITE = ("strict", "lax", "none")
_CREATE = re.compile(r"\$(upstream_cookie|upstream_http)_([A-Za-z0-9_]+)")
_ZONE = re.compile(r"([A-Za-z0-9_.-]+):(.+)")
_FORM_KEYS = {
    "cookie": {"cookie", "expires", "domain", "path", "httponly", "secure", "samesite"},
    "route": {"route"},
    "learn": {"learn", "create", "lookup", "zone", "timeout", "header"},
}


def sticky(t: Table) -> StickyConfig:
    """``sticky`` of the upstream table ``t`` (rule 1)."""
    raw = t.raw("sticky")
    key = t.key_path("sticky")
    if not isinstance(raw, dict):
        raise t.error("sticky", 'must be a table, e.g. { cookie = "srv_id" } (see docs/config.md)')
    forms = [f for f in ("cookie", "route", "learn") if f in raw]
    if len(forms) != 1:
        raise t.error("sticky", 'must have exactly one of "cookie", "route" or "learn"')
    form = forms[0]
    st = Table(t.source, raw, key)
    for name in raw:
        if name not in _FORM_KEYS[form]:
            other = next((f for f, keys in _FORM_KEYS.items() if name in keys), None)
            why = f'belongs to sticky "{other}", not "{form}"' if other else "unknown key"
            raise st.error(name, why)
    if form == "cookie":
        cfg = _cookie(st, key)
    elif form == "route":
        routes = st.take("route", _var_list)
        cfg = StickyConfig("route", route=tuple(routes), key=key)
    else:
        cfg = _learn(st, key)
    st.finish()
    return cfg


def _cookie(st: Table, key: str) -> StickyConfig:
    name = st.take("cookie", _cookie_name)
    expires_s, expires_max = st.take("expires", _expires, (0.0, False))
    samesite = st.take("samesite", _samesite, "")
    return StickyConfig(
        "cookie",
        cookie=name,
        expires_s=expires_s,
        expires_max=expires_max,
        domain=st.take("domain", _attr, ""),
        path=st.take("path", _attr, ""),
        httponly=st.take("httponly", boolean, False),
        secure=st.take("secure", boolean, False),
        samesite=samesite,
        key=key,
    )


def _learn(st: Table, key: str) -> StickyConfig:
    if st.take("learn", boolean) is not True:
        raise st.error("learn", "must be true (remove sticky to turn it off)")
    create = st.take("create", _create_list)
    lookup = st.take("lookup", _var_list)
    zone, zone_size = st.take("zone", _zone)
    timeout = st.take("timeout", duration, 600.0)
    if timeout <= 0:
        raise st.error("timeout", "must be positive")
    return StickyConfig(
        "learn",
        create=tuple(create),
        lookup=tuple(lookup),
        zone=zone,
        zone_size_bytes=zone_size,
        timeout_s=timeout,
        header=st.take("header", boolean, False),
        key=key,
    )


def reject_in_stream(t: Table) -> None:
    """Rule 5."""
    for name in ("sticky", "sticky_strict"):
        if t.has(name):
            raise t.error(name, "stream upstreams have no session persistence (nginx's sticky is http only)")


def check_variables(t: Table, upstreams: dict[str, UpstreamConfig]) -> None:
    """Rule 2 and rule 4, once the config's variables are known (``t``: the [http] table)."""
    from prefork_lb.http.template import compile_template
    from prefork_lb.http.variables import VariableError

    zones: dict[str, str] = {}
    for up in upstreams.values():
        cfg = up.sticky
        if cfg is None:
            continue
        field = "route" if cfg.mode == "route" else "lookup"
        for text in (*cfg.route, *cfg.lookup, *([cfg.samesite] if "$" in cfg.samesite else [])):
            try:
                compile_template(text)
            except VariableError as e:
                raise t.source.error(
                    f"{cfg.key}.{field if text != cfg.samesite else 'samesite'}", str(e)
                ) from None
        if cfg.mode == "learn":
            if cfg.zone in zones:
                raise t.source.error(
                    f"{cfg.key}.zone", f'zone "{cfg.zone}" is already used by upstream "{zones[cfg.zone]}"'
                )
            zones[cfg.zone] = up.name


# ---- converters ----


def _cookie_name(v: object) -> str:
    text = string(v)
    if not text or any(c in text for c in ' \t;,="\\') or not text.isprintable():
        raise ValueError("must be a cookie name (no spaces, ';', ',', '=' or quotes)")
    return text


def _attr(v: object) -> str:
    text = string(v)
    if any(c in text for c in ";\r\n") or not text.isprintable():
        raise ValueError("must not contain ';' or control characters")
    return text


def _expires(v: object) -> tuple[float, bool]:
    if v == "max":
        return 0.0, True
    seconds = duration(v)
    if seconds <= 0:
        raise ValueError('must be a positive duration or "max"')
    return float(int(seconds)), False


def _samesite(v: object) -> str:
    text = string(v)
    if text.lower() in SAMESITE:
        return text.lower()
    if text.startswith("$") and len(text) > 1:
        return text
    raise ValueError('must be "strict", "lax", "none" or a $variable')


def _var_list(v: object) -> list[str]:
    items = [v] if isinstance(v, str) else string_list(v)
    if not items or any("$" not in item for item in items):
        raise ValueError('must list variables, e.g. ["$cookie_route"]')
    return items


def _create_list(v: object) -> list[str]:
    items = [v] if isinstance(v, str) else string_list(v)
    if not items:
        raise ValueError('must list response variables, e.g. ["$upstream_cookie_sessionid"]')
    for item in items:
        if _CREATE.fullmatch(item) is None:
            raise ValueError(f'"{item}": each value must be $upstream_cookie_NAME or $upstream_http_NAME')
    return items


def _zone(v: object) -> tuple[str, int]:
    text = string(v)
    m = _ZONE.fullmatch(text)
    if m is None:
        raise ValueError('must be "name:size", e.g. "client_sessions:1m"')
    from prefork_lb.balance.learn import MIN_BYTES

    zone_size = size(m.group(2))
    if zone_size < MIN_BYTES:
        raise ValueError(f"the size must be at least {MIN_BYTES} bytes")
    return m.group(1), zone_size
