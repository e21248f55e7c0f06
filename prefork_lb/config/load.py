"""Turn a TOML file (plus includes) into a validated, frozen ``Config``.

The same function serves ``prefork-lb -t``, startup and reload, so a config that passes
``-t`` is exactly a config the master will run. Every failure is a ``ConfigError`` naming
the file and the key path.

Inheritance (nginx semantics): the location-level directives in ``LOCATION_KEYS`` may also
be written in ``[http]`` and in a ``[[http.servers]]`` entry; the nearest level wins, and a
table such as ``proxy_set_header`` is replaced as a whole, never merged, as in nginx.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from prefork_lb.config.addresses import parse_address, parse_listen
from prefork_lb.config.errors import ConfigError
from prefork_lb.config.model import (
    LINGERING_CLOSE,
    NEXT_UPSTREAM_CONDITIONS,
    AccessLogConfig,
    Address,
    Config,
    HttpConfig,
    ListenConfig,
    LocationConfig,
    Method,
    ProxyPass,
    ReturnAction,
    ServerConfig,
    StreamConfig,
    StreamServerConfig,
    UpstreamConfig,
    UpstreamServer,
)
from prefork_lb.config.source import (
    Source,
    Table,
    boolean,
    non_negative_int,
    positive_int,
    string,
    string_list,
)
from prefork_lb.units import parse_duration_s, parse_size_bytes

DEFAULT_CONFIG_PATH = "/etc/prefork-lb/prefork-lb.toml"
ERROR_LOG_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
METHODS = ("round_robin", "least_conn", "ip_hash", "hash", "random", "least_time")
STREAM_METHODS = ("round_robin", "least_conn", "hash", "random")  # nginx: no ip_hash (hash $remote_addr)
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


def _duration(v: object) -> float:
    return parse_duration_s(v)


def _whole_seconds(v: object) -> float:
    seconds = parse_duration_s(v)
    if seconds != int(seconds):
        raise ValueError('must be whole seconds, as in nginx (e.g. "10s")')
    return seconds


def _size(v: object) -> int:
    return parse_size_bytes(v)


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


def _lingering_close(v: object) -> str:
    if v not in LINGERING_CLOSE:
        raise ValueError(f"must be one of: {', '.join(LINGERING_CLOSE)}")
    return str(v)


# Location-level directives, inheritable from [http] and the server: key -> (field, converter).
LOCATION_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "proxy_connect_timeout": ("proxy_connect_timeout_s", _duration),
    "proxy_read_timeout": ("proxy_read_timeout_s", _duration),
    "proxy_send_timeout": ("proxy_send_timeout_s", _duration),
    "proxy_next_upstream": ("proxy_next_upstream", _next_upstream),
    "proxy_next_upstream_tries": ("proxy_next_upstream_tries", non_negative_int),
    "proxy_next_upstream_timeout": ("proxy_next_upstream_timeout_s", _duration),
    "proxy_set_header": ("proxy_set_header", _header_table),
    "proxy_buffer_size": ("proxy_buffer_size_bytes", _size),
    "client_max_body_size": ("client_max_body_size_bytes", _size),
    "client_body_buffer_size": ("client_body_buffer_size_bytes", _size),
    "client_body_timeout": ("client_body_timeout_s", _duration),
    "send_timeout": ("send_timeout_s", _duration),
    "keepalive_timeout": ("keepalive_timeout_s", _duration),
    "keepalive_requests": ("keepalive_requests", positive_int),
    "lingering_close": ("lingering_close", _lingering_close),
    "lingering_time": ("lingering_time_s", _duration),
    "lingering_timeout": ("lingering_timeout_s", _duration),
}
# Access logging is inherited too, but needs the log_formats table to resolve.
_LOG_KEYS = ("access_log", "log_format")


def load_config(path: str, prefix: str | None = None) -> Config:
    """Parse and validate ``path``; raise ConfigError on the first problem."""
    main = os.path.abspath(path)
    source = Source(main)
    prefix = os.path.abspath(prefix) if prefix else os.path.dirname(main)
    top = Table(source, source.data, "")
    loader = _Loader(source, prefix)
    workers = top.take("workers", _workers, 1)
    pid_path = loader.path(top.take("pid", string, "prefork-lb.pid"))
    error_log = loader.log_path(top.take("error_log", string, "error.log"))
    level = top.take("error_log_level", _choice(ERROR_LOG_LEVELS), "notice")
    daemon = top.take("daemon", boolean, False)
    worker_connections = top.take("worker_connections", positive_int, 1024)
    shutdown_s = top.take("worker_shutdown_timeout", _duration, 0.0)
    zone_size = top.take("zone_size", _size, 8 * 1024 * 1024)
    user = top.take("user", string, None)
    group = top.take("group", string, None)
    if group is not None and user is None:
        raise top.error("group", 'needs "user"')
    if user is not None:
        from prefork_lb.worker.privileges import resolve

        try:
            resolve(user, group)
        except ValueError as e:
            raise top.error("group" if group and "group" in str(e) else "user", str(e)) from None
    rlimit_nofile = top.take("worker_rlimit_nofile", positive_int, 0)
    heartbeat_s = top.take("worker_heartbeat_timeout", _duration, 30.0)
    http = loader.http(top.table("http"))
    stream = loader.stream(top.table("stream"))
    top.finish()
    _check_zone_size(source, zone_size, http, stream)
    _check_listen_conflicts(source, http, stream)
    _check_status_exposure(source, http)
    return Config(
        path=main,
        prefix=prefix,
        workers=workers,
        pid_path=pid_path,
        error_log_path=error_log,
        error_log_level=level,
        daemon=daemon,
        worker_connections=worker_connections,
        worker_shutdown_timeout_s=shutdown_s,
        http=http,
        stream=stream,
        zone_size_bytes=zone_size,
        files=tuple(source.files),
        user=user,
        group=group,
        worker_rlimit_nofile=rlimit_nofile,
        worker_heartbeat_timeout_s=heartbeat_s,
    )


def _workers(v: object) -> int:
    if v == "auto":
        return os.cpu_count() or 1
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError('must be a positive integer or "auto"')
    return v


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(v: object) -> str:
        if v not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return str(v)

    return convert


class _Loader:
    def __init__(self, source: Source, prefix: str) -> None:
        self.source = source
        self.prefix = prefix
        self.upstreams: dict[str, UpstreamConfig] = {}
        self.log_formats: dict[str, str] = {}

    def path(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.prefix, p)

    def log_path(self, p: str) -> str:
        p = {"/dev/stdout": "stdout", "/dev/stderr": "stderr"}.get(p, p)  # symlinks: never opened
        return p if p in ("stderr", "stdout", "off") else self.path(p)

    # ---- http ----

    def http(self, t: Table) -> HttpConfig:
        from prefork_lb.http.accesslog import BUILTIN_FORMATS, compile_log_format

        self.log_formats = _log_formats(t, BUILTIN_FORMATS, compile_log_format)
        ups = t.table("upstreams")
        for name in list(ups.data):
            self.upstreams[name] = self.upstream(name, ups.table(name, default_empty=False))
        ups.finish()
        http_settings = self.location_settings(t, {})
        http_logs = self.log_settings(t, None)
        servers = tuple(
            self.server(i, st, http_settings, http_logs) for i, st in enumerate(t.table_list("servers"))
        )
        t.finish()
        _check_default_servers(self.source, servers)
        return HttpConfig(upstreams=self.upstreams, servers=servers, log_formats=self.log_formats)

    def upstream(self, name: str, t: Table, context: str = "http") -> UpstreamConfig:
        methods = METHODS if context == "http" else STREAM_METHODS
        method = cast(Method, t.take("method", _choice(methods), "round_robin"))
        keepalive = t.take("keepalive", non_negative_int, 0)
        keepalive_requests = t.take("keepalive_requests", positive_int, 1000)
        keepalive_timeout = t.take("keepalive_timeout", _duration, 60.0)
        keepalive_time = t.take("keepalive_time", _duration, 3600.0)
        hash_key = t.take("hash", string, "")
        consistent = t.take("consistent", boolean, False)
        random_two = t.take("random", _random_options, False)
        least_time, inflight = t.take("least_time", _least_time, ("header", False))
        queue_size, queue_timeout = t.take("queue", _queue, (0, 60.0))
        servers: list[UpstreamServer] = []
        server_tables = t.table_list("servers")
        if not server_tables:
            raise t.error("servers", "must list at least one server")
        entries = [self.upstream_server(st) for st in server_tables]  # a hostname: several
        for entry in entries:
            servers.extend(entry)
        t.finish()
        _check_method_options(t, method, [entry[0] for entry in entries])
        if method == "hash":
            if not hash_key:
                raise t.error("hash", 'method "hash" needs a key, e.g. hash = "$request_uri"')
            self._check_key(t, hash_key, context)
        return UpstreamConfig(
            name=name,
            method=method,
            servers=tuple(servers),
            keepalive=keepalive,
            keepalive_requests=keepalive_requests,
            keepalive_timeout_s=keepalive_timeout,
            keepalive_time_s=keepalive_time,
            hash_key=hash_key,
            consistent=consistent,
            random_two=random_two,
            least_time=least_time,
            least_time_inflight=inflight,
            queue_size=queue_size,
            queue_timeout_s=queue_timeout,
            context="stream" if context == "stream" else "http",
        )

    def upstream_server(self, t: Table) -> list[UpstreamServer]:
        text = t.take("address", string)
        weight = t.take("weight", positive_int, 1)
        max_fails = t.take("max_fails", non_negative_int, 1)
        fail_timeout = t.take("fail_timeout", _whole_seconds, 10.0)
        max_conns = t.take("max_conns", non_negative_int, 0)
        backup = t.take("backup", boolean, False)
        down = t.take("down", boolean, False)
        slow_start = t.take("slow_start", _whole_seconds, 0.0)
        t.finish()
        try:
            addrs = _resolve(text)
        except ValueError as e:
            raise t.error("address", str(e)) from None
        return [
            UpstreamServer(
                address=a,
                name=text,
                weight=weight,
                max_fails=max_fails,
                fail_timeout_s=fail_timeout,
                max_conns=max_conns,
                backup=backup,
                down=down,
                slow_start_s=slow_start,
            )
            for a in addrs
        ]

    # ---- inheritable settings ----

    def location_settings(self, t: Table, inherited: dict[str, Any]) -> dict[str, Any]:
        settings = dict(inherited)
        for key, (field_name, convert) in LOCATION_KEYS.items():
            if t.has(key):
                settings[field_name] = t.take(key, convert)
                if key == "proxy_set_header":
                    self._check_templates(t, settings[field_name])
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
                from prefork_lb.http.variables import VariableError, compile_template

                try:
                    compile_template(cond)
                except VariableError as err:
                    raise e.error("if", str(err)) from None
            out.append(
                LogEntry(
                    self.log_path(e.take("path", string)),
                    fmt,
                    e.take("buffer", _size, 0),
                    e.take("flush", _duration, 1.0),
                    cond,
                    key,
                )
            )
            e.finish()
        return tuple(out)

    # ---- servers and locations ----

    def listen(self, t: Table) -> list[ListenConfig]:
        """A server's ``listen`` list (http and stream): at least one, each parsed, errors
        naming the entry's index."""
        texts = t.take("listen", string_list)
        if not texts:
            raise t.error("listen", "must name at least one address")
        out = []
        for i, text in enumerate(texts):
            try:
                out.append(parse_listen(text))
            except ValueError as e:
                raise self.source.error(f"{t.key_path('listen')}[{i}]", str(e)) from None
        return out

    def server(self, index: int, t: Table, http_settings: dict[str, Any], http_logs: LogSpec) -> ServerConfig:
        listen = self.listen(t)
        names = tuple(n.lower() for n in t.take("server_name", string_list, [""]))
        for i, n in enumerate(names):
            if n.startswith("~"):
                try:
                    re.compile(n[1:])
                except re.error as e:
                    raise self.source.error(
                        f"{t.key_path('server_name')}[{i}]", f"invalid regex: {e}"
                    ) from None
        header_timeout = t.take("client_header_timeout", _duration, 60.0)
        settings = self.location_settings(t, http_settings)
        logs = self.log_settings(t, http_logs)
        location_tables = t.table_list("locations")
        if not location_tables:
            raise t.error("locations", "must contain at least one [[http.servers.locations]] entry")
        locations = tuple(self.location(lt, settings, logs) for lt in location_tables)
        t.finish()
        _check_duplicate_locations(self.source, t, locations)
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
        )

    def location(self, t: Table, inherited: dict[str, Any], logs: LogSpec) -> LocationConfig:
        match = t.take("match", string)
        modifier, pattern, regex = _parse_match(match)
        if modifier in ("~", "~*"):
            try:
                regex = re.compile(pattern, re.IGNORECASE if modifier == "~*" else 0)
            except re.error as e:
                raise t.error("match", f"invalid regex: {e}") from None
        elif not pattern.startswith("/") and pattern != "":
            raise t.error("match", _match_hint(match))
        proxy_pass = self.proxy_pass(t) if t.has("proxy_pass") else None
        if proxy_pass is None:
            t.raw("proxy_pass", None)
        return_ = t.take("return", _return_action) if t.has("return") else None
        if return_ is None:
            t.raw("return", None)
        status = ""
        for key in ("api", "metrics", "dashboard"):
            if t.take(key, boolean, False):
                if status:
                    raise t.error(key, f'cannot be combined with "{status}" in one location')
                status = key
        access = tuple((True, n) for n in t.take("allow", _networks, [])) + tuple(
            (False, n) for n in t.take("deny", _networks, [])
        )
        settings = self.location_settings(t, inherited)
        entries, fmt = self.log_settings(t, logs)
        t.finish()  # unknown keys first: a typo such as "proxy_pas" gets its hint
        actions = [k for k, v in (("proxy_pass", proxy_pass), ("return", return_), (status, status)) if v]
        if not actions:
            raise t.error("match", 'location needs "proxy_pass", "return", "api", "metrics" or "dashboard"')
        if len(actions) > 1:
            raise t.error(actions[1], f'cannot be combined with "{actions[0]}" in one location')
        if proxy_pass and proxy_pass.uri is not None and modifier in ("~", "~*"):
            raise t.error("proxy_pass", "cannot have a URI part in a regex location (as in nginx)")
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
        return LocationConfig(
            match=match,
            modifier=modifier,
            pattern=pattern,
            regex=regex,
            proxy_pass=proxy_pass,
            return_=return_,
            access_logs=access_logs,
            status=status,  # type: ignore[arg-type]
            access=access,
            **settings,
        )

    def proxy_pass(self, t: Table) -> ProxyPass:
        text = t.take("proxy_pass", string)
        if not text.startswith("http://"):
            raise t.error("proxy_pass", 'must start with "http://" (https upstreams are not supported)')
        rest = text[len("http://") :]
        slash = rest.find("/")
        host, uri = (rest, None) if slash < 0 else (rest[:slash], rest[slash:])
        if not host:
            raise t.error("proxy_pass", "has no upstream name or address")
        if host in self.upstreams:
            return ProxyPass(upstream=host, uri=uri, host_header=host)
        try:
            addrs = _resolve(host if ":" in host.rsplit("]", 1)[-1] else f"{host}:80")
        except ValueError as e:
            raise t.error("proxy_pass", f'"{host}" is neither an upstream name nor an address: {e}') from None
        if host not in self.upstreams:
            self.upstreams[host] = UpstreamConfig(
                name=host,
                method="round_robin",
                servers=tuple(UpstreamServer(address=a, name=host) for a in addrs),
                implicit=True,
            )
        return ProxyPass(upstream=host, uri=uri, host_header=host)

    def _check_key(self, t: Table, key: str, context: str = "http") -> None:
        from prefork_lb.http.variables import VariableError, compile_template
        from prefork_lb.stream.variables import compile_stream_template

        try:
            (compile_stream_template if context == "stream" else compile_template)(key)
        except VariableError as e:
            raise t.error("hash", str(e)) from None

    # ---- stream ----

    def stream(self, t: Table) -> StreamConfig:
        from prefork_lb.stream.variables import BUILTIN_FORMATS, compile_stream_log_format

        log_formats = _log_formats(t, BUILTIN_FORMATS, compile_stream_log_format)
        ups = t.table("upstreams")
        upstreams: dict[str, UpstreamConfig] = {}
        for name in list(ups.data):
            upstreams[name] = self.upstream(name, ups.table(name, default_empty=False), "stream")
        ups.finish()
        default_log = t.take("access_log", string, "off")
        default_format = t.take("log_format", string, "basic")
        servers = tuple(
            self.stream_server(i, st, upstreams, log_formats, default_log, default_format)
            for i, st in enumerate(t.table_list("servers"))
        )
        t.finish()
        return StreamConfig(upstreams=upstreams, servers=servers, log_formats=log_formats)

    def stream_server(
        self,
        index: int,
        t: Table,
        upstreams: dict[str, UpstreamConfig],
        log_formats: dict[str, str],
        default_log: str,
        default_format: str,
    ) -> StreamServerConfig:
        listen = self.listen(t)
        for i, lc in enumerate(listen):
            if lc.default_server:
                raise self.source.error(f"{t.key_path('listen')}[{i}]", "default_server is for http servers")
        target = t.take("proxy_pass", string)
        if target not in upstreams:
            try:
                addrs = _resolve(target)
            except ValueError as e:
                raise t.error(
                    "proxy_pass", f'"{target}" is neither a stream upstream nor an address: {e}'
                ) from None
            upstreams[target] = UpstreamConfig(
                name=target,
                method="round_robin",
                servers=tuple(UpstreamServer(address=a, name=target) for a in addrs),
                implicit=True,
                context="stream",
            )
        log_key = t.key_path("access_log") if t.has("access_log") else "stream.access_log"
        log_path = self.log_path(t.take("access_log", string, default_log))
        fmt = t.take("log_format", string, default_format)
        if fmt not in log_formats:
            raise t.error(
                "log_format", f'unknown stream log format "{fmt}" (define it in [stream.log_formats])'
            )
        server = StreamServerConfig(
            listen=tuple(listen),
            proxy_pass=target,
            proxy_connect_timeout_s=t.take("proxy_connect_timeout", _duration, 60.0),
            proxy_timeout_s=t.take("proxy_timeout", _duration, 600.0),
            proxy_buffer_size_bytes=t.take("proxy_buffer_size", _size, 16 * 1024),
            proxy_next_upstream=t.take("proxy_next_upstream", boolean, True),
            proxy_next_upstream_tries=t.take("proxy_next_upstream_tries", non_negative_int, 0),
            proxy_next_upstream_timeout_s=t.take("proxy_next_upstream_timeout", _duration, 0.0),
            proxy_responses=t.take("proxy_responses", non_negative_int, 0),
            proxy_requests=t.take("proxy_requests", non_negative_int, 0),
            udp_sessions=t.take("udp_sessions", positive_int, 4096),
            access_logs=()
            if log_path == "off"
            else (AccessLogConfig(log_path, fmt, log_formats[fmt], key=log_key),),
            index=index,
        )
        t.finish()
        if server.proxy_buffer_size_bytes < 1:
            raise t.error("proxy_buffer_size", "must be at least 1 byte")
        return server

    def _check_templates(self, t: Table, headers: tuple[tuple[str, str], ...]) -> None:
        """Checked where the table is written, so the error names that level (and file)."""
        from prefork_lb.http.variables import VariableError, compile_template

        for name, value in headers:
            try:
                compile_template(value)
            except VariableError as e:
                raise t.error("proxy_set_header", f"{name}: {e}") from None


