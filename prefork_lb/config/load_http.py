"""The ``[http]`` section: upstreams, servers, locations and their inherited settings.

Rules:
- Inheritance (nginx semantics): the location-level directives in ``LOCATION_KEYS`` may also
  be written in ``[http]`` and in a ``[[http.servers]]`` entry; the nearest level wins, and a
  table such as ``proxy_set_header`` is replaced as a whole, never merged, as in nginx.
- Access logging is inherited the same way, but resolves against ``[http.log_formats]``: a
  level that sets ``access_log`` replaces the inherited entries (nginx).
- Templates (``proxy_set_header`` values, ``return`` text, ``access_log`` conditions) are
  compiled where they are written, so an error names that level and its file.
- Unknown keys are checked before the combination rules of a location, so a typo such as
  "proxy_pas" gets its "did you mean" hint rather than "location needs proxy_pass".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefork_lb.config.http2 import http2_level, server_http2
from prefork_lb.config.load_health import health_check, http_matches, mark_checked
from prefork_lb.config.load_limits import LIMIT_KEYS, check_zone_names, limit_zones, realip
from prefork_lb.config.load_proxy_cache import CACHE_KEYS, TEMPLATE_KEYS, check_cache_zone, check_templates
from prefork_lb.config.load_shared import SectionLoader, implicit_upstream, log_formats, resolve
from prefork_lb.config.model import (
    LINGERING_CLOSE,
    NEXT_UPSTREAM_CONDITIONS,
    AccessLogConfig,
    ErrorPage,
    HttpConfig,
    LocationConfig,
    ProxyPass,
    ReturnAction,
    ServerConfig,
    UpstreamConfig,
)
from prefork_lb.config.source import (
    Source,
    Table,
    boolean,
    duration,
    non_negative_int,
    positive_int,
    size,
    string,
    string_list,
)
from prefork_lb.health.model import HealthCheck, HttpMatch

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One access_log entry before its format is known (formats inherit separately)."""

    path: str
    format: str | None = None
    buffer_bytes: int = 0
    flush_s: float = 1.0
    condition: str | None = None
    key: str = ""  # the key path that set it, for messages


LogSpec = tuple[tuple[LogEntry, ...], str]


def _next_upstream(v: object) -> frozenset[str]:
    items = string_list(v)
    for item in items:
        if item not in NEXT_UPSTREAM_CONDITIONS:
            raise ValueError(
                f'unknown condition "{item}"; allowed: {", ".join(sorted(NEXT_UPSTREAM_CONDITIONS))}'
            )
    if "off" in items:
        return frozenset({"off"})
    return frozenset(items)


def _header_table(v: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise ValueError('must be a table such as { Host = "$host" }')
    out = []
    for name, value in v.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f'invalid header name "{name}"')
        if not isinstance(value, str):
            raise ValueError(f'value of "{name}" must be a string')
        if any((c < " " and c != "\t") or c == "\x7f" for c in value):
            raise ValueError(f'value of "{name}" must not contain control characters (HTAB is allowed)')
        out.append((name, value))
    return tuple(out)


def _add_header(v: object) -> tuple[tuple[str, str, bool], ...]:
    """``add_header``: { Name = "value" } or { Name = { value = "...", always = true } }."""
    if not isinstance(v, dict):
        raise ValueError('must be a table such as { X-Upstream = "$upstream_addr" }')
    out = []
    for name, item in v.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f'invalid header name "{name}"')
        always = False
        if isinstance(item, dict):
            unknown = set(item) - {"value", "always"}
            if unknown or "value" not in item:
                raise ValueError(f'"{name}" must be a string or a table {{ value = "...", always = true }}')
            always = item.get("always", False)
            if not isinstance(always, bool):
                raise ValueError(f'"{name}".always must be true or false')
            item = item["value"]
        if not isinstance(item, str):
            raise ValueError(f'value of "{name}" must be a string')
        if any((c < " " and c != "\t") or c == "\x7f" for c in item):
            raise ValueError(f'value of "{name}" must not contain control characters (HTAB is allowed)')
        out.append((name, item, always))
    return tuple(out)


def _header_names(v: object) -> tuple[str, ...]:
    names = string_list(v)
    for name in names:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f'invalid header name "{name}"')
    return tuple(names)


