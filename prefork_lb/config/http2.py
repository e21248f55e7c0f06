"""HTTP/2 settings of an http server (issue 20): ``http2`` and the ``http2_*`` keys.

Rules (nginx-semantics-2.md section 6, trap 9):
1. HTTP/2 is on for a listen address when any server listening there has ``http2 = true``
   (nginx >= 1.25.1's ``http2 on``) or any ``listen`` entry of that address carries the
   ``http2`` flag (nginx 1.22's syntax). As in nginx, it is then on for *every* server of
   that socket: ALPN is negotiated before the Host (or even SNI) selects a server.
2. A TLS address with HTTP/2 offers ALPN ``h2,http/1.1``; a client that does not choose
   h2 gets HTTP/1.1. A plain address with HTTP/2 serves prior-knowledge h2c and, like
   nginx >= 1.25.1, still HTTP/1.1 to clients that do not send the connection preface
   (nginx 1.22 answered them with h2 frames). ``Upgrade: h2c`` is not supported (neither
   is it in nginx).
3. The connection settings are those of the address's default server (nginx takes them
   from the connection's default server): ``http2_max_concurrent_streams`` (128),
   ``large_client_header_buffers`` = [number, size] (4, "8k": one field over ``size`` or a
   header list over ``number * size`` is answered GOAWAY ENHANCE_YOUR_CALM, as nginx >=
   1.19.7), ``http2_max_field_size`` / ``http2_max_header_size`` (nginx's obsolete names,
   accepted; they override the two bounds), ``http2_idle_timeout`` (default: the server's
   ``keepalive_timeout``), ``http2_recv_buffer_size`` (256k: the size of one read),
   ``http2_chunk_size`` (8k: the largest DATA frame sent), ``http2_body_preread_size``
   (64k: the stream window advertised, so what one stream may buffer unread).
4. The keys may be written in ``[http]`` or in a server; the server's value wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from prefork_lb.config.model import Http2Config, ServerConfig
from prefork_lb.config.source import Table, boolean, duration, positive_int, size

ListenKey = tuple[str, str, int]


def _buffers(value: object) -> tuple[int, int]:
    """``large_client_header_buffers = [4, "8k"]`` (nginx's "4 8k")."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError('must be [number, size], e.g. [4, "8k"]')
    number = positive_int(int(value[0]) if isinstance(value[0], str) and value[0].isdigit() else value[0])
    return number, size(value[1])


def _window(value: object) -> int:
    n = size(value)
    if n > 2**31 - 1:
        raise ValueError("must be at most 2147483647 bytes (the HTTP/2 window limit)")
    return n


def _frame(value: object) -> int:
    n = size(value)
    if n < 1:
        raise ValueError("must be at least 1 byte")
    return n


# key -> (converter); read at [http] and at the server (rule 4)
HTTP2_KEYS: Final[dict[str, Callable[[Any], Any]]] = {
    "http2": boolean,
    "http2_max_concurrent_streams": positive_int,
    "large_client_header_buffers": _buffers,
    "http2_max_field_size": size,
    "http2_max_header_size": size,
    "http2_idle_timeout": duration,
    "http2_recv_buffer_size": size,
    "http2_chunk_size": _frame,
    "http2_body_preread_size": _window,
}


def http2_level(t: Table, inherited: dict[str, Any]) -> dict[str, Any]:
    """This level's ``http2_*`` keys over the inherited ones (rule 4)."""
    out = dict(inherited)
    for key, convert in HTTP2_KEYS.items():
        if t.has(key):
            out[key] = t.take(key, convert)
        else:
            t.raw(key, None)
    return out


def server_http2(t: Table, inherited: dict[str, Any], keepalive_timeout_s: float) -> tuple[bool, Http2Config]:
    """A server's ``http2`` switch and its settings (rules 3 and 4)."""
    values = http2_level(t, inherited)
    enabled = bool(values.get("http2", False))
    number, field_size = values.get("large_client_header_buffers", (4, 8192))
    field_bytes = values.get("http2_max_field_size", field_size)
    header_bytes = values.get("http2_max_header_size", number * field_size)
    if values.get("http2_recv_buffer_size", 1) < 1:
        raise t.error("http2_recv_buffer_size", "must be at least 1 byte")
    return enabled, Http2Config(
        max_concurrent_streams=values.get("http2_max_concurrent_streams", 128),
        max_field_size_bytes=field_bytes,
        max_header_size_bytes=header_bytes,
        idle_timeout_s=values.get("http2_idle_timeout", keepalive_timeout_s),
        recv_buffer_size_bytes=values.get("http2_recv_buffer_size", 256 * 1024),
        chunk_size_bytes=values.get("http2_chunk_size", 8192),
        body_preread_size_bytes=values.get("http2_body_preread_size", 65536),
    )


def http2_keys(servers: Sequence[ServerConfig]) -> frozenset[ListenKey]:
    """The listen addresses that speak HTTP/2 (rule 1)."""
    out: set[ListenKey] = set()
    for server in servers:
        for lc in server.listen:
            if server.http2 or lc.http2:
                out.add(lc.key)
    return frozenset(out)
