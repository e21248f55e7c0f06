"""realip (nginx's ngx_http_realip_module) for a server, compiled at worker start (sans-IO).

When the connection's peer is in ``set_real_ip_from``, the client address is taken from
``real_ip_header`` (``X-Real-IP`` by default, or ``X-Forwarded-For``...). Everything that
uses the client address for that request then uses it: ``$remote_addr`` (so the access
log and ``$proxy_add_x_forwarded_for``), allow/deny, ``ip_hash``, limit keys
(``$binary_remote_addr``); ``$realip_remote_addr`` keeps the peer.

Rules (nginx 1.22 ``ngx_http_get_forwarded_addr``):
1. A header value is a list read from the right: the last element (spaces and commas
   trimmed) is the address; with ``real_ip_recursive`` the walk goes on leftwards while the
   address found is itself trusted, and stops at the first untrusted one (that is the
   client) or at an element that is not an address (the last good one stays).
2. Without recursion the last element is taken, trusted or not.
3. An element that is not an address (``unknown``, garbage) as the first one read: the
   peer stays the client address. ``1.2.3.4:80`` and ``[::1]:80`` lose their port.
4. Repeated headers are one list (the request parser joins them with ", ").
5. Done per request after the server is chosen; a server without ``set_real_ip_from``
   pays nothing (``RealIpRule`` is None).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefork_lb.config.model import RealIp

_V4_MAPPED = 0xFFFF << 32


def _parse(text: str) -> tuple[int, int] | None:
    """(family 4 or 6, address as int) of an address, ``[v6]:port`` or ``v4:port``."""
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else text
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        pass
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        return None
    if value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d is the IPv4 peer of a dual-stack socket
        return 4, value & 0xFFFFFFFF
    return 6, value


def _text(addr: tuple[int, int]) -> str:
    family, value = addr
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


class RealIpRule:
    __slots__ = ("header", "networks", "recursive")

    def __init__(self, config: RealIp) -> None:
        nets = [ipaddress.ip_network(n) for n in config.trusted]
        # (family, network as int, mask as int): a membership test is one "and"
        self.networks: tuple[tuple[int, int, int], ...] = tuple(
            (n.version, int(n.network_address), int(n.netmask)) for n in nets
        )
        self.header = config.header.lower().encode("ascii")
        self.recursive = config.recursive

    def _trusted(self, addr: tuple[int, int]) -> bool:
        family, value = addr
        return any(fam == family and value & mask == net for fam, net, mask in self.networks)

    def client(self, peer: str, header_index: dict[bytes, bytes]) -> str | None:
        """The real client address as text, or None to keep the peer."""
        value = header_index.get(self.header)
        if value is None:
            return None
        peer_ip = _parse(peer)
        if peer_ip is None or not self._trusted(peer_ip):
            return None
        items = value.decode("latin-1").replace(",", " ").split()
        found: tuple[int, int] | None = None
        while items:
            addr = _parse(items.pop())
            if addr is None:
                break
            found = addr
            if not self.recursive or not self._trusted(addr):
                break
        return None if found is None else _text(found)