def _proxy_redirect(v: object) -> tuple[str | tuple[str, str], ...]:
    """``"default"``, ``"off"``, or a list of "default" and [prefix, replacement] pairs."""
    if v == "off":
        return ()
    if v == "default":
        return ("default",)
    if not isinstance(v, list):
        raise ValueError('must be "default", "off" or a list of ["from", "to"] pairs')
    out: list[str | tuple[str, str]] = []
    for i, item in enumerate(v):
        if item == "default":
            out.append("default")
            continue
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ValueError(f'[{i}] must be "default" or a ["from", "to"] pair of strings')
        prefix, replacement = item
        if not prefix:
            raise ValueError(f"[{i}]: the prefix must not be empty")
        if prefix.startswith("~"):
            try:
                re.compile(prefix[2 if prefix.startswith("~*") else 1 :])
            except re.error as e:
                raise ValueError(f"[{i}]: invalid regex: {e}") from None
        elif "$" in prefix:
            raise ValueError(f"[{i}]: variables in the prefix are not supported")
        out.append((prefix, replacement))
    return tuple(out)


def _lingering_close(v: object) -> str:
    if v not in LINGERING_CLOSE:
        raise ValueError(f"must be one of: {', '.join(LINGERING_CLOSE)}")
    return str(v)


def _http_version(v: object) -> str:
    if v != "1.1":
        raise ValueError('must be "1.1": upstream requests are always HTTP/1.1 (accepted for nginx configs)')
    return "1.1"


SSL_PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def ssl_protocols(v: object) -> tuple[str, ...]:
    items = string_list(v)
    if not items:
        raise ValueError(f"needs at least one of: {', '.join(SSL_PROTOCOLS)}")
    for item in items:
        if item not in SSL_PROTOCOLS:
            raise ValueError(f'unknown protocol "{item}"; allowed: {", ".join(SSL_PROTOCOLS)}')
    return tuple(items)


def ssl_ciphers(v: object) -> str:
    import ssl

    text = string(v)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(text)
    except ssl.SSLError:
        raise ValueError(f'no cipher matches "{text}" (an OpenSSL cipher list)') from None
    return text


# Location-level directives, inheritable from [http] and the server: key -> (field, converter).
LOCATION_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "proxy_connect_timeout": ("proxy_connect_timeout_s", duration),
    "proxy_read_timeout": ("proxy_read_timeout_s", duration),
    "proxy_send_timeout": ("proxy_send_timeout_s", duration),
    "proxy_next_upstream": ("proxy_next_upstream", _next_upstream),
    "proxy_next_upstream_tries": ("proxy_next_upstream_tries", non_negative_int),
    "proxy_next_upstream_timeout": ("proxy_next_upstream_timeout_s", duration),
    "proxy_set_header": ("proxy_set_header", _header_table),
    "proxy_http_version": ("proxy_http_version", _http_version),
    "proxy_ssl_verify": ("proxy_ssl_verify", boolean),
    "proxy_ssl_trusted_certificate": ("proxy_ssl_trusted_certificate", string),
    "proxy_ssl_server_name": ("proxy_ssl_server_name", boolean),
    "proxy_ssl_name": ("proxy_ssl_name", string),
    "proxy_ssl_protocols": ("proxy_ssl_protocols", ssl_protocols),
    "proxy_ssl_ciphers": ("proxy_ssl_ciphers", ssl_ciphers),
    "proxy_ssl_session_reuse": ("proxy_ssl_session_reuse", boolean),
    "proxy_buffer_size": ("proxy_buffer_size_bytes", size),
    "client_max_body_size": ("client_max_body_size_bytes", size),
    "client_body_buffer_size": ("client_body_buffer_size_bytes", size),
    "client_body_timeout": ("client_body_timeout_s", duration),
    "send_timeout": ("send_timeout_s", duration),
    "keepalive_timeout": ("keepalive_timeout_s", duration),
    "keepalive_requests": ("keepalive_requests", positive_int),
    "lingering_close": ("lingering_close", _lingering_close),
    "lingering_time": ("lingering_time_s", duration),
    "lingering_timeout": ("lingering_timeout_s", duration),
    "error_page": ("error_page", lambda v: _error_pages(v)),
    "proxy_intercept_errors": ("proxy_intercept_errors", boolean),
    "rewrite_log": ("rewrite_log", boolean),
    "add_header": ("add_header", _add_header),
    "proxy_hide_header": ("proxy_hide_header", _header_names),
    "proxy_pass_header": ("proxy_pass_header", _header_names),
    "proxy_redirect": ("proxy_redirect", _proxy_redirect),
    **LIMIT_KEYS,  # limit_req / limit_conn and their *_status, *_dry_run, *_log_level
    **CACHE_KEYS,  # issue 18: proxy_cache* (config/load_proxy_cache.py)
}


