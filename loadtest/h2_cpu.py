"""CPU time per HTTP/2 request of prefork-lb's worker under h2load (issue 20's h2 path).

    PYTHONPATH=$PWD .venv/bin/python loadtest/h2_cpu.py [--requests N] [--rounds R]
        [--port-base P] [--workers W] [--profile SECONDS] [--h1]

Starts one nginx backend (a tiny 200, keep-alive) and prefork-lb with TLS + ``http2`` in
front of it (keep-alive pool, no access log), warms up, then runs ``h2load -c10 -m10 -n N``
R times and reports, per round, the workers' user+system CPU (psutil, from /proc) divided
by the requests h2load completed: microseconds of worker CPU per request, much less noisy
on a shared machine than requests/s. ``--h1`` measures HTTP/1.1 keep-alive over the same
TLS listener instead (h2load --h1, 100 connections, one request in flight each), the
baseline the h2 path is compared with. ``--profile S`` also runs ``py-spy record`` (raw
folded stacks, ``PY_SPY`` env or ``py-spy`` on PATH) on the worker for S seconds of load.

Uses ports P (balancer) and P+1 (backend); default 29443/29444. Not under the bench lock:
it measures CPU time, not throughput, but it still loads the machine: run it briefly.
"""

from __future__ import annotations

import argparse
import os
import re
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


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def workers_of(master: psutil.Process, count: int, timeout_s: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids: list[psutil.Process] = master.children()
        if len(kids) >= count:
            return kids
        time.sleep(0.05)
    raise SystemExit("workers did not start")


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def h2load(port: int, n: int, h1: bool) -> int:
    args = ["h2load", "-t1", "-n", str(n)]
    args += ["--h1", "-c100", "-m1"] if h1 else ["-c10", "-m10"]
    out = subprocess.run(
        [*args, f"https://127.0.0.1:{port}/"], capture_output=True, text=True, check=False
    ).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if not m:
        raise SystemExit("h2load failed:\n" + out)
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port-base", type=int, default=29443)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--profile", type=float, default=0.0)
    ap.add_argument("--h1", action="store_true")
    opts = ap.parse_args()
    for tool in ("h2load", "nginx", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"missing: {tool}")
    lb_port, be_port = opts.port_base, opts.port_base + 1
    work = Path(tempfile.mkdtemp(prefix="h2cpu-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        crt, key = work / "c.crt", work / "c.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        (work / "be.conf").write_text(
            "worker_processes 1; daemon off; pid be.pid; error_log be-error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; keepalive_requests 1000000; client_body_temp_path tmp;\n"
            f'  server {{ listen 127.0.0.1:{be_port}; location / {{ return 200 "a\\n"; }} }} }}\n'
        )
        (work / "lb.toml").write_text(
            f'workers = {opts.workers}\npid = "lb.pid"\nerror_log = "lb-error.log"\n'
            'error_log_level = "warn"\nworker_connections = 8192\n\n'
            '[http]\naccess_log = "off"\n\n[http.upstreams.backend]\nkeepalive = 64\n'
            f'keepalive_requests = 1000000\nservers = [{{ address = "127.0.0.1:{be_port}" }}]\n\n'
            f'[[http.servers]]\nlisten = ["127.0.0.1:{lb_port} ssl http2"]\n'
            f'ssl_certificate = ["{crt}"]\nssl_certificate_key = ["{key}"]\n'
            "keepalive_requests = 1000000\n"
            '  [[http.servers.locations]]\n  match = "/"\n  proxy_pass = "http://backend"\n'
        )
        procs.append(
            subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "be.conf")], start_new_session=True)
        )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        lb = subprocess.Popen(
            [sys.executable, "-m", "prefork_lb", "-c", str(work / "lb.toml")],
            cwd=work, env=env, start_new_session=True,
        )  # fmt: skip
        procs.append(lb)
        wait_port(be_port)
        wait_port(lb_port)
        workers = workers_of(psutil.Process(lb.pid), opts.workers)
        h2load(lb_port, max(2000, opts.requests // 5), opts.h1)  # warm-up
        kind = "HTTP/1.1 keep-alive (h2load --h1 -c100)" if opts.h1 else "HTTP/2 (h2load -c10 -m10)"
        results = []
        for r in range(opts.rounds):
            before = cpu_s(workers)
            t0 = time.monotonic()
            done = h2load(lb_port, opts.requests, opts.h1)
            wall = time.monotonic() - t0
            used = cpu_s(workers) - before
            per = used / max(done, 1) * 1e6
            results.append(per)
            print(f"round {r + 1}: {done} requests in {wall:.2f}s, worker CPU {used:.2f}s: {per:.1f} us/req")
        results.sort()
        print(f"{kind}: median {results[len(results) // 2]:.1f} us/request (min {results[0]:.1f})")
        if opts.profile > 0:
            spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
            if not spy:
                raise SystemExit("--profile: set PY_SPY or put py-spy on PATH")
            out = work.parent / f"h2cpu-profile-{os.getpid()}.txt"
            rec = subprocess.Popen(
                [spy, "record", "-r", "250", "-d", str(int(opts.profile)), "-f", "raw", "-o", str(out),
                 "-p", str(workers[0].pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            while rec.poll() is None:
                h2load(lb_port, opts.requests, opts.h1)
            print(f"profile (folded stacks): {out}")
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
