"""Server and location selection with nginx's rules, precompiled at config-load time.

Rules:
- Everything is built once per config load; ``select`` and ``match`` only read tuples and
  dicts. An exact server name is one dict lookup; the common location lookup is one dict
  lookup plus a longest-first scan of the prefix locations.
- Inputs are already normalized: hosts come from ``uri.normalize_host`` (lowercase, no port,
  no trailing dot, "" when the request has no host), paths from ``uri.normalize_path``.
- Location selection (nginx ``ngx_http_core_find_location``, no nested locations):
  1. an ``=`` location equal to the path wins at once;
  2. the longest ``""``/``^~`` prefix the path starts with is remembered;
  3. if that prefix is ``^~`` it wins;
  4. else the first regex location (config order) whose ``search`` hits wins (unanchored);
  5. else the remembered prefix, or None.
  Before matching, ``needs_slash_redirect`` tells whether nginx would answer 301 with
  ``path + "/"`` (a proxy_pass location whose pattern is the path plus a trailing slash).
- Server selection per listening address (nginx ``server_name``): exact name, then the longest
  leading wildcard (``*.example.com``), then the longest trailing wildcard (``www.example.*``),
  then the first regex (``~...``, config order, ``search``), then the default server: the one
  whose ``listen`` for this address says ``default_server``, else the first listed.
  ``.example.com`` means ``example.com`` plus ``*.example.com``. A server without names has
  the name "" (nginx's default), which matches requests without a host. When a name is
  repeated, the first server keeps it (nginx warns "conflicting server name" and does so).
- A regex name is compiled case-insensitively when it contains an uppercase ASCII letter,
  case-sensitively otherwise (nginx's rule); hosts are lowercase, so both act alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefork_lb.config.model import LocationConfig, ServerConfig

__all__ = ["ListenKey", "LocationMatcher", "ServerRouter", "build_routers"]

ListenKey = tuple[str, str, int]
_Search = Callable[[str], re.Match[str] | None]


class LocationMatcher:
    """Selects the location for a normalized path."""

    __slots__ = ("_exact", "_prefixes", "_redirects", "_regexes", "named")

    def __init__(self, locations: Sequence[LocationConfig]) -> None:
        exact: dict[str, LocationConfig] = {}
        prefixes: list[LocationConfig] = []
        regexes: list[tuple[_Search, LocationConfig]] = []
        self.named: dict[str, LocationConfig] = {}  # "@name": reached only by error_page
        for loc in locations:
            if loc.modifier == "@":
                self.named.setdefault(loc.pattern, loc)
            elif loc.modifier == "=":
                exact.setdefault(loc.pattern, loc)
            elif loc.modifier in ("", "^~"):
                prefixes.append(loc)
            elif loc.regex is not None:
                regexes.append((loc.regex.search, loc))
            else:
                raise ValueError(f"location {loc.match!r}: regex location without a compiled regex")
        prefixes.sort(key=lambda p: len(p.pattern), reverse=True)  # stable: config order on ties
        self._exact = exact
        self._prefixes = tuple((loc.pattern, loc, loc.modifier == "^~") for loc in prefixes)
        self._regexes = tuple(regexes)
        self._redirects = _slash_redirects(exact, prefixes)

    def match(self, path: str) -> LocationConfig | None:
        loc = self._exact.get(path)
        if loc is not None:
            return loc
        prefix: LocationConfig | None = None
        for pattern, candidate, stop in self._prefixes:
            if path.startswith(pattern):
                if stop:
                    return candidate
                prefix = candidate
                break
        for search, candidate in self._regexes:
            if search(path) is not None:
                return candidate
        return prefix

    def needs_slash_redirect(self, path: str) -> bool:
        """True when nginx answers 301 ``path + "/"`` (checked before ``match``, beats regexes)."""
        return path in self._redirects


def _slash_redirects(exact: dict[str, LocationConfig], prefixes: list[LocationConfig]) -> frozenset[str]:
    """Paths that get nginx's auto_redirect: a proxy_pass location named ``path + "/"``.

    nginx answers 301 only when no location is named exactly ``path`` (an ``=`` location or a
    prefix equal to the path stops the static lookup first).
    """
    named = set(exact) | {loc.pattern for loc in prefixes}
    targets = {
        loc.pattern[:-1]
        for loc in (*exact.values(), *prefixes)
        if (loc.proxy_pass is not None or loc.status) and len(loc.pattern) > 1 and loc.pattern.endswith("/")
    }
    return frozenset(targets - named)


class ServerRouter:
    """Selects the virtual server for a host on one listening address."""

    __slots__ = ("_exact", "_head", "_regexes", "_tail", "default", "listen_key", "servers")

    def __init__(self, servers: Sequence[ServerConfig], listen_key: ListenKey) -> None:
        members = tuple(s for s in servers if any(lc.key == listen_key for lc in s.listen))
        if not members:
            raise ValueError(f"no server listens on {listen_key!r}")
        self.listen_key = listen_key
        self.servers = members
        self.default = _default_server(members, listen_key)
        self._exact: dict[str, ServerConfig] = {}
        self._head: dict[str, ServerConfig] = {}  # ".example.com" for "*.example.com"
        self._tail: dict[str, ServerConfig] = {}  # "www.example." for "www.example.*"
        regexes: list[tuple[_Search, ServerConfig]] = []
        for server in members:
            for name in server.server_names or ("",):
                self._add_name(name, server, regexes)
        self._regexes = tuple(regexes)

    def _add_name(self, name: str, server: ServerConfig, regexes: list[tuple[_Search, ServerConfig]]) -> None:
        if name.startswith("~"):
            regexes.append((_compile_name_regex(name[1:], server).search, server))
            return
        lname = name.lower()
        if lname.startswith("*."):
            core, table, key = lname[2:], self._head, lname[1:]
        elif lname.startswith("."):
            core, table, key = lname[1:], self._head, lname
            self._exact.setdefault(core, server)
        elif lname.endswith(".*"):
            core, table, key = lname[:-2], self._tail, lname[:-1]
        else:
            core, table, key = lname, self._exact, lname
        if "*" in core or (table is not self._exact and not core):
            raise ValueError(f"server #{server.index}: invalid server_name {name!r}")
        table.setdefault(key, server)

    def select(self, host: str) -> ServerConfig:
        server = self._exact.get(host)
        if server is not None:
            return server
        return self._select_wildcard(host)

    def _select_wildcard(self, host: str) -> ServerConfig:
        head = self._head
        if head:
            i = host.find(".", 1)
            while i > 0:
                server = head.get(host[i:])
                if server is not None:
                    return server
                i = host.find(".", i + 1)
        tail = self._tail
        if tail:
            i = host.rfind(".", 1, len(host) - 1)
            while i > 0:
                server = tail.get(host[: i + 1])
                if server is not None:
                    return server
                i = host.rfind(".", 1, i)
        for search, server in self._regexes:
            if search(host) is not None:
                return server
        return self.default


def _default_server(members: Sequence[ServerConfig], listen_key: ListenKey) -> ServerConfig:
    for server in members:
        if any(lc.key == listen_key and lc.default_server for lc in server.listen):
            return server
    return members[0]


def _compile_name_regex(pattern: str, server: ServerConfig) -> re.Pattern[str]:
    flags = re.IGNORECASE if any("A" <= c <= "Z" for c in pattern) else 0
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"server #{server.index}: invalid server_name regex {pattern!r}: {exc}") from exc


def build_routers(servers: Sequence[ServerConfig]) -> dict[ListenKey, ServerRouter]:
    """One ``ServerRouter`` per listening address, servers kept in config order."""
    groups: dict[ListenKey, list[ServerConfig]] = {}
    for server in servers:
        for lc in server.listen:
            group = groups.setdefault(lc.key, [])
            if not group or group[-1] is not server:  # the same address listed twice
                group.append(server)
    return {key: ServerRouter(group, key) for key, group in groups.items()}