class HttpLoader(SectionLoader):
    def __init__(self, source: Source, prefix: str) -> None:
        super().__init__(source, prefix)
        self.upstreams: dict[str, UpstreamConfig] = {}
        self.log_formats: dict[str, str] = {}
        self.matches: dict[str, HttpMatch] = {}
        self.cache_paths: dict[str, Any] = {}  # [http.proxy_cache_paths] (config/load_cache.py)
        self.health_checks: list[HealthCheck] = []
        self.limit_req_zones: dict[str, Any] = {}
        self.limit_conn_zones: dict[str, Any] = {}
        self.http2_inherited: dict[str, Any] = {}

    def http(self, t: Table) -> HttpConfig:
        from prefork_lb.http.accesslog import BUILTIN_FORMATS, compile_log_format

        self.log_formats = log_formats(t, BUILTIN_FORMATS, compile_log_format)
        self.matches = http_matches(t.table("matches"))
        ups = t.table("upstreams")
        for name in list(ups.data):
            ut = ups.table(name, default_empty=False)
            hc = ut.table("health_check") if ut.has("health_check") else None
            self.upstreams[name] = self.upstream(name, ut)
            if hc is not None:  # the upstream's own check: Host is the group name (rule 2)
                self.health_checks.append(health_check(hc, "http", name, self.matches, {}, host=name))
        ups.finish()
        from prefork_lb.http.variables import install_user_variables

        user = self.user_variables(t)
        previous = install_user_variables(user)  # every template below may name them
        try:
            self.limit_req_zones, self.limit_conn_zones = limit_zones(t)  # before any limit_req/limit_conn
            from prefork_lb.config.load_cache import cache_paths

            self.cache_paths = cache_paths(t, self.path)  # before any proxy_cache names a zone
            self.compile_maps(t, user)
            from prefork_lb.config.load_sticky import check_variables

            check_variables(t, self.upstreams)  # sticky route/lookup may name maps (load_sticky rule 2)
            http_settings = self.location_settings(t, {})
            self.http2_inherited = http2_level(t, {})  # issue 20 (config/http2.py rule 4)
            http_logs = self.log_settings(t, None)
            servers = tuple(
                self.server(i, st, http_settings, http_logs) for i, st in enumerate(t.table_list("servers"))
            )
            t.finish()
        except BaseException:
            install_user_variables(previous)  # a failed reload keeps the running config's
            raise
        _check_default_servers(self.source, servers)
        mark_checked(self.upstreams, self.health_checks)
        return HttpConfig(
            upstreams=self.upstreams,
            servers=servers,
            log_formats=self.log_formats,
            health_checks=tuple(self.health_checks),
            user_variables=user,
            limit_req_zones=self.limit_req_zones,
            limit_conn_zones=self.limit_conn_zones,
            cache_paths=self.cache_paths,
        )

    # ---- issue 16: map and set variables ----

    def user_variables(self, t: Table) -> dict[str, Any]:
        """``$name`` of every ``set`` in any rewrite_rules and every ``[http.maps.NAME]``:
        declared before any template is compiled, as nginx declares them at load."""
        from prefork_lb.http.rewrite import declared_sets
        from prefork_lb.http.variables import Variable, builtin_variable, set_variable

        rules: list[str] = []
        for st in t.data.get("servers", []) if isinstance(t.data.get("servers"), list) else []:
            if isinstance(st, dict):
                rules += [r for r in st.get("rewrite_rules", []) if isinstance(r, str)]
                for lt in st.get("locations", []) if isinstance(st.get("locations"), list) else []:
                    if isinstance(lt, dict):
                        rules += [r for r in lt.get("rewrite_rules", []) if isinstance(r, str)]
        user: dict[str, Variable] = {name: set_variable(name) for name in sorted(declared_sets(rules))}
        maps = t.data.get("maps", {})
        for name in maps if isinstance(maps, dict) else ():
            key = name.lower()
            if builtin_variable(key) or not re.fullmatch(r"\w+", key):
                raise self.source.error(
                    f"{t.key_path('maps')}.{name}", f'cannot define the variable "${name}"'
                )

            def lazy(ex: Any, key: str = key) -> str:  # maps may name maps defined after them
                return str(user[key].get(ex))

            user[key] = Variable(key, lazy, empty_is_unset=True)
        for name in user:
            if builtin_variable(name):
                raise self.source.error(
                    t.key_path("servers"), f'"set" cannot redefine the built-in "${name}"'
                )
        return user

    def compile_maps(self, t: Table, user: dict[str, Any]) -> None:
        from prefork_lb.http.maps import compile_map
        from prefork_lb.http.template import compile_template
        from prefork_lb.http.variables import VariableError, lookup_variable

        maps = t.table("maps")
        uses: dict[str, set[str]] = {}  # map -> the variables its source and values name
        for name in list(maps.data):
            mt = maps.table(name, default_empty=False)
            source = mt.take("source", string)
            values = mt.raw("values")
            hostnames = mt.take("hostnames", boolean, False)
            mt.finish()
            if not isinstance(values, dict):
                raise mt.error("values", 'must be a table such as { default = "x", "~^/api" = "y" }')
            try:
                src = compile_template(source)
            except VariableError as e:
                raise mt.error("source", str(e)) from None
            try:
                user[name.lower()] = compile_map(
                    name.lower(), src.render, values, hostnames, lambda n: lookup_variable(n).get
                )
            except (ValueError, VariableError) as e:
                raise mt.error("values", str(e)) from None
            uses[name.lower()] = _names_in(source, *(v for v in values.values() if isinstance(v, str)))
        maps.finish()
        for name in uses:  # a map that needs itself would recurse forever on every request
            seen: set[str] = set()
            todo = [name]
            while todo:
                for used in uses.get(todo.pop(), ()):
                    if used == name:
                        raise maps.error(name, f'"${name}" depends on itself (through its source or values)')
                    if used not in seen:
                        seen.add(used)
                        todo.append(used)

    def rewrite_block(self, t: Table, log_matches: bool) -> Any:
        """``rewrite_rules`` at this level, compiled (http/rewrite.py), or None."""
        from prefork_lb.http.rewrite import RuleError, compile_rules

        if not t.has("rewrite_rules"):
            t.raw("rewrite_rules", None)
            return None
        rules = t.take("rewrite_rules", string_list)
        try:
            return compile_rules(rules, log_matches=log_matches) if rules else None
        except RuleError as e:
            raise self.source.error(f"{t.key_path('rewrite_rules')}[{e.index}]", str(e)) from None

    # ---- inheritable settings ----

    def location_settings(self, t: Table, inherited: dict[str, Any]) -> dict[str, Any]:
        settings = dict(inherited)
        for key, (field_name, convert) in LOCATION_KEYS.items():
            if t.has(key):
                settings[field_name] = t.take(key, convert)
                if key == "proxy_set_header":
                    self._check_templates(t, settings[field_name])
                elif key == "add_header":
                    self._check_templates(t, tuple((n, v) for n, v, _ in settings[field_name]), key)
                elif key == "proxy_redirect":
                    self._check_redirects(t, settings[field_name])
                elif key == "proxy_ssl_trusted_certificate":  # relative to the prefix, where written
                    settings[field_name] = self.path(settings[field_name])
                elif key == "proxy_ssl_name":
                    self._check_templates(t, (("", settings[field_name]),), key)
                elif key in ("limit_req", "limit_conn"):
                    zones = (self.limit_req_zones, self.limit_conn_zones)
                    check_zone_names(t, key, settings[field_name], *zones)
                elif key in TEMPLATE_KEYS:  # issue 18
                    check_templates(t, key, settings[field_name])
                elif key == "proxy_cache":  # issue 18: a [http.proxy_cache_paths] zone
                    check_cache_zone(t, settings[field_name], self.cache_paths)
            else:
                t.raw(key, None)  # known key, not set at this level
        return settings

    def log_settings(self, t: Table, inherited: LogSpec | None) -> LogSpec:
        """(access log entries, default format name); nginx's default is access.log combined.
        A level that sets ``access_log`` replaces the inherited entries (nginx)."""
        entries, fmt = (
            inherited
            if inherited
            else ((LogEntry(self.path("access.log"), key="http.access_log (default)"),), "combined")
        )
        if t.has("access_log"):
            entries = self._log_entries(t)
        else:
            t.raw("access_log", None)
        if t.has("log_format"):
            fmt = t.take("log_format", string)
            if fmt not in self.log_formats:
                raise t.error("log_format", f'unknown log format "{fmt}" (define it in [http.log_formats])')
        else:
            t.raw("log_format", None)
        return entries, fmt

    def _log_entries(self, t: Table) -> tuple[LogEntry, ...]:
        """``access_log``: a path, "off", a table {path, format, buffer, flush, if}, or a list."""
        value = t.raw("access_log")
        items = value if isinstance(value, list) else [value]
        out: list[LogEntry] = []
        for i, item in enumerate(items):
            key = f"{t.key_path('access_log')}[{i}]" if isinstance(value, list) else t.key_path("access_log")
            if item == "off":
                return ()
            if isinstance(item, str):
                out.append(LogEntry(self.log_path(item), key=key))
                continue
            e = Table(self.source, item, key)
            fmt = e.take("format", string, None)
            if fmt is not None and fmt not in self.log_formats:
                raise e.error("format", f'unknown log format "{fmt}" (define it in [http.log_formats])')
            cond = e.take("if", string, None)
            if cond is not None:
                from prefork_lb.http.template import compile_template
                from prefork_lb.http.variables import VariableError

                try:
                    compile_template(cond)
                except VariableError as err:
                    raise e.error("if", str(err)) from None
            out.append(
                LogEntry(
                    self.log_path(e.take("path", string)),
                    fmt,
                    e.take("buffer", size, 0),
                    e.take("flush", duration, 1.0),
                    cond,
                    key,
                )
            )
            e.finish()
        return tuple(out)

    # ---- servers and locations ----

    def server(self, index: int, t: Table, http_settings: dict[str, Any], http_logs: LogSpec) -> ServerConfig:
        listen = self.listen(t)
        # a regex keeps its case: "(?P<name>" and "\D" mean something else lowercased
        names = tuple(n if n.startswith("~") else n.lower() for n in t.take("server_name", string_list, [""]))
        for i, n in enumerate(names):
            if n.startswith("~"):
                try:
                    re.compile(n[1:])
                except re.error as e:
                    raise self.source.error(
                        f"{t.key_path('server_name')}[{i}]", f"invalid regex: {e}"
                    ) from None
        header_timeout = t.take("client_header_timeout", duration, 60.0)
        ssl = self.ssl(t, listen)
        real_ip = realip(self.source, t)
        settings = self.location_settings(t, http_settings)
        http2, http2_settings = server_http2(
            t, self.http2_inherited, settings.get("keepalive_timeout_s", 75.0)
        )
        logs = self.log_settings(t, http_logs)
        server_rewrite = self.rewrite_block(t, settings.get("rewrite_log", False))
        location_tables = t.table_list("locations")
        if not location_tables:
            raise t.error("locations", "must contain at least one [[http.servers.locations]] entry")
        locations = tuple(self.location(lt, settings, logs) for lt in location_tables)
        t.finish()
        _check_duplicate_locations(self.source, t, locations)
        _check_named_targets(self.source, t, settings.get("error_page", {}), locations)
        return ServerConfig(
            listen=tuple(listen),
            server_names=names,
            locations=locations,
            client_header_timeout_s=header_timeout,
            keepalive_timeout_s=settings.get("keepalive_timeout_s", 75.0),
            lingering_close=settings.get("lingering_close", "on"),
            lingering_time_s=settings.get("lingering_time_s", 30.0),
            lingering_timeout_s=settings.get("lingering_timeout_s", 5.0),
            index=index,
            ssl=ssl,
            rewrite=server_rewrite,
            error_page=settings.get("error_page", {}),
            add_header=settings.get("add_header", ()),
            realip=real_ip,
            http2=http2,
            http2_settings=http2_settings,
        )

    def location(self, t: Table, inherited: dict[str, Any], logs: LogSpec) -> LocationConfig:
        match = t.take("match", string)
        modifier, pattern, regex = _parse_match(match)
        if modifier in ("~", "~*"):
            try:
                regex = re.compile(pattern, re.IGNORECASE if modifier == "~*" else 0)
            except re.error as e:
                raise t.error("match", f"invalid regex: {e}") from None
        elif modifier == "@":
            if not re.fullmatch(r"@[\w.-]+", pattern):
                raise t.error("match", f'invalid named location "{pattern}"')
        elif not pattern.startswith("/") and pattern != "":
            raise t.error("match", _match_hint(match))
        proxy_pass = self.proxy_pass(t) if t.has("proxy_pass") else None
        if proxy_pass is None:
            t.raw("proxy_pass", None)
        return_ = t.take("return", _return_action) if t.has("return") else None
        if return_ is None:
            t.raw("return", None)
        status = ""
        api_write = False
        if isinstance(t.raw("api", None), dict):  # issue 19: api = { write = true }
            api_write = _api_options(t)
        for key in ("api", "metrics", "dashboard"):
            if t.take(key, _api_flag if key == "api" else boolean, False):
                if status:
                    raise t.error(key, f'cannot be combined with "{status}" in one location')
                status = key
        access = tuple((True, n) for n in t.take("allow", _networks, [])) + tuple(
            (False, n) for n in t.take("deny", _networks, [])
        )
        settings = self.location_settings(t, inherited)
        entries, fmt = self.log_settings(t, logs)
        rewrite = self.rewrite_block(t, settings.get("rewrite_log", False))
        hc = t.table("health_check") if t.has("health_check") else None
        t.finish()  # unknown keys first: a typo such as "proxy_pas" gets its hint
        actions = [k for k, v in (("proxy_pass", proxy_pass), ("return", return_), (status, status)) if v]
        if not actions and rewrite is None:
            raise t.error(
                "match",
                'location needs "proxy_pass", "return", "rewrite_rules", "api", "metrics" or "dashboard"',
            )
        if len(actions) > 1:
            raise t.error(actions[1], f'cannot be combined with "{actions[0]}" in one location')
        if proxy_pass and proxy_pass.uri is not None and modifier in ("~", "~*", "@"):
            kind = "a named" if modifier == "@" else "a regex"
            raise t.error("proxy_pass", f"cannot have a URI part in {kind} location (as in nginx)")
        if proxy_pass and proxy_pass.ssl:
            check_upstream_ssl(t, settings)
        access_logs = tuple(
            AccessLogConfig(
                e.path,
                e.format or fmt,
                self.log_formats[e.format or fmt],
                e.buffer_bytes,
                e.flush_s,
                e.condition,
                e.key,
            )
            for e in entries
            if e.path != "off"
        )
        loc = LocationConfig(
            match=match,
            modifier=modifier,
            pattern=pattern,
            regex=regex,
            proxy_pass=proxy_pass,
            return_=return_,
            access_logs=access_logs,
            status=status,  # type: ignore[arg-type]
            access=access,
            api_write=api_write,
            rewrite=rewrite,
            **settings,
        )
        if hc is not None:
            if proxy_pass is None:
                raise t.error("health_check", 'needs "proxy_pass" in the same location')
            self.health_checks.append(
                health_check(
                    hc,
                    "http",
                    proxy_pass.upstream,
                    self.matches,
                    {},
                    connect_timeout_s=loc.proxy_connect_timeout_s,
                    read_timeout_s=loc.proxy_read_timeout_s,
                    host=proxy_pass.host_header,
                    set_headers=loc.proxy_set_header,
                    location=loc,
                )
            )
        return loc

    def proxy_pass(self, t: Table) -> ProxyPass:
        text = t.take("proxy_pass", string)
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise t.error("proxy_pass", 'must start with "http://" or "https://"')
        tls = scheme == "https"
        slash = rest.find("/")
        host, uri = (rest, None) if slash < 0 else (rest[:slash], rest[slash:])
        if not host:
            raise t.error("proxy_pass", "has no upstream name or address")
        if host in self.upstreams:
            return ProxyPass(upstream=host, uri=uri, host_header=host, ssl=tls)
        try:
            addrs = resolve(host if ":" in host.rsplit("]", 1)[-1] else f"{host}:{443 if tls else 80}")
        except ValueError as e:
            raise t.error("proxy_pass", f'"{host}" is neither an upstream name nor an address: {e}') from None
        self.upstreams[host] = implicit_upstream(host, addrs, "http")
        return ProxyPass(upstream=host, uri=uri, host_header=host, ssl=tls)

    def _check_redirects(self, t: Table, rules: tuple[str | tuple[str, str], ...]) -> None:
        """proxy_redirect replacements: templates, with $1..$9 after a regex prefix."""
        from prefork_lb.http.header_rules import compile_regex_redirect
        from prefork_lb.http.template import compile_template
        from prefork_lb.http.variables import VariableError

        for i, rule in enumerate(rules):
            if isinstance(rule, str):
                continue
            try:
                if rule[0].startswith("~"):
                    compile_regex_redirect(*rule)
                else:
                    compile_template(rule[1])
            except VariableError as e:
                raise t.error("proxy_redirect", f"[{i}]: {e}") from None

    def _check_templates(
        self, t: Table, headers: tuple[tuple[str, str], ...], key: str = "proxy_set_header"
    ) -> None:
        """Checked where the table is written, so the error names that level (and file)."""
        from prefork_lb.http.template import compile_template
        from prefork_lb.http.variables import VariableError

        for name, value in headers:
            try:
                compile_template(value)
            except VariableError as e:
                raise t.error(key, f"{name}: {e}" if name else str(e)) from None


