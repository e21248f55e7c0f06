"""The location keys (sans-IO): the directives nginx allows at http, server and location level
(``INHERITED``), the location block itself, and the rewrite module.

Rules:
- Inheritance the TOML contract has (http -> server -> location for these keys and access
  logs) is kept as written: a key stays at the level it is written at.
- ``allow``/``deny`` are collected per level (``_access``) and applied by map_http once the
  server is read: the location's own, else its server's, else http's; a location that
  returns gets none (nginx answers ``return`` in the rewrite phase, before the access phase).
- The rewrite module (``rewrite``, ``set``, ``if``, ``break``, and a ``return`` written after
  one of them) becomes the block's ``rewrite_rules``, one statement per item in nginx syntax
  and in order; a statement after a ``return`` of the block is skipped (nginx never runs it).
- A nested location is skipped (prefork-lb has none); a location with nothing prefork-lb can
  run is kept answering 404, so its URIs never reach another location.
- The realip directives are http/server keys (``REALIP_HANDLERS``); in a location they are
  reported.
"""

from __future__ import annotations

from typing import Any

from prefork_lb.convert import cache, map_health
from prefork_lb.convert.map_common import (
    Handler,
    Mapper,
    append,
    append_text,
    error_log,
    origin,
    pcre,
    put_flag,
    put_text,
    simple,
    status_code,
)
from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import Inline, scalar

# nginx's location-level directives the TOML contract has at http, server and location level
_DURATIONS = (
    "proxy_connect_timeout",
    "proxy_read_timeout",
    "proxy_send_timeout",
    "proxy_next_upstream_timeout",
    "client_body_timeout",
    "send_timeout",
    "lingering_time",
    "lingering_timeout",
)


_SIZES = ("proxy_buffer_size", "client_max_body_size", "client_body_buffer_size")


_COUNTS = ("proxy_next_upstream_tries", "keepalive_requests")


_WORDS = ("lingering_close",)


_SIMPLE = frozenset((*_DURATIONS, *_SIZES, *_COUNTS, *_WORDS))


# TLS to upstreams (the same names in the TOML); the others (client certificates, depth,
# CRLs) are reported as unsupported: convert/unsupported.py
_SSL_FLAGS = ("proxy_ssl_verify", "proxy_ssl_server_name", "proxy_ssl_session_reuse")


_SSL_STRINGS = ("proxy_ssl_trusted_certificate", "proxy_ssl_name", "proxy_ssl_ciphers")


def _keepalive_timeout(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "keepalive_timeout", scalar(d.args[0]), d)
    if len(d.args) > 1:
        m.differ(d, 'the second value (the "Keep-Alive: timeout=" header) is not sent by prefork-lb')


def _next_upstream(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "proxy_next_upstream", list(d.args), d)


