"""TLS to stream upstreams: ``proxy_ssl = true`` (issue 14; gevent I/O).

Rules (nginx's ``ngx_stream_proxy_module`` ``proxy_ssl*``; the http side is
http/upstream_tls.py):
1. One client context per stream server, built at worker start from its ``proxy_ssl_*``
   settings. Verify off (nginx's default): no certificate check at all; on: the chain
   against ``proxy_ssl_trusted_certificate`` and the name ``proxy_ssl_name`` (default: the
   ``proxy_pass`` host). SNI is sent with ``proxy_ssl_server_name`` (never an IP literal),
   and with verify on (Python's ``ssl`` checks the name it sends).
2. The handshake runs right after the connect, within ``proxy_connect_timeout``. A failure
   is the peer's, like a connect failure: charged, the next peer tried under
   ``proxy_next_upstream``, logged "... while SSL handshaking to upstream".
3. Sessions are reused per peer (``proxy_ssl_session_reuse``, default on): a session is
   kept when its connection ends (TLS 1.3 tickets arrive after the handshake).
4. TLS has no half-close: a client's EOF is not passed on to a TLS upstream (a
   close_notify would end the upstream's reads too); the session then ends when the
   upstream closes or ``proxy_timeout`` passes with no data either way.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

from gevent import ssl as gevent_ssl

from prefork_lb.config.model import StreamUpstreamSsl
from prefork_lb.tls.client import client_context, is_ip

HANDSHAKING: Final = "SSL handshaking to upstream"


class StreamUpstreamTls:
    """Rule 1: one stream server's context, the name it checks or sends, its sessions."""

    __slots__ = ("context", "hostname", "reuse", "sessions")

    def __init__(self, cfg: StreamUpstreamSsl) -> None:
        ctx = client_context(
            gevent_ssl.SSLContext, cfg.protocols, cfg.ciphers, cfg.verify, cfg.trusted_certificate
        )
        self.context = ctx
        send = cfg.verify or (cfg.server_name and not is_ip(cfg.name))
        self.hostname: str | None = cfg.name if send and cfg.name else None
        self.reuse = cfg.session_reuse
        self.sessions: dict[str, ssl.SSLSession] = {}

    def wrap(self, sock: Any, peer: str, timeout_s: float) -> Any:
        """Rule 2: the handshake on a connected gevent socket; raises OSError (ssl.SSLError,
        TimeoutError) on failure. Returns the gevent SSLSocket."""
        sock.settimeout(timeout_s or None)
        session = self.sessions.get(peer) if self.reuse else None
        return self.context.wrap_socket(sock, server_hostname=self.hostname, session=session)

    def keep_session(self, peer: str, sock: Any) -> None:
        """Rule 3, when the connection ends."""
        if self.reuse:
            session = getattr(sock, "session", None)
            if session is not None:
                self.sessions[peer] = session
