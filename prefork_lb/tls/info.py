"""What a finished TLS handshake tells the variables (sans-IO).

``$ssl_protocol``, ``$ssl_cipher``, ``$ssl_server_name``, ``$ssl_session_reused`` ("r" or
"."), ``$ssl_client_verify`` ("NONE" or "SUCCESS": a failed verification fails the
handshake, tls/contexts.py rule 3) and ``$ssl_client_s_dn`` (RFC 2253, as nginx 1.22:
the last RDN first, "CN=client-user,O=Example"). Read once per connection, right after
the handshake, so the variables cost a field read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

# nginx's error pages for its special TLS codes (497, 496, 421), answered as 400/421
PLAIN_HTTP_PAGE: Final = "The plain HTTP request was sent to HTTPS port"
NO_CERT_PAGE: Final = "No required SSL certificate was sent"
_DN_SHORT: Final = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "domainComponent": "DC",
    "streetAddress": "STREET",
    "userId": "UID",
}


@dataclass(slots=True)
class TlsInfo:
    protocol: str = ""
    cipher: str = ""
    server_name: str = ""
    session_reused: bool = False
    client_verify: str = "NONE"
    client_s_dn: str = ""
    has_client_cert: bool = False


def tls_info(sslsock: Any, verify: bool) -> TlsInfo:
    """From an ``ssl.SSLSocket`` (or SSLObject) after its handshake."""
    cipher = sslsock.cipher()
    info = TlsInfo(
        protocol=sslsock.version() or "",
        cipher=cipher[0] if cipher else "",
        server_name=getattr(sslsock, "sni_name", None) or "",
        session_reused=bool(sslsock.session_reused),
    )
    if verify:
        cert = sslsock.getpeercert()
        if cert:
            info.has_client_cert = True
            info.client_verify = "SUCCESS"
            info.client_s_dn = format_dn(cert.get("subject", ()))
    return info


def format_dn(subject: Any) -> str:
    """RFC 2253 from ``getpeercert()["subject"]`` (a tuple of RDNs of (name, value) pairs)."""
    parts = []
    for rdn in reversed(subject):
        parts.append("+".join(f"{_DN_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts)


def _escape(value: str) -> str:
    out = []
    for i, c in enumerate(value):
        if c in ',+"\\<>;' or (c == "#" and i == 0) or (c == " " and (i == 0 or i == len(value) - 1)):
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def tls_error_page(status: int, text: str) -> bytes:
    """nginx's page for its TLS answers: the status line's phrase replaced by ``text``."""
    from http import HTTPStatus

    phrase = HTTPStatus(status).phrase
    return (
        f"<html>\r\n<head><title>{status} {text}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {phrase}</h1></center>\r\n<center>{text}</center>\r\n"
        "<hr><center>prefork-lb</center>\r\n</body>\r\n</html>\r\n"
    ).encode()
