"""nginx directives -> the prefork-lb TOML document (sans-IO: a Directive tree in, a dict out).

Rules:
- Every directive ends in exactly one of three ways: mapped to a key (its comment and its
  ``file:line`` recorded under the key path), mapped with a difference (mapped, plus a
  ``Note`` saying what differs), or skipped (a ``Note`` with ``unsupported=True`` saying
  what to do: ``convert/unsupported.py``). Nothing is dropped silently.
- Values are copied as nginx wrote them (``"60s"``, ``"16k"``; bare digits become
  integers); the loader validates them, and an error there is reported at the nginx line
  the key came from (``origins``).
- Inheritance the TOML contract has (http -> server -> location for the location keys and
  access logs) is kept as written; where the contract lacks a level, the converter does
  nginx's inheritance itself: ``client_header_timeout`` from ``http`` is copied into each
  server, ``allow``/``deny`` from ``http`` or ``server`` into each location that has none.
- A location (or server) that returns gets no ``allow``/``deny``: nginx answers ``return`` in
  the rewrite phase, before the access phase, so they never apply to it there.
- nginx's documented WebSocket ``map $http_upgrade $connection_upgrade`` is recognised and
  not converted: the variable is built in with the same values. Any other ``map`` becomes
  ``[http.maps.NAME]``.
- The rewrite module (``rewrite``, ``set``, ``if``, ``break``, and a ``return`` written after
  one of them) becomes the block's ``rewrite_rules``, one statement per item in nginx syntax
  and in order; a statement after a ``return`` of the block is skipped (nginx never runs it).
- A skipped block (a nested location, a stream server with ``proxy_ssl on``) takes its key
  paths with it, so comments and origins never point at the wrong entry.
- TLS termination (``ssl_*``): prefork-lb's keys are server-level only, so an http- or
  stream-level value is copied into each server that listens with ``ssl`` (the server's own
  value wins; a server's own ``ssl_certificate`` set replaces the inherited set, as nginx's
  arrays do). ``ssl on`` (removed in nginx 1.25) adds the flag to the listens it covers.
  ``ssl`` is per address in nginx: a server with a certificate on an address another
  server flags ``ssl`` gets the flag too. A server without an ``ssl`` listen gets no
  ``ssl_*`` key (nginx ignores them there; the loader refuses them): noted, not converted.
- To add a directive: a handler in the context's table (``_HTTP_LEVEL``, ``_SERVER``,
  ``_LOCATION``, ``_UPSTREAM``, ``_STREAM``, ``_STREAM_SERVER``, ``_MAIN``), remove it from
  ``unsupported.NOT_YET``, and add its row to docs/convert.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefork_lb.config.load_shared import SSL_KEYS
from prefork_lb.convert import cache
from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import Inline, scalar
from prefork_lb.convert.unsupported import reason


@dataclass(frozen=True, slots=True)
class Note:
    where: str  # "nginx.conf:42"
    text: str  # '"gzip on" has no prefork-lb equivalent (...); skipped'
    unsupported: bool  # False: mapped, with a difference the text explains

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass(slots=True)
class Mapped:
    doc: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # key path -> "file:line"
    notes: list[Note] = field(default_factory=list)


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


Handler = Callable[["Mapper", Directive, dict[str, Any], str], None]


class Mapper:
    def __init__(self) -> None:
        self.out = Mapped()

    # ---- recording ----

    def skip(self, d: Directive, why: str | None = None) -> None:
        self.out.notes.append(Note(d.where, f'"{d.text()}" {why or reason(d.name)}; skipped', True))

    def differ(self, d: Directive, text: str) -> None:
        self.out.notes.append(Note(d.where, f'"{d.text()}": {text}', False))

    def put(self, table: dict[str, Any], path: str, key: str, value: Any, d: Directive) -> None:
        kp = f"{path}.{key}" if path else key
        if key in table and table[key] != value:
            self.differ(d, f"{key} was already set at this level; the last one is used")
        table[key] = value
        self.out.origins[kp] = d.where
        if d.comment:
            self.out.comments[kp] = d.comment

    def mark(self, path: str, d: Directive) -> None:
        """Record a table (a server, a location) that came from ``d``."""
        self.out.origins[path] = d.where
        if d.comment:
            self.out.comments[path] = d.comment

    def forget(self, path: str) -> None:
        for store in (self.out.origins, self.out.comments):
            for kp in [k for k in store if k == path or k.startswith((path + ".", path + "["))]:
                del store[kp]

    def each(
        self, block: list[Directive] | None, table: dict[str, Any], path: str, handlers: dict[str, Handler]
    ) -> None:
        for d in block or []:
            handler = handlers.get(d.name)
            if handler is None:
                self.skip(d)
            else:
                handler(self, d, table, path)

    # ---- main context ----

    def main(self, root: list[Directive]) -> Mapped:
        self.each(root, self.out.doc, "", _MAIN)
        self.out.doc.setdefault("worker_connections", 512)  # nginx's default (prefork-lb's: 1024)
        return self.out


def _path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---- main ----


def _workers(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "workers", scalar(d.args[0]), d)


def _events(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.each(d.block, t, path, _EVENTS)


def _top_key(key: str, convert: Callable[[str], Any] = scalar) -> Handler:
    def handle(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
        m.put(t, path, key, convert(d.args[0]), d)

    return handle


def _user(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "user", d.args[0], d)
    if len(d.args) > 1:
        m.put(t, path, "group", d.args[1], d)


def _error_log(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if path:
        m.skip(d, "is not supported here: prefork-lb has one error log, set at the top level")
        return
    target = d.args[0]
    if target.startswith(("syslog:", "memory:")):
        m.skip(d, "is not supported: the error log is a file or stderr")
        return
    if "error_log" in t:
        m.differ(d, "prefork-lb writes one error log; this one is ignored")
        return
    m.put(t, path, "error_log", target, d)
    m.put(t, path, "error_log_level", d.args[1] if len(d.args) > 1 else "error", d)  # nginx's default


def _daemon(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "daemon", d.args[0] == "on", d)


def _http(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    http = t.setdefault("http", {})
    m.mark("http", d)
    m.each(d.block, http, "http", _HTTP_LEVEL)
    # nginx inherits whatever the level, wherever in the block it is written
    header_timeout = http.pop("client_header_timeout", None)
    http_rules = http.pop("_access", None)
    _inherit_tls(m, http, "http", http.get("servers", []))
    realip = {k: http.pop(k) for k in _REALIP if k in http}  # the contract has it per server
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


def _stream(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    stream = t.setdefault("stream", {})
    m.mark("stream", d)
    # a stream-level proxy_ssl applies to every server, wherever in the block it is written
    stream["_proxy_ssl"] = any(x.name == "proxy_ssl" and x.args[0] == "on" for x in d.block or [])
    m.each(d.block, stream, "stream", _STREAM)
    del stream["_proxy_ssl"]
    _inherit_tls(m, stream, "stream", stream.get("servers", []))


# ---- http, server and location levels ----


def _simple(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, d.name, scalar(d.args[0]), d)


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
    _origin(m, d, path, "proxy_set_header")


def _origin(m: Mapper, d: Directive, path: str, key: str) -> None:
    """A key several directives build: the first one's line, every comment."""
    kp = _path(path, key)
    m.out.origins.setdefault(kp, d.where)
    if d.comment:
        m.out.comments[kp] = "\n".join(filter(None, (m.out.comments.get(kp), d.comment)))


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
    _origin(m, d, path, "add_header")