def _parse_match(match: str) -> tuple[Any, str, re.Pattern[str] | None]:
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
        head, _, rest = v.strip().partition(" ")
        if not head.isascii() or not head.isdigit():
            raise ValueError('must be "CODE [TEXT|URL]", e.g. "301 https://example.com$request_uri"')
        code, text = int(head), (rest.strip() or None)
    else:
        raise ValueError('must be a status code or "CODE [TEXT|URL]"')
    if not 100 <= code <= 999:
        raise ValueError("status code must be between 100 and 999")
    if code in _REDIRECTS and not text:
        raise ValueError(f"a {code} redirect needs a URL")
    if text is not None:
        from prefork_lb.http.variables import VariableError, compile_template

        try:
            compile_template(text)
        except VariableError as e:
            raise ValueError(str(e)) from None
    return ReturnAction(status=code, text=text)


def _resolve(text: str) -> list[Address]:
    """One Address per resolved IP (nginx makes one peer per address of a hostname)."""
    addr = parse_address(text)
    if addr.family != "inet" or _is_ip(addr.host):
        return [addr]
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f'host "{addr.host}" not found: {e.strerror}') from None
    out: list[Address] = []
    for family, _, _, _, sa in infos:
        a = Address("inet6" if family == socket.AF_INET6 else "inet", str(sa[0]), addr.port)
        if a not in out:
            out.append(a)
    return out


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except OSError:
        return False


