#!/usr/bin/env python3
"""CPU time per cache HIT of prefork-lb's workers (issue 18): the ``cache`` twin of
loadtest/cpu_per_request.sh, less noisy than req/s on a shared 2-core machine.

    PYTHONPATH=$PWD .venv/bin/python loadtest/cache_cpu.py [--size 1024] [--seconds 5]
        [--port 31080] [--workers 2] [--profile DIR]

Starts one nginx backend (serves one random file of ``--size`` bytes with
``Cache-Control: max-age=600``, logs its requests), prefork-lb (this checkout, ``sys.executable
-m prefork_lb``) with ``proxy_cache`` in front of it, warms the cache (waits until a request
has been asked 40 times), then runs ``wrk -t1 -c50`` and prints req/s, p99 and the workers'
user+system CPU per request (psutil; ``--strace``: the
workers' syscall counts for 2 s, which changes the CPU figure), and how many requests reached the backend.
``--profile DIR`` sets PREFORK_LB_PROFILE_DIR (cProfile per worker). Holds
/tmp/prefork-lb-bench.lock while it runs. Ports: ``--port`` and ``--port + 1``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--port", type=int, default=31080)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--profile", default="")
    ap.add_argument("--proxy", action="store_true", help="no proxy_cache: the proxied path, same setup")
    ap.add_argument("--repo", default=str(REPO), help="the checkout to run (A/B against another worktree)")
    ap.add_argument("--strace", action="store_true", help="strace -c the workers for 2 s of the run")
    args = ap.parse_args()
    lb_port, be_port = args.port, args.port + 1
    lock = open("/tmp/prefork-lb-bench.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    d = Path(tempfile.mkdtemp(prefix="cache-cpu-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        d.chmod(0o755)  # nginx workers run as nobody
        (d / "cache.bin").write_bytes(os.urandom(args.size))
        (d / "cache.bin").chmod(0o644)
        (d / "be").mkdir()
        (d / "be.conf").write_text(
            "worker_processes 1; daemon off; pid be.pid; error_log be-error.log warn;\n"
            "events { worker_connections 8192; }\n"
            f"http {{ access_log {d}/be-access.log; keepalive_requests 1000000; sendfile on;\n"
            "  client_body_temp_path tmp-body;\n"
            f"  server {{ listen 127.0.0.1:{be_port}; location / {{ root {d}; try_files /cache.bin =404;\n"
            '    default_type application/octet-stream; add_header Cache-Control "max-age=600"; } } }\n'
        )
        (d / "lb.toml").write_text(
            f'workers = {args.workers}\npid = "{d}/lb.pid"\nerror_log = "{d}/lb-error.log"\n'
            'error_log_level = "warn"\nworker_connections = 8192\n\n[http]\naccess_log = "off"\n\n'
            f'[http.proxy_cache_paths.bench]\npath = "{d}/lb-cache"\nlevels = "1:2"\nkeys_zone = "10m"\n\n'
            "[http.upstreams.backend]\nkeepalive = 64\n"
            f'servers = [{{ address = "127.0.0.1:{be_port}" }}]\n\n'
            f'[[http.servers]]\nlisten = ["127.0.0.1:{lb_port}"]\nkeepalive_requests = 1000000\n'
            '  [[http.servers.locations]]\n  match = "/"\n  proxy_pass = "http://backend"\n'
            + ("" if args.proxy else '  proxy_cache = "bench"\n  proxy_cache_valid = ["200 10m"]\n')
        )
        procs.append(
            subprocess.Popen(["nginx", "-p", str(d / "be"), "-c", str(d / "be.conf")], start_new_session=True)
        )
        env = dict(os.environ, PYTHONPATH=args.repo)
        if args.profile:
            env["PREFORK_LB_PROFILE_DIR"] = args.profile
        lb = subprocess.Popen(
            [sys.executable, "-m", "prefork_lb", "-c", str(d / "lb.toml")],
            env=env,
            cwd=args.repo,  # -m puts the cwd first on sys.path
            start_new_session=True,
        )
        procs.append(lb)
        wait_port(be_port)
        wait_port(lb_port)
        url = f"http://127.0.0.1:{lb_port}/"
        for _ in range(40):  # the first fills the entry; the rest warm both workers
            with urllib.request.urlopen(url) as r:
                r.read()
            time.sleep(0.01)
        kids = psutil.Process(lb.pid).children()

        def cpu() -> float:
            return sum(sum(k.cpu_times()[:2]) for k in kids)

        be_before = len((d / "be-access.log").read_text().splitlines())
        c0 = cpu()
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds}s", "--latency", url],
            stdout=subprocess.PIPE,
            text=True,
        )
        if args.strace:
            time.sleep(1)
            cmd = ["timeout", "-s", "INT", "2", "strace", "-c", "-f"]
            for k in kids:
                cmd += ["-p", str(k.pid)]
            print(subprocess.run(cmd, capture_output=True, text=True).stderr)
        out = wrk.communicate()[0]
        c1 = cpu()
        be_after = len((d / "be-access.log").read_text().splitlines())
        reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)  # type: ignore[union-attr]
        p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
        print(
            f"{'proxied' if args.proxy else 'HITs'}, size {args.size} B: {float(rps):,.0f} req/s  "
            f"p99 {p99}  CPU per request "
            f"{(c1 - c0) / reqs * 1e6:.1f} us ({args.workers} workers)  backend requests during run: "
            f"{be_after - be_before}"
        )
        for line in out.splitlines():
            if "Socket errors" in line or "Non-2xx" in line:
                print(line)
        return 0
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
