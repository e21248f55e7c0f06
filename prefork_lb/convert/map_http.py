"""The ``http`` block and its servers (sans-IO): http- and server-level directives.

Rules:
- Where the TOML contract lacks a level, nginx's inheritance is done here, after the block
  is read (nginx inherits whatever the position in the block): ``client_header_timeout``
  and the realip keys from ``http`` are copied into each server, ``allow``/``deny`` from
  ``http`` or ``server`` into each location that has none (not into one that returns), and
  the TLS keys into the servers listening with ``ssl`` (map_tls).
- A server without ``listen`` listens on ``*:80``; one without a location answers 404; a
  server-level ``return`` becomes location ``/`` (its locations are not converted).
- nginx's documented WebSocket ``map $http_upgrade $connection_upgrade`` is recognised and
  not converted: the variable is built in with the same values. Any other ``map`` becomes
  ``[http.maps.NAME]``.
"""

from __future__ import annotations

from typing import Any

from prefork_lb.convert import cache, map_health
from prefork_lb.convert.map_common import Handler, Mapper, Note, join_path, log_format, pcre, put_flag, simple
from prefork_lb.convert.map_location import (
    INHERITED,
    REALIP,
    REALIP_HANDLERS,
    REWRITE,
    location_block,
    return_value,
    statement,
)
from prefork_lb.convert.map_tls import TLS, inherit_tls, tls_server
from prefork_lb.convert.map_upstream import upstream_block
from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import Inline, scalar


