"""The validated configuration as frozen dataclasses.

Rules:
- Everything here is immutable and built once by ``config.load``; workers only read it.
- TOML keys mirror nginx directive names; field names add the unit (``*_s`` seconds,
  ``*_bytes``), so ``proxy_read_timeout = "60s"`` becomes ``proxy_read_timeout_s = 60.0``.
- Paths are absolute (resolved against the prefix at load time).
- Locations carry fully merged settings: http -> server -> location inheritance happens at
  load time, so the request path never walks parents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from prefork_lb.health.model import HealthCheck

LingeringClose = Literal["off", "on", "always"]
LINGERING_CLOSE: tuple[LingeringClose, ...] = ("off", "on", "always")
Method = Literal["round_robin", "least_conn", "ip_hash", "hash", "random", "least_time"]
NEXT_UPSTREAM_CONDITIONS = frozenset(
    {
        "error",
        "timeout",
        "invalid_header",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_403",
        "http_404",
        "http_429",
        "non_idempotent",
        "off",
    }
)


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP (IPv4/IPv6) or unix-socket address as written in the config."""

    family: Literal["inet", "inet6", "unix"]
    host: str  # IP literal for inet/inet6, path for unix
    port: int  # 0 for unix

    @property
    def text(self) -> str:
        """The address as nginx prints it ($upstream_addr, error logs)."""
        if self.family == "unix":
            return f"unix:{self.host}"
        if self.family == "inet6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    address: Address
    default_server: bool = False
    reuseport: bool = False
    backlog: int = 511  # nginx's default on Linux
    udp: bool = False  # stream only
    so_keepalive: bool = False  # stream only: SO_KEEPALIVE on accepted connections
    ssl: bool = False  # TLS termination; one "ssl" listen makes the whole address TLS (nginx)

    @property
    def key(self) -> tuple[str, str, int]:
        """(family, host, port); UDP families are "inet-udp"/"inet6-udp" (TCP and UDP on one
        port are two sockets)."""
        family = f"{self.address.family}-udp" if self.udp else self.address.family
        return (family, self.address.host, self.address.port)


SslVerifyClient = Literal["off", "on", "optional"]
SSL_PROTOCOLS: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")


@dataclass(frozen=True, slots=True)
class SslConfig:
    """A server's ``ssl_*`` keys (http and stream alike), paths absolute. The SSLContexts
    themselves are built from it in the master (``prefork_lb.tls.contexts``)."""

    certificates: tuple[str, ...]  # ssl_certificate
    keys: tuple[str, ...]  # ssl_certificate_key, one per certificate
    protocols: tuple[str, ...] = SSL_PROTOCOLS
    ciphers: str = "HIGH:!aNULL:!MD5"
    session_cache: str = "none"  # "off" | "none" | "shared:NAME:SIZE"
    session_timeout_s: float = 300.0
    session_tickets: bool = True
    client_certificate: str | None = None
    verify_client: SslVerifyClient = "off"
    key_path: str = field(default="", compare=False)  # "http.servers[0]", for messages


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    address: Address
    name: str  # the literal server string from the config (hash rings use it)
    weight: int = 1
    max_fails: int = 1
    fail_timeout_s: float = 10.0
    max_conns: int = 0
    backup: bool = False
    down: bool = False
    slow_start_s: float = 0.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    method: Method
    servers: tuple[UpstreamServer, ...]
    keepalive: int = 0  # idle connections cached per worker; 0 = no pooling
    keepalive_requests: int = 1000
    keepalive_timeout_s: float = 60.0
    keepalive_time_s: float = 3600.0
    implicit: bool = False  # created for `proxy_pass http://ADDR` without a named group
    hash_key: str = ""  # method "hash": the key template
    consistent: bool = False  # method "hash": ketama ring
    random_two: bool = False  # method "random": power of two choices
    least_time: Literal["header", "last_byte"] = "header"
    least_time_inflight: bool = False
    queue_size: int = 0  # requests allowed to wait per worker when every server is at max_conns
    queue_timeout_s: float = 60.0
    context: Literal["http", "stream"] = "http"
    checked: bool = False  # some active health check probes this group (Config.health_checks)


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    path: str  # absolute path, or "stderr"/"stdout"
    format_name: str
    format: str
    buffer_bytes: int = 0  # nginx's buffer=: write when full (0: every line)
    flush_s: float = 1.0  # nginx's flush=: buffered lines wait at most this long
    condition: str | None = None  # nginx's if=: logged when it renders neither "" nor "0"
    key: str = field(default="", compare=False)  # where it was configured, for messages