def _log_formats(
    t: Table, builtin: Mapping[str, str], compile_format: Callable[[str], object]
) -> dict[str, str]:
    """``[<context>.log_formats]``: the built-in formats plus the table, each compiled once
    here so an unknown variable is a config error naming the format."""
    from prefork_lb.http.variables import VariableError

    formats = t.table("log_formats")
    out = dict(builtin)
    for name in formats.data:
        text = formats.take(name, string)
        try:
            compile_format(text)
        except VariableError as e:
            raise formats.error(name, str(e)) from None
        out[name] = text
    formats.finish()
    return out


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


def _check_status_exposure(source: Source, http: HttpConfig) -> None:
    """A status location (api, metrics, dashboard) on a non-loopback address needs an allow
    list (security checklist): each shows the whole upstream state, the api can change it."""
    import ipaddress

    what = {"api": "the status API", "metrics": "the metrics page", "dashboard": "the dashboard"}
    for s in http.servers:
        for i, loc in enumerate(s.locations):
            if not loc.status or any(allow for allow, _ in loc.access):
                continue
            for lc in s.listen:
                if lc.address.family == "unix":
                    continue
                if not ipaddress.ip_address(lc.address.host).is_loopback:
                    raise source.error(
                        f"http.servers[{s.index}].locations[{i}].{loc.status}",
                        f"{what[loc.status]} listens on {lc.address.text}, which is not loopback: "
                        "add an allow list",
                    )


