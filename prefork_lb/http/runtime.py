"""Per-worker runtime tables built once from the Config (after fork, before serving).

Everything the request path needs is looked up here by identity, never rebuilt: routers
per listening address, location matchers per server, and per location its balancer, pool,
compiled proxy headers and access-log writers. Peer state lives in the shared zone (one
copy for all workers); keep-alive pools are per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.peers import PeerGroup
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Config, LocationConfig, ServerConfig, UpstreamConfig
from prefork_lb.http.accesslog import AccessLogs, AccessLogWriter, LogFormat, compile_log_format
from prefork_lb.http.headers import HeaderPlan
from prefork_lb.http.routing import LocationMatcher, ServerRouter, build_routers
from prefork_lb.http.upstream import KeepalivePool, RequestQueue
from prefork_lb.http.variables import Template, compile_template
from prefork_lb.zone.slots import peer_keys
from prefork_lb.zone.zone import Zone


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
    logs: tuple[tuple[AccessLogWriter, LogFormat], ...]


@dataclass(slots=True)
class HttpRuntime:
    config: Config
    routers: dict[tuple[str, str, int], ServerRouter]
    matchers: dict[int, LocationMatcher]  # id(ServerConfig) -> matcher
    locations: dict[int, LocationRuntime]  # id(LocationConfig) -> runtime
    upstreams: dict[str, UpstreamRuntime]
    access_logs: AccessLogs
    draining: bool = False
    formats: dict[str, LogFormat] = field(default_factory=dict)

    def matcher(self, server: ServerConfig) -> LocationMatcher:
        return self.matchers[id(server)]


def build_runtime(
    config: Config, zone: Zone | None = None, slots: dict[str, int] | None = None, row: int = 0
) -> HttpRuntime:
    """``zone``/``slots``/``row`` come from the master; without them each group gets a
    private zone (unit tests and tools)."""
    upstreams = {}
    for name, up in config.http.upstreams.items():
        if zone is not None and slots is not None:
            group = PeerGroup.build(up, zone, [slots[k] for k in peer_keys(up)], row)
        else:
            group = PeerGroup.build(up)
        queue = RequestQueue(up.queue_size, up.queue_timeout_s) if up.queue_size else None
        upstreams[name] = UpstreamRuntime(up, group, make_balancer(up, group), KeepalivePool(up), queue)
    logs = AccessLogs()
    formats: dict[str, LogFormat] = {}
    locations: dict[int, LocationRuntime] = {}
    matchers: dict[int, LocationMatcher] = {}
    for server in config.http.servers:
        matchers[id(server)] = LocationMatcher(server.locations)
        for loc in server.locations:
            writers = []
            for al in loc.access_logs:
                fmt = formats.get(al.format_name)
                if fmt is None:
                    fmt = formats[al.format_name] = compile_log_format(al.format)
                writers.append((logs.get(al.path), fmt))
            proxy = loc.proxy_pass
            ret = loc.return_
            locations[id(loc)] = LocationRuntime(
                config=loc,
                upstream=upstreams[proxy.upstream] if proxy else None,
                plan=HeaderPlan.compile(loc.proxy_set_header) if proxy else None,
                return_text=compile_template(ret.text) if ret and ret.text else None,
                logs=tuple(writers),
            )
    return HttpRuntime(
        config=config,
        routers=build_routers(config.http.servers),
        matchers=matchers,
        locations=locations,
        upstreams=upstreams,
        access_logs=logs,
        formats=formats,
    )
