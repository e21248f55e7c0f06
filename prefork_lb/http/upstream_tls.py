"""TLS to upstreams: ``proxy_pass "https://..."`` (issue 14; gevent I/O around ``ssl.SSLObject``).

Rules (shared/reference/nginx-semantics-2.md section 5):
1. One ``UpstreamTls`` per distinct set of ``proxy_ssl_*`` settings in a worker (locations
   with the same settings share it): its ``SSLContext`` and its session cache. Verify off
   (nginx's default): no certificate check at all; on: the chain against
   ``proxy_ssl_trusted_certificate`` and the name ``proxy_ssl_name`` (default
   ``$proxy_host``). SNI is sent only with ``proxy_ssl_server_name`` and never for an IP
   literal (nginx), except that with verify on the checked name is also sent as SNI
   (Python's ``ssl`` checks the name it was given as ``server_hostname``).
2. Sessions are reused per peer and name (``proxy_ssl_session_reuse``, default on): the
   session of a connection is kept once it received data (TLS 1.3 tickets arrive after the
   handshake) and offered on the next new connection. The cache belongs to one context, so
   a session made without verification is never resumed by a location that verifies (the
   nginx trap of section 5.2 cannot happen).
3. Pooled TLS connections are found under a key of peer, settings and name
   (``pool_key``), never under the bare address, so a verified location never reuses a
   connection an unverified one opened, nor one made for another SNI name.
4. The handshake runs within ``proxy_connect_timeout`` (nginx). A failure (certificate
   verification included) is the attempt's failure: 502, logged with the reason, the peer
   charged and the next one tried under ``proxy_next_upstream error`` (nginx).
5. ``SSLObject`` + ``MemoryBIO`` rather than gevent's ``SSLSocket``: the proxy's reads and
   writes (netio.py) call the raw socket's ``recv``/``send`` and wait on its watchers
   themselves; ``TlsSocket`` gives them the same shape (``_sock`` whose ``recv``/``send``
   raise ``BlockingIOError`` when the socket would block), so the relay, the head reader,
   the tunnel and the pool's idle checks work unchanged on TLS, with nginx's
   per-operation timeouts. A gevent ``SSLSocket`` would need every one of those paths to
   branch to its own blocking methods.
6. The pool's idle-readability rule (upstream.py rule 4) holds: ``peek`` reports bytes
   already decrypted or buffered as readable, and the raw socket's readiness covers the rest.
"""

from __future__ import annotations

import errno
import ssl
from typing import TYPE_CHECKING, Any, Final

from prefork_lb.http.template import Template, compile_template
from prefork_lb.netio import recv, send_all
from prefork_lb.tls.client import client_context, is_ip

if TYPE_CHECKING:
    from prefork_lb.config.model import LocationConfig
    from prefork_lb.http.exchange import Exchange
    from prefork_lb.http.upstream import UpstreamConnection

_PIECE: Final = 16384  # plaintext per TLS record
_RAW_READ: Final = 65536
HANDSHAKING: Final = "SSL handshaking to upstream"


class UpstreamTls:
    """Rule 1: one context and its session cache."""

    __slots__ = ("context", "id", "name", "reuse", "sessions", "sni", "verify")

    def __init__(self, loc: LocationConfig, ident: int) -> None:
        ctx = client_context(
            ssl.SSLContext,
            loc.proxy_ssl_protocols,
            loc.proxy_ssl_ciphers,
            loc.proxy_ssl_verify,
            loc.proxy_ssl_trusted_certificate,
        )
        self.context = ctx
        self.id = ident
        self.verify = loc.proxy_ssl_verify
        self.sni = loc.proxy_ssl_server_name
        self.reuse = loc.proxy_ssl_session_reuse
        self.name: Template | None = compile_template(loc.proxy_ssl_name) if self.verify or self.sni else None
        self.sessions: dict[str, ssl.SSLSession] = {}

    def server_name(self, ex: Exchange) -> str | None:
        """The name checked (verify) and sent as SNI; None when neither applies."""
        if self.name is None:
            return None
        name = self.name.render(ex)
        if not name:
            return None
        if ":" in name and not name.startswith("["):
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        elif name.startswith("["):
            name = name[1 : name.index("]")] if "]" in name else name
        if not self.verify and is_ip(name):
            return None  # nginx never sends an IP literal as SNI
        return name

    def pool_key(self, addr: str, name: str | None) -> str:
        """Rule 3."""
        return f"{addr}\0tls{self.id}\0{name or ''}"


def upstream_tls_table(locations: list[LocationConfig]) -> dict[int, UpstreamTls]:
    """id(LocationConfig) -> its UpstreamTls, shared between identical settings (rule 1)."""
    by_settings: dict[tuple[Any, ...], UpstreamTls] = {}
    out: dict[int, UpstreamTls] = {}
    for loc in locations:
        if loc.proxy_pass is None or not loc.proxy_pass.ssl:
            continue
        key = (
            loc.proxy_ssl_verify,
            loc.proxy_ssl_trusted_certificate,
            loc.proxy_ssl_server_name,
            loc.proxy_ssl_name,
            loc.proxy_ssl_protocols,
            loc.proxy_ssl_ciphers,
            loc.proxy_ssl_session_reuse,
        )
        tls = by_settings.get(key)
        if tls is None:
            tls = by_settings[key] = UpstreamTls(loc, len(by_settings))
        out[id(loc)] = tls
    return out


