"""One TCP connection or UDP session through the stream proxy, as plain data (sans-IO).

Stream variables (nginx's ``ngx_stream_variables``) read it; multi-attempt upstream
variables are joined with ", " only (the stream module has no " : " phases).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefork_lb.tls.info import TlsInfo
from prefork_lb.tls.preread import NOT_TLS, Preread


@dataclass(slots=True)
class StreamAttempt:
    addr: str  # peer address, or the group name when no peer was usable
    bytes_sent: int = 0  # to the upstream
    bytes_received: int = 0  # from the upstream
    connect_time_s: float | None = None
    first_byte_time_s: float | None = None
    session_time_s: float = 0.0


@dataclass(slots=True)
class Session:
    protocol: str  # "TCP" | "UDP"
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    connection_id: int
    start_time: float
    end_time: float = 0.0
    status: int = 200  # nginx's session $status: 200, 400, 403, 500, 502, 503
    bytes_sent: int = 0  # to the client
    bytes_received: int = 0  # from the client
    attempts: list[StreamAttempt] = field(default_factory=list)
    preread: Preread = NOT_TLS  # ssl_preread: what the ClientHello said ($ssl_preread_*)
    tls: TlsInfo | None = None  # a TLS-terminated session's handshake ($ssl_*)
