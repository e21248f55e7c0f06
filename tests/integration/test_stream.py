"""TCP and UDP stream balancing through the real master and workers."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.backends import free_port
from tests.harness import LB, wait_for
from tests.stream_servers import TcpEcho, UdpEcho

LOG = "$protocol|$status|$upstream_addr|$bytes_sent|$bytes_received|$upstream_connect_time"


def stream_config(
    port: int,
    servers: list[str],
    params: dict[str, str] | None = None,
    upstream_extra: str = "",
    server_extra: str = "",
    listen_extra: str = "",
    workers: int = 1,
    http_port: int = 0,
) -> str:
    params = params or {}
    entries = ",\n".join(f'  {{ address = "{s}"{params.get(s, "")} }}' for s in servers)
    http = ""
    if http_port:
        http = f"""
[[http.servers]]
listen = ["127.0.0.1:{http_port}"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
"""
    return f"""
workers = {workers}
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
{http}
[stream.log_formats]
t = '{LOG}'
[stream.upstreams.backend]
{upstream_extra}
servers = [
{entries}
]
[[stream.servers]]
listen = ["127.0.0.1:{port}{listen_extra}"]
proxy_pass = "backend"
proxy_connect_timeout = "1s"
proxy_timeout = "5s"
access_log = "stream.log"
log_format = "t"
{server_extra}
"""


def stream_log(tmp_path: Path, lines: int) -> list[str]:
    path = tmp_path / "stream.log"

    def read() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    return list(wait_for(lambda: len(read()) >= lines and read(), what=f"{lines} stream log lines"))


def tcp_hello(port: int, source: str | None = None) -> str:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=(source, 0) if source else None
    ) as s:
        f = s.makefile("rb")
        return f.readline().decode().strip()


def test_tcp_relay_is_byte_exact_both_ways(tmp_path: Path) -> None:
    echo = TcpEcho()
    port, ready = free_port(), free_port()
    with LB(tmp_path, stream_config(port, [echo.addr], http_port=ready), ready):
        payload = os.urandom(3 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            got = bytearray()

            def reader() -> None:
                while chunk := s.recv(262144):
                    got.extend(chunk)

            t = threading.Thread(target=reader)
            t.start()
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # half-close: the server still answers
            t.join(20)
        hello, rest = bytes(got).split(b"\n", 1)
        assert hello == str(echo.port).encode()
        assert hashlib.sha256(rest[: len(payload)]).digest() == hashlib.sha256(payload).digest()
        assert rest[len(payload) :] == f"EOF {len(payload)}\n".encode()
        line = stream_log(tmp_path, 1)[0].split("|")
        assert line[:3] == ["TCP", "200", echo.addr]
        assert int(line[4]) == len(payload)  # bytes received from the client
    echo.close()


def test_tcp_half_close_from_the_server(tmp_path: Path) -> None:
    echo = TcpEcho(server_first=5000)
    port, ready = free_port(), free_port()
    with LB(tmp_path, stream_config(port, [echo.addr], http_port=ready), ready):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            got = b""
            while chunk := s.recv(65536):  # the server's half-close reaches us as EOF
                got += chunk
            assert got.endswith(b"s" * 5000)
            s.sendall(b"x" * 7000)  # our direction is still open
            s.shutdown(socket.SHUT_WR)
        wait_for(lambda: echo.received_after_close == [7000], what="bytes after the server's FIN")
    echo.close()


def test_tcp_connect_failure_order_matches_nginx(tmp_path: Path) -> None:
    # nginx scenario 24: weights a=2, dead, c -> a, dead+c, a, a, c, a, a, c
    a, c = TcpEcho(), TcpEcho()
    dead = f"127.0.0.1:{free_port()}"
    port, ready = free_port(), free_port()
    cfg = stream_config(port, [a.addr, dead, c.addr], {a.addr: ", weight = 2"}, http_port=ready)
    with LB(tmp_path, cfg, ready):
        seen = [tcp_hello(port) for _ in range(8)]
        lines = stream_log(tmp_path, 8)
    name = {str(a.port): "a", str(c.port): "c"}
    assert [name[p] for p in seen] == list("acaacaac")  # the order, as the clients saw it
    # A session's line is written when both sides have closed, so two sessions' lines may
    # come in either order: compare what was logged, not where.
    addrs = [line.split("|")[2] for line in lines]
    (failover,) = [line for line in lines if line.split("|")[2] == f"{dead}, {c.addr}"]
    assert failover.split("|")[5] == "-, " + failover.split("|")[5].split(", ")[1]  # dead: no connect time
    assert sorted(x for x in addrs if x != f"{dead}, {c.addr}") == sorted([a.addr] * 5 + [c.addr] * 2)
    a.close()
    c.close()


def test_tcp_all_dead_is_502(tmp_path: Path) -> None:
    d1, d2 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    port, ready = free_port(), free_port()
    with LB(tmp_path, stream_config(port, [d1, d2], http_port=ready), ready):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert s.recv(10) == b""
        line = stream_log(tmp_path, 1)[0].split("|")
    assert line[:3] == ["TCP", "502", f"{d1}, {d2}"]


def test_least_conn_across_workers_with_held_connections(tmp_path: Path) -> None:
    a, b = TcpEcho(), TcpEcho()
    port, ready = free_port(), free_port()
    cfg = stream_config(
        port, [a.addr, b.addr], upstream_extra='method = "least_conn"', workers=2, http_port=ready
    )
    with LB(tmp_path, cfg, ready):
        held = []
        for i in range(6):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.makefile("rb").readline()
            held.append(s)
            wait_for(lambda i=i: a.open + b.open == i + 1, what="held connection")
        assert (a.open, b.open) == (3, 3)
        for s in held:
            s.close()
    a.close()
    b.close()


def test_hash_remote_addr(tmp_path: Path) -> None:
    a, b = TcpEcho(), TcpEcho()
    port, ready = free_port(), free_port()
    cfg = stream_config(
        port, [a.addr, b.addr], upstream_extra='method = "hash"\nhash = "$remote_addr"', http_port=ready
    )
    with LB(tmp_path, cfg, ready):
        by_source = {
            src: {tcp_hello(port, src) for _ in range(4)} for src in (f"127.0.{i}.9" for i in range(12))
        }
    assert all(len(v) == 1 for v in by_source.values())  # each client address sticks
    assert {next(iter(v)) for v in by_source.values()} == {str(a.port), str(b.port)}
    a.close()
    b.close()


@pytest.mark.skipif(not shutil.which("redis-server") or not shutil.which("redis-benchmark"), reason="redis")
def test_redis_through_the_tcp_balancer(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for p in ports:
            wait_for(lambda p=p: _accepts(p), what="redis")
        port = free_port()
        cfg = stream_config(
            port, [f"127.0.0.1:{p}" for p in ports], upstream_extra='method = "least_conn"', workers=2
        )
        with LB(tmp_path, cfg, port):
            out = subprocess.run(
                [
                    "redis-benchmark",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-n",
                    "4000",
                    "-c",
                    "20",
                    "-t",
                    "set,get",
                    "-q",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert "requests per second" in out.stdout and "rror" not in out.stdout + out.stderr
            cli = subprocess.run(
                ["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True, timeout=10
            )
            assert cli.stdout.strip() == "PONG"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def udp_ask(port: int, data: bytes, timeout_s: float = 3.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recvfrom(65535)[0]
        except TimeoutError:
            return None


def test_udp_echo_and_proxy_responses_round_robin(tmp_path: Path) -> None:
    a, b = UdpEcho(), UdpEcho()
    port, http_port = free_port(), free_port()
    cfg = stream_config(
        port, [a.addr, b.addr], listen_extra=" udp", server_extra="proxy_responses = 1", http_port=http_port
    )
    with LB(tmp_path, cfg, http_port):
        answers = [udp_ask(port, f"q{i}".encode()) for i in range(6)]
        lines = stream_log(tmp_path, 6)
    ports = [x.split(b" ")[0].decode() for x in answers if x]
    assert ports == [str(a.port), str(b.port)] * 3
    assert all(x.endswith(f"q{i}".encode()) for i, x in enumerate(answers) if x)
    assert all(line.startswith("UDP|200|") for line in lines)
    a.close()
    b.close()


def test_udp_dead_upstream_is_charged_and_skipped(tmp_path: Path) -> None:
    a = UdpEcho()
    dead = f"127.0.0.1:{free_port()}"
    port, http_port = free_port(), free_port()
    cfg = stream_config(
        port, [dead, a.addr], listen_extra=" udp", server_extra="proxy_responses = 1", http_port=http_port
    )
    with LB(tmp_path, cfg, http_port) as lb:
        first = udp_ask(port, b"x")
        assert first == b""  # ICMP port unreachable -> an empty datagram, as nginx
        answers = [udp_ask(port, b"y") for _ in range(3)]
        assert all(x is not None and x.startswith(str(a.port).encode()) for x in answers)
        assert "Connection refused" in lb.output()
    a.close()


@pytest.mark.skipif(not shutil.which("dnsmasq") or not shutil.which("dig"), reason="dnsmasq and dig")
def test_dns_through_the_udp_balancer(tmp_path: Path) -> None:
    dns_ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                f"--port={p}",
                "--address=/svc.test/10.9.8.7",
                "--pid-file=",
                "--user=root",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in dns_ports
    ]
    try:

        def answers(dns_port: int) -> bool:
            out = subprocess.run(
                ["dig", "@127.0.0.1", "-p", str(dns_port), "+short", "+tries=1", "+time=1", "a.svc.test"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            return out.stdout.strip() == "10.9.8.7"

        for p in dns_ports:  # each dnsmasq answers directly before we balance over them
            wait_for(lambda p=p: answers(p), what=f"dnsmasq on port {p}")
        port, http_port = free_port(), free_port()
        cfg = stream_config(
            port,
            [f"127.0.0.1:{p}" for p in dns_ports],
            listen_extra=" udp",
            server_extra="proxy_responses = 1",
            http_port=http_port,
        )
        with LB(tmp_path, cfg, http_port):
            for _ in range(4):
                out = subprocess.run(
                    ["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=3", "a.svc.test"],
                    capture_output=True,
                    text=True,
                    timeout=15,
                )
                assert out.stdout.strip() == "10.9.8.7", out.stdout + out.stderr
            lines = stream_log(tmp_path, 4)
        assert {line.split("|")[2] for line in lines} == {f"127.0.0.1:{p}" for p in dns_ports}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_udp_silent_upstream_is_502_and_proxy_requests_rebind(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    silent_addr = f"127.0.0.1:{silent.getsockname()[1]}"
    a = UdpEcho()
    port, http_port = free_port(), free_port()
    cfg = stream_config(
        port,
        [silent_addr, a.addr],
        listen_extra=" udp",
        http_port=http_port,
        server_extra="proxy_responses = 1\nproxy_requests = 1",
    ).replace('proxy_timeout = "5s"', 'proxy_timeout = "1s"')
    with LB(tmp_path, cfg, http_port) as lb:
        assert udp_ask(port, b"1", timeout_s=2.5) is None  # the silent peer: nothing comes back
        line = stream_log(tmp_path, 1)[0].split("|")
        assert line[:3] == ["UDP", "502", silent_addr]
        assert "upstream timed out" in lb.output()
        answers = [udp_ask(port, b"n") for _ in range(3)]  # the silent peer is now charged
        assert all(x is not None and x.startswith(str(a.port).encode()) for x in answers)
    silent.close()
    a.close()


def test_udp_session_table_is_bounded(tmp_path: Path) -> None:
    a = UdpEcho()
    port, http_port = free_port(), free_port()
    cfg = stream_config(
        port, [a.addr], listen_extra=" udp", http_port=http_port, server_extra="udp_sessions = 2"
    )
    with LB(tmp_path, cfg, http_port):
        # no proxy_responses: sessions live until proxy_timeout unless the table evicts them
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
        for c in clients:
            c.settimeout(3)
            c.sendto(b"hi", ("127.0.0.1", port))
            assert c.recvfrom(100)[0].endswith(b"hi")
        # five sessions in a table of two: three were ended (and logged) to make room
        lines = stream_log(tmp_path, 3)
        assert len(lines) >= 3 and all(line.startswith("UDP|200|") for line in lines)
        for c in clients:
            c.close()
    a.close()