def http_block(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    http = t.setdefault("http", {})
    m.mark("http", d)
    m.each(d.block, http, "http", _HTTP_LEVEL)
    # nginx inherits whatever the level, wherever in the block it is written
    header_timeout = http.pop("client_header_timeout", None)
    http_rules = http.pop("_access", None)
    inherit_tls(m, http, "http", http.get("servers", []))
    realip = {k: http.pop(k) for k in REALIP if k in http}  # the contract has it per server
    for i, s in enumerate(http.get("servers", [])):
        if header_timeout is not None:
            s.setdefault("client_header_timeout", header_timeout)
        for k, v in realip.items():
            s.setdefault(k, v)
        rules = s.pop("_access", None) or http_rules
        for j, loc in enumerate(s["locations"]):
            kp = f"http.servers[{i}].locations[{j}]"
            own = loc.pop("_access", None)
            if "return" in loc:  # nginx returns in the rewrite phase, before the access phase
                if own:
                    m.differ(
                        own[0][2],
                        "nginx answers the location's return before allow/deny are checked; not converted",
                    )
                continue
            _apply_access(m, loc, own or rules, kp)
            _note_sni(m, (loc, s, http), (kp, f"http.servers[{i}]", "http"))


def _note_sni(m: Mapper, levels: tuple[dict[str, Any], ...], paths: tuple[str, ...]) -> None:
    """prefork-lb sends the verified name as SNI even without ``proxy_ssl_server_name on``."""

    def effective(key: str) -> tuple[Any, str]:
        for level, path in zip(levels, paths, strict=True):
            if key in level:
                return level[key], f"{path}.{key}"
        return None, ""

    verify, verify_path = effective("proxy_ssl_verify")
    if (
        verify is True
        and effective("proxy_ssl_server_name")[0] is not True
        and str(levels[0].get("proxy_pass", "")).startswith("https://")
    ):
        text = '"proxy_ssl_verify on": the verified name is also sent as SNI (proxy_ssl_server_name is off)'
        m.out.notes.append(Note(m.out.origins[verify_path], text, False))


def _large_header_buffers(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """nginx's ``number size``; in prefork-lb it bounds HTTP/2 header lists (issue 20)."""
    if len(d.args) != 2:
        m.skip(d, "needs a number and a size")
        return
    m.put(t, path, d.name, [scalar(d.args[0]), d.args[1]], d)
    m.differ(d, "bounds HTTP/2 header fields only; HTTP/1.1 head limits are fixed (docs/http-conformance.md)")


_HTTP2: dict[str, Handler] = {  # issue 20: http and server levels (config/http2.py)
    "http2": put_flag,
    "http2_max_concurrent_streams": simple,
    "http2_idle_timeout": simple,
    "http2_recv_buffer_size": simple,
    "http2_chunk_size": simple,
    "http2_body_preread_size": simple,
    "http2_max_field_size": simple,
    "http2_max_header_size": simple,
    "large_client_header_buffers": _large_header_buffers,
}


# nginx's map for WebSocket (docs: "WebSocket proxying"), built in as $connection_upgrade
_CONNECTION_UPGRADE_MAP = {"default": "upgrade", "": "close"}


def _map(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    source, variable = (a.lower() for a in d.args[:2])
    entries = [(e.name, e.args) for e in d.block or []]
    if (
        (source, variable) == ("$http_upgrade", "$connection_upgrade")
        and len(entries) == len(_CONNECTION_UPGRADE_MAP)
        and all(len(v) == 1 and _CONNECTION_UPGRADE_MAP.get(k) == v[0] for k, v in entries)
        and {k for k, _ in entries} == set(_CONNECTION_UPGRADE_MAP)
    ):
        m.differ(
            d,
            "nginx's documented WebSocket map: prefork-lb has $connection_upgrade built in, the same; "
            "not converted",
        )
        return
    name = variable[1:]
    values = Inline()
    table: dict[str, Any] = {"source": d.args[0], "values": values}
    for e in d.block or []:
        if e.name == "hostnames" and not e.args:
            table["hostnames"] = True
        elif e.name in ("volatile", "include") and e.name not in values:
            m.skip(e, "is not supported inside a map (a map is evaluated each time its variable is read)")
        elif len(e.args) == 1:
            values.setdefault(e.name, e.args[0])
        else:
            m.skip(e, "is not a map entry (KEY VALUE)")
    m.put(t.setdefault("maps", {}), f"{path}.maps", name, table, d)


def _client_header_timeout(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "client_header_timeout", scalar(d.args[0]), d)


def _zone_arg(args: list[str], d: Directive) -> tuple[str, str] | None:
    for a in args:
        if a.startswith("zone="):
            name, _, size = a[5:].partition(":")
            return name, size
    return None


def _limit_zone(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``limit_req_zone KEY zone=NAME:SIZE rate=R`` / ``limit_conn_zone KEY zone=NAME:SIZE``."""
    zone = _zone_arg(d.args[1:], d)
    if zone is None:
        m.skip(d, 'has no "zone=NAME:SIZE"')
        return
    name, size = zone
    table = "limit_req_zones" if d.name == "limit_req_zone" else "limit_conn_zones"
    entry: dict[str, Any] = {"key": d.args[0], "size": size}
    for a in d.args[1:]:
        if a.startswith("rate="):
            entry["rate"] = a[5:]
        elif a == "sync":
            m.differ(d, "sync (NGINX Plus zone_sync) has no prefork-lb equivalent: the zone is this server's")
        elif not a.startswith("zone="):
            entry[a] = a  # unknown word: the loader refuses it at this line
    zones = t.setdefault(table, {})
    kp = f"{path}.{table}"
    m.put(zones, kp, name, entry, d)


def _server(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    servers = t.setdefault("servers", [])
    kp = f"{path}.servers[{len(servers)}]"
    s: dict[str, Any] = {}
    m.mark(kp, d)
    m.each(d.block, s, kp, _SERVER)
    tls_server(m, s, d, kp)
    listen = s.get("listen")
    if listen == []:
        m.forget(kp)
        m.skip(d, "has only listen addresses prefork-lb cannot serve yet (see above)")
        return
    if listen is None:
        s["listen"] = ["*:80"]
        m.differ(d, 'no "listen": nginx listens on *:80 (*:8000 when not root); mapped to "*:80"')
    locations = s.setdefault("locations", [])
    ret = s.pop("_return", None)
    if ret is not None:
        value, rd = ret
        if locations:
            m.differ(rd, "a server-level return answers every request: its locations are not converted")
            m.forget(f"{kp}.locations")
        s["locations"] = [{"match": "/", "return": value}]
        m.out.origins[f"{kp}.locations[0].return"] = rd.where
    elif not locations:
        s["locations"] = [{"match": "/", "return": 404}]
        m.differ(d, 'no location to convert: nginx would serve files from its root; mapped to "return 404"')
    # key order: listen, server_name, the rest, locations last
    ordered: dict[str, Any] = {k: s.pop(k) for k in ("listen", "server_name") if k in s}
    ordered.update(s)
    servers.append(ordered)


def _apply_access(m: Mapper, loc: dict[str, Any], rules: list[Any] | None, path: str) -> None:
    if not rules:
        return
    allow = [a for kind, a, _ in rules if kind == "allow"]
    deny = [a for kind, a, _ in rules if kind == "deny"]
    kinds = [kind for kind, _, _ in rules]
    if "deny" in kinds and "allow" in kinds[kinds.index("deny") :]:
        first_allow_after = next(d for kind, _, d in rules[kinds.index("deny") :] if kind == "allow")
        m.differ(
            first_allow_after,
            "prefork-lb checks every allow before every deny; this order (a deny before an allow) "
            "may decide differently",
        )
    if allow:
        loc["allow"] = allow
    if deny:
        loc["deny"] = deny
    for kind, _, d in rules:
        m.out.origins.setdefault(f"{path}.{kind}", d.where)


def listen(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    stream = path.startswith("stream")
    listens = t.setdefault("listen", [])
    words = [d.args[0]]
    for word in d.args[1:]:
        name = word.partition("=")[0]
        if word in ("default_server", "default") and not stream:
            words.append("default_server")
        elif word in ("reuseport",) or name == "backlog":
            words.append(word)
        elif stream and (word == "udp" or name == "so_keepalive"):
            if name == "so_keepalive" and word not in ("so_keepalive=on", "so_keepalive=off"):
                m.differ(d, f'"{word}": the keepalive timings are the kernel\'s; mapped to so_keepalive=on')
                word = "so_keepalive=on"
            words.append(word)
        elif word == "ssl":
            words.append(word)
        elif word in ("quic", "proxy_protocol"):
            m.skip(d, f"has no prefork-lb equivalent ({word})")
            return
        elif word == "http2" and not stream:  # issue 20: HTTP/2 on the address
            words.append(word)
        else:
            m.differ(d, f'"{word}" is not supported; the address is served without it')
    m.out.origins[f"{join_path(path, 'listen')}[{len(listens)}]"] = d.where
    listens.append(" ".join(words))


def _server_name(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    names = t.setdefault("server_name", [])
    for a in d.args:
        m.out.origins[f"{join_path(path, 'server_name')}[{len(names)}]"] = d.where
        names.append(pcre(a) if a.startswith("~") else a)


def _server_return(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if "rewrite_rules" in t:  # after server rewrite statements: it keeps its place among them
        statement(m, d, t, path)
        return
    value = return_value(m, d)
    if value is not None and "_return" not in t:
        t["_return"] = (value, d)


_HTTP_LEVEL: dict[str, Handler] = {
    **INHERITED,
    **TLS,
    **_HTTP2,
    **REALIP_HANDLERS,
    "limit_req_zone": _limit_zone,
    "limit_conn_zone": _limit_zone,
    "upstream": upstream_block,
    "server": _server,
    "log_format": log_format,
    "client_header_timeout": _client_header_timeout,
    "map": _map,
    "proxy_cache_path": cache.cache_path,
    "match": map_health.http_match,
}


_SERVER: dict[str, Handler] = {
    **INHERITED,
    **TLS,
    **_HTTP2,
    **REALIP_HANDLERS,
    "listen": listen,
    "server_name": _server_name,
    "location": location_block,
    "return": _server_return,
    "client_header_timeout": _client_header_timeout,
    **REWRITE,
}
