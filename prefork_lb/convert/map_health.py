"""NGINX Plus active health checks: ``health_check`` and ``match`` (sans-IO; handlers in
map_location, map_http and map_stream tables).

The keys are docs/config.md's "Active health checks" (config/load_health.py reads them):
``health_check = { interval, jitter, fails, passes, uri, port, match, mandatory,
persistent, keepalive_time }`` on a location, and ``health_check = { ..., udp }`` plus
``health_check_timeout`` on a stream server; ``[http.matches.NAME]`` (``status``,
``header``, ``body``) and ``[stream.matches.NAME]`` (``send``, ``expect``).

Rules:
- Parameter values are copied as written (bare digits become integers: nginx's ``interval=5``
  is 5 seconds, as in the TOML); the loader validates them and names this line. The defaults
  are nginx's (5s, 0, 1, 1, ``/``, the server's port), so only what is written is written.
- A parameter nginx does not know (or not in this context: ``uri``/``type`` in stream,
  ``udp`` in http) skips the directive, as nginx refuses to start on it. ``type=grpc`` skips
  it too: prefork-lb's probes are HTTP/1.0 GETs, which a gRPC server fails, so mapping it
  would mark every peer unhealthy.
- prefork-lb has one check per location and per stream server: a second ``health_check`` in
  the block is skipped (write it on another location with the same ``proxy_pass``).
  A location without ``proxy_pass`` loses its check (map_location: nginx needs one too).
- A stream-level ``health_check_timeout`` is copied into each server with a check that has
  none of its own (map_stream; prefork-lb's key is per server).
- ``match`` conditions become strings the loader parses: ``status 200-399`` -> ``"200-399"``,
  ``header Name = v`` -> ``'Name = "v"'`` (the value always quoted, so its spaces are kept),
  ``body ~ re`` -> ``'~ "re"'``; PCRE named groups ``(?<n>`` become ``(?P<n>``. One ``status``
  and one ``body`` test per match: a further one is skipped. ``require`` has no
  equivalent: skipped, the match is used without it (peers pass more readily: noted).
- A stream ``match``: ``send`` is copied (escapes already read: ``\\r\\n`` are bytes),
  ``expect`` a literal (quoted, so edge spaces are kept) or ``~ regex``.
"""

from __future__ import annotations

from typing import Any

from prefork_lb.convert.map_common import Mapper, join_path, pcre
from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import Inline, scalar

_COMMON = ("interval", "jitter", "fails", "passes", "port", "match", "keepalive_time")
_HTTP_ONLY = ("uri",)
_FLAGS = ("mandatory", "persistent")


