"""An HTTP upstream whose health endpoint can be flipped, for the active health-check tests.

Runs in threads of the test process on 127.0.0.1 (ephemeral port); every connection gets
one response and is closed. ``/healthz`` answers according to ``mode``:

=========  ====================================================================
ok         200, ``Content-Type: application/json``, ``X-Ready: 1``, ``{"status": "ok"}``
fail       500
hang       reads the request, never answers (until the backend closes)
close      closes without answering
garbage    ``SSH-2.0-nonsense`` and close
huge       like ok, but a 10 MB body of ``x`` (the prober must stop reading at 256k)
text       200, ``Content-Type: text/plain``, body ``fine`` (a match on json fails)
=========  ====================================================================

Any other path answers 200 with the backend's ``name`` as body. Every request is
recorded with its arrival time (``time.monotonic``): ``probes`` (health path) and
``served`` (the rest), so tests count at the backend and wait on conditions.
"""

from __future__ import annotations

import socket
import threading
import time

HUGE_BYTES = 10 * 1024 * 1024


class FlipBackend:
    def __init__(self, name: str, health_path: str = "/healthz") -> None:
        self.name = name
        self.health_path = health_path
        self.mode = "ok"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port: int = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.probes: list[tuple[float, dict[str, str]]] = []  # (arrival, headers)
        self.served: list[float] = []
        self._closed = False
        self._hung: list[socket.socket] = []

    def __enter__(self) -> FlipBackend:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.sock.close()
        for s in self._hung:
            s.close()

    def probe_count(self) -> int:
        with self.lock:
            return len(self.probes)

    def served_count(self) -> int:
        with self.lock:
            return len(self.served)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    conn.close()
                    return
                buf += chunk
            head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            now = time.monotonic()
            if path == self.health_path:
                with self.lock:
                    self.probes.append((now, headers))
                self._health(conn)
            else:
                with self.lock:
                    self.served.append(now)
                body = self.name.encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                conn.close()
        except OSError:
            conn.close()

    def _health(self, conn: socket.socket) -> None:
        mode = self.mode
        if mode == "hang":
            self._hung.append(conn)
            return
        if mode == "close":
            conn.close()
            return
        if mode == "garbage":
            conn.sendall(b"SSH-2.0-nonsense\r\n")
        elif mode == "fail":
            conn.sendall(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        elif mode == "text":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
                b"Connection: close\r\n\r\nfine"
            )
        elif mode == "huge":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Ready: 1\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % HUGE_BYTES
            )
            try:
                block = b"x" * 65536
                for _ in range(HUGE_BYTES // len(block)):
                    conn.sendall(block)
            except OSError:
                pass
        else:
            body = b'{"status": "ok"}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Ready: 1\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        conn.close()