def _parse_match(match: str) -> tuple[Any, str, re.Pattern[str] | None]:
    if match.startswith("@"):
        return "@", match.strip(), None
    for modifier in _MODIFIERS:
        if match.startswith(modifier + " "):
            return modifier, match[len(modifier) + 1 :].strip(), None
    return "", match.strip(), None


_MODIFIERS = ("=", "^~", "~*", "~")


def _match_hint(match: str) -> str:
    """The error for a prefix ``match`` not starting with "/": most often a mistyped or
    unspaced modifier, so suggest the modifier meant."""
    text = match.strip()
    head, _, rest = text.partition(" ")
    rest = rest.strip()
    if rest and not head.startswith("/"):
        guesses = [m for m in _MODIFIERS if sorted(m) == sorted(head)]  # "~^" for "^~"
        guesses += difflib.get_close_matches(head, _MODIFIERS, n=1, cutoff=0.3)
        hint = f' (did you mean "{guesses[0]} {rest}"?)' if guesses else ""
        return (
            f'unknown location modifier "{head}"{hint}; '
            'use "/prefix", "= /exact", "^~ /prefix", "~ regex" or "~* regex"'
        )
    for m in _MODIFIERS:
        if text.startswith(m) and len(text) > len(m) and text[len(m)] != " ":
            return (
                f'a prefix location must start with "/" (did you mean "{m} {text[len(m) :]}"? '
                "a modifier needs a space after it)"
            )
    return 'a prefix location must start with "/" (or use "~ regex")'


