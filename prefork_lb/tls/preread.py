"""Reading a TLS ClientHello without terminating TLS (sans-IO): nginx's ``ssl_preread``.

``preread(data)`` is given everything the client sent so far and answers ``None`` while
more is needed, else a ``Preread`` (possibly empty: not TLS, or a malformed hello, which
nginx also lets through with empty variables). The handshake message may span several
records; only handshake records are read, and at most ``PREREAD_BUFFER_BYTES`` (nginx's
``preread_buffer_size`` default, 16k): a longer hello ends the preread with what is known.

Variables: ``$ssl_preread_server_name`` (the SNI host name), ``$ssl_preread_alpn_protocols``
(comma-separated, as nginx), ``$ssl_preread_protocol`` (the highest version the client
offers: "TLSv1.3", "TLSv1.2" ..., from supported_versions when present).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PREREAD_BUFFER_BYTES: Final = 16384
_VERSIONS: Final = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_EXT_SUPPORTED_VERSIONS: Final = 43


@dataclass(frozen=True, slots=True)
class Preread:
    server_name: str = ""
    alpn_protocols: str = ""
    protocol: str = ""


NOT_TLS: Final = Preread()


def preread(data: bytes) -> Preread | None:
    """None: need more bytes; else what the ClientHello says (``NOT_TLS`` when it is not one)."""
    if not data:
        return None
    if data[0] != 0x16:
        return NOT_TLS
    body = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return None if len(data) < PREREAD_BUFFER_BYTES else NOT_TLS
        if data[pos] != 0x16:
            return NOT_TLS
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if len(data) < pos + 5 + length:
            return None if len(data) < PREREAD_BUFFER_BYTES else NOT_TLS
        body += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            if body[0] != 1:  # not a ClientHello
                return NOT_TLS
            need = 4 + int.from_bytes(body[1:4], "big")
            if len(body) >= need:
                return _client_hello(bytes(body[4:need]))


def _client_hello(hello: bytes) -> Preread:
    try:
        return _parse(hello)
    except (IndexError, ValueError, UnicodeDecodeError):
        return NOT_TLS


def _parse(h: bytes) -> Preread:
    version = int.from_bytes(h[0:2], "big")
    pos = 2 + 32  # client_version, random
    pos += 1 + h[pos]  # session id
    pos += 2 + int.from_bytes(h[pos : pos + 2], "big")  # cipher suites
    pos += 1 + h[pos]  # compression methods
    if pos + 2 > len(h):
        return Preread(protocol=_VERSIONS.get(version, ""))
    end = pos + 2 + int.from_bytes(h[pos : pos + 2], "big")
    pos += 2
    name = alpn = ""
    while pos + 4 <= end:
        ext = int.from_bytes(h[pos : pos + 2], "big")
        size = int.from_bytes(h[pos + 2 : pos + 4], "big")
        e = h[pos + 4 : pos + 4 + size]
        if len(e) != size:
            raise ValueError("truncated extension")
        pos += 4 + size
        if ext == _EXT_SERVER_NAME:
            i = 2
            while i + 3 <= len(e):
                kind, n = e[i], int.from_bytes(e[i + 1 : i + 3], "big")
                if kind == 0:
                    name = e[i + 3 : i + 3 + n].decode("ascii")
                    break
                i += 3 + n
        elif ext == _EXT_ALPN:
            protos = []
            i = 2
            while i < len(e):
                n = e[i]
                protos.append(e[i + 1 : i + 1 + n].decode("ascii"))
                i += 1 + n
            alpn = ",".join(protos)
        elif ext == _EXT_SUPPORTED_VERSIONS:
            offered = [int.from_bytes(e[i : i + 2], "big") for i in range(1, 1 + e[0], 2)]
            known = [v for v in offered if v in _VERSIONS]
            if known:
                version = max(known)
    return Preread(name, alpn, _VERSIONS.get(version, ""))
