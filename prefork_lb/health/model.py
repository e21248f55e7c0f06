"""Active health checks as frozen config: ``match`` blocks and the checks themselves.

Built once by ``config/load_health.py``; the prober (``prober.py``) only reads them.

Rules:
1. A check belongs to one upstream group; a group checked from several places (locations,
   stream servers, the upstream table) has one ``HealthCheck`` per place, all probed, and a
   peer failing any of them is unhealthy (NGINX Plus).
2. Everything a probe needs is precomputed here: the request bytes of an HTTP check (Host
   from the location's ``proxy_pass`` or a literal ``proxy_set_header Host``), compiled
   regexes, timeouts in seconds, and for an ``https://`` location its TLS settings (the
   name checked and sent as SNI: a literal ``proxy_ssl_name``, else ``$proxy_host``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BODY_LIMIT_BYTES = 256 * 1024  # a match's body test sees at most this much (nginx Plus)
HEAD_LIMIT_BYTES = 16 * 1024  # a response head longer than this fails the probe
STREAM_LIMIT_BYTES = 16 * 1024  # stream expect: bytes read before giving up


@dataclass(frozen=True, slots=True)
class StatusTest:
    """``status = "200-399"``, ``"! 500"``, ``"301-303 307"``: any range matches (or none, negated)."""

    negate: bool
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class HeaderTest:
    """``Name`` present, ``! Name`` absent, ``Name = v``, ``Name != v``, ``Name ~ re``, ``Name !~ re``."""

    name: str  # lower case
    op: Literal["present", "absent", "=", "!=", "~", "!~"]
    value: str = ""
    regex: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class HttpMatch:
    name: str
    status: StatusTest | None = None
    headers: tuple[HeaderTest, ...] = ()
    body: tuple[bool, re.Pattern[bytes]] | None = None  # (negated, regex)


@dataclass(frozen=True, slots=True)
class StreamMatch:
    name: str
    send: bytes = b""
    # (is a regex, literal bytes, compiled regex): a literal must begin the reply
    expect: tuple[bool, bytes, re.Pattern[bytes] | None] | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    key: str  # where it is configured (key path), for messages
    context: Literal["http", "stream"]
    upstream: str
    interval_s: float = 5.0
    jitter_s: float = 0.0
    fails: int = 1
    passes: int = 1
    uri: str = "/"
    port: int = 0  # 0: the peer's own port
    http_match: HttpMatch | None = None
    stream_match: StreamMatch | None = None
    mandatory: bool = False
    persistent: bool = False
    keepalive_time_s: float = 0.0  # accepted (nginx Plus); every probe opens its own connection
    udp: bool = False
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    request: bytes = b""  # HTTP: the whole probe request but the Host line's value
    host: str = ""  # HTTP: Host header value
    # HTTP to an https:// location: the location's proxy_ssl_* settings (http/upstream_tls.py)
    tls: bool = False
    tls_verify: bool = False
    tls_cafile: str = ""
    tls_name: str = ""  # checked (verify) and sent as SNI; "" when neither applies
    tls_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    tls_ciphers: str = "DEFAULT"