def _return_action(v: object) -> ReturnAction:
    if isinstance(v, int) and not isinstance(v, bool):
        code, text = v, None
    elif isinstance(v, str):
        head, _, rest = v.lstrip().partition(" ")
        if not head.isascii() or not head.isdigit():
            raise ValueError('must be "CODE [TEXT|URL]", e.g. "301 https://example.com$request_uri"')
        code, text = int(head), rest.lstrip(" ")
        # a body is sent as written after the code (nginx: "OK\n" keeps its newline); a URL is trimmed
        text = (text.strip() if code in _REDIRECTS else text) or None
    else:
        raise ValueError('must be a status code or "CODE [TEXT|URL]"')
    if not 100 <= code <= 999:
        raise ValueError("status code must be between 100 and 999")
    if code in _REDIRECTS and not text:
        raise ValueError(f"a {code} redirect needs a URL")
    if text is not None:
        from prefork_lb.http.template import compile_template
        from prefork_lb.http.variables import VariableError

        try:
            compile_template(text)
        except VariableError as e:
            raise ValueError(str(e)) from None
    return ReturnAction(status=code, text=text)


def _names_in(*texts: str) -> set[str]:
    from prefork_lb.http.template import parse_template

    names: set[str] = set()
    for text in texts:
        try:
            names.update(value.lower() for is_var, value in parse_template(text) if is_var)
        except ValueError:
            pass  # reported where the text is compiled
    return names