def _header_list(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``proxy_hide_header`` / ``proxy_pass_header NAME``: one list per level."""
    names = t.get(d.name)
    if not isinstance(names, list):
        names = []
    names.append(d.args[0])
    t[d.name] = names
    _origin(m, d, path, d.name)


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
    _origin(m, d, path, "proxy_redirect")


def _http_version(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.args[0] == "1.1":
        m.put(t, path, "proxy_http_version", "1.1", d)
    else:
        m.differ(d, "prefork-lb always speaks HTTP/1.1 to upstreams; nothing to set")


def _text(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, d.name, d.args[0], d)


def _flag(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``on``/``off``; anything else is copied for the loader to refuse at this line (nginx does)."""
    word = d.args[0]
    m.put(t, path, d.name, {"on": True, "off": False}.get(word, word), d)


def _large_header_buffers(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """nginx's ``number size``; in prefork-lb it bounds HTTP/2 header lists (issue 20)."""
    if len(d.args) != 2:
        m.skip(d, "needs a number and a size")
        return
    m.put(t, path, d.name, [scalar(d.args[0]), d.args[1]], d)
    m.differ(d, "bounds HTTP/2 header fields only; HTTP/1.1 head limits are fixed (docs/http-conformance.md)")


_HTTP2: dict[str, Handler] = {  # issue 20: http and server levels (config/http2.py)
    "http2": _flag,
    "http2_max_concurrent_streams": _simple,
    "http2_idle_timeout": _simple,
    "http2_recv_buffer_size": _simple,
    "http2_chunk_size": _simple,
    "http2_body_preread_size": _simple,
    "http2_max_field_size": _simple,
    "http2_max_header_size": _simple,
    "large_client_header_buffers": _large_header_buffers,
}


def _ssl_protocols(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    kept = [p for p in d.args if p not in ("SSLv2", "SSLv3")]
    if not kept:
        m.skip(d, "names only protocols prefork-lb does not speak (SSLv2, SSLv3)")
        return
    if len(kept) < len(d.args):
        m.differ(d, "SSLv2 and SSLv3 are not spoken by prefork-lb; mapped without them")
    m.put(t, path, "proxy_ssl_protocols", kept, d)


# ---- TLS termination (http and stream servers; http/stream-level values are copied in) ----

# keys the loader accepts only on a server with an ``ssl`` listen
_SSL_KEYS = SSL_KEYS
_SSL_KEYS = (
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_session_cache",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "ssl_client_certificate",
    "ssl_verify_client",
)
# stream keys the loader takes on any server; a stream-level value is copied into each
_STREAM_INHERITED = ("ssl_handshake_timeout", "ssl_preread", "preread_timeout")
_OLD_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")


def _ssl_file(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``ssl_certificate`` / ``ssl_certificate_key``: each directive adds one file."""
    if "$" in d.args[0] or d.args[0].startswith("data:"):
        m.skip(d, "is not supported: certificates and keys are files (no variables, no data:)")
        return
    files = t.setdefault(d.name, [])
    m.out.origins.setdefault(_path(path, d.name), d.where)
    m.out.origins[f"{_path(path, d.name)}[{len(files)}]"] = d.where
    if d.comment:
        m.out.comments[_path(path, d.name)] = "\n".join(
            filter(None, (m.out.comments.get(_path(path, d.name)), d.comment))
        )
    files.append(d.args[0])


def _ssl_server_protocols(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    kept = [p for p in d.args if p not in _OLD_PROTOCOLS]
    if not kept:
        m.skip(
            d,
            "names only protocols prefork-lb does not speak (it terminates TLSv1.2 and TLSv1.3; its "
            "default, both, is used)",
        )
        return
    if len(kept) < len(d.args):
        m.differ(d, "prefork-lb terminates TLSv1.2 and TLSv1.3 only; mapped without the older ones")
    m.put(t, path, "ssl_protocols", kept, d)


def _ssl_session_cache(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``off | none | [builtin[:size]] [shared:name:size]``; prefork-lb's cache is OpenSSL's
    built-in one per worker (what nginx's ``builtin`` is), written ``shared:NAME:SIZE``."""
    words = d.args
    if words[0] in ("off", "none"):
        m.put(t, path, "ssl_session_cache", words[0], d)
        return
    shared = [w for w in words if w.startswith("shared:")]
    builtin = [w for w in words if w == "builtin" or w.startswith("builtin:")]
    if shared:
        value = shared[0]
    elif builtin:
        sessions = builtin[0].partition(":")[2]
        count = int(sessions) if sessions.isdigit() else 20480  # nginx's builtin default
        value = f"shared:builtin:{max(1, count * 256 // 1024)}k"  # ~256 bytes a session
    else:
        m.put(t, path, "ssl_session_cache", " ".join(words), d)  # the loader names the line
        return
    m.differ(
        d,
        f'mapped to "{value}": prefork-lb\'s session cache is per worker (a session ID resumes only on '
        "the worker that issued it; tickets resume on any worker)",
    )
    m.put(t, path, "ssl_session_cache", value, d)


def _ssl_verify_client(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.args[0] == "optional_no_ca":
        m.skip(d, "is not supported: client certificates are verified against ssl_client_certificate")
        return
    m.put(t, path, "ssl_verify_client", d.args[0], d)


def _ssl_on(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``ssl on`` (deprecated, removed in nginx 1.25): every listen of the server(s) is TLS."""
    if d.args[0] == "on":
        t["_ssl_on"] = d
        m.differ(d, 'deprecated (removed in nginx 1.25): mapped to the "ssl" flag on the listen addresses')


def _prefer_server_ciphers(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """Python's ssl sets OP_CIPHER_SERVER_PREFERENCE: ``on`` is what prefork-lb does; with
    ``off`` (certbot's) the cipher picked may differ, always one of ssl_ciphers."""
    if d.args[0] == "on":
        m.differ(d, "prefork-lb always prefers its own cipher order; nothing to set")
    else:
        m.differ(
            d,
            "prefork-lb always prefers its own cipher order (nginx's on), not the client's; the cipher is "
            "still one of ssl_ciphers",
        )


def _has_ssl_listen(s: dict[str, Any]) -> bool:
    return any("ssl" in entry.split()[1:] for entry in s.get("listen", []))


def _tls_server(m: Mapper, s: dict[str, Any], d: Directive, kp: str) -> None:
    """A server's own ``ssl on``: every listen of it gets the ``ssl`` flag."""
    if s.pop("_ssl_on", None) is not None:
        s["listen"] = [e if "ssl" in e.split()[1:] else f"{e} ssl" for e in s.get("listen", [])]


def _address(entry: str) -> str:
    """A listen entry's address, for comparing them: ``443``, ``*:443``, ``0.0.0.0:443`` are one."""
    address = entry.split()[0]
    if address.isdigit():
        return f"*:{address}"
    return "*:" + address[len("0.0.0.0:") :] if address.startswith("0.0.0.0:") else address


def _drop_plain_ssl(m: Mapper, s: dict[str, Any], kp: str) -> None:
    """A server without an ``ssl`` listen: nginx ignores its ``ssl_*``, the loader refuses them."""
    for key in _SSL_KEYS:
        if key in s:
            value = s.pop(key)
            if isinstance(value, bool):
                text = "on" if value else "off"
            else:
                text = " ".join(value) if isinstance(value, list) else str(value)
            where = m.out.origins.get(f"{kp}.{key}", m.out.origins.get(kp, ""))
            m.forget(f"{kp}.{key}")
            m.out.notes.append(
                Note(
                    where,
                    f'"{key} {text}": the server has no "ssl" listen, where nginx ignores it too; '
                    "not converted",
                    False,
                )
            )


def _inherit_tls(m: Mapper, level: dict[str, Any], path: str, servers: list[dict[str, Any]]) -> None:
    """Copy ``level``'s (http or stream) TLS values into its servers; the server's own wins."""
    ssl_on = level.pop("_ssl_on", None)
    values = {k: level.pop(k) for k in (*_SSL_KEYS, *_STREAM_INHERITED) if k in level}
    used: set[str] = set()
    for s in servers:
        if ssl_on is not None and "listen" in s:
            s["listen"] = [e if "ssl" in e.split()[1:] else f"{e} ssl" for e in s["listen"]]
    # nginx: "ssl" on one server's listen makes the address TLS for all its servers; the
    # loader takes a server's certificate only with the flag on its own listen, so a server
    # with a certificate on such an address gets it (one without uses the default server's)
    tls_addresses = {_address(e) for s in servers for e in s.get("listen", []) if "ssl" in e.split()[1:]}
    for i, s in enumerate(servers):
        kp = f"{path}.servers[{i}]"
        if "ssl_certificate" in s or "ssl_certificate" in values:
            for j, e in enumerate(s.get("listen", [])):
                if _address(e) in tls_addresses and "ssl" not in e.split()[1:]:
                    s["listen"][j] = f"{e} ssl"
                    m.out.notes.append(
                        Note(
                            m.out.origins.get(f"{kp}.listen[{j}]", ""),
                            f'"listen {e}": another server listens on this address with "ssl", which '
                            'makes it TLS for every server (nginx); mapped with "ssl"',
                            False,
                        )
                    )
        tls = _has_ssl_listen(s)
        if not tls:
            _drop_plain_ssl(m, s, kp)
        udp = any("udp" in e.split()[1:] for e in s.get("listen", []))
        for key, value in values.items():
            if key in _SSL_KEYS and not tls:
                continue
            if key == "ssl_preread" and (tls or udp):
                continue  # nginx: no ClientHello to read there; the loader refuses it
            used.add(key)
            if key not in s:
                s[key] = value
                for store in (m.out.origins, m.out.comments):
                    for k in [k for k in store if k == f"{path}.{key}" or k.startswith(f"{path}.{key}[")]:
                        store[kp + k[len(path) :]] = store[k]
    for key in [k for k in values if k not in used]:  # nginx has nothing to apply them to either
        where = m.out.origins.get(f"{path}.{key}", "")
        m.forget(f"{path}.{key}")
        m.out.notes.append(Note(where, f'"{key}": no server here it applies to; not converted', False))


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


def _log_format(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    args = list(d.args)
    name = args.pop(0)
    if args and args[0].startswith("escape="):
        escape = args.pop(0)
        if escape != "escape=default":
            m.differ(d, f'"{escape}" is not supported; variables are escaped as nginx\'s default does')
    formats = t.setdefault("log_formats", {})
    m.put(formats, _path(path, "log_formats"), name, "".join(args), d)


def _client_header_timeout(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "client_header_timeout", scalar(d.args[0]), d)


def _access_rule(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    rules = t.setdefault("_access", [])
    rules.append((d.name, d.args[0], d))


# ---- limit_req, limit_conn, realip ----

_LIMIT_FLAGS = ("limit_req_dry_run", "limit_conn_dry_run")
_LIMIT_WORDS = ("limit_req_log_level", "limit_conn_log_level")
_LIMIT_STATUS = ("limit_req_status", "limit_conn_status")


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
    _append(m, d, t, path, "limit_req", item)


def _limit_conn(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    _append(m, d, t, path, "limit_conn", Inline(zone=d.args[0], number=scalar(d.args[1])))


def _append(m: Mapper, d: Directive, t: dict[str, Any], path: str, key: str, item: Inline) -> None:
    items = t.setdefault(key, [])
    items.append(item)
    kp = _path(path, key)
    m.out.origins.setdefault(kp, d.where)
    if d.comment:
        m.out.comments[kp] = "\n".join(filter(None, (m.out.comments.get(kp), d.comment)))


def _status_code(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, d.name, scalar(d.args[0]), d)


def _set_real_ip_from(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.args[0].startswith("unix:"):
        m.skip(d, "names unix: peers; prefork-lb trusts addresses only")
        return
    _append_text(m, d, t, path, "set_real_ip_from", d.args[0])


def _append_text(m: Mapper, d: Directive, t: dict[str, Any], path: str, key: str, value: str) -> None:
    t.setdefault(key, []).append(value)
    m.out.origins.setdefault(_path(path, key), d.where)


def _realip_in_location(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.skip(d, "is supported at http and server level only (set it on the server)")


def _upstream(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    name = d.args[0]
    ups = t.setdefault("upstreams", {})
    kp = f"{path}.upstreams.{name}"
    u: dict[str, Any] = {}
    m.mark(kp, d)
    m.each(d.block, u, kp, _UPSTREAM)
    u["servers"] = u.pop("servers", [])  # after the method and its options
    ups[name] = u


def _server(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    servers = t.setdefault("servers", [])
    kp = f"{path}.servers[{len(servers)}]"
    s: dict[str, Any] = {}
    m.mark(kp, d)
    m.each(d.block, s, kp, _SERVER)
    _tls_server(m, s, d, kp)
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


def _listen(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
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
    m.out.origins[f"{_path(path, 'listen')}[{len(listens)}]"] = d.where
    listens.append(" ".join(words))


def _server_name(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    names = t.setdefault("server_name", [])
    for a in d.args:
        m.out.origins[f"{_path(path, 'server_name')}[{len(names)}]"] = d.where
        names.append(_pcre(a) if a.startswith("~") else a)


def _pcre(regex: str) -> str:
    """PCRE named groups ``(?<name>`` are Python's ``(?P<name>``."""
    return re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", regex)


def _server_return(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if "rewrite_rules" in t:  # after server rewrite statements: it keeps its place among them
        _statement(m, d, t, path)
        return
    value = _return_value(m, d)
    if value is not None and "_return" not in t:
        t["_return"] = (value, d)


def _return_value(m: Mapper, d: Directive) -> int | str | None:
    args = d.args
    if not args[0].isdigit():  # "return URL": 302
        return f"302 {args[0]}"
    if args[0] == "444":
        m.differ(d, "nginx closes the connection without a response; prefork-lb answers 444")
    return int(args[0]) if len(args) == 1 else f"{args[0]} {args[1]}"


def _location(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
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
        uri = _pcre(uri)
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
        _statement(m, d, t, path)
        return
    value = _return_value(m, d)
    if value is not None and "return" not in t:
        m.put(t, path, "return", value, d)


def _statement_text(d: Directive) -> str:
    """A rewrite-module directive in the syntax ``rewrite_rules`` reads (http/rewrite.py)."""
    words = [_pcre(d.args[0]), *d.args[1:]] if d.name == "rewrite" and d.args else d.args
    args = " ".join(_quote_arg(a) for a in words)
    if d.name == "if":
        body = "; ".join(_statement_text(c) for c in d.block or [])
        return f"if ({args}) {{ {body}; }}"
    return f"{d.name} {args}".rstrip()


def _quote_arg(arg: str) -> str:
    if arg == "" or any(c in arg for c in " \t;{}\"'"):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def _statement(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
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


def _state(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """NGINX Plus ``state``: the runtime server list (issue 19). Plus writes ``server ...;``
    lines, prefork-lb TOML: the list goes to ``<path>.toml``, never read from Plus's file."""
    m.put(t, path, "state", d.args[0] + ".toml", d)
    m.differ(d, f"the runtime server list is kept in {d.args[0]}.toml (TOML; Plus's state file is not read)")


# ---- upstream ----


def _method(name: str) -> Handler:
    def handle(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
        m.put(t, path, "method", name, d)

    return handle


def _hash(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "method", "hash", d)
    m.put(t, path, "hash", d.args[0], d)
    if "consistent" in d.args[1:]:
        m.put(t, path, "consistent", True, d)


def _random(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "method", "random", d)
    if "two" in d.args:
        m.put(t, path, "random", Inline(two=True), d)
        rest = [a for a in d.args if a != "two"]
        if rest and rest != ["least_conn"]:
            m.differ(d, f'"{" ".join(rest)}": the two choices are compared by least_conn in prefork-lb')


def _least_time(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "method", "least_time", d)
    m.put(t, path, "least_time", " ".join(d.args), d)


def _queue(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    q = Inline(size=scalar(d.args[0]))
    for word in d.args[1:]:
        if word.startswith("timeout="):
            q["timeout"] = scalar(word[len("timeout=") :])
    m.put(t, path, "queue", q, d)


def _sticky(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """nginx's ``sticky cookie|route|learn`` (issue 19; config/load_sticky.py)."""
    if path.startswith("stream"):
        m.skip(d, "has no equivalent in stream upstreams (nginx's sticky is http only)")
        return
    form, args = (d.args[0], d.args[1:]) if d.args else ("", [])
    st = Inline()
    if form == "cookie" and args:
        st["cookie"] = args[0]
        for word in args[1:]:
            name, eq, value = word.partition("=")
            if name in ("expires", "domain", "path", "samesite") and eq:
                st[name] = value
            elif word in ("httponly", "secure"):
                st[word] = True
            else:
                m.differ(d, f'"{word}" is not supported; the cookie is set without it')
    elif form == "route" and args:
        st["route"] = list(args)
    elif form == "learn":
        st["learn"] = True
        create: list[str] = []
        lookup: list[str] = []
        for word in args:
            name, eq, value = word.partition("=")
            if name == "create" and eq:
                create.append(value)
            elif name == "lookup" and eq:
                lookup.append(value)
            elif name in ("zone", "timeout") and eq:
                st[name] = value
            elif word == "header":
                st["header"] = True
            elif word != "sync":  # zone_sync: one server's table is already server-wide here
                m.differ(d, f'"{word}" is not supported; sessions are learned without it')
        st["create"], st["lookup"] = create, lookup
    else:
        m.skip(d, "is not understood (sticky cookie NAME ..., sticky route $v ..., sticky learn ...)")
        return
    m.put(t, path, "sticky", st, d)


def _sticky_strict(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "sticky_strict", d.args[:1] == ["on"], d)


def _zone(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """Peer state is always in the shared zone; its size is the global zone_size."""


def _upstream_server(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    servers = t.setdefault("servers", [])
    entry = Inline(address=_with_port(d.args[0]))
    for word in d.args[1:]:
        name, eq, value = word.partition("=")
        if name in ("weight", "max_fails", "max_conns") and eq:
            entry[name] = scalar(value)
        elif name in ("fail_timeout", "slow_start") and eq:
            entry[name] = value
        elif word in ("backup", "down", "drain"):
            entry[word] = True
        elif name in ("route", "sid") and eq:  # sticky's server identifier (Angie: sid=)
            entry["route"] = value
        else:
            m.differ(d, f'"{word}" is not supported; the server is used without it')
    kp = f"{path}.servers[{len(servers)}]"
    servers.append(entry)
    m.out.origins[kp] = d.where
    if d.comment:
        m.out.comments[kp] = d.comment


def _with_port(address: str) -> str:
    """nginx's upstream servers default to port 80."""
    if address.startswith("unix:") or (re.search(r":\d+$", address) and not address.endswith("]")):
        return address
    return f"{address}:80"


# ---- stream ----


def _stream_server(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    servers = t.setdefault("servers", [])
    kp = f"{path}.servers[{len(servers)}]"
    s: dict[str, Any] = {}
    m.mark(kp, d)
    m.each(d.block, s, kp, _STREAM_SERVER)
    _tls_server(m, s, d, kp)
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

# ---- the tables: context -> directive -> handler ----

_MAIN: dict[str, Handler] = {
    "worker_processes": _workers,
    "events": _events,
    "pid": _top_key("pid", str),
    "user": _user,
    "error_log": _error_log,
    "daemon": _daemon,
    "worker_rlimit_nofile": _top_key("worker_rlimit_nofile"),
    "worker_shutdown_timeout": _top_key("worker_shutdown_timeout"),
    "http": _http,
    "stream": _stream,
}
_EVENTS: dict[str, Handler] = {"worker_connections": _top_key("worker_connections")}

_INHERITED: dict[str, Handler] = {
    **dict.fromkeys(_SIMPLE, _simple),
    "keepalive_timeout": _keepalive_timeout,
    "proxy_next_upstream": _next_upstream,
    "proxy_set_header": _set_header,
    "add_header": _add_header,
    "proxy_hide_header": _header_list,
    "proxy_pass_header": _header_list,
    "proxy_redirect": _proxy_redirect,
    "proxy_http_version": _http_version,
    **dict.fromkeys(_SSL_FLAGS, _flag),
    **dict.fromkeys(_SSL_STRINGS, _text),
    "proxy_ssl_protocols": _ssl_protocols,
    "access_log": _access_log,
    "allow": _access_rule,
    "deny": _access_rule,
    "error_log": _error_log,
    "error_page": _error_page,
    "proxy_intercept_errors": _flag,
    "rewrite_log": _flag,
    "limit_req": _limit_req,
    "limit_conn": _limit_conn,
    **dict.fromkeys(_LIMIT_FLAGS, _flag),
    **dict.fromkeys(_LIMIT_WORDS, _text),
    **dict.fromkeys(_LIMIT_STATUS, _status_code),
    # the content cache (convert/cache.py)
    **dict.fromkeys(cache.FLAGS, _flag),
    **dict.fromkeys(cache.SIMPLE, _simple),
    "proxy_cache": cache.cache,
    "proxy_cache_valid": cache.cache_valid,
    "proxy_cache_bypass": cache.variables,
    "proxy_no_cache": cache.variables,
    "proxy_cache_methods": cache.word_set,
    "proxy_cache_use_stale": cache.word_set,
    "proxy_ignore_headers": cache.word_set,
}
_TLS: dict[str, Handler] = {
    "ssl": _ssl_on,
    "ssl_certificate": _ssl_file,
    "ssl_certificate_key": _ssl_file,
    "ssl_protocols": _ssl_server_protocols,
    "ssl_ciphers": _text,
    "ssl_session_cache": _ssl_session_cache,
    "ssl_session_timeout": _simple,
    "ssl_session_tickets": _flag,
    "ssl_client_certificate": _text,
    "ssl_verify_client": _ssl_verify_client,
    "ssl_prefer_server_ciphers": _prefer_server_ciphers,
}
_STREAM_TLS: dict[str, Handler] = {
    **_TLS,
    "ssl_handshake_timeout": _simple,
    "ssl_preread": _flag,
    "preread_timeout": _simple,
}
_REWRITE: dict[str, Handler] = dict.fromkeys(("rewrite", "set", "if", "break"), _statement)
_REALIP_HANDLERS: dict[str, Handler] = {
    "set_real_ip_from": _set_real_ip_from,
    "real_ip_header": _text,
    "real_ip_recursive": _flag,
}
_REALIP = tuple(_REALIP_HANDLERS)
_HTTP_LEVEL: dict[str, Handler] = {
    **_INHERITED,
    **_TLS,
    **_HTTP2,
    **_REALIP_HANDLERS,
    "limit_req_zone": _limit_zone,
    "limit_conn_zone": _limit_zone,
    "upstream": _upstream,
    "server": _server,
    "log_format": _log_format,
    "client_header_timeout": _client_header_timeout,
    "map": _map,
    "proxy_cache_path": cache.cache_path,
}
_SERVER: dict[str, Handler] = {
    **_INHERITED,
    **_TLS,
    **_HTTP2,
    **_REALIP_HANDLERS,
    "listen": _listen,
    "server_name": _server_name,
    "location": _location,
    "return": _server_return,
    "client_header_timeout": _client_header_timeout,
    **_REWRITE,
}
_LOCATION: dict[str, Handler] = {
    **_INHERITED,
    **dict.fromkeys(_REALIP, _realip_in_location),
    "location": _location,
    "proxy_pass": _proxy_pass,
    "return": _location_return,
    "api": _api,
    "status": _api,
    **_REWRITE,
}
_UPSTREAM: dict[str, Handler] = {
    "server": _upstream_server,
    "least_conn": _method("least_conn"),
    "ip_hash": _method("ip_hash"),
    "hash": _hash,
    "random": _random,
    "least_time": _least_time,
    "queue": _queue,
    "sticky": _sticky,
    "sticky_strict": _sticky_strict,
    "state": _state,
    "zone": _zone,
    "keepalive": _simple,
    "keepalive_requests": _simple,
    "keepalive_timeout": _simple,
    "keepalive_time": _simple,
}
_STREAM: dict[str, Handler] = {
    **_STREAM_TLS,
    "upstream": _upstream,
    "server": _stream_server,
    "log_format": _log_format,
    "access_log": _stream_access_log,
    "error_log": _error_log,
    "proxy_ssl": _stream_proxy_ssl,
}
_STREAM_SERVER: dict[str, Handler] = {
    **dict.fromkeys(_STREAM_SIMPLE, _simple),
    **_STREAM_TLS,
    "listen": _listen,
    "proxy_pass": _stream_proxy_pass,
    "proxy_next_upstream": _stream_next_upstream,
    "proxy_ssl": _stream_proxy_ssl,
    "access_log": _stream_access_log,
    "error_log": _error_log,
}


def map_config(root: list[Directive]) -> Mapped:
    """The TOML document, its comments and origins, and the report for ``root``."""
    return Mapper().main(root)
