#!/usr/bin/env python3
"""Whole proxy with 1 and with N servers in one upstream group, nginx beside prefork-lb
(compiled loops, and pure with PREFORK_LB_PURE=1): requests/s and balancer CPU per request.

    .venv/bin/python loadtest/big_group.py          # N=2000, keepalive 64, 2 rounds x 6 s
    N=1000 KA=4096 ROUNDS=3 SECS=8 .venv/bin/python loadtest/big_group.py

One nginx backend listens on N loopback ports from 20000 (it needs worker_rlimit_nofile and
the ports free); wrk -t1 -c50. Read CPU per request: req/s swings between rounds on a
shared 2-core machine. Loopback only; bounded by ROUNDS x SECS.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil

W = tempfile.mkdtemp(prefix="prefork-lb-big-group-")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
BASE = 20000
N = int(os.environ.get("N", "2000"))
SECS = int(os.environ.get("SECS", "6"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
KA = int(os.environ.get("KA", "64"))


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")


def start(cmd, env=None, cwd=W):
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=open(f"{W}/out.log", "a"),
        stderr=subprocess.STDOUT,
    )


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def backend():
    listens = "\n".join(f"        listen 127.0.0.1:{BASE + i};" for i in range(N))
    write(
        f"{W}/backend.conf",
        f"""worker_processes 1; daemon off; pid {W}/backend.pid;
error_log {W}/backend-error.log warn; worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {W}/tb; proxy_temp_path {W}/tp;
    server {{
{listens}
        location / {{ return 200 "a\\n"; }}
    }}
}}
""",
    )
    p = start(["nginx", "-p", W, "-c", f"{W}/backend.conf"])
    wait_port(BASE)
    wait_port(BASE + N - 1)
    return p


def nginx_lb(port, n, method):
    servers = "\n".join(f"        server 127.0.0.1:{BASE + i};" for i in range(n))
    lc = "least_conn;" if method == "least_conn" else ""
    write(
        f"{W}/lb.conf",
        f"""worker_processes 2; daemon off; pid {W}/lb.pid; worker_rlimit_nofile 20000;
error_log {W}/lb-error.log warn;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {W}/tb; proxy_temp_path {W}/tp;
    upstream backend {{ zone backend 8m; {lc}
{servers}
        keepalive {KA}; }}
    server {{ listen 127.0.0.1:{port} reuseport;
        location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
}}
""",
    )
    return start(["nginx", "-p", W, "-c", f"{W}/lb.conf"])


def plb(port, n, method, pure):
    servers = ", ".join(f'{{ address = "127.0.0.1:{BASE + i}" }}' for i in range(n))
    write(
        f"{W}/lb.toml",
        f"""workers = 2
pid = "{W}/plb.pid"
error_log = "{W}/plb-error.log"
error_log_level = "warn"
worker_connections = 8192
worker_rlimit_nofile = 20000

[http]
access_log = "off"

[http.upstreams.backend]
method = "{method}"
keepalive = {KA}
keepalive_requests = 1000000
servers = [{servers}]

[[http.servers]]
listen = ["127.0.0.1:{port}"]
keepalive_requests = 1000000
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
""",
    )
    env = dict(os.environ)
    env.pop("PREFORK_LB_PURE", None)
    if pure:
        env["PREFORK_LB_PURE"] = "1"
    return start([PY, "-m", "prefork_lb", "-c", f"{W}/lb.toml"], env=env, cwd=REPO)


def cpu_s(p):
    try:
        procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    t = 0.0
    for q in procs:
        try:
            c = q.cpu_times()
            t += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return t


def wrk(port):
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{SECS}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    err = re.findall(r"(Socket errors.*|Non-2xx.*)", out)
    return rps, err


def main():
    be = backend()
    results = {}
    cpus = {}
    try:
        for rnd in range(ROUNDS):
            for method in ("round_robin", "least_conn"):
                for n in (1, N):
                    for name in ("nginx", "plb-C", "plb-pure"):
                        port = free_port()
                        p = (
                            nginx_lb(port, n, method)
                            if name == "nginx"
                            else plb(port, n, method, name == "plb-pure")
                        )
                        try:
                            wait_port(port)
                            subprocess.run(
                                ["wrk", "-t1", "-c50", "-d1s", f"http://127.0.0.1:{port}/"],
                                capture_output=True,
                            )
                            c0 = cpu_s(p)
                            rps, err = wrk(port)
                            cpu_us = (cpu_s(p) - c0) / (rps * SECS) * 1e6
                        finally:
                            stop(p)
                        results.setdefault((method, n, name), []).append(rps)
                        cpus.setdefault((method, n, name), []).append(cpu_us)
                        print(
                            f"round {rnd} ka={KA} {method:<12} {n:>5} {name:<9} {rps:>10.0f} req/s"
                            f" {cpu_us:6.1f} us/req {err}",
                            flush=True,
                        )
    finally:
        stop(be)
    print()
    import statistics

    for method in ("round_robin", "least_conn"):
        for name in ("nginx", "plb-C", "plb-pure"):
            one = statistics.median(results[(method, 1, name)])
            many = statistics.median(results[(method, N, name)])
            c1 = statistics.median(cpus[(method, 1, name)])
            cn = statistics.median(cpus[(method, N, name)])
            print(
                f"ka={KA} {method:<12} {name:<9} 1 server {one:>9.0f}  {N} servers {many:>9.0f}"
                f"  drop {100 * (1 - many / one):.0f}%   cpu/req {c1:.1f} -> {cn:.1f} us"
            )


if __name__ == "__main__":
    main()