def _random_options(v: object) -> bool:
    if not isinstance(v, dict) or set(v) - {"two"} or not isinstance(v.get("two", False), bool):
        raise ValueError("must be a table such as { two = true }")
    return bool(v.get("two", False))


def _queue(v: object) -> tuple[int, float]:
    if not isinstance(v, dict) or set(v) - {"size", "timeout"} or "size" not in v:
        raise ValueError('must be a table such as { size = 100, timeout = "60s" }')
    size = positive_int(v["size"])
    return size, parse_duration_s(v.get("timeout", 60))


def _least_time(v: object) -> tuple[Any, bool]:
    words = v.split() if isinstance(v, str) else []
    if not words or words[0] not in ("header", "last_byte") or words[1:] not in ([], ["inflight"]):
        raise ValueError('must be "header", "last_byte", "header inflight" or "last_byte inflight"')
    return words[0], len(words) == 2


def _check_method_options(t: Table, method: str, servers: list[UpstreamServer]) -> None:
    """``servers``: one per TOML entry, so errors name ``servers[i]`` as written."""
    from prefork_lb.balance.registry import NO_BACKUP, SLOW_START

    for key, owner in (
        ("hash", "hash"),
        ("consistent", "hash"),
        ("random", "random"),
        ("least_time", "least_time"),
    ):
        if t.has(key) and method != owner:
            raise t.error(key, f'only applies to method = "{owner}" (method is "{method}")')
    for i, s in enumerate(servers):
        if s.backup and method in NO_BACKUP:
            raise t.source.error(
                f"{t.key_path('servers')}[{i}].backup",
                f'balancing method "{method}" does not support backup servers',
            )
        if s.slow_start_s and method not in SLOW_START:
            raise t.source.error(
                f"{t.key_path('servers')}[{i}].slow_start",
                f'slow_start is supported with method "round_robin", not "{method}"',
            )


