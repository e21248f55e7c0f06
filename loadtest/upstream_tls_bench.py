"""CPU per keep-alive request through a pooled ``https://`` upstream beside ``http://`` (issue 14).

    .venv/bin/python loadtest/upstream_tls_bench.py

One prefork-lb worker, ``wrk -t1 -c20`` for 4 s per run, alternating /plain and /tls three
times; the upstream is one nginx answering on a plain and a TLS port (self-signed P-256,
made with the openssl CLI). Holds /tmp/prefork-lb-bench.lock like loadtest/bench.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ws_bench as wb

REPO = Path(__file__).resolve().parent.parent
lock = open("/tmp/prefork-lb-bench.lock", "w")  # noqa: SIM115 (held for the whole run)
fcntl.flock(lock, fcntl.LOCK_EX)
d = Path(tempfile.mkdtemp())
subprocess.run(
    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
     "-keyout", "k.pem", "-out", "c.pem", "-days", "2", "-subj", "/CN=up.test"],
    cwd=d, check=True, capture_output=True,
)  # fmt: skip
hp, sp, lp = wb.free_port(), wb.free_port(), wb.free_port()
(d / "nginx.conf").write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1; daemon off; pid nginx.pid; error_log error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{hp}; listen 127.0.0.1:{sp} ssl;
    ssl_certificate {d}/c.pem; ssl_certificate_key {d}/k.pem;
    ssl_protocols TLSv1.2 TLSv1.3; location / {{ return 200 "hello world\\n"; }} }} }}
""")
(d / "lb.toml").write_text(f"""
workers = 1
error_log = "error.log"
[http]
access_log = "off"
[http.upstreams.plain]
keepalive = 32
servers = [{{ address = "127.0.0.1:{hp}" }}]
[http.upstreams.tls]
keepalive = 32
servers = [{{ address = "127.0.0.1:{sp}" }}]
[[http.servers]]
listen = ["127.0.0.1:{lp}"]
  [[http.servers.locations]]
  match = "/plain"
  proxy_pass = "http://plain"
  [[http.servers.locations]]
  match = "/tls"
  proxy_pass = "https://tls"
""")
ngx = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], start_new_session=True)
lb = subprocess.Popen(
    [sys.executable, "-m", "prefork_lb", "-c", str(d / "lb.toml")], cwd=REPO, start_new_session=True
)
try:
    wb.wait_listen(lp)
    time.sleep(1)
    (w,) = psutil.Process(lb.pid).children()
    for _ in range(3):
        for path in ("/plain", "/tls"):
            t0 = w.cpu_times()
            c0 = t0.user + t0.system
            out = subprocess.run(
                ["wrk", "-t1", "-c20", "-d4s", f"http://127.0.0.1:{lp}{path}"], capture_output=True, text=True
            ).stdout
            t1 = w.cpu_times()
            c1 = t1.user + t1.system
            n = int(re.search(r"(\d+) requests in", out).group(1))
            non2xx = re.search(r"Non-2xx.*?(\d+)", out)
            print(
                f"{path:7s} {n / 4:8.0f} req/s  {(c1 - c0) / n * 1e6:6.1f} us CPU/req",
                f"non-2xx: {non2xx.group(1)}" if non2xx else "",
                flush=True,
            )
finally:
    for p in (lb, ngx):
        p.terminate()
        p.wait()
    shutil.rmtree(d)
