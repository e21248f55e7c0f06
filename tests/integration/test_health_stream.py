"""Active health checks of stream upstreams (issue 17): TCP against redis-server (PING /
+PONG) and a closed port, UDP against dnsmasq (a DNS query and its answer) and a closed
port ("no ICMP unreachable" without a match).

Catches: a stream ``health_check`` refused by the config (before issue 17), a TCP check
that passes on a closed port or fails on a live one, a send/expect match not applied (a
server that accepts but does not answer PONG), a UDP check that cannot see an ICMP port
unreachable, and stream sessions still sent to an unhealthy peer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.backends import free_port
from tests.harness import LB, request, wait_for
from tests.stream_servers import TcpEcho

DNS_QUERY = (
    struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x05probe\x04test\x00" + struct.pack(">HH", 1, 1)
)


def toml_bytes(data: bytes) -> str:
    """``data`` as a TOML basic string (the config reads it back as latin-1 bytes)."""
    return "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in data.decode("latin-1"))


def stream_peers(api: int, name: str) -> dict[str, dict[str, Any]]:
    status, _, body = request(api, "GET", f"/api/9/stream/upstreams/{name}")
    assert status == 200, body
    return {p["server"]: p for p in json.loads(body)["peers"]}


def base(api: int) -> str:
    return f"""
workers = 2
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
[[http.servers]]
listen = ["127.0.0.1:{api}"]
  [[http.servers.locations]]
  match = "/api/"
  api = true
"""


@contextmanager
def redis() -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (the TCP check test needs it)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(64).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(pong, what="redis-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def dnsmasq() -> Iterator[int]:
    exe = shutil.which("dnsmasq")
    if exe is None:
        pytest.fail("dnsmasq is not installed (the UDP check test needs it)")
    port = free_port()
    args = [exe, "-k", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces"]
    args += ["--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file="]
    args += ["--address=/probe.test/127.0.0.7"] + (["--user=root"] if os.getuid() == 0 else [])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def answers() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.5)
                try:
                    s.sendto(DNS_QUERY, ("127.0.0.1", port))
                    return s.recv(512)[:2] == b"\x12\x34"
                except OSError:
                    return False

        wait_for(answers, what="dnsmasq")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_tcp_checks_redis_ping_pong_and_a_closed_port(tmp_path: Path) -> None:
    echo = TcpEcho()
    with redis() as redis_port, contextlib.closing(echo):
        closed = f"127.0.0.1:{free_port()}"
        live = f"127.0.0.1:{redis_port}"
        port, api = free_port(), free_port()
        cfg = (
            base(api)
            + f"""
[stream.matches.redis]
send = "PING\\r\\n"
expect = "~ \\"\\\\+PONG\\""
[stream.upstreams.redis]
servers = [{{ address = "{live}" }}, {{ address = "{closed}" }}, {{ address = "{echo.addr}" }}]
[[stream.servers]]
listen = ["127.0.0.1:{port}"]
proxy_pass = "redis"
proxy_connect_timeout = "1s"
health_check = {{ interval = "200ms", fails = 1, passes = 1, match = "redis" }}
health_check_timeout = "1s"
"""
        )
        with LB(tmp_path, cfg, api) as lb:
            wait_for(
                lambda: stream_peers(api, "redis")[closed]["state"] == "unhealthy", what="closed unhealthy"
            )
            # the echo server accepts and answers, but not +PONG: the match fails it
            wait_for(lambda: stream_peers(api, "redis")[echo.addr]["state"] == "unhealthy", what="echo out")
            assert stream_peers(api, "redis")[live]["state"] == "up"
            for _ in range(6):  # every session reaches redis, none the closed port or the echo
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"PING\r\n")
                    assert s.recv(64).startswith(b"+PONG")
            doc = stream_peers(api, "redis")[closed]
            assert doc["health_checks"]["unhealthy"] == 1 and doc["fails"] == 0  # no client attempt
            assert f"upstream server {closed} is unhealthy: Connection refused" in lb.output()


def test_udp_checks_dnsmasq_and_a_closed_port(tmp_path: Path) -> None:
    with dnsmasq() as dns_port:
        closed = f"127.0.0.1:{free_port()}"
        live = f"127.0.0.1:{dns_port}"
        port, api = free_port(), free_port()
        cfg = (
            base(api)
            + f"""
[stream.matches.dns]
send = "{toml_bytes(DNS_QUERY)}"
expect = "~ \\"{toml_bytes(bytes([127, 0, 0, 7]))}\\""
[stream.upstreams.dns]
servers = [{{ address = "{live}" }}, {{ address = "{closed}" }}]
[stream.upstreams.dns.health_check]
udp = true
interval = "200ms"
match = "dns"
timeout = "1s"
[stream.upstreams.plain]
servers = [{{ address = "{live}" }}, {{ address = "{closed}" }}]
[stream.upstreams.plain.health_check]
udp = true
interval = "200ms"
timeout = "300ms"
[[stream.servers]]
listen = ["127.0.0.1:{port} udp"]
proxy_pass = "dns"
proxy_responses = 1
[[stream.servers]]
listen = ["127.0.0.1:{free_port()} udp"]
proxy_pass = "plain"
"""
        )
        with LB(tmp_path, cfg, api):
            for group in ("dns", "plain"):
                wait_for(
                    lambda g=group: stream_peers(api, g)[closed]["state"] == "unhealthy",
                    what=f"{group}: closed",
                )
                wait_for(
                    lambda g=group: stream_peers(api, g)[live]["health_checks"]["checks"] >= 2,
                    what=f"{group}: probed",
                )
                assert stream_peers(api, group)[live]["state"] == "up"
            for i in range(6):  # every query is answered: none goes to the closed port
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(5)
                    s.sendto(DNS_QUERY, ("127.0.0.1", port))
                    assert s.recv(512)[-4:] == bytes([127, 0, 0, 7]), i