def _check_listen_conflicts(source: Source, http: HttpConfig, stream: StreamConfig) -> None:
    http_keys = {lc.key: s.index for s in http.servers for lc in s.listen}
    for s in stream.servers:
        for lc in s.listen:
            if lc.key in http_keys:
                raise source.error(
                    f"stream.servers[{s.index}].listen",
                    f"{lc.address.text} is already an http listener (http.servers[{http_keys[lc.key]}])",
                )
    seen: dict[tuple[str, str, int], int] = {}
    for s in stream.servers:
        for lc in s.listen:
            if lc.key in seen:
                raise source.error(
                    f"stream.servers[{s.index}].listen",
                    f"duplicate listen {lc.address.text} (already stream.servers[{seen[lc.key]}])",
                )
            seen[lc.key] = s.index
    for hs in http.servers:
        for lc in hs.listen:
            if lc.udp or lc.so_keepalive:
                raise source.error(
                    f"http.servers[{hs.index}].listen", "udp and so_keepalive are stream parameters"
                )


def _check_zone_size(source: Source, size: int, http: HttpConfig, stream: StreamConfig) -> None:
    from prefork_lb.zone.layout import DEFAULT_ROWS, peer_capacity

    peers = sum(len(u.servers) for u in [*http.upstreams.values(), *stream.upstreams.values()])
    zones = len(http.servers) + len(stream.servers)  # each server's status zone takes a slot too
    capacity = peer_capacity(size, DEFAULT_ROWS)
    if peers + zones > capacity:
        raise ConfigError(
            source.main_path,
            "zone_size",
            f"{size} bytes hold {capacity} slots, the configuration needs {peers + zones}: "
            f"{peers} upstream peers + {zones} server status zones",
        )


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


__all__ = ["DEFAULT_CONFIG_PATH", "ConfigError", "load_config"]
