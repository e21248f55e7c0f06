"""``upstream`` blocks, http and stream (sans-IO): method, options, servers.

Rules:
- A block becomes ``<context>.upstreams.NAME``; ``servers`` is written after the method and its
  options. An upstream ``server`` without a port gets nginx's default, 80.
- Server parameters prefork-lb lacks (``resolve``, ``service=``...) are noted; the server is
  used without them. ``zone`` maps to nothing: peer state is always in the shared zone.
- ``sticky`` is http only (nginx's is); NGINX Plus ``state FILE`` is kept in ``FILE.toml``.
"""

from __future__ import annotations

import re
from typing import Any

from prefork_lb.convert.map_common import Handler, Mapper, simple
from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import Inline, scalar


def upstream_block(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    name = d.args[0]
    ups = t.setdefault("upstreams", {})
    kp = f"{path}.upstreams.{name}"
    u: dict[str, Any] = {}
    m.mark(kp, d)
    m.each(d.block, u, kp, _UPSTREAM)
    u["servers"] = u.pop("servers", [])  # after the method and its options
    ups[name] = u


def _state(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """NGINX Plus ``state``: the runtime server list (issue 19). Plus writes ``server ...;``
    lines, prefork-lb TOML: the list goes to ``<path>.toml``, never read from Plus's file."""
    m.put(t, path, "state", d.args[0] + ".toml", d)
    m.differ(d, f"the runtime server list is kept in {d.args[0]}.toml (TOML; Plus's state file is not read)")


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
    "keepalive": simple,
    "keepalive_requests": simple,
    "keepalive_timeout": simple,
    "keepalive_time": simple,
}