def _error_pages(v: object) -> dict[int, ErrorPage]:
    """``{ "502 503 504" = "@fallback", "404" = "=200 /empty.json" }`` (nginx's error_page)."""
    if not isinstance(v, dict):
        raise ValueError('must be a table such as { "502 504" = "@fallback", "404" = "=200 /404.html" }')
    out: dict[int, ErrorPage] = {}
    for codes, spec in v.items():
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(
                f'"{codes}" needs a target: "/uri", "@name", a URL, with "=CODE" or "=" before it'
            )
        words = spec.split()
        status: int | None = None
        from_target = False
        if words[0].startswith("="):
            code = words.pop(0)[1:]
            if not code:
                from_target = True
            elif code.isdigit() and 100 <= int(code) <= 599:
                status = int(code)
            else:
                raise ValueError(f'"{codes}": invalid response code "{code}"')
        if len(words) != 1:
            raise ValueError(f'"{codes}": "{spec}" must be "[=[CODE]] /uri|@name|URL"')
        target = words[0]
        if not target.startswith(("/", "@", "http://", "https://", "$scheme")):
            raise ValueError(
                f'"{codes}": target "{target}" must start with "/", "@", "http://" or "https://"'
            )
        for code in codes.split():
            if not code.isdigit() or not 300 <= int(code) <= 599:
                raise ValueError(f'"{codes}": value "{code}" must be between 300 and 599')
            out[int(code)] = ErrorPage(target, status, from_target)
    return out


