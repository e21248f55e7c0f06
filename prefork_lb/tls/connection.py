"""An HTTP client connection accepted on a TLS address (gevent shell).

Rules (nginx 1.22, nginx-semantics-2.md section 5):
1. Plain HTTP sent to the TLS port: each request is answered 400 "The plain HTTP request
   was sent to HTTPS port" (nginx's 497) with ``Connection: close``, after its head is read.
2. ``ssl_verify_client = "on"`` and no client certificate: 400 "No required SSL
   certificate was sent" (nginx's 496).
3. SNI picks the certificate, Host picks the server. When client certificates are
   verified and Host selects another server than SNI did, 421 Misdirected Request (nginx
   checks this only when the Host-selected server verifies; tls/contexts.py rule 3 makes
   all servers of the address alike).
4. Otherwise requests are served exactly as on a plain connection (``ClientConnection``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefork_lb.http.connection import ClientConnection
from prefork_lb.http.request import HttpError
from prefork_lb.tls.info import NO_CERT_PAGE, PLAIN_HTTP_PAGE, tls_error_page

if TYPE_CHECKING:
    from prefork_lb.config.model import ServerConfig
    from prefork_lb.http.exchange import Exchange


class TlsConnection(ClientConnection):
    __slots__ = ("page", "sni_server", "tls_check")

    def setup(self, plain: bool, verify_client: str) -> None:
        """After the handshake (or its absence: ``plain``, rule 1)."""
        self.page: bytes | None = None
        self.sni_server: ServerConfig | None = None
        tls = self.info.tls
        if plain:
            self.page = tls_error_page(400, PLAIN_HTTP_PAGE)
        elif verify_client == "on" and tls is not None and not tls.has_client_cert:
            self.page = tls_error_page(400, NO_CERT_PAGE)
        elif verify_client != "off" and tls is not None and tls.server_name:
            self.sni_server = self.router.select(tls.server_name.lower().rstrip("."))
        self.tls_check = self.page is not None or self.sni_server is not None

    def _tls_refuse(self, ex: Exchange, server: ServerConfig) -> None:
        if self.page is not None:
            raise HttpError(400, "TLS")
        if self.sni_server is not None and server is not self.sni_server:
            raise HttpError(421, "misdirected")

    def respond_error(self, ex: Exchange, status: int) -> bool:
        if status == 400 and self.page is not None:
            self._send_local(ex, 400, self.page)
            return self.keep_alive
        return super().respond_error(ex, status)
