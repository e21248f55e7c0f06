#!/usr/bin/env python3
"""Memory per open UDP stream session of one prefork-lb worker.

    .venv/bin/python loadtest/udp_session_memory.py [--sessions 4000] [--rounds 3]

Starts prefork-lb (1 worker, worker_rlimit_nofile and worker_connections with room) with a
UDP listener in front of an in-process UDP echo server, `proxy_timeout 300s` and no
`proxy_responses`, so every session stays open until measured. Per round: a warm-up of
200 sessions (one-time costs: code paths, the allocator's first arenas) that is left
open, then the worker's RSS and PSS (/proc/PID/smaps_rollup), then --sessions new client
sockets each send one datagram and wait for the echo (the session exists once the reply
came back), then RSS and PSS again. KiB per session = delta / sessions. Kernel memory (the
session's socket, its buffers) is not in RSS or PSS. Uses ephemeral ports on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _echo() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65535)
                sock.sendto(data, peer)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


def _mem_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def _open_sessions(port: int, count: int, held: list[socket.socket]) -> None:
    """``count`` new clients, at most 200 in flight; each waits for its echo."""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, float] = {}
    started = 0
    done = 0
    while done < count:
        while started < count and len(pending) < 200:
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.setblocking(False)
            c.sendto(b"x", ("127.0.0.1", port))
            pending[c] = time.monotonic()
            sel.register(c, selectors.EVENT_READ)
            started += 1
        for key, _ in sel.select(1.0):
            c = key.fileobj  # type: ignore[assignment]
            assert isinstance(c, socket.socket)
            c.recv(100)
            sel.unregister(c)
            del pending[c]
            held.append(c)
            done += 1
        now = time.monotonic()
        for c, t in list(pending.items()):
            if now - t > 2.0:  # lost datagram: ask again from the same port (same session)
                c.sendto(b"x", ("127.0.0.1", port))
                pending[c] = now
    sel.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    need = args.rounds * (args.sessions + 200) + 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    echo, echo_port = _echo()
    results = []
    for r in range(args.rounds):
        port, http_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
        with tempfile.TemporaryDirectory() as d:
            conf = Path(d) / "lb.toml"
            conf.write_text(f"""
workers = 1
error_log = "error.log"
worker_connections = {args.sessions * 2 + 1000}
worker_rlimit_nofile = {args.sessions * 2 + 1000}
[http]
access_log = "off"
[[http.servers]]
listen = ["127.0.0.1:{http_port}"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
[stream.upstreams.echo]
servers = [{{ address = "127.0.0.1:{echo_port}" }}]
[[stream.servers]]
listen = ["127.0.0.1:{port} udp"]
proxy_pass = "echo"
proxy_timeout = "300s"
udp_sessions = {args.sessions * 2 + 1000}
""")
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefork_lb", "-c", str(conf)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            held: list[socket.socket] = []
            try:
                deadline = time.monotonic() + 20
                errlog = Path(d) / "error.log"
                while not errlog.exists() or "ready" not in errlog.read_text():
                    if time.monotonic() > deadline:
                        raise SystemExit("prefork-lb did not start")
                    time.sleep(0.05)
                worker = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
                _open_sessions(port, 200, held)
                time.sleep(1.0)
                rss0, pss0 = _mem_kib(worker)
                _open_sessions(port, args.sessions, held)
                time.sleep(1.0)
                rss1, pss1 = _mem_kib(worker)
                fds = len(os.listdir(f"/proc/{worker}/fd"))
                per_rss = (rss1 - rss0) / args.sessions
                per_pss = (pss1 - pss0) / args.sessions
                results.append((per_rss, per_pss))
                print(
                    f"round {r + 1}: {args.sessions} sessions, worker fds {fds}, "
                    f"RSS {rss0} -> {rss1} KiB ({per_rss:.2f} KiB/session), "
                    f"PSS {pss0} -> {pss1} KiB ({per_pss:.2f} KiB/session)",
                    flush=True,
                )
            finally:
                for c in held:
                    c.close()
                proc.terminate()
                proc.wait(10)
    echo.close()
    rss = sorted(x[0] for x in results)
    pss = sorted(x[1] for x in results)
    print(f"median: {rss[len(rss) // 2]:.2f} KiB RSS, {pss[len(pss) // 2]:.2f} KiB PSS per UDP session")
    return 0


if __name__ == "__main__":
    sys.exit(main())
