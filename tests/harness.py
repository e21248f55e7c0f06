"""Run the real ``prefork-lb`` master as a subprocess for integration tests.

Readiness is observed, never slept for: a test waits until the listener accepts and the
pid file names a master whose workers are up (polling with a deadline), so the suite does
not depend on how fast a busy 2-core machine happens to be.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 20.0


def wait_for(predicate: Callable[[], Any], timeout_s: float = DEADLINE_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def refused(port: int) -> bool:
    """True when a connect to 127.0.0.1:port is refused: no socket is bound there. (``not
    accepts`` is not enough: a socket bound but unserved is "not accepting" too, once
    probes have filled its backlog; a timeout means something holds the port.)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefork_lb", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd or REPO,
    )


class LB:
    """A prefork-lb master with a config written into ``directory``."""

    def __init__(
        self,
        directory: Path,
        config: str,
        port: int,
        conf_name: str = "prefork-lb.toml",
        pid_name: str = "prefork-lb.pid",
    ) -> None:
        """``conf_name`` ending in ``.conf``: ``config`` is nginx syntax (tests/nginx_conf.py)."""
        self.dir = directory
        self.port = port
        self.conf = directory / conf_name
        self.pid_name = pid_name
        self.conf.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- lifecycle ----

    def start(self) -> LB:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefork_lb", "-c", str(self.conf)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, what="prefork-lb to listen")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode() if self.proc.stdout else ""
            raise AssertionError(f"prefork-lb exited with {self.proc.returncode}:\n{out}")
        if not self.pid_path.exists() or "worker process(es) ready" not in self.output():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def pid_path(self) -> Path:
        return self.dir / self.pid_name

    @property
    def master_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.master_pid).children()
        except psutil.NoSuchProcess:
            return []

    def binary_upgrade(self, old: int, workers: int) -> int:
        """USR2 to the master ``old``; the new master's pid once the pid file names it, the
        old one moved to ``.oldbin`` and its ``workers`` workers are up."""
        os.kill(old, signal.SIGUSR2)
        oldbin = self.dir / f"{self.pid_name}.oldbin"

        def new_master() -> int:
            if not oldbin.exists() or not self.pid_path.exists():
                return 0
            pid = int(self.pid_path.read_text())
            return pid if pid != old and len(psutil.Process(pid).children()) == workers else 0

        return int(wait_for(new_master, what="the new master and its workers"))

    def signal(self, name: str) -> subprocess.CompletedProcess[str]:
        return run_cli("-c", str(self.conf), "-s", name)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for child in self.workers():
                    child.kill()
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def output(self) -> str:
        return (self.dir / "error.log").read_text() if (self.dir / "error.log").exists() else ""

    def access_log(self, lines: int = 0) -> list[str]:
        """The access log; with ``lines``, wait until it has that many (it is written after
        the response is sent, so a client can be faster than the log)."""
        path = self.dir / "access.log"

        def read() -> list[str]:
            return path.read_text().splitlines() if path.exists() else []

        if lines:
            return list(wait_for(lambda: len(read()) >= lines and read(), what=f"{lines} access log lines"))
        return read()

    def __enter__(self) -> LB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- clients ----

    def get(self, path: str = "/", **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return request(self.port, "GET", path, **kw)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    source: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection; ``source`` binds the client to a 127.x.y.z address."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout_s, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes, then read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<timeout>")
        return b"".join(chunks)


def upstream_block(name: str, addrs: list[str], extra: str = "", **server_params: str) -> str:
    servers = ",\n".join(f'  {{ address = "{a}"{server_params.get(a, "")} }}' for a in addrs)
    return f"[http.upstreams.{name}]\n{extra}\nservers = [\n{servers}\n]\n"


def basic_config(
    port: int,
    upstream: str,
    workers: int = 1,
    location_extra: str = "",
    top_extra: str = "",
    server_extra: str = "",
) -> str:
    return f"""
workers = {workers}
error_log = "error.log"
error_log_level = "info"
{top_extra}
[http]
access_log = "access.log"
[http.log_formats]
up = '$request|$status|$upstream_addr|$upstream_status|$upstream_connect_time'

{upstream}

[[http.servers]]
listen = ["127.0.0.1:{port}"]
log_format = "up"
{server_extra}
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_read_timeout = "5s"
  {location_extra}
"""


def env_pythonpath() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


class ZoneReader:
    """Read a running master's zone through /proc (the memfd is named prefork-lb-zone)."""

    def __init__(self, master_pid: int) -> None:
        import mmap

        from prefork_lb.zone import layout

        self.L = layout
        fd_dir = f"/proc/{master_pid}/fd"
        for name in os.listdir(fd_dir):
            if "prefork-lb-zone" in os.readlink(f"{fd_dir}/{name}"):
                fd = os.open(f"{fd_dir}/{name}", os.O_RDONLY)
                break
        else:
            raise AssertionError("no zone memfd in the master")
        size = os.fstat(fd).st_size
        self._mmap = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        os.close(fd)
        self.mv = memoryview(self._mmap).cast("q")
        self.peers = self.mv[layout.H_PEERS]
        self.rows = self.mv[layout.H_ROWS]

    def peer(self, slot: int, field: int) -> int:
        return int(self.mv[self.L.peer_base(slot) + field])

    def used_slots(self) -> list[int]:
        """Peer slots (status-zone slots are USED_ZONE)."""
        return [s for s in range(self.peers) if self.peer(s, self.L.P_USED) == self.L.USED_PEER]

    def total_conns(self) -> int:
        return sum(self.peer(s, self.L.P_CONNS) for s in self.used_slots())

    def row_of(self, pid: int) -> int | None:
        for row in range(self.rows):
            if self.mv[self.L.row_base(row, self.peers) + self.L.R_PID] == pid:
                return row
        return None

    def row_active(self, row: int) -> int:
        return sum(int(self.mv[self.L.active_index(row, self.peers, s)]) for s in self.used_slots())


STATUS_LOCATIONS = {
    "api": '  [[http.servers.locations]]\n  match = "/api/"\n  api = true\n',
    "metrics": '  [[http.servers.locations]]\n  match = "= /metrics"\n  metrics = true\n',
    "dashboard": '  [[http.servers.locations]]\n  match = "/dashboard"\n  dashboard = true\n',
}


def status_config(
    port: int,
    api_port: int,
    backends: list[str],
    *,
    workers: int = 2,
    server_params: str = ', max_fails = 1, fail_timeout = "30s"',
    proxy_extra: str = 'proxy_read_timeout = "5s"',
    log_format: tuple[str, str] | None = None,
    allow: bool = False,
    status: tuple[str, ...] = ("api",),
) -> str:
    """A proxy server on ``port`` in front of ``backends`` and a status server on
    ``api_port`` with the ``status`` locations (api, metrics, dashboard)."""
    servers = ",\n".join(f'  {{ address = "{a}"{server_params} }}' for a in backends)
    formats = f"[http.log_formats]\n{log_format[0]} = '{log_format[1]}'\n" if log_format else ""
    use_format = f'log_format = "{log_format[0]}"\n' if log_format else ""
    locations = "".join(STATUS_LOCATIONS[s] for s in status)
    if allow:
        locations = locations.replace("api = true\n", 'api = true\n  allow = ["127.0.0.1/32"]\n', 1)
    return f"""
workers = {workers}
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "access.log"
{formats}
[http.upstreams.backend]
servers = [
{servers}
]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
{use_format}  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  {proxy_extra}
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
{use_format}{locations}"""
