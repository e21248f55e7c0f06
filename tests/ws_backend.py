"""A real WebSocket upstream (the ``websockets`` package, sync API) in a thread of the test.

Paths: ``/echo`` echoes every message; ``/sink`` reads and never answers; ``/close``
closes with 1001 "going away" after the first message (the server closes first).
``handshakes`` keeps the request headers of every handshake (lower-cased names), so a
test can see what the proxy sent upstream; ``open`` counts connections still open.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve


class WsBackend:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.lock = threading.Lock()
        self.handshakes: list[list[tuple[str, str]]] = []
        self.open = 0
        self.server: Server = serve(self._handle, "127.0.0.1", 0, compression=None, ssl=tls)
        self.port: int = self.server.socket.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"

    def __enter__(self) -> WsBackend:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()

    def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        with self.lock:
            self.handshakes.append([(k.lower(), v) for k, v in ws.request.headers.raw_items()])
            self.open += 1
        try:
            path = ws.request.path
            if path.startswith("/echo"):
                for message in ws:
                    ws.send(message)
            elif path.startswith("/sink"):
                for _ in ws:
                    pass
            elif path.startswith("/close"):
                ws.recv()
                ws.close(1001, "bye")
        except ConnectionClosed:
            pass
        finally:
            with self.lock:
                self.open -= 1