class _TlsIO:
    """What netio calls ``sock._sock``: non-blocking ``recv``/``send`` through TLS (rule 5)."""

    __slots__ = ("held", "inc", "key", "obj", "out", "pending", "raw", "sessions")

    def __init__(
        self,
        raw: Any,
        obj: ssl.SSLObject,
        inc: ssl.MemoryBIO,
        out: ssl.MemoryBIO,
        sessions: dict[str, ssl.SSLSession] | None,
        key: str,
    ) -> None:
        self.raw = raw
        self.obj = obj
        self.inc = inc
        self.out = out
        self.pending = b""  # ciphertext not on the wire yet
        self.held = 0  # plaintext bytes in ``pending``, not reported as sent yet
        self.sessions = sessions  # rule 2: None once saved (or reuse off)
        self.key = key

    def _flush(self) -> bool:
        pending = self.pending
        while pending:
            try:
                n = self.raw.send(pending)
            except BlockingIOError:
                self.pending = pending
                return False
            pending = pending[n:]
        self.pending = b""
        return True

    def send(self, data: bytes | memoryview) -> int:
        """Encrypt and send up to all of ``data``. When a record could not be flushed, the
        bytes it holds are reported only once it is; the caller (netio.send_all) retries
        from the first unreported byte, which that record already covers."""
        if self.held:
            if not self._flush():
                raise BlockingIOError(errno.EAGAIN, "would block")
            n, self.held = self.held, 0
            return n
        view = memoryview(data)
        total = 0
        while total < len(view):
            piece = view[total : total + _PIECE]
            self.obj.write(piece)
            self.pending = self.out.read()
            if not self._flush():
                self.held = len(piece)
                if total:
                    return total
                raise BlockingIOError(errno.EAGAIN, "would block")
            total += len(piece)
        return total

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags:  # MSG_PEEK from the pool's idle check (rule 6)
            if self.obj.pending() or self.inc.pending:
                return b"\0"
            data: bytes = self.raw.recv(size, flags)
            return data
        obj, inc = self.obj, self.inc
        out: list[bytes] = []
        got = 0
        drained = eof = False
        if not obj.pending() and not inc.pending:
            # Nothing decrypted or buffered: read the socket first, where ``obj.read`` would
            # only raise SSLWantReadError (-6% CPU per keep-alive request, measured).
            data = self.raw.recv(_RAW_READ)  # BlockingIOError: nothing anywhere
            if data:
                inc.write(data)
            else:
                inc.write_eof()
            drained = len(data) < _RAW_READ
        while got < size:
            try:
                chunk = obj.read(size - got)
            except ssl.SSLWantReadError:
                if drained:
                    break
                try:
                    data = self.raw.recv(_RAW_READ)
                except BlockingIOError:
                    break
                if data:
                    inc.write(data)
                else:
                    inc.write_eof()
                drained = len(data) < _RAW_READ
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True  # close_notify, or a TCP EOF without one: EOF either way
                break
            except ssl.SSLError as e:
                raise OSError(errno.EPROTO, f"SSL_read() failed ({e.reason or e})") from None
            if not chunk:  # SSLObject.read gives b"" for a close_notify
                eof = True
                break
            out.append(chunk)
            got += len(chunk)
            if drained and not obj.pending() and not inc.pending:
                break  # all that arrived is out: another read would only raise
        if out:
            if self.sessions is not None:  # rule 2: tickets have arrived by now
                self.sessions[self.key] = self.obj.session  # type: ignore[assignment]
                self.sessions = None
            return b"".join(out)
        if eof:
            return b""
        raise BlockingIOError(errno.EAGAIN, "would block")


class TlsSocket:
    """An upstream TLS connection, shaped like the gevent socket netio and the pool use."""

    __slots__ = ("_plain", "_read_event", "_sock", "_write_event", "hub", "obj")

    def __init__(self, plain: Any, io: _TlsIO) -> None:
        self._plain = plain
        self._sock = io
        self.obj = io.obj
        self._read_event = plain._read_event
        self._write_event = plain._write_event
        self.hub = plain.hub

    def fileno(self) -> int:
        n: int = self._plain.fileno()
        return n

    def getsockopt(self, level: int, option: int) -> int:
        value: int = self._plain.getsockopt(level, option)
        return value

    def shutdown(self, how: int) -> None:
        self._plain.shutdown(how)

    def close(self) -> None:
        self._plain.close()


def start_tls(
    conn: UpstreamConnection, tls: UpstreamTls, name: str | None, key: str, timeout_s: float
) -> None:
    """Handshake on a connected socket (rule 4); ``conn.sock`` becomes a ``TlsSocket``.

    Raises ``ssl.SSLError`` (verification included), ``OSError`` or ``TimeoutError``.
    """
    plain = conn.sock
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = tls.sessions.get(key) if tls.reuse else None
    obj = tls.context.wrap_bio(inc, out, server_hostname=name, session=session)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            if data:
                send_all(plain, data, timeout_s)
            got = recv(plain, _RAW_READ, timeout_s)
            if got:
                inc.write(got)
            else:
                inc.write_eof()
    data = out.read()
    if data:
        send_all(plain, data, timeout_s)
    conn.sock = TlsSocket(plain, _TlsIO(plain._sock, obj, inc, out, tls.sessions if tls.reuse else None, key))


def handshake_error(e: Exception, name: str | None) -> str:
    """nginx's wording for the error log."""
    if isinstance(e, ssl.SSLCertVerificationError):
        if e.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return f'upstream SSL certificate does not match "{name}"'
        return f"upstream SSL certificate verify error: ({e.verify_code}:{e.verify_message})"
    if isinstance(e, ssl.SSLError):
        return f"SSL_do_handshake() failed ({e.reason or e})"
    if isinstance(e, OSError):
        return f"SSL_do_handshake() failed ({e.errno}: {e.strerror})"
    return str(e)
