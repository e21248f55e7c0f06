"""ssl_preread's ClientHello reader (sans-IO) on hellos made by Python's ssl."""

from __future__ import annotations

import ssl

from prefork_lb.tls.preread import NOT_TLS, PREREAD_BUFFER_BYTES, Preread, preread


def hello(sni: str | None, alpn: list[str] | None = None, max_tls: ssl.TLSVersion | None = None) -> bytes:
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_tls is not None:
        ctx.maximum_version = max_tls
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_server_name_alpn_and_protocol() -> None:
    assert preread(hello("a.example", ["h2", "http/1.1"])) == Preread("a.example", "h2,http/1.1", "TLSv1.3")
    assert preread(hello(None, max_tls=ssl.TLSVersion.TLSv1_2)) == Preread("", "", "TLSv1.2")


def test_needs_more_until_the_hello_is_complete() -> None:
    data = hello("a.example")
    assert all(preread(data[:n]) is None for n in (0, 1, 4, 5, 100, len(data) - 1))
    assert preread(data + b"more bytes after") == Preread("a.example", "", "TLSv1.3")


def test_hello_split_over_records() -> None:
    """nginx reassembles a ClientHello fragmented over several handshake records."""
    data = hello("split.example")
    body = data[5:]
    records = b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (body[:7], body[7:90], body[90:])
    )
    assert preread(records).server_name == "split.example"  # type: ignore[union-attr]


def test_not_tls_and_malformed() -> None:
    assert preread(b"GET / HTTP/1.1\r\n") is NOT_TLS
    assert preread(b"SSH-2.0-OpenSSH\r\n") is NOT_TLS
    assert preread(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") is NOT_TLS  # a ServerHello
    garbage = b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c" + b"\xff" * 44
    assert preread(garbage) is NOT_TLS
    huge = b"\x16\x03\x01\xff\xff" + b"\x01\xff\xff\xff" + b"\x00" * PREREAD_BUFFER_BYTES
    assert preread(huge) is NOT_TLS  # longer than the preread buffer: stop waiting
