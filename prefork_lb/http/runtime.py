"""Per-worker runtime tables built once from the Config (after fork, before serving).

Everything the request path needs is looked up here by identity, never rebuilt: routers
per listening address, location matchers per server, and per location its balancer, pool,
compiled proxy headers and access-log writers. Peer state lives in the shared zone (one
copy for all workers); keep-alive pools are per worker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.peers import PeerGroup
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import (
    Config,
    LocationConfig,
    ServerConfig,
    StreamServerConfig,
    UpstreamConfig,
    zone_name,
)
from prefork_lb.http.accesslog import AccessLogs, AccessLogWriter, LogFormat, compile_log_format
from prefork_lb.http.cache_path import CachePlan, build_plan
from prefork_lb.http.header_rules import DEFAULT_RULES, ResponseRules, compile_added, compile_rules
from prefork_lb.http.headers import HeaderPlan
from prefork_lb.http.realip import RealIpRule
from prefork_lb.http.routing import LocationMatcher, ServerRouter, build_routers
from prefork_lb.http.template import Template, compile_template
from prefork_lb.http.upstream import KeepalivePool, RequestQueue
from prefork_lb.http.upstream_tls import UpstreamTls, upstream_tls_table
from prefork_lb.limits.engine import LocationLimits, Tables
from prefork_lb.zone import layout as L
from prefork_lb.zone.slots import peer_keys
from prefork_lb.zone.stats import record_zone
from prefork_lb.zone.zone import Zone

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class UpstreamRuntime:
    config: UpstreamConfig
    group: PeerGroup
    balancer: Balancer
    pool: KeepalivePool
    queue: RequestQueue | None


@dataclass(slots=True)
class LocationRuntime:
    config: LocationConfig
    upstream: UpstreamRuntime | None
    plan: HeaderPlan | None
    return_text: Template | None
    logs: tuple[tuple[AccessLogWriter, LogFormat, Template | None], ...]  # writer, format, if=
    access: tuple[tuple[bool, IPNetwork | None], ...] = ()  # None = "all"
    tls: UpstreamTls | None = None  # proxy_pass "https://..." (http/upstream_tls.py)
    headers: ResponseRules = DEFAULT_RULES  # add_header, hide/pass, proxy_redirect (header_rules.py)
    limits: LocationLimits | None = None  # limit_req / limit_conn (limits/engine.py)
    cache: CachePlan | None = None  # issue 18: proxy_cache (http/cache_path.py); None: no cost

    def allows(self, addr: str) -> bool:
        """allow/deny in order, first match wins (nginx); no match: allowed."""
        if not self.access:
            return True
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            ip = None
        for allow, net in self.access:
            if net is None or (ip is not None and ip.version == net.version and ip in net):
                return allow
        return True


@dataclass(slots=True)
class StatusZone:
    """A server's status zone: its record (under the lock) and this worker's
    "processing" cell (no lock: one writer)."""

    name: str
    base: int
    processing: int

    def begin(self, mv: memoryview) -> None:
        mv[self.processing] += 1

    def end(self, zone: Zone, status: int, received: int, sent: int, discarded: bool) -> None:
        zone.lock()
        try:
            self.end_locked(zone.mv, status, received, sent, discarded)
        finally:
            zone.unlock()

    def end_locked(self, mv: memoryview, status: int, received: int, sent: int, discarded: bool) -> None:
        """``end`` for a caller that holds the zone lock already (the proxy's last release)."""
        mv[self.processing] -= 1
        record_zone(mv, self.base, status, received, sent, discarded)


def status_zones(
    servers: Sequence[ServerConfig | StreamServerConfig],
    context: str,
    zone: Zone,
    slots: dict[str, int],
    row: int,
) -> dict[int, StatusZone]:
    out = {}
    for server in servers:
        name = zone_name(server)
        slot = slots[f"zone\0{context}\0{name}"]
        out[id(server)] = StatusZone(name, L.peer_base(slot), L.active_index(row, zone.peers, slot))
    return out


@dataclass(slots=True)
class HttpRuntime:
    config: Config
    routers: dict[tuple[str, str, int], ServerRouter]
    matchers: dict[int, LocationMatcher]  # id(ServerConfig) -> matcher
    locations: dict[int, LocationRuntime]  # id(LocationConfig) -> runtime
    upstreams: dict[str, UpstreamRuntime]
    access_logs: AccessLogs
    zone: Zone
    row: int
    zones: dict[int, StatusZone]  # id(ServerConfig) -> its status zone
    accepted_cell: int = 0  # this worker's row: connection counters (one writer, no lock)
    active_cell: int = 0
    idle_cell: int = 0
    draining: bool = False
    formats: dict[str, LogFormat] = field(default_factory=dict)
    server_headers: dict[int, ResponseRules] = field(default_factory=dict)  # id(server): add_header
    streams: dict[tuple[str, str, int], Any] = field(default_factory=dict)  # set by the worker
    realip: dict[int, RealIpRule] = field(default_factory=dict)  # id(ServerConfig); empty: no cost
    caches: dict[str, Any] = field(default_factory=dict)  # zone name -> cache.store.CacheZone

    def matcher(self, server: ServerConfig) -> LocationMatcher:
        return self.matchers[id(server)]


def _has_rules(loc: LocationConfig) -> bool:
    """Does ``loc`` need its own header rules (else ``DEFAULT_RULES``: nothing to compile)?"""
    return bool(
        loc.add_header
        or loc.proxy_hide_header
        or loc.proxy_pass_header
        or (loc.proxy_pass is not None and loc.proxy_redirect)
    )


def build_runtime(
    config: Config, zone: Zone, slots: dict[str, int], row: int, limit_tables: Tables | None = None
) -> HttpRuntime:
    """``zone``/``slots``/``row`` and the limit tables come from the master (the worker's spec)."""
    upstreams = {}
    for name, up in config.http.upstreams.items():
        group = PeerGroup.build(up, zone, [slots[k] for k in peer_keys(up)], row)
        queue = RequestQueue(up.queue_size, up.queue_timeout_s) if up.queue_size else None
        upstreams[name] = UpstreamRuntime(
            up, group, make_balancer(up, group, compile_template), KeepalivePool(up), queue
        )
    logs = AccessLogs()
    formats: dict[str, LogFormat] = {}
    locations: dict[int, LocationRuntime] = {}
    matchers: dict[int, LocationMatcher] = {}
    tls = upstream_tls_table([loc for server in config.http.servers for loc in server.locations])
    for server in config.http.servers:
        matchers[id(server)] = LocationMatcher(server.locations)
        for loc in server.locations:
            writers = []
            for al in loc.access_logs:
                fmt = formats.get(al.format_name)
                if fmt is None:
                    fmt = formats[al.format_name] = compile_log_format(al.format)
                cond = compile_template(al.condition) if al.condition else None
                writers.append((logs.get(al.path, al.buffer_bytes, al.flush_s), fmt, cond))
            proxy = loc.proxy_pass
            ret = loc.return_
            locations[id(loc)] = LocationRuntime(
                config=loc,
                upstream=upstreams[proxy.upstream] if proxy else None,
                plan=HeaderPlan.compile(loc.proxy_set_header) if proxy else None,
                return_text=compile_template(ret.text) if ret and ret.text else None,
                logs=tuple(writers),
                access=tuple(
                    (allow, None if net == "all" else ipaddress.ip_network(net, strict=False))
                    for allow, net in loc.access
                ),
                tls=tls.get(id(loc)),
                headers=compile_rules(loc) if _has_rules(loc) else DEFAULT_RULES,
                limits=LocationLimits.build(loc, config.http, limit_tables or {}, row),
            )
    return HttpRuntime(
        config=config,
        routers=build_routers(config.http.servers),
        matchers=matchers,
        locations=locations,
        upstreams=upstreams,
        access_logs=logs,
        zone=zone,
        row=row,
        zones=status_zones(config.http.servers, "http", zone, slots, row),
        formats=formats,
        server_headers={id(s): compile_added(s.add_header) for s in config.http.servers if s.add_header},
        accepted_cell=L.row_base(row, zone.peers) + L.R_ACCEPTED,
        active_cell=L.row_base(row, zone.peers) + L.R_ACTIVE,
        idle_cell=L.row_base(row, zone.peers) + L.R_IDLE,
        realip={id(s): RealIpRule(s.realip) for s in config.http.servers if s.realip is not None},
    )


def attach_cache_plans(runtime: HttpRuntime) -> None:
    """Issue 18: once ``runtime.caches`` holds the worker's open zones, each location with
    ``proxy_cache`` gets its compiled plan (http/cache_path.py); the others keep None."""
    for lr in runtime.locations.values():
        loc = lr.config
        if loc.proxy_cache:
            lr.cache = build_plan(loc, runtime.caches)
            if lr.cache is None and loc.proxy_pass is not None:  # the zone did not open here
                import logging

                logging.getLogger("prefork_lb.error").error(
                    'cache zone "%s" is not open in this worker: location "%s" is served uncached',
                    loc.proxy_cache,
                    loc.match,
                )
