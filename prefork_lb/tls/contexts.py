"""SSLContexts for the TLS listen addresses, built by ``load_config`` (no gevent, no I/O but
reading the certificate files).

Rules:
1. Contexts are built in the master at config load, before fork: keys readable only by
   root work after the workers drop privileges, and the session-ticket key OpenSSL makes
   per SSL_CTX is the same in every worker, so a ticket issued by one worker resumes on
   any other. A reload builds new contexts: new certificates and a new ticket key (key
   rotation, as nginx without ``ssl_session_ticket_key``). ``-t`` builds them too, so it
   checks that every key matches its certificate.
2. One context per server with ``ssl_*`` keys. A TLS listen address handshakes with its
   default server's context; SNI then switches to the context of the server the name
   selects (nginx's server_name rules: ``ServerRouter``). As in nginx (trap 9 of
   nginx-semantics-2.md), the protocol versions, ciphers, tickets and the session cache
   stay those of the default server: OpenSSL copies them into the connection before SNI
   is seen, and SSL_set_SSL_CTX only swaps the certificate.
3. ``ssl_verify_client`` must be the same on every server of a TLS address: Python's ssl
   cannot change the verify mode of a connection after SNI (nginx calls SSL_set_verify).
   "on" requests the certificate as "optional" and answers 400 at the HTTP level when none
   came (nginx's "No required SSL certificate was sent"); an untrusted certificate fails
   the handshake (Python has no verify callback, nginx answers 400).
4. Session-ID resumption cannot be shared across workers with the Python ssl API (no
   session callbacks): ``ssl_session_cache = "shared:NAME:SIZE"`` is OpenSSL's built-in
   cache, one per worker (an ID resumes only on the worker that issued it). Tickets are
   the cross-worker mechanism (rule 1). The cache mode, size and timeout are set through
   libssl itself (``_ssl_ctx``), which the stdlib does not expose.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prefork_lb.config.model import ServerConfig, SslConfig, StreamServerConfig

ListenKey = tuple[str, str, int]
ALPN_HTTP: Final = ["http/1.1"]
ALPN_H2: Final = ["h2", "http/1.1"]  # issue 20: an address with HTTP/2 (config/http2.py rule 2)
_VERSIONS: Final = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
# libssl constants (ssl.h)
_CTRL_SET_SESS_CACHE_SIZE: Final = 42
_CTRL_SET_SESS_CACHE_MODE: Final = 44
_SESS_CACHE_OFF: Final = 0
_SESS_CACHE_SERVER: Final = 2
_SESS_CACHE_NO_INTERNAL_STORE: Final = 0x0200
_SESSION_BYTES: Final = 256  # a cached session's size for "shared:NAME:SIZE" (nginx: 1m ~ 4000)


class TlsError(Exception):
    """A context could not be built: ``key`` is the key path, the message names the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(slots=True)
class ListenTls:
    """What a worker needs for one TLS listen address."""

    key: ListenKey
    context: ssl.SSLContext  # the default server's (rule 2)
    verify_client: str = "off"  # rule 3: the same for every server on the address
    by_server: dict[int, ssl.SSLContext] = field(default_factory=dict)  # id(ServerConfig) -> context


def build_listen_tls(
    http_servers: Sequence[ServerConfig], stream_servers: Sequence[StreamServerConfig]
) -> dict[ListenKey, ListenTls]:
    """Every TLS listen address -> its contexts. Raises TlsError."""
    from prefork_lb.config.http2 import http2_keys
    from prefork_lb.http.routing import build_routers

    contexts: dict[tuple[int, bool], ssl.SSLContext] = {}

    def context_of(server: ServerConfig | StreamServerConfig, alpn: list[str] | None) -> ssl.SSLContext:
        # one per (server, ALPN): a server on an h2 and an HTTP/1-only address offers each
        # its own list (the SNI-switched context must carry the address's ALPN too)
        ctx = contexts.get((id(server), alpn is ALPN_H2))
        if ctx is None:
            assert server.ssl is not None
            ctx = contexts[(id(server), alpn is ALPN_H2)] = server_context(server.ssl, alpn)
        return ctx

    h2_keys = http2_keys(http_servers)

    out: dict[ListenKey, ListenTls] = {}
    tls_keys = {lc.key for s in http_servers for lc in s.listen if lc.ssl}
    for key, router in build_routers(http_servers).items():
        if key not in tls_keys:
            continue
        default = router.default
        if default.ssl is None:
            raise TlsError(
                f"http.servers[{default.index}].ssl_certificate",
                f"the default server of the TLS address {_text(key)} needs a certificate",
            )
        alpn = ALPN_H2 if key in h2_keys else ALPN_HTTP
        lt = ListenTls(key, context_of(default, alpn), default.ssl.verify_client)
        for server in router.servers:
            if server.ssl is None:
                continue  # no certificate of its own: the default server's is used
            if server.ssl.verify_client != lt.verify_client:
                raise TlsError(
                    f"http.servers[{server.index}].ssl_verify_client",
                    f'must be "{lt.verify_client}" as on the default server of {_text(key)} '
                    f"(http.servers[{default.index}]): the verify mode is fixed before SNI is known",
                )
            lt.by_server[id(server)] = context_of(server, alpn)
        if len(lt.by_server) > 1:
            lt.context.sni_callback = _sni_callback(router, lt.by_server)
        else:
            lt.context.sni_callback = _record_sni
        out[key] = lt
    for ss in stream_servers:
        for lc in ss.listen:
            if lc.ssl:
                assert ss.ssl is not None
                ctx = context_of(ss, None)  # no SNI callback: one server per stream address
                out[lc.key] = ListenTls(lc.key, ctx, ss.ssl.verify_client)
    return out


