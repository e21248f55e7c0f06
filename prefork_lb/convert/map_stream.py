"""The ``stream`` block and its servers (sans-IO).

Rules:
- A stream server needs a listen address and a ``proxy_pass`` prefork-lb can serve, else it
  is skipped with its key paths.
- ``proxy_ssl on`` (stream or server level, wherever written) skips the servers it applies
  to: the converter does not map TLS to stream upstreams yet (plain TCP would fail).
- Stream-level TLS values are copied into each server (map_tls).
"""

from __future__ import annotations

from typing import Any

from prefork_lb.convert import map_health
from prefork_lb.convert.map_common import Handler, Mapper, Note, error_log, log_format, simple
from prefork_lb.convert.map_http import listen
from prefork_lb.convert.map_tls import STREAM_TLS, inherit_tls, tls_server
from prefork_lb.convert.map_upstream import upstream_block
from prefork_lb.convert.read import Directive


def stream_block(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    stream = t.setdefault("stream", {})
    m.mark("stream", d)
    # a stream-level proxy_ssl applies to every server, wherever in the block it is written
    stream["_proxy_ssl"] = any(x.name == "proxy_ssl" and x.args[0] == "on" for x in d.block or [])
    m.each(d.block, stream, "stream", _STREAM)
    del stream["_proxy_ssl"]
    inherit_tls(m, stream, "stream", stream.get("servers", []))
    _inherit_check_timeout(m, stream, stream.get("servers", []))


def _inherit_check_timeout(m: Mapper, stream: dict[str, Any], servers: list[dict[str, Any]]) -> None:
    """A stream-level ``health_check_timeout`` into each server with a check and none of its own."""
    if "health_check_timeout" not in stream:
        return
    value = stream.pop("health_check_timeout")
    where = m.out.origins.get("stream.health_check_timeout", "")
    m.forget("stream.health_check_timeout")
    used = False
    for i, s in enumerate(servers):
        if "health_check" in s and "health_check_timeout" not in s:
            s["health_check_timeout"] = value
            m.out.origins[f"stream.servers[{i}].health_check_timeout"] = where
            used = True
    if not used:
        m.out.notes.append(
            Note(where, '"health_check_timeout": no server here it applies to; not converted', False)
        )


def _stream_server(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    servers = t.setdefault("servers", [])
    kp = f"{path}.servers[{len(servers)}]"
    s: dict[str, Any] = {}
    m.mark(kp, d)
    m.each(d.block, s, kp, _STREAM_SERVER)
    tls_server(m, s, d, kp)
    if s.pop("_proxy_ssl", t["_proxy_ssl"]):
        m.forget(kp)
        m.skip(
            d,
            "connects to its upstream with TLS (proxy_ssl on), which the converter does not map yet "
            "(plain TCP to a TLS upstream would fail): write the server with proxy_ssl = true and its "
            "proxy_ssl_* keys in the TOML (docs/config.md, stream servers)",
        )
        return
    if not s.get("listen") or "proxy_pass" not in s:
        m.forget(kp)
        m.skip(d, "has no listen address or proxy_pass prefork-lb can serve (see above)")
        return
    servers.append({k: s.pop(k) for k in ("listen", "proxy_pass")} | s)


def _stream_proxy_pass(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if "$" in d.args[0]:
        m.skip(d, "uses variables, which proxy_pass does not take in prefork-lb: name an upstream")
        return
    m.put(t, path, "proxy_pass", d.args[0], d)


def _stream_proxy_ssl(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``off`` is what prefork-lb does; ``on`` skips the server(s) it applies to."""
    t["_proxy_ssl"] = d.args[0] == "on"
    if t["_proxy_ssl"]:
        m.skip(d)


def _stream_next_upstream(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "proxy_next_upstream", d.args[0] == "on", d)


def _stream_access_log(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.args[0].startswith("syslog:"):
        m.skip(d, "is not supported: access logs are files, stdout or stderr")
        return
    if "access_log" in t:
        m.differ(d, "a stream server has one access log in prefork-lb; this one is ignored")
        return
    m.put(t, path, "access_log", d.args[0], d)
    if len(d.args) > 1 and "=" not in d.args[1]:
        m.put(t, path, "log_format", d.args[1], d)
    if any("=" in a for a in d.args[1:]):
        m.differ(d, "buffer=, flush=, if= are not supported on stream logs; written without them")


_STREAM_SIMPLE = (
    "proxy_connect_timeout",
    "proxy_timeout",
    "proxy_buffer_size",
    "proxy_next_upstream_tries",
    "proxy_next_upstream_timeout",
    "proxy_responses",
    "proxy_requests",
)


_STREAM: dict[str, Handler] = {
    **STREAM_TLS,
    "upstream": upstream_block,
    "server": _stream_server,
    "log_format": log_format,
    "access_log": _stream_access_log,
    "error_log": error_log,
    "proxy_ssl": _stream_proxy_ssl,
    "match": map_health.stream_match,
    "health_check_timeout": simple,
}


_STREAM_SERVER: dict[str, Handler] = {
    **dict.fromkeys(_STREAM_SIMPLE, simple),
    **STREAM_TLS,
    "listen": listen,
    "proxy_pass": _stream_proxy_pass,
    "proxy_next_upstream": _stream_next_upstream,
    "proxy_ssl": _stream_proxy_ssl,
    "access_log": _stream_access_log,
    "error_log": error_log,
    "health_check": map_health.stream_check,
    "health_check_timeout": simple,
}
