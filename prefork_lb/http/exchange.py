"""One client request and its response, as plain data (sans-IO).

An ``Exchange`` is created by the connection loop when a request head has been parsed and
is filled in as the request is routed, proxied and answered. Variables (``$status``,
``$upstream_addr`` ...) and the access log read it; nothing here does I/O.

Rules:
- Header names are kept as received (bytes); lookups go through ``header_index``, whose keys
  are ASCII-lowercased names (``bytes.lower`` is ASCII-only, unlike ``str.lower``).
- Times are seconds as floats from the worker's cached loop clock (``time.time`` domain),
  so ``$request_time`` needs no extra syscall.
- ``attempts`` holds one ``Attempt`` per upstream try, in order, exactly as nginx keeps one
  "state" record per try; a ``None`` entry separates two upstream phases (nginx's " : ").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefork_lb.config.model import LocationConfig, ServerConfig
    from prefork_lb.tls.info import TlsInfo


@dataclass(slots=True)
class ConnectionInfo:
    """What is known about the client connection (one per accepted socket)."""

    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    connection_id: int
    requests: int = 0  # requests started on this connection so far ($connection_requests)
    tls: TlsInfo | None = None  # a TLS connection's handshake ($ssl_*, $scheme)
    # realip (http/realip.py): a request's copy whose remote_addr is the trusted client
    # address has the peer here ($realip_remote_addr); "" on the connection's own record
    realip_remote_addr: str = ""


@dataclass(slots=True)
class Attempt:
    """One try against one upstream peer (or the group name when no peer was usable)."""

    addr: str
    status: int | None = None  # None renders as "-"
    connect_time_s: float | None = None
    header_time_s: float | None = None
    response_time_s: float | None = None  # always set once the attempt ends
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass(slots=True)
class Exchange:
    conn: ConnectionInfo
    method: bytes
    target: bytes  # the raw request-target as received ($request_uri)
    path: str  # normalized, percent-decoded path used for routing ($uri)
    args: str  # query string without "?" ($args), "" when absent
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]
    header_index: dict[bytes, bytes]  # lowercased name -> value (repeated names joined by ", ")
    host: str  # normalized host (lowercase, no port) from the target or Host header
    start_time: float
    request_length: int = 0
    server: ServerConfig | None = None
    location: LocationConfig | None = None
    status: int = 0
    body_bytes_sent: int = 0
    bytes_sent: int = 0
    end_time: float = 0.0
    attempts: list[Attempt | None] = field(default_factory=list)
    # the rewrite module (http/rewrite.py rule 4): ``set`` variables, regex captures, whether
    # a rewrite changed the URI (the upstream then gets ``path``+``args``, not the raw target)
    vars: dict[str, str] | None = None
    captures: tuple[str, ...] = ()
    uri_rewritten: bool = False
    rewrite_break: bool = False  # ``rewrite ... break`` in the current location (nginx's !valid_location)
    uri_changed_here: bool = False  # within one block run (rewrite.run)
    uri_changes: int = 0  # re-searches and internal redirects so far (limit: rewrite.MAX_URI_CHANGES)
    error_paged: bool = False  # an error_page redirect happened (no recursive error pages)
    status_override: int = 0  # error_page's status for the answer of its target (0: none)
    # limits/engine.py: $limit_req_status, $limit_conn_status, what limit_conn counted
    limit_req_status: str = ""
    limit_conn_status: str = ""
    limit_conn_held: list[tuple[memoryview, int, int]] | None = None
    # issue 18 (http/cache_path.py): $upstream_cache_status, "" when no cache was consulted
    cache_status: str = ""

    @property
    def remote_addr(self) -> str:  # balance.base.RequestKey
        return self.conn.remote_addr

    @property
    def request_line(self) -> str:
        major, minor = self.version
        return f"{self.method.decode('latin-1')} {self.target.decode('latin-1')} HTTP/{major}.{minor}"

    def header(self, lower_name: bytes) -> bytes | None:
        return self.header_index.get(lower_name)