def server_context(cfg: SslConfig, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = [_VERSIONS[p] for p in cfg.protocols]
    ctx.minimum_version = min(versions)
    ctx.maximum_version = max(versions)
    try:
        ctx.set_ciphers(cfg.ciphers)
    except ssl.SSLError as e:
        raise TlsError(f"{cfg.key_path}.ssl_ciphers", f'"{cfg.ciphers}": {_reason(e)}') from None
    for i, (cert, key) in enumerate(zip(cfg.certificates, cfg.keys, strict=True)):
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            reason = _reason(e)
            if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in reason:
                raise TlsError(
                    f"{cfg.key_path}.ssl_certificate_key[{i}]",
                    f'"{key}" does not match the certificate "{cert}"',
                ) from None
            what = (
                "ssl_certificate"
                if "PEM" in str(e) and "key" not in reason.lower()
                else "ssl_certificate_key"
            )
            raise TlsError(
                f"{cfg.key_path}.{what}[{i}]",
                f'cannot load "{cert}" with "{key}": {reason}',
            ) from None
        except OSError as e:
            raise TlsError(f"{cfg.key_path}.ssl_certificate[{i}]", f'cannot read "{cert}": {e}') from None
    if alpn:
        ctx.set_alpn_protocols(alpn)
    # a client's FIN without close_notify is an EOF, not a fatal error that would end the
    # other direction too (a stream client half-closing, tcp.py rule 6)
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    if not cfg.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    if cfg.client_certificate is not None:
        try:
            ctx.load_verify_locations(cfg.client_certificate)
        except (ssl.SSLError, OSError) as e:
            raise TlsError(
                f"{cfg.key_path}.ssl_client_certificate",
                f'cannot load "{cfg.client_certificate}": {_reason(e)}',
            ) from None
    if cfg.verify_client != "off":
        ctx.verify_mode = ssl.CERT_OPTIONAL  # rule 3
    _session_settings(ctx, cfg)
    return ctx


def _session_settings(ctx: ssl.SSLContext, cfg: SslConfig) -> None:
    """Rule 4: cache mode, size and timeout through libssl (the stdlib has no setters)."""
    lib, ptr = _ssl_ctx(ctx)
    if lib is None:
        return
    if cfg.session_cache == "off":
        mode, size = _SESS_CACHE_OFF, 0
    elif cfg.session_cache == "none":
        mode, size = _SESS_CACHE_SERVER | _SESS_CACHE_NO_INTERNAL_STORE, 0
    else:
        from prefork_lb.units import parse_size_bytes

        mode = _SESS_CACHE_SERVER
        size = max(1, parse_size_bytes(cfg.session_cache.split(":")[2]) // _SESSION_BYTES)
    lib.SSL_CTX_ctrl(ptr, _CTRL_SET_SESS_CACHE_MODE, mode, None)
    if size:
        lib.SSL_CTX_ctrl(ptr, _CTRL_SET_SESS_CACHE_SIZE, size, None)
    lib.SSL_CTX_set_timeout(ptr, int(cfg.session_timeout_s))


_LIB: list[Any] = []


def _ssl_ctx(ctx: ssl.SSLContext) -> tuple[Any, int]:
    """(libssl, the SSL_CTX pointer) of ``ctx``, or (None, 0) where that cannot be trusted.

    CPython's PySSLContext starts with the object header and then ``SSL_CTX *ctx``; the
    pointer is accepted only if libssl reads the context's own options back through it."""
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return None, 0
    if not _LIB:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # its libssl, already loaded
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_set_timeout.restype = ctypes.c_long
        lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        _LIB.append(lib)
    lib = _LIB[0]
    ptr = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    if not ptr or lib.SSL_CTX_get_options(ptr) != int(ctx.options):
        return None, 0
    return lib, ptr


def _sni_callback(router: Any, by_server: dict[int, ssl.SSLContext]) -> Any:
    def callback(sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj.sni_name = name
        if name:
            target = by_server.get(id(router.select(name.lower().rstrip("."))))
            if target is not None and target is not ctx:
                sslobj.context = target

    return callback


def _record_sni(sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
    sslobj.sni_name = name


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    text = str(e)
    return f"{text}" if not reason else f"{reason} ({text})"


def _text(key: ListenKey) -> str:
    family, host, port = key
    return f"[{host}]:{port}" if family == "inet6" else f"{host}:{port}"
