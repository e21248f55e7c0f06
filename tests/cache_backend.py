"""Test helper: a real HTTP/1.1 upstream whose responses a test scripts per path, counting
the requests it receives (the cache tests assert upstream request counts).

    with CacheBackend() as be:
        be.route("/a", headers=[("Cache-Control", "max-age=10")], delay_s=0.5)
        be.hits["/a"]             # requests seen for /a
        be.seen["/a"][-1]         # (method, {lowercased header: value}) of the last one

The body is ``n=<count>`` for the path (plus ``body`` if set), so a test can tell which
upstream response it got; ``write_errors[path]`` counts bodies the proxy did not read.
``status`` may be a list: one per request, the last repeating. A route with ``chunked``
sends its body in two chunks; ``die_after`` closes the connection after that many body
bytes (an upstream dying mid-body).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass
class Route:
    status: list[int] = field(default_factory=lambda: [200])
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay_s: float = 0.0
    chunked: bool = False
    die_after: int | None = None
    refuse: bool = False  # close the connection without answering


class CacheBackend:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = defaultdict(int)
        self.seen: dict[str, list[tuple[str, dict[str, str]]]] = defaultdict(list)
        self.write_errors: dict[str, int] = defaultdict(int)  # bodies the client did not take
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                path = self.path
                route = backend.routes.get(path.split("?")[0], Route())
                with backend.lock:
                    backend.hits[path] += 1
                    n = backend.hits[path]
                    backend.seen[path].append((self.command, {k.lower(): v for k, v in self.headers.items()}))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if route.delay_s:
                    time.sleep(route.delay_s)
                if route.refuse:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status = route.status[min(n, len(route.status)) - 1]
                body = b"n=%d\n" % n + route.body
                self.send_response(status)
                for name, value in route.headers:
                    self.send_header(name, value)
                if status == 304 or status == 204:
                    self.end_headers()
                    return
                if route.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if self.command != "HEAD":
                        half = len(body) // 2
                        for part in (body[:half], body[half:]):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if route.die_after is not None:
                    self.wfile.write(body[: route.die_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                except OSError:
                    with backend.lock:
                        backend.write_errors[path] += 1
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, path: str, status: int | list[int] = 200, **kw: Any) -> Route:
        r = Route(status=[status] if isinstance(status, int) else status, **kw)
        self.routes[path] = r
        return r

    def __enter__(self) -> CacheBackend:
        self.thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