@dataclass(frozen=True, slots=True)
class ProxyPass:
    upstream: str  # name of an UpstreamConfig (implicit groups are named by their address)
    uri: str | None  # the URI part of `proxy_pass http://backend/uri/`, None when absent
    host_header: str  # $proxy_host: the group name or host:port as written
    ssl: bool = False  # "https://": TLS to the upstream (http/upstream_tls.py)


@dataclass(frozen=True, slots=True)
class ReturnAction:
    status: int
    text: str | None  # body for non-redirects, URL for 301/302/303/307/308


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """One ``error_page`` target (nginx: ``error_page CODES [=[CODE]] URI|@name|URL``)."""

    target: str  # "/uri[?args]", "@name" or an absolute URL (a 302, or =301/302/303/307/308)
    status: int | None = None  # "=CODE": the answer's status
    from_target: bool = False  # "=" alone: the status is whatever the target answers


@dataclass(frozen=True, slots=True)
class LimitReqZone:
    """``[http.limit_req_zones.NAME]``: nginx's ``limit_req_zone key zone=NAME:size rate=``."""

    name: str
    key: str  # a template ("$binary_remote_addr"); an empty value is not limited
    size_bytes: int
    rate_mrps: int  # milli-requests per second, as nginx stores it (r/m: R*1000/60)
    rate: str  # as written, for messages


@dataclass(frozen=True, slots=True)
class LimitConnZone:
    """``[http.limit_conn_zones.NAME]``: nginx's ``limit_conn_zone key zone=NAME:size``."""

    name: str
    key: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class CachePathConfig:
    """``[http.proxy_cache_paths.NAME]``: nginx's ``proxy_cache_path`` (config/load_cache.py)."""

    name: str  # the keys_zone name
    path: str  # absolute (a relative path is relative to the prefix, as nginx)
    levels: tuple[int, ...] = ()  # e.g. (1, 2): directory name lengths, from the END of the hex md5
    keys_zone_bytes: int = 1024 * 1024  # the shared index: ~8000 keys per MB (cache/index.py)
    inactive_s: float = 600.0  # removed by the manager this long after its last use
    max_size_bytes: int = 0  # 0: no limit
    min_free_bytes: int = 0  # 0: no limit
    use_temp_path: bool = False  # accepted for nginx configs; temp files are always in <path>/tmp

    @property
    def index_key(self) -> tuple[str, str, tuple[int, ...], int]:
        """What the master keeps an index across a reload by (name, path, levels, size)."""
        return (self.name, self.path, self.levels, self.keys_zone_bytes)


@dataclass(frozen=True, slots=True)
class LimitReq:
    """``limit_req = { zone, burst, nodelay | delay, }`` in a location (or inherited)."""

    zone: str
    burst: int = 0
    delay: int | None = 0  # requests passed without delay beyond the rate; None = nodelay


@dataclass(frozen=True, slots=True)
class LimitConn:
    zone: str
    number: int


@dataclass(frozen=True, slots=True)
class RealIp:
    """A server's realip settings (nginx's ngx_http_realip_module)."""

    trusted: tuple[str, ...]  # set_real_ip_from: CIDRs (an address alone is a /32 or /128)
    header: str = "X-Real-IP"  # real_ip_header (nginx's default)
    recursive: bool = False


