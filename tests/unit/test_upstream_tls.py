"""upstream_tls._TlsIO: TLS through the raw-socket contract netio relies on (rule 5, 6).

A client ``SSLObject`` (the proxy's side) talks to a server ``SSLObject`` over a fake raw
socket that takes at most 1000 bytes per send and refuses every other call, so partial
sends and would-block retries happen on every record.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from prefork_lb.config.model import LocationConfig, ProxyPass
from prefork_lb.http.upstream_tls import UpstreamTls, _TlsIO
from prefork_lb.netio import peek_readable

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


class FakeRaw:
    def __init__(self) -> None:
        self.wire = bytearray()  # what the proxy sent
        self.inbound = bytearray()  # what the upstream sent, not read yet
        self.eof = False
        self.calls = 0

    def send(self, data: bytes | memoryview) -> int:
        self.calls += 1
        if self.calls % 2:
            raise BlockingIOError
        n = min(len(data), 1000)
        self.wire += bytes(data[:n])
        return n

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not self.inbound:
            if self.eof:
                return b""
            raise BlockingIOError
        data = bytes(self.inbound[:size])
        if not flags & socket.MSG_PEEK:
            del self.inbound[:size]
        return data


class Sock:
    """What peek_readable looks at: ``_sock``."""

    def __init__(self, io: _TlsIO) -> None:
        self._sock = io


@pytest.fixture(scope="module")
def server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=up.test"],
        cwd=d, check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(Path(d, "c.pem"), Path(d, "k.pem"))
    return ctx


Pair = tuple[_TlsIO, FakeRaw, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]


def _pair(server_context: ssl.SSLContext) -> Pair:
    """The proxy's side, its raw socket, and the server with its incoming and outgoing BIOs."""
    loc = LocationConfig(
        match="/",
        modifier="",
        pattern="/",
        regex=None,
        proxy_pass=ProxyPass("b", None, "b", ssl=True),
        return_=None,
    )
    tls = UpstreamTls(loc, 0)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = tls.context.wrap_bio(c_in, c_out)
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.do_handshake()
    server.do_handshake()
    raw = FakeRaw()
    return _TlsIO(raw, client, c_in, c_out, None, "k"), raw, server, s_in, s_out


def test_send_with_partial_writes_delivers_everything(server_context: ssl.SSLContext) -> None:
    """Catches: records lost or sent twice when a flush is cut short (a record's bytes are
    reported sent only once it is on the wire, and never encrypted again)."""
    io, raw, server, s_in, _ = _pair(server_context)
    data = os.urandom(100_000)
    view = memoryview(data)
    sent = 0
    while sent < len(view):  # netio.send_all's loop
        try:
            sent += io.send(view[sent:])
        except BlockingIOError:
            continue
    assert io.held == 0 and io.pending == b""
    s_in.write(bytes(raw.wire))
    got = bytearray()
    while len(got) < len(data):
        got += server.read(len(data) - len(got))
    assert got == data
    with pytest.raises(ssl.SSLWantReadError):
        server.read(1)  # nothing was sent twice


def test_recv_returns_buffered_plaintext_then_would_block_then_eof(server_context: ssl.SSLContext) -> None:
    """Catches: decrypted bytes left inside the SSL object while recv says "would block"
    (the caller would wait on a socket that never becomes readable), a close_notify not
    read as EOF, and the pool's peek missing plaintext buffered in the SSL object."""
    io, raw, server, _, s_out = _pair(server_context)
    payload = os.urandom(50_000)
    server.write(payload)
    raw.inbound += s_out.read()
    first = io.recv(10)
    assert first == payload[:10]
    assert peek_readable(Sock(io)) == b"\0"  # plaintext still buffered inside the SSL object
    rest = io.recv(1 << 20)
    assert first + rest == payload
    assert peek_readable(Sock(io)) is None
    with pytest.raises(BlockingIOError):
        io.recv(65536)
    try:
        server.unwrap()
    except ssl.SSLWantReadError:
        pass
    raw.inbound += s_out.read()
    raw.eof = True
    assert peek_readable(Sock(io)) is not None
    assert io.recv(65536) == b""
