"""A query-driven upstream for the cache tests, in the test process (so the test reads what it
received directly), the harness of shared/reference/nginx-semantics-2.md section 1.9.

Every response body starts with ``n=<count>``: the number of requests this backend has
received for the path (query not counted), so a client sees which upstream answer a cached
response is. Query knobs (repeatable ``h``; unknown ones ignored):

=============  =================================================================================
s=<code>       answer with this status (no body for 204 and 304)
h=Name:Value   add this response header (URL-encode ``=``, ``,``, spaces: ``h=Cache-Control:max-age%3D10``)
d=<ms>         sleep before answering
b=<text>       body ``n=<count> <text>\\n`` (default ``n=<count>\\n``)
etag=<v>       ``ETag: "<v>"``; a request with ``If-None-Match: "<v>"`` gets 304
lm=<epoch>     ``Last-Modified``; a request with ``If-Modified-Since`` at or after it gets 304
size=<bytes>   the body padded (``0123456789abcdef`` repeated) or cut to exactly this length
chunked=1      ``Transfer-Encoding: chunked`` (two chunks)
short=1        ``Content-Length`` twice the body's, the body, then the connection closes (with
               ``chunked=1``: the first chunk, then the connection closes)
=============  =================================================================================

``requests`` is every request received, in order (method, path, query, headers with
lower-case names); ``count(path)`` how many reached a path. ``refuse()`` closes the listener
(connections are refused: nginx's "error"), ``listen()`` opens it again on the same port.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class CacheUpstream:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[Received] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self.port = port
        self.listen()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts.get(path, 0)

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # ---- lifecycle ----

    def listen(self) -> None:
        assert self._server is None
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def refuse(self) -> None:
        """Close the listener: connections to the port are refused until ``listen()``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.refuse()

    def __enter__(self) -> CacheUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the handler ----

    def _record(self, method: str, path: str, query: str, headers: dict[str, str]) -> int:
        with self._lock:
            self.requests.append(Received(method, path, query, headers))
            n = self._counts[path] = self._counts.get(path, 0) + 1
            return n

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.answer()

            def do_HEAD(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.answer()

            def answer(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                n = backend._record(self.command, url.path, url.query, headers)
                q = parse_qsl(url.query, keep_blank_values=True)
                knobs = dict(q)
                if "d" in knobs:
                    time.sleep(int(knobs["d"]) / 1000)
                status = int(knobs.get("s", "200"))
                extra = [tuple(v.split(":", 1)) for k, v in q if k == "h" and ":" in v]
                etag = knobs.get("etag")
                if etag is not None:
                    extra.append(("ETag", f'"{etag}"'))
                    if headers.get("if-none-match") == f'"{etag}"':
                        status = 304
                if "lm" in knobs:
                    modified = int(knobs["lm"])
                    extra.append(("Last-Modified", formatdate(modified, usegmt=True)))
                    since = headers.get("if-modified-since")
                    if since and parsedate_to_datetime(since).timestamp() >= modified:
                        status = 304
                text = f"n={n} {knobs['b']}\n" if "b" in knobs else f"n={n}\n"
                body = b"" if status in (204, 304) else text.encode()
                if "size" in knobs and body:
                    size = int(knobs["size"])
                    body = (body + bytes(b"0123456789abcdef"[i % 16] for i in range(size)))[:size]
                self.send_response(status)
                for name, value in extra:
                    self.send_header(name, value.strip())
                chunked = "chunked" in knobs and status not in (204, 304)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif status not in (204, 304):
                    self.send_header("Content-Length", str(len(body) * (2 if "short" in knobs else 1)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if chunked:
                    half = len(body) // 2
                    parts = (body[:half],) if "short" in knobs else (body[:half], body[half:], b"")
                    for part in parts:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    if "short" in knobs:  # no last chunk: the connection dies
                        self.wfile.flush()
                        self.close_connection = True
                    return
                self.wfile.write(body)
                if "short" in knobs:  # half the announced length, then the connection dies
                    self.wfile.flush()
                    self.close_connection = True

        return Handler