@dataclass(frozen=True, slots=True)
class LocationConfig:
    match: str  # as written: "/", "= /x", "^~ /x", "~ re", "~* re", "@name"
    modifier: Literal["", "=", "^~", "~", "~*", "@"]
    pattern: str
    regex: re.Pattern[str] | None
    proxy_pass: ProxyPass | None
    return_: ReturnAction | None
    # merged http -> server -> location settings
    proxy_connect_timeout_s: float = 60.0
    proxy_read_timeout_s: float = 60.0
    proxy_send_timeout_s: float = 60.0
    proxy_next_upstream: frozenset[str] = frozenset({"error", "timeout"})
    proxy_next_upstream_tries: int = 0
    proxy_next_upstream_timeout_s: float = 0.0
    proxy_set_header: tuple[tuple[str, str], ...] = ()
    proxy_http_version: str = "1.1"  # accepted for nginx configs; upstream requests are HTTP/1.1
    # TLS to upstreams (proxy_pass "https://..."; http/upstream_tls.py)
    proxy_ssl_verify: bool = False
    proxy_ssl_trusted_certificate: str = ""  # absolute path once loaded
    proxy_ssl_server_name: bool = False
    proxy_ssl_name: str = "$proxy_host"
    proxy_ssl_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    proxy_ssl_ciphers: str = "DEFAULT"
    proxy_ssl_session_reuse: bool = True
    proxy_buffer_size_bytes: int = 8192
    client_max_body_size_bytes: int = 1024 * 1024
    client_body_buffer_size_bytes: int = 16 * 1024
    client_body_timeout_s: float = 60.0
    send_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    keepalive_requests: int = 1000
    lingering_close: LingeringClose = "on"  # after a response sent before the body was read
    lingering_time_s: float = 30.0  # reading and discarding, in total
    lingering_timeout_s: float = 5.0  # one wait for more client data
    access_logs: tuple[AccessLogConfig, ...] = ()
    status: Literal["", "api", "metrics", "dashboard"] = ""  # served by prefork-lb itself
    access: tuple[tuple[bool, str], ...] = ()  # (allow?, CIDR or "all") in order, first match wins
    api_write: bool = False  # issue 19: `api = { write = true }` (nginx `api write=on`)
    # issue 16, rewrite module (http/rewrite.py): the location's compiled rewrite_rules
    rewrite: Any = field(default=None, compare=False)  # rewrite.Block | None
    rewrite_log: bool = False
    error_page: dict[int, ErrorPage] = field(default_factory=dict)  # inherited as a whole
    proxy_intercept_errors: bool = False
    # response header rules (http/header_rules.py), inherited all or nothing as in nginx
    add_header: tuple[tuple[str, str, bool], ...] = ()  # (name, value template, always)
    proxy_hide_header: tuple[str, ...] = ()
    proxy_pass_header: tuple[str, ...] = ()
    # "default" entries and (prefix, replacement template) pairs in order; () = "off"
    proxy_redirect: tuple[str | tuple[str, str], ...] = ("default",)
    # limit_req / limit_conn (limits/engine.py); inherited whole from the outer level, as nginx
    limit_req: tuple[LimitReq, ...] = ()
    limit_req_status: int = 503
    limit_req_dry_run: bool = False
    limit_req_log_level: str = "error"
    limit_conn: tuple[LimitConn, ...] = ()
    limit_conn_status: int = 503
    limit_conn_dry_run: bool = False
    limit_conn_log_level: str = "error"
    # issue 18, proxy_cache (config/load_proxy_cache.py, cache/policy.py, http/cache_path.py)
    proxy_cache: str = ""  # keys_zone name; "" = off
    proxy_cache_key: str = "$scheme$proxy_host$request_uri"
    proxy_cache_valid: tuple[tuple[frozenset[int] | None, int], ...] = ()  # (codes | None=any, seconds)
    proxy_cache_methods: frozenset[bytes] = frozenset({b"GET", b"HEAD"})
    proxy_cache_min_uses: int = 1
    proxy_cache_bypass: tuple[str, ...] = ()
    proxy_no_cache: tuple[str, ...] = ()
    proxy_cache_lock: bool = False
    proxy_cache_lock_timeout_s: float = 5.0
    proxy_cache_lock_age_s: float = 5.0
    proxy_cache_use_stale: frozenset[str] = frozenset()
    proxy_cache_background_update: bool = False
    proxy_cache_revalidate: bool = False
    proxy_cache_convert_head: bool = True
    proxy_ignore_headers: frozenset[str] = frozenset()  # lowercased names
    proxy_force_ranges: bool = False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[ListenConfig, ...]
    server_names: tuple[str, ...]
    locations: tuple[LocationConfig, ...]
    client_header_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    # the server's own lingering settings: for answers given before a location matched
    lingering_close: LingeringClose = "on"
    lingering_time_s: float = 30.0
    lingering_timeout_s: float = 5.0
    index: int = 0  # position in [[http.servers]], for messages
    ssl: SslConfig | None = None
    rewrite: Any = field(default=None, compare=False)  # server-level rewrite_rules (rewrite.Block)
    error_page: dict[int, ErrorPage] = field(default_factory=dict)  # answers before a location
    # the server level's add_header: for answers given before a location matched (404)
    add_header: tuple[tuple[str, str, bool], ...] = ()
    realip: RealIp | None = None  # set_real_ip_from / real_ip_header / real_ip_recursive


