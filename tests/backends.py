"""Test helper: real upstream HTTP servers (scripts/demo_backend.py) run as a subprocess.

    with Backend(2, name="a") as be:
        be.ports        # [41234, 41235]
        be.addrs        # ["127.0.0.1:41234", "127.0.0.1:41235"]
        be.stats(be.ports[0])   # {"connections": ..., "requests": ..., "open": ..., ...}

See the docstring of scripts/demo_backend.py for the query knobs (delay, status, hang, close, ...).
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_BACKEND = REPO_ROOT / "scripts" / "demo_backend.py"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port currently unused on 127.0.0.1 (for "dead" servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Backend:
    """Context manager running ``demo_backend.py`` with ``count`` ephemeral ports."""

    def __init__(self, count: int = 1, name: str | None = None, args: Sequence[str] = ()) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self.count = count
        self.name = name
        self.extra_args = list(args)
        self.ports: list[int] = []
        self.addrs: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> Backend:
        cmd = [sys.executable, str(DEMO_BACKEND)]
        for _ in range(self.count):
            cmd += ["--port", "0"]
        if self.name is not None:
            cmd += ["--name", self.name]
        cmd += self.extra_args
        # stderr goes to a file, not a pipe: nobody drains it while the test runs.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,
        )
        try:
            self._read_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_listening(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(self.ports) < self.count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(
                        f"demo backend did not start within {START_TIMEOUT}s{self._stderr_tail()}"
                    )
                if not sel.select(remaining):
                    continue
                data = os.read(fd, 4096)
                if not data:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                    raise RuntimeError(
                        f"demo backend exited with status {self.proc.returncode}{self._stderr_tail()}"
                    )
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode("utf-8", "replace").strip()
                    if text.startswith("LISTENING "):
                        addr = text.split(None, 1)[1]
                        self.addrs.append(addr)
                        self.ports.append(int(addr.rsplit(":", 1)[1]))

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return f"\n--- demo backend stderr ---\n{text[-4000:]}" if text else ""

    def stderr_text(self) -> str:
        """Everything the backend wrote to stderr so far (bad-request reports, -v access log)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -------------------------------------------------------------- helpers
    def stats(self, port: int | None = None) -> dict[str, Any]:
        """GET /stats on ``port`` (default: the first port).

        ``connections`` / ``requests`` / ``open`` ignore the /stats probes themselves.
        """
        port = self.ports[0] if port is None else port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/stats")
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/stats on port {port} answered {resp.status}")
        finally:
            conn.close()
        result: dict[str, Any] = json.loads(data)
        return result

    def wait_stats(
        self, port: int, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Poll /stats until ``predicate(stats)`` holds (e.g. ``lambda s: s["open"] == 0``)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats(port)
            if predicate(st) or time.monotonic() >= deadline:
                return st
            time.sleep(0.02)


class GatedBackend:
    """A raw-socket upstream that holds every request at a gate until the test opens it.

    Each connection's request head is read and counted (``arrived``), then the handler
    waits for ``release()``; after that (and for every later request, until ``shut()``)
    it answers ``200`` with ``X-Port``, body ``"<port>\\n"`` and ``Connection: close``.
    Unlike ``delay=<ms>`` no request finishes on its own, so a test can observe the held
    state for as long as it needs, on any machine.

        with GatedBackend() as gate:
            ...                      # requests through prefork-lb to gate.addr
            gate.wait_arrived(3)     # three requests are being held
            gate.release()
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.arrived = 0
        self.answered = 0
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                with self._lock:
                    self.arrived += 1
                self._open.wait()
                body = b"%d\n" % self.port
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nX-Port: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (self.port, len(body), body)
                )
                with self._lock:
                    self.answered += 1
            except OSError:
                return

    def wait_arrived(self, count: int, timeout_s: float = 20.0) -> None:
        """Until ``count`` requests have reached the gate (raises AssertionError on timeout)."""
        deadline = time.monotonic() + timeout_s
        while self.arrived < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.arrived} of {count} requests reached {self.addr}")
            time.sleep(0.02)

    def release(self) -> None:
        self._open.set()

    def shut(self) -> None:
        """Close the gate again for the next requests and reset the counts."""
        with self._lock:
            self._open.clear()
            self.arrived = self.answered = 0

    def close(self) -> None:
        self._closed = True
        self._open.set()
        self._listener.close()

    def __enter__(self) -> GatedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
