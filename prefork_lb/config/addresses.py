"""Parsing of ``listen`` entries and upstream server addresses (sans-IO).

Accepted forms: ``127.0.0.1:8080``, ``[::1]:8080``, ``*:8080`` / ``8080`` (all IPv4
addresses), ``localhost:9001`` (hostnames are resolved by the loader), ``unix:/path``.
A listen entry may carry nginx's flags after the address: ``default_server``,
``reuseport``, ``backlog=N``, ``ssl``.
"""

from __future__ import annotations

import re
import socket

from prefork_lb.config.model import Address, ListenConfig

_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_address(text: str, default_port: int | None = None) -> Address:
    """An Address from "host:port", "[v6]:port", "*:port", "port" or "unix:/path"."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError(f'"{text}": a unix socket path must be absolute')
        return Address("unix", path, 0)
    if _PORT.fullmatch(text):
        return Address("inet", "0.0.0.0", _port(text, text))
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f'"{text}": missing "]" in IPv6 address')
        host, rest = text[1:end], text[end + 1 :]
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            raise ValueError(f'"{text}": invalid IPv6 address') from None
        if not rest and default_port is not None:
            return Address("inet6", host, default_port)
        if not rest.startswith(":"):
            raise ValueError(f'"{text}": missing ":port"')
        return Address("inet6", host, _port(rest[1:], text))
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f'"{text}": missing ":port"')
        host, port = text, str(default_port)
    if host == "*":
        host = "0.0.0.0"
    if not host or not _HOSTNAME.fullmatch(host):
        raise ValueError(f'"{text}": invalid host')
    return Address("inet", host, _port(port, text))


def _port(text: str, whole: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f'"{whole}": port must be between 1 and 65535')
    return int(text)


def parse_listen(text: str) -> ListenConfig:
    words = text.split()
    if not words:
        raise ValueError("empty listen address")
    address = parse_address(words[0])
    if address.family == "inet":
        try:
            socket.inet_pton(socket.AF_INET, address.host)
        except OSError:
            raise ValueError(f'"{words[0]}": listen needs an IP address, not a hostname') from None
    default_server = reuseport = udp = so_keepalive = ssl = http2 = False
    backlog = 511
    for word in words[1:]:
        if word == "default_server":
            default_server = True
        elif word == "reuseport":
            reuseport = True
        elif word == "udp":
            udp = True
        elif word == "ssl":
            ssl = True
        elif word == "http2":  # issue 20: nginx 1.22's listen flag
            http2 = True
        elif word in ("so_keepalive=on", "so_keepalive=off"):
            so_keepalive = word.endswith("on")
        elif word.startswith("backlog="):
            value = word[len("backlog=") :]
            if not value.isascii() or not value.isdigit() or int(value) < 1:
                raise ValueError(f'"{word}": backlog must be a positive integer')
            backlog = int(value)
        else:
            raise ValueError(
                f'unknown listen parameter "{word}" (default_server, reuseport, backlog=N, ssl, http2; '
                "stream: udp, so_keepalive=on)"
            )
    if address.family == "unix" and udp:
        raise ValueError("udp needs an IP address")
    if udp and ssl:
        raise ValueError("ssl is for TCP listeners (DTLS is not supported)")
    if udp and http2:
        raise ValueError("http2 is for TCP listeners")
    return ListenConfig(
        address=address,
        default_server=default_server,
        reuseport=reuseport,
        backlog=backlog,
        udp=udp,
        so_keepalive=so_keepalive,
        ssl=ssl,
        http2=http2,
    )