def http_check(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``health_check [interval=] [jitter=] [fails=] [passes=] [uri=] [port=] [match=]
    [mandatory [persistent]] [keepalive_time=] [type=grpc ...]`` in a location."""
    _check(m, d, t, path, "http")


def stream_check(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``health_check [interval=] [jitter=] [fails=] [passes=] [port=] [match=] [udp]
    [mandatory [persistent]]`` in a stream server."""
    _check(m, d, t, path, "stream")


def _check(m: Mapper, d: Directive, t: dict[str, Any], path: str, context: str) -> None:
    if "health_check" in t:
        m.skip(
            d,
            "is a second check of this block; prefork-lb takes one per "
            + (
                "location (write it in another location with the same proxy_pass)"
                if context == "http"
                else "stream server"
            ),
        )
        return
    if context == "http" and any(w.startswith("type=") for w in d.args):  # grpc, nginx's only type
        m.skip(
            d,
            "is not supported: prefork-lb's probes are HTTP/1.0 GET requests, which a gRPC "
            "server fails (passive checks still apply: max_fails, fail_timeout)",
        )
        return
    table = Inline()
    names = (*_COMMON, *_HTTP_ONLY) if context == "http" else _COMMON
    for word in d.args:
        name, eq, value = word.partition("=")
        if eq and name in names and value:
            table[name] = value if name in ("uri", "match") else scalar(value)
        elif not eq and word in _FLAGS:
            table[word] = True
        elif not eq and word == "udp" and context == "stream":
            table["udp"] = True
        else:
            m.skip(d, f'has the parameter "{word}", which nginx does not take here either')
            return
    m.put(t, path, "health_check", table, d)
    if context == "http":
        t["_health_check"] = d  # for map_location's check that the location proxies


def http_match(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``match NAME { status ...; header ...; body ...; }`` -> ``[http.matches.NAME]``."""
    if not d.args:
        m.skip(d, "needs a name")
        return
    name, kp = _start(m, d, t, path)
    table: dict[str, Any] = {}
    headers: list[str] = []
    for c in d.block or []:
        if c.name == "status" and c.args:
            if "status" in table:
                m.skip(c, "is a second status test; prefork-lb takes one per match (combine the codes)")
            else:
                table["status"] = " ".join(c.args)
                m.out.origins[f"{kp}.status"] = c.where
        elif c.name == "header" and c.args:
            text = _header(c.args)
            if text is None:
                m.skip(
                    c, 'is not a header test ("Name", "! Name", "Name = v", "Name != v", "Name ~ re", ...)'
                )
                continue
            m.out.origins[f"{kp}.header[{len(headers)}]"] = c.where
            headers.append(text)
        elif c.name == "body" and len(c.args) == 2 and c.args[0] in ("~", "!~"):
            if "body" in table:
                m.skip(c, "is a second body test; prefork-lb takes one per match (join the regexes)")
            else:
                table["body"] = f"{c.args[0]} {_quote(pcre(c.args[1]))}"
                m.out.origins[f"{kp}.body"] = c.where
        elif c.name == "require":
            m.skip(
                c,
                "has no prefork-lb equivalent (no variables in match blocks); the match is used without it, "
                "so peers pass more readily",
            )
        else:
            m.skip(c, "is not a match test prefork-lb has (status, header, body)")
    if headers:
        table["header"] = headers
    _define(m, d, t, path, name, table)


def stream_match(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``match NAME { send "..."; expect "..." | ~ "re"; }`` -> ``[stream.matches.NAME]``."""
    if not d.args:
        m.skip(d, "needs a name")
        return
    name, kp = _start(m, d, t, path)
    table: dict[str, Any] = {}
    for c in d.block or []:
        if c.name in table:
            m.skip(c, f"is a second {c.name}; prefork-lb takes one per match")
        elif c.name == "send" and len(c.args) == 1:
            table["send"] = c.args[0]
            m.out.origins[f"{kp}.send"] = c.where
        elif c.name == "expect" and len(c.args) == 1:
            table["expect"] = _quote(c.args[0])
            m.out.origins[f"{kp}.expect"] = c.where
        elif c.name == "expect" and len(c.args) == 2 and c.args[0] == "~":
            table["expect"] = f"~ {_quote(pcre(c.args[1]))}"
            m.out.origins[f"{kp}.expect"] = c.where
        else:
            m.skip(c, "is not a stream match test prefork-lb has (send STRING, expect STRING | ~ REGEX)")
    _define(m, d, t, path, name, table)


def _start(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> tuple[str, str]:
    """The match's name and key path; a redefinition replaces the first (its paths go)."""
    name = d.args[0]
    kp = f"{join_path(path, 'matches')}.{name}"
    if name in t.get("matches", {}):
        m.differ(d, f'the match "{name}" is already defined (nginx refuses to start); this one is used')
        m.forget(kp)
    return name, kp


def _define(m: Mapper, d: Directive, t: dict[str, Any], path: str, name: str, table: dict[str, Any]) -> None:
    t.setdefault("matches", {})[name] = table
    m.mark(f"{join_path(path, 'matches')}.{name}", d)


def _header(args: list[str]) -> str | None:
    if len(args) == 1:
        return args[0]
    if len(args) == 2 and args[0] == "!":
        return f"! {args[1]}"
    if len(args) == 3 and args[1] in ("=", "!=", "~", "!~"):
        value = pcre(args[2]) if "~" in args[1] else args[2]
        return f"{args[0]} {args[1]} {_quote(value)}"
    return None


def _quote(value: str) -> str:
    """Quoted for the loader's reader, which strips one pair of quotes and nothing else."""
    return f'"{value}"'
