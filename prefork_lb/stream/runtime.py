"""Per-worker runtime of the stream servers: balancers over the shared zone, log writers.

Built once per worker from the Config, like ``http/runtime.py``; every pick and release
holds the zone lock, so stream peers share state across workers exactly as HTTP peers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, free
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Config, StreamServerConfig, UpstreamConfig
from prefork_lb.http.accesslog import AccessLogs, AccessLogWriter, LogFormat
from prefork_lb.stream.session import Session
from prefork_lb.stream.variables import compile_stream_log_format
from prefork_lb.zone.slots import peer_keys
from prefork_lb.zone.zone import Zone

log = logging.getLogger("prefork_lb.error")


@dataclass(slots=True)
class StreamUpstream:
    config: UpstreamConfig
    group: PeerGroup
    balancer: Balancer

    def pick(self, sel: Selection, session: Session, now: float) -> Peer | None:
        zone = self.group.zone
        zone.lock()
        try:
            return self.balancer.pick(sel, session, int(now))  # type: ignore[arg-type]
        finally:
            zone.unlock()

    def release(self, sel: Selection, peer: Peer, failed: bool, now: float) -> None:
        zone = self.group.zone
        zone.lock()
        try:
            free(sel, peer, failed, int(now), int(now * 1000))
        finally:
            zone.unlock()


@dataclass(slots=True)
class StreamServerRuntime:
    config: StreamServerConfig
    upstream: StreamUpstream
    logs: tuple[tuple[AccessLogWriter, LogFormat], ...]

    def log(self, session: Session) -> None:
        for writer, fmt in self.logs:
            writer.write(fmt.render(session))  # type: ignore[arg-type]

    def log_error(self, message: str, *args: object) -> None:
        log.error(message, *args)


def build_stream_runtime(
    config: Config, zone: Zone | None, slots: dict[str, int] | None, row: int, logs: AccessLogs
) -> dict[tuple[str, str, int], StreamServerRuntime]:
    """Runtime per stream listen key."""
    upstreams: dict[str, StreamUpstream] = {}
    for name, up in config.stream.upstreams.items():
        if zone is not None and slots is not None:
            group = PeerGroup.build(up, zone, [slots[k] for k in peer_keys(up)], row)
        else:
            group = PeerGroup.build(up)
        upstreams[name] = StreamUpstream(up, group, make_balancer(up, group))
    formats: dict[str, LogFormat] = {}
    out: dict[tuple[str, str, int], StreamServerRuntime] = {}
    for server in config.stream.servers:
        writers = []
        for al in server.access_logs:
            fmt = formats.get(al.format_name)
            if fmt is None:
                fmt = formats[al.format_name] = compile_stream_log_format(al.format)
            writers.append((logs.get(al.path), fmt))
        rt = StreamServerRuntime(server, upstreams[server.proxy_pass], tuple(writers))
        for lc in server.listen:
            out[lc.key] = rt
    return out
