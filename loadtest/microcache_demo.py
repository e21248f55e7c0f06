#!/usr/bin/env python3
"""Microcaching demo: a slow application behind prefork-lb with a 1-second cache.

    .venv/bin/python loadtest/microcache_demo.py [--seconds 5] [--conns 50] [--workers 2]

The application answers one request at a time and spends 20 ms on each (a synchronous
Python back end doing at most 50 req/s). wrk drives it directly, then through prefork-lb with nginx's
microcaching recipe:

    proxy_cache_valid = ["200 1s"]             # every response is fresh for one second
    proxy_cache_lock = true                    # one request fills a new key
    proxy_cache_use_stale = ["updating"]       # the others get the previous second's copy
    proxy_cache_background_update = true       # ... even the one that notices it expired

and the script prints both rates and how many requests reached the application (about one
per second of load through the cache). Loopback only, ephemeral ports; the wrk runs hold
``/tmp/prefork-lb-bench.lock`` like loadtest/bench, so they never overlap another benchmark.
Needs wrk.
"""

from __future__ import annotations

import argparse
import fcntl
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = "/tmp/prefork-lb-bench.lock"
WORK_S = 0.020  # the application's time per request: at most 50 req/s

CONFIG = """
workers = {workers}
pid = "demo.pid"
error_log = "error.log"
error_log_level = "warn"

[http]
access_log = "off"

[http.proxy_cache_paths.micro]
path = "cache"
levels = "1:2"
keys_zone = "1m"

[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://127.0.0.1:{app}"
  proxy_cache = "micro"
  proxy_cache_valid = ["200 1s"]
  proxy_cache_lock = true
  proxy_cache_use_stale = ["updating"]
  proxy_cache_background_update = true
  add_header = {{ X-Cache-Status = "$upstream_cache_status" }}
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk closing its connections at the end


class App:
    """An HTTP/1.1 application doing one request at a time (a lock around 20 ms of work, like
    one synchronous worker): at most 50 req/s however many connections; requests counted."""

    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.busy = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                app.in_flight += 1
                with app.busy:
                    app.requests += 1
                    app.in_flight -= 1
                    time.sleep(WORK_S)
                    body = b"rendered at %.3f\n" % time.time()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def settle(self) -> int:
        """The request count once the requests queued when wrk stopped have run."""
        while self.in_flight or not self.busy.acquire(timeout=1):
            time.sleep(0.05)
        self.busy.release()
        return self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wrk(port: int, seconds: int, conns: int) -> tuple[float, str]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return (float(rps[1]) if rps else 0.0), (p99[1] if p99 else "-")


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"prefork-lb exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("prefork-lb did not listen within 20 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("microcache_demo: wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 2
    app = App()
    work = Path(tempfile.mkdtemp(prefix="prefork-lb-microcache-"))
    port = free_port()
    (work / "demo.toml").write_text(CONFIG.format(workers=args.workers, port=port, app=app.port))
    lb = subprocess.Popen(
        [sys.executable, "-m", "prefork_lb", "-c", str(work / "demo.toml")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    lock = open(LOCK, "a")  # noqa: SIM115 - held for the whole run, closed below
    try:
        wait_listening(port, lb)
        print(f"waiting for {LOCK} ...", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached_rps, cached_p99 = wrk(port, args.seconds, args.conns)  # first: the app is idle
        cached_requests = app.settle()
        direct_rps, direct_p99 = wrk(app.port, args.seconds, args.conns)
        direct_requests = app.settle() - cached_requests
    finally:
        lock.close()
        lb.terminate()
        lb.wait(timeout=20)
        app.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrk -t1 -c{args.conns} -d{args.seconds}s, prefork-lb {args.workers} worker(s)")
    print(f"{'':<28} {'req/s':>9} {'p99':>9} {'requests at the app':>20}")
    print(f"{'the app directly':<28} {direct_rps:>9,.0f} {direct_p99:>9} {direct_requests:>20,}")
    print(f"{'through the 1 s microcache':<28} {cached_rps:>9,.0f} {cached_p99:>9} {cached_requests:>20,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
