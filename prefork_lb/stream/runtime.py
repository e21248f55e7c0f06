"""Per-worker runtime of the stream servers: balancers over the shared zone, log writers.

Built once per worker from the Config, like ``http/runtime.py``; every pick and release
holds the zone lock, so stream peers share state across workers exactly as HTTP peers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.members import Membership, attach, refresh_locked, retarget
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, free, log_disabled
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Config, StreamServerConfig, UpstreamConfig
from prefork_lb.http.accesslog import AccessLogs, AccessLogWriter, LogFormat
from prefork_lb.stream.session import Session, StreamAttempt
from prefork_lb.stream.upstream_tls import StreamUpstreamTls
from prefork_lb.stream.variables import compile_stream_log_format, compile_stream_template
from prefork_lb.zone.servers import ServerTable
from prefork_lb.zone.slots import peer_keys
from prefork_lb.zone.stats import record_stream_peer
from prefork_lb.zone.zone import Zone

if TYPE_CHECKING:
    from prefork_lb.http.runtime import StatusZone

log = logging.getLogger("prefork_lb.error")


@dataclass(slots=True)
class StreamUpstream:
    config: UpstreamConfig
    group: PeerGroup
    balancer: Balancer
    members: Membership | None = None  # issue 19: runtime server list (balance/members.py)

    def pick(self, sel: Selection, session: Session, now: float) -> Peer | None:
        zone = self.group.zone
        zone.lock()
        try:
            m = self.members
            if m is not None:  # members.py rules 2-3
                if m.mv[m.word] != m.seen:  # one word read
                    refresh_locked(self)
                if sel.group is not self.group:
                    retarget(sel, self.group)
            return self.balancer.pick(sel, session, int(now))
        finally:
            zone.unlock()

    def release(
        self, sel: Selection, peer: Peer, failed: bool, now: float, attempt: StreamAttempt | None = None
    ) -> None:
        zone = self.group.zone
        zone.lock()
        try:
            if attempt is not None and not failed:
                record_stream_peer(
                    peer._mv,
                    peer._b,
                    attempt.bytes_sent,
                    attempt.bytes_received,
                    _ms(attempt.connect_time_s),
                    _ms(attempt.first_byte_time_s),
                    int(attempt.session_time_s * 1000),
                )
            disabled = free(sel, peer, failed, int(now), int(now * 1000))
        finally:
            zone.unlock()
        if disabled:
            log_disabled(peer, "connecting to upstream")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


@dataclass(slots=True)
class StreamServerRuntime:
    config: StreamServerConfig
    upstream: StreamUpstream
    logs: tuple[tuple[AccessLogWriter, LogFormat], ...]
    zone: StatusZone
    upstream_tls: StreamUpstreamTls | None = None  # proxy_ssl = true (stream/upstream_tls.py)

    def begin(self) -> None:
        self.zone.begin(self.upstream.group.zone.mv)

    def end(self, session: Session) -> None:
        """The session is over: status zone totals, then the access log."""
        self.zone.end(
            self.upstream.group.zone, session.status, session.bytes_received, session.bytes_sent, False
        )
        self.log(session)

    def log(self, session: Session) -> None:
        for writer, fmt in self.logs:
            writer.write(fmt.render(session))  # type: ignore[arg-type]

    def log_error(self, message: str, *args: object) -> None:
        log.error(message, *args)


def build_stream_runtime(
    config: Config,
    zone: Zone,
    slots: dict[str, int],
    row: int,
    logs: AccessLogs,
    servers: ServerTable | None = None,
) -> dict[tuple[str, str, int], StreamServerRuntime]:
    """Runtime per stream listen key."""
    from prefork_lb.http.runtime import has_write_api, status_zones

    zones = status_zones(config.stream.servers, "stream", zone, slots, row)
    upstreams: dict[str, StreamUpstream] = {}
    table = servers if has_write_api(config) else None
    for name, up in config.stream.upstreams.items():
        group = PeerGroup.build(up, zone, [slots[k] for k in peer_keys(up)], row)
        upstreams[name] = StreamUpstream(up, group, make_balancer(up, group, compile_stream_template))
        attach(upstreams[name], table, row, _stream_balancer)
    formats: dict[str, LogFormat] = {}
    out: dict[tuple[str, str, int], StreamServerRuntime] = {}
    for server in config.stream.servers:
        writers = []
        for al in server.access_logs:
            fmt = formats.get(al.format_name)
            if fmt is None:
                fmt = formats[al.format_name] = compile_stream_log_format(al.format)
            writers.append((logs.get(al.path), fmt))
        tls = None if server.upstream_ssl is None else StreamUpstreamTls(server.upstream_ssl)
        rt = StreamServerRuntime(server, upstreams[server.proxy_pass], tuple(writers), zones[id(server)], tls)
        for lc in server.listen:
            out[lc.key] = rt
    return out


def _stream_balancer(up: UpstreamConfig, group: PeerGroup) -> Balancer:
    return make_balancer(up, group, compile_stream_template)
