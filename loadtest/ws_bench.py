"""WebSocket echo through prefork-lb and nginx: 1 KiB messages over 100 tunnels (issue 14).

    .venv/bin/python loadtest/ws_bench.py [--seconds 8] [--pairs 3] [--conns 100] [--window 4]

One echo backend (``websockets`` on uvloop, its own process), then alternating runs
through nginx 1.22 (its canonical WebSocket config, 2 workers) and prefork-lb (no
WebSocket config, 2 workers), and one run straight to the backend (the ceiling of this
client and backend). Each connection keeps ``window`` messages in flight. The client and
the backend are Python too and share the 2 cores, so messages/s are bounded by them; the
figure that compares the proxies is their own CPU time (user + system of the workers, from
/proc) per message echoed. Holds /tmp/prefork-lb-bench.lock like loadtest/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

BACKEND = """
import asyncio, sys
import uvloop
from websockets.asyncio.server import serve

async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except Exception:  # the client closes with messages in flight
        pass

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None, max_size=None):
        await asyncio.Future()

uvloop.run(main())
"""

NGINX_CONF = """
{user}
worker_processes 2;
daemon off;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path tmp-body;
    proxy_temp_path tmp-proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream backend {{ server 127.0.0.1:{backend}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""

LB_CONF = """
workers = 2
error_log = "error.log"
[http]
access_log = "off"
[http.upstreams.backend]
servers = [{{ address = "127.0.0.1:{backend}" }}]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_read_timeout = "1h"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listen(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


async def client(port: int, conns: int, window: int, seconds: float) -> int:
    from websockets.asyncio.client import connect

    payload = os.urandom(1024)
    socks = [
        await connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=None, open_timeout=30)
        for _ in range(conns)
    ]
    done = 0
    stop = time.monotonic() + seconds

    async def one(ws: object) -> None:
        nonlocal done
        for _ in range(window):
            await ws.send(payload)  # type: ignore[attr-defined]
        while time.monotonic() < stop:
            await ws.recv()  # type: ignore[attr-defined]
            done += 1
            await ws.send(payload)  # type: ignore[attr-defined]

    await asyncio.gather(*(one(ws) for ws in socks))
    for ws in socks:
        await ws.close()
    return done


def run_client(port: int, args: argparse.Namespace) -> int:
    import uvloop

    return int(uvloop.run(client(port, args.conns, args.window, args.seconds)))


def workers_cpu(master: int) -> float:
    total = 0.0
    for child in psutil.Process(master).children():
        t = child.cpu_times()
        total += t.user + t.system
    return total


def measure(name: str, port: int, master: int | None, args: argparse.Namespace) -> None:
    before = workers_cpu(master) if master else 0.0
    start = time.monotonic()
    done = run_client(port, args)
    took = time.monotonic() - start
    cpu = workers_cpu(master) - before if master else 0.0
    per = f"{cpu / done * 1e6:6.1f} us CPU/msg" if master else "      (no proxy)"
    print(f"{name:9s} {done / took:9.0f} msg/s  {per}", flush=True)


def start_nginx(work: Path, backend: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    d = work / "nginx"
    d.mkdir(exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    (d / "nginx.conf").write_text(NGINX_CONF.format(user=user, backend=backend, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-p", str(d), "-c", str(d / "nginx.conf")], start_new_session=True)
    wait_listen(port)
    return proc, port


def start_lb(work: Path, backend: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    d = work / "lb"
    d.mkdir(exist_ok=True)
    (d / "lb.toml").write_text(LB_CONF.format(backend=backend, port=port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefork_lb", "-c", str(d / "lb.toml")], cwd=REPO, start_new_session=True
    )
    wait_listen(port)
    deadline = time.monotonic() + 20
    while len(psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--window", type=int, default=4)
    args = ap.parse_args()
    lock = open("/tmp/prefork-lb-bench.lock", "w")  # noqa: SIM115 (held for the whole run)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bport = free_port()
        backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(bport)], start_new_session=True)
        try:
            wait_listen(bport)
            print(f"{args.conns} tunnels, 1 KiB messages, {args.window} in flight each, {args.seconds:g} s")
            measure("direct", bport, None, args)
            for _ in range(args.pairs):
                for name, starter in (("nginx", start_nginx), ("prefork", start_lb)):
                    proc, port = starter(work, bport)
                    try:
                        measure(name, port, proc.pid, args)
                    finally:
                        stop(proc)
        finally:
            stop(backend)


if __name__ == "__main__":
    main()