def zone_name(server: ServerConfig | StreamServerConfig) -> str:
    """A server's status zone: its first server_name, else its first listen address."""
    names: tuple[str, ...] = getattr(server, "server_names", ())
    if names and names[0] and not names[0].startswith("~"):
        return names[0]
    return server.listen[0].address.text


@dataclass(frozen=True, slots=True)
class HttpConfig:
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    servers: tuple[ServerConfig, ...] = ()
    log_formats: dict[str, str] = field(default_factory=dict)
    health_checks: tuple[HealthCheck, ...] = ()  # active checks (health/model.py)
    # $name -> http.variables.Variable for [http.maps.*] and ``set`` (installed at load)
    user_variables: dict[str, Any] = field(default_factory=dict, compare=False)
    limit_req_zones: dict[str, LimitReqZone] = field(default_factory=dict)
    limit_conn_zones: dict[str, LimitConnZone] = field(default_factory=dict)
    cache_paths: dict[str, CachePathConfig] = field(default_factory=dict)  # proxy_cache_path

    def limit_zone_sizes(self) -> dict[tuple[int, str], int]:
        """(kind, name) -> size: what the master's limits/table.TableSet allocates."""
        from prefork_lb.limits.table import KIND_CONN, KIND_REQ

        out = {(KIND_REQ, z.name): z.size_bytes for z in self.limit_req_zones.values()}
        out.update({(KIND_CONN, z.name): z.size_bytes for z in self.limit_conn_zones.values()})
        return out


@dataclass(frozen=True, slots=True)
class StreamServerConfig:
    listen: tuple[ListenConfig, ...]
    proxy_pass: str  # upstream name (implicit groups are named by their address)
    proxy_connect_timeout_s: float = 60.0
    proxy_timeout_s: float = 600.0
    proxy_buffer_size_bytes: int = 16 * 1024
    proxy_next_upstream: bool = True
    proxy_next_upstream_tries: int = 0
    proxy_next_upstream_timeout_s: float = 0.0
    proxy_responses: int = 0  # UDP: expected replies per client datagram, 0 = unlimited
    proxy_requests: int = 0  # UDP: client datagrams per session, 0 = unlimited
    udp_sessions: int = 4096  # UDP: session table bound per listener per worker (oldest expire)
    access_logs: tuple[AccessLogConfig, ...] = ()
    index: int = 0
    ssl: SslConfig | None = None
    ssl_handshake_timeout_s: float = 60.0  # nginx's stream ssl_handshake_timeout
    ssl_preread: bool = False  # read the ClientHello for $ssl_preread_* (no termination)
    preread_timeout_s: float = 30.0
    upstream_ssl: StreamUpstreamSsl | None = None  # proxy_ssl = true: TLS to the upstream


