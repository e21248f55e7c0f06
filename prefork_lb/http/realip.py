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

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_pton = socket.inet_pton
Addr = tuple[int, int, str]  # (family 4 or 6, address as int, canonical text)


def _parse(text: str) -> Addr | None:
    """An address, ``[v6]:port`` or ``v4:port``; IPv4 first (the common case, and
    ``inet_pton`` accepts only canonical dotted quads, so the text is kept as is)."""
    try:
        return 4, int.from_bytes(_pton(_AF_INET, text), "big"), text
    except OSError:
        pass
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else text
    elif text.count(":") == 1:
        text = text.partition(":")[0]
        try:
            return 4, int.from_bytes(_pton(_AF_INET, text), "big"), text
        except OSError:
            return None
    try:
        value = int.from_bytes(_pton(_AF_INET6, text), "big")
    except OSError:
        return None
    if value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d is the IPv4 peer of a dual-stack socket
        v4 = value & 0xFFFFFFFF
        return 4, v4, socket.inet_ntop(_AF_INET, v4.to_bytes(4, "big"))
    return 6, value, socket.inet_ntop(_AF_INET6, value.to_bytes(16, "big"))


class RealIpRule:
    __slots__ = ("_peer", "_peer_trusted", "header", "networks", "recursive")

    def __init__(self, config: RealIp) -> None:
        nets = [ipaddress.ip_network(n) for n in config.trusted]
        # (family, network as int, mask as int): a membership test is one "and"
        self.networks: tuple[tuple[int, int, int], ...] = tuple(
            (n.version, int(n.network_address), int(n.netmask)) for n in nets
        )
        self.header = config.header.lower().encode("ascii")
        self.recursive = config.recursive
        self._peer = ""  # the last peer seen and whether it is trusted (a proxy repeats)
        self._peer_trusted = False

    def _trusted(self, addr: Addr) -> bool:
        family, value, _ = addr
        return any(fam == family and value & mask == net for fam, net, mask in self.networks)

    def client(self, peer: str, header_index: dict[bytes, bytes]) -> str | None:
        """The real client address as text, or None to keep the peer."""
        value = header_index.get(self.header)
        if value is None:
            return None
        if peer != self._peer:
            peer_ip = _parse(peer)
            self._peer, self._peer_trusted = peer, peer_ip is not None and self._trusted(peer_ip)
        if not self._peer_trusted:
            return None
        items = value.decode("latin-1").replace(",", " ").split()
        found: Addr | None = None
        while items:
            addr = _parse(items.pop())
            if addr is None:
                break
            found = addr
            if not self.recursive or not self._trusted(addr):
                break
        return None if found is None else found[2]