def _check_named_targets(
    source: Source, t: Table, server_pages: dict[int, ErrorPage], locations: tuple[LocationConfig, ...]
) -> None:
    """An error_page naming "@x" needs a ``match = "@x"`` location in the same server."""
    named = {loc.pattern for loc in locations if loc.modifier == "@"}
    for where, pages in [("error_page", server_pages)] + [
        (f"locations[{i}].error_page", loc.error_page) for i, loc in enumerate(locations)
    ]:
        for page in pages.values():
            if page.target.startswith("@") and page.target not in named:
                raise source.error(
                    t.key_path(where), f'named location "{page.target}" does not exist in this server'
                )


def _networks(v: object) -> list[str]:
    import ipaddress

    items = string_list(v)
    for item in items:
        if item != "all":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f'"{item}" is not an address, a CIDR network or "all"') from None
    return items


def _check_default_servers(source: Source, servers: tuple[ServerConfig, ...]) -> None:
    seen: dict[tuple[str, str, int], int] = {}
    for server in servers:
        for j, lc in enumerate(server.listen):
            if lc.default_server:
                if lc.key in seen:
                    raise source.error(
                        f"http.servers[{server.index}].listen[{j}]",
                        f"a duplicate default server for {lc.address.text} "
                        f"(already http.servers[{seen[lc.key]}])",
                    )
                seen[lc.key] = server.index