@dataclass(frozen=True, slots=True)
class StreamUpstreamSsl:
    """A stream server's ``proxy_ssl_*`` settings (nginx's stream proxy module)."""

    verify: bool = False
    trusted_certificate: str = ""  # absolute path once loaded
    server_name: bool = False  # send SNI
    name: str = ""  # checked (verify) and sent as SNI; nginx's default: the proxy_pass host
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ciphers: str = "DEFAULT"
    session_reuse: bool = True


@dataclass(frozen=True, slots=True)
class StreamConfig:
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    servers: tuple[StreamServerConfig, ...] = ()
    log_formats: dict[str, str] = field(default_factory=dict)
    health_checks: tuple[HealthCheck, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    path: str  # the main config file, absolute
    prefix: str  # directory relative paths resolve against
    workers: int
    pid_path: str
    error_log_path: str  # absolute path, or "stderr"
    error_log_level: str
    daemon: bool
    worker_connections: int
    worker_shutdown_timeout_s: float
    http: HttpConfig
    stream: StreamConfig = field(default_factory=StreamConfig)
    zone_size_bytes: int = 8 * 1024 * 1024
    user: str | None = None  # workers drop to this user when the master runs as root
    group: str | None = None
    worker_rlimit_nofile: int = 0
    worker_heartbeat_timeout_s: float = 30.0
    converted: str = ""  # the TOML an nginx.conf became (``-c nginx.conf``), for -T
    notes: tuple[str, ...] = ()  # its conversion report: logged as warnings at load
    origins: dict[str, str] = field(default_factory=dict)  # its key paths -> "nginx.conf:LINE"
    # TLS listen key -> prefork_lb.tls.contexts.ListenTls, built by load_config in the master
    # before fork (ticket keys shared by all workers); empty without TLS listeners
    tls: dict[tuple[str, str, int], Any] = field(default_factory=dict, compare=False, repr=False)

    def log_paths(self) -> list[str]:
        """Every log file a worker writes or reopens (error log and access logs)."""
        paths = {self.error_log_path}
        for server in self.http.servers:
            for loc in server.locations:
                paths.update(al.path for al in loc.access_logs)
        for ss in self.stream.servers:
            paths.update(al.path for al in ss.access_logs)
        return sorted(paths)

    def log_files(self) -> dict[str, str]:
        """Every log file path (as ``log_paths``) -> the key that configures it first."""
        out = {self.error_log_path: "error_log"}
        for server in self.http.servers:
            for loc in server.locations:
                for al in loc.access_logs:
                    out.setdefault(al.path, al.key)
        for ss in self.stream.servers:
            for al in ss.access_logs:
                out.setdefault(al.path, al.key)
        return out

    files: tuple[str, ...] = ()  # every file read (main + includes), for messages

    @property
    def listen_keys(self) -> set[tuple[str, str, int]]:
        keys = {lc.key for server in self.http.servers for lc in server.listen}
        return keys | {lc.key for server in self.stream.servers for lc in server.listen}

    def health_checks(self) -> list[HealthCheck]:
        return [*self.http.health_checks, *self.stream.health_checks]

    def all_upstreams(self) -> list[UpstreamConfig]:
        return [*self.http.upstreams.values(), *self.stream.upstreams.values()]

    def all_listens(self) -> list[ListenConfig]:
        return [lc for s in self.http.servers for lc in s.listen] + [
            lc for s in self.stream.servers for lc in s.listen
        ]