def _set_header(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    headers = t.get("proxy_set_header")
    if not isinstance(headers, Inline):
        headers = Inline()
    headers[d.args[0]] = d.args[1]
    t["proxy_set_header"] = headers  # a level's own headers replace inherited ones (nginx)
    origin(m, d, path, "proxy_set_header")


def _add_header(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``add_header NAME VALUE [always]`` -> ``add_header = { NAME = "V" | { value, always } }``."""
    if len(d.args) < 2 or len(d.args) > 3 or (len(d.args) == 3 and d.args[2] != "always"):
        m.skip(d, 'needs "add_header NAME VALUE [always]"')
        return
    headers = t.get("add_header")
    if not isinstance(headers, Inline):
        headers = Inline()
    name, value = d.args[0], d.args[1]
    if name in headers:
        m.differ(d, f"{name} is added twice at this level by nginx; prefork-lb keeps the last one")
    headers[name] = Inline(value=value, always=True) if len(d.args) == 3 else value
    t["add_header"] = headers  # a level's own headers replace inherited ones (nginx)
    origin(m, d, path, "add_header")


def _header_list(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``proxy_hide_header`` / ``proxy_pass_header NAME``: one list per level."""
    names = t.get(d.name)
    if not isinstance(names, list):
        names = []
    names.append(d.args[0])
    t[d.name] = names
    origin(m, d, path, d.name)


def _proxy_redirect(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``default`` / ``off`` / ``FROM TO`` (``~regex`` included), in order at a level."""
    current = t.get("proxy_redirect")
    rules: list[Any] = current if isinstance(current, list) else ([current] if current == "default" else [])
    if d.args == ["off"]:
        t["proxy_redirect"] = "off"
    elif d.args == ["default"]:
        rules.append("default")
        t["proxy_redirect"] = rules if len(rules) > 1 else "default"
    elif len(d.args) == 2:
        rules.append([d.args[0], d.args[1]])
        t["proxy_redirect"] = rules
    else:
        m.skip(d, 'needs "proxy_redirect default|off|FROM TO"')
        return
    origin(m, d, path, "proxy_redirect")


def _http_version(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.args[0] == "1.1":
        m.put(t, path, "proxy_http_version", "1.1", d)
    else:
        m.differ(d, "prefork-lb always speaks HTTP/1.1 to upstreams; nothing to set")


def _ssl_protocols(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    kept = [p for p in d.args if p not in ("SSLv2", "SSLv3")]
    if not kept:
        m.skip(d, "names only protocols prefork-lb does not speak (SSLv2, SSLv3)")
        return
    if len(kept) < len(d.args):
        m.differ(d, "SSLv2 and SSLv3 are not spoken by prefork-lb; mapped without them")
    m.put(t, path, "proxy_ssl_protocols", kept, d)


def _access_log(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    args = d.args
    if args[0] == "off":
        m.put(t, path, "access_log", "off", d)
        return
    if args[0].startswith("syslog:"):
        m.skip(d, "is not supported: access logs are files, stdout or stderr")
        return
    entry = Inline(path=args[0])
    for word in args[1:]:
        name, eq, value = word.partition("=")
        if not eq and "format" not in entry:
            entry["format"] = word
        elif name in ("buffer", "flush", "if"):
            entry[name] = value
        else:
            m.differ(d, f'"{word}" is not supported; the log is written without it')
    one: Any = entry["path"] if len(entry) == 1 else entry
    have = t.get("access_log")
    if have is None or have == "off":
        m.put(t, path, "access_log", one, d)
    else:  # several access_log directives at one level: several logs (nginx)
        have = have if isinstance(have, list) else [have if isinstance(have, Inline) else Inline(path=have)]
        have.append(entry)
        t["access_log"] = have


def _access_rule(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    rules = t.setdefault("_access", [])
    rules.append((d.name, d.args[0], d))


_LIMIT_FLAGS = ("limit_req_dry_run", "limit_conn_dry_run")


_LIMIT_WORDS = ("limit_req_log_level", "limit_conn_log_level")


_LIMIT_STATUS = ("limit_req_status", "limit_conn_status")


def _limit_req(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``limit_req zone=NAME [burst=N] [nodelay|delay=N]``: lines of one level form its list."""
    item = Inline()
    for a in d.args:
        key, eq, value = a.partition("=")
        if a == "nodelay":
            item["nodelay"] = True
        elif eq and key in ("burst", "delay"):
            item[key] = scalar(value)
        elif eq and key == "zone":
            item["zone"] = value
        else:
            item[a] = a  # refused by the loader at this line
    append(m, d, t, path, "limit_req", item)


def _limit_conn(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    append(m, d, t, path, "limit_conn", Inline(zone=d.args[0], number=scalar(d.args[1])))


def _set_real_ip_from(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.args[0].startswith("unix:"):
        m.skip(d, "names unix: peers; prefork-lb trusts addresses only")
        return
    append_text(m, d, t, path, "set_real_ip_from", d.args[0])


def _realip_in_location(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.skip(d, "is supported at http and server level only (set it on the server)")


def return_value(m: Mapper, d: Directive) -> int | str | None:
    args = d.args
    if not args[0].isdigit():  # "return URL": 302
        return f"302 {args[0]}"
    if args[0] == "444":
        m.differ(d, "nginx closes the connection without a response; prefork-lb answers 444")
    return int(args[0]) if len(args) == 1 else f"{args[0]} {args[1]}"


def location_block(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if path.count("locations["):
        m.skip(d, "is a nested location, which prefork-lb does not have: write it at the server level")
        return
    locations = t.setdefault("locations", [])
    kp = f"{path}.locations[{len(locations)}]"
    match = _match(d.args)
    loc: dict[str, Any] = {"match": match}
    m.mark(kp, d)
    m.out.origins[f"{kp}.match"] = d.where
    m.each(d.block, loc, kp, _LOCATION)
    check = loc.pop("_health_check", None)
    if check is not None and "proxy_pass" not in loc:
        del loc["health_check"]
        m.forget(f"{kp}.health_check")
        m.skip(check, "needs a proxy_pass in its location (nginx refuses it without one too)")
    if not any(k in loc for k in ("proxy_pass", "return", "rewrite_rules", "api", "metrics", "dashboard")):
        # kept, so its URIs never reach another location (think "location ~ /\.ht { deny all; }")
        loc["return"] = 404
        m.differ(d, "has nothing prefork-lb can run (see above for why); it answers 404 here")
    locations.append(loc)


def _match(args: list[str]) -> str:
    if len(args) == 2:
        mod, uri = args
    else:
        text = args[0]
        if text.startswith("@"):
            return text  # a named location (error_page targets)
        for mod in ("^~", "~*", "=", "~"):
            if text.startswith(mod):
                uri = text[len(mod) :]
                break
        else:
            mod, uri = "", text
    if mod in ("~", "~*"):
        uri = pcre(uri)
    return f"{mod} {uri}" if mod else uri


def _proxy_pass(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    target = d.args[0]
    if "$" in target:
        m.skip(d, "uses variables, which proxy_pass does not take in prefork-lb: name an upstream")
    elif not target.startswith(("http://", "https://")) or target.startswith(
        ("http://unix:", "https://unix:")
    ):
        m.skip(d, 'is not supported: proxy_pass takes "http[s]://upstream-or-address[/uri]"')
    else:
        m.put(t, path, "proxy_pass", target, d)


def _location_return(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if "rewrite_rules" in t:  # after rewrite statements: it keeps its place among them
        statement(m, d, t, path)
        return
    value = return_value(m, d)
    if value is not None and "return" not in t:
        m.put(t, path, "return", value, d)


def _statement_text(d: Directive) -> str:
    """A rewrite-module directive in the syntax ``rewrite_rules`` reads (http/rewrite.py)."""
    words = [pcre(d.args[0]), *d.args[1:]] if d.name == "rewrite" and d.args else d.args
    args = " ".join(_quote_arg(a) for a in words)
    if d.name == "if":
        body = "; ".join(_statement_text(c) for c in d.block or [])
        return f"if ({args}) {{ {body}; }}"
    return f"{d.name} {args}".rstrip()


def _quote_arg(arg: str) -> str:
    if arg == "" or any(c in arg for c in " \t;{}\"'"):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def statement(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``rewrite``, ``set``, ``if``, ``break`` (and ``return`` after them): one ``rewrite_rules``
    item each, in order. After a server-level or location ``return`` nothing runs (nginx)."""
    if "return" in t or "_return" in t:
        m.skip(d, "never runs: a return before it in this block answers first")
        return
    if d.name == "if" and any(c.name not in ("return", "rewrite", "set", "break") for c in d.block or []):
        m.skip(d, "holds directives prefork-lb's if does not take (only return, rewrite, set, break)")
        return
    rules = t.setdefault("rewrite_rules", [])
    key = f"{path}.rewrite_rules"
    if not rules:
        m.mark(key, d)
    rules.append(_statement_text(d))
    m.out.origins[f"{key}[{len(rules) - 1}]"] = d.where


def _error_page(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    args = list(d.args)
    target = args.pop()
    override = args.pop() if args and args[-1].startswith("=") else ""
    pages = t.setdefault("error_page", Inline({}))
    key = f"{path}.error_page"
    if not pages:
        m.mark(key, d)
    pages[" ".join(args)] = f"{override} {target}".strip()


def _api(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.name == "status":
        m.differ(
            d, "the old NGINX Plus status module is served as the API (its version 9 shape: docs/api.md)"
        )
    if any(a == "write=on" for a in d.args):  # issue 19: the write API for upstream servers
        m.put(t, path, "api", Inline(write=True), d)
        return
    m.put(t, path, "api", True, d)


INHERITED: dict[str, Handler] = {
    **dict.fromkeys(_SIMPLE, simple),
    "keepalive_timeout": _keepalive_timeout,
    "proxy_next_upstream": _next_upstream,
    "proxy_set_header": _set_header,
    "add_header": _add_header,
    "proxy_hide_header": _header_list,
    "proxy_pass_header": _header_list,
    "proxy_redirect": _proxy_redirect,
    "proxy_http_version": _http_version,
    **dict.fromkeys(_SSL_FLAGS, put_flag),
    **dict.fromkeys(_SSL_STRINGS, put_text),
    "proxy_ssl_protocols": _ssl_protocols,
    "access_log": _access_log,
    "allow": _access_rule,
    "deny": _access_rule,
    "error_log": error_log,
    "error_page": _error_page,
    "proxy_intercept_errors": put_flag,
    "rewrite_log": put_flag,
    "limit_req": _limit_req,
    "limit_conn": _limit_conn,
    **dict.fromkeys(_LIMIT_FLAGS, put_flag),
    **dict.fromkeys(_LIMIT_WORDS, put_text),
    **dict.fromkeys(_LIMIT_STATUS, status_code),
    # the content cache (convert/cache.py)
    **dict.fromkeys(cache.FLAGS, put_flag),
    **dict.fromkeys(cache.SIMPLE, simple),
    "proxy_cache": cache.cache,
    "proxy_cache_valid": cache.cache_valid,
    "proxy_cache_bypass": cache.variables,
    "proxy_no_cache": cache.variables,
    "proxy_cache_methods": cache.word_set,
    "proxy_cache_use_stale": cache.word_set,
    "proxy_ignore_headers": cache.word_set,
}


REWRITE: dict[str, Handler] = dict.fromkeys(("rewrite", "set", "if", "break"), statement)


REALIP_HANDLERS: dict[str, Handler] = {
    "set_real_ip_from": _set_real_ip_from,
    "real_ip_header": put_text,
    "real_ip_recursive": put_flag,
}


REALIP = tuple(REALIP_HANDLERS)


_LOCATION: dict[str, Handler] = {
    **INHERITED,
    **dict.fromkeys(REALIP, _realip_in_location),
    "location": location_block,
    "proxy_pass": _proxy_pass,
    "return": _location_return,
    "api": _api,
    "health_check": map_health.http_check,
    "status": _api,
    **REWRITE,
}