def _check_duplicate_locations(source: Source, t: Table, locations: tuple[LocationConfig, ...]) -> None:
    seen: set[tuple[str, str]] = set()
    for i, loc in enumerate(locations):
        if loc.regex is not None:
            continue  # nginx accepts repeated regex locations (the first one wins)
        key = ("" if loc.modifier == "^~" else loc.modifier, loc.pattern)
        if key in seen:
            raise source.error(f"{t.key_path('locations')}[{i}].match", f'duplicate location "{loc.pattern}"')
        seen.add(key)


def check_upstream_ssl(t: Table, settings: dict[str, Any]) -> None:
    """A location with ``proxy_pass "https://..."``: nginx's config errors, at load."""
    import ssl

    trusted = settings.get("proxy_ssl_trusted_certificate", "")
    if settings.get("proxy_ssl_verify") and not trusted:
        raise t.error(
            "proxy_ssl_verify",
            'needs "proxy_ssl_trusted_certificate" (the CA certificates to verify the upstream with)',
        )
    if trusted:
        try:
            ssl.create_default_context(cafile=trusted)
        except (OSError, ssl.SSLError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise t.error("proxy_ssl_trusted_certificate", f'cannot load "{trusted}": {reason}') from None


def _api_flag(v: object) -> bool:
    """``api = true`` or ``api = { write = ... }`` (the table is read by ``_api_options``)."""
    return True if isinstance(v, dict) else boolean(v)


def _api_options(t: Table) -> bool:
    """``api = { write = true }``: nginx's ``api write=on`` (read-only stays the default)."""
    opts = t.table("api")
    write = opts.take("write", boolean, False)
    opts.finish()
    return write
