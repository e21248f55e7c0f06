"""The client's request body as the proxy sends it upstream (gevent I/O through ``send_all``).

Rules (shared/reference/nginx-semantics.md section 6: a retry sends the body again):
1. Request bodies up to ``client_body_buffer_size`` are kept so a retry can resend them
   (``replayable``); a larger body is streamed and makes the request non-replayable once
   sent (``proxy.py`` rule 2). At most the limit plus one read is ever held.
2. ``client_max_body_size`` is checked on every piece received (413), whatever the framing:
   a chunked body has no length to check up front.
3. The body is sent upstream framed as it came: raw bytes after a Content-Length, re-chunked
   (one chunk per piece received, then the last chunk) after a chunked one.
4. ``prefetch`` takes only what the client already sent, without waiting, so small bodies
   ride along with the request head in one send.
5. A chunked body ends with the client's trailer fields (``Client.trailers``): an HTTP/2
   stream's trailers go upstream (issue 20); HTTP/1.1 trailers are dropped at parsing
   (request.py rule 7), so there it is always the bare last chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from gevent import socket

from prefork_lb.http.request import HttpError, RequestHead
from prefork_lb.netio import send_all

if TYPE_CHECKING:
    from prefork_lb.http.client import Client
    from prefork_lb.http.runtime import LocationRuntime

LAST_CHUNK: Final = b"0\r\n\r\n"


class RequestBody:
    """The client's body as seen by the proxy; replayable while it fits the buffer (rule 1)."""

    __slots__ = (
        "_client",
        "_limit",
        "_max",
        "chunked",
        "chunks",
        "complete",
        "length",
        "received",
        "replayable",
    )

    def __init__(self, client: Client, head: RequestHead, lr: LocationRuntime) -> None:
        self._client = client
        self._limit = lr.config.client_body_buffer_size_bytes
        self._max = lr.config.client_max_body_size_bytes
        self.chunked = head.chunked
        self.length = head.content_length
        self.chunks: list[bytes] = []
        self.received = 0
        self.complete = not (head.chunked or head.content_length)
        self.replayable = True

    def prefetch(self) -> None:
        """Take what the client already sent, without waiting (rule 4).

        Stops once the replay buffer is full: the rest stays queued for ``send_to``.
        """
        while not self.complete and self.replayable:
            piece = self._client.read_body(block=False)
            if piece is None:
                return
            if not isinstance(piece, bytes):
                self.complete = True
                return
            self._add(piece)

    def _add(self, piece: bytes) -> None:
        self.received += len(piece)
        if self._max and self.received > self._max:
            raise HttpError(413, "request entity too large")
        if self.replayable:
            self.chunks.append(piece)  # at most the limit plus one read is ever held
            if self.received > self._limit:
                self.replayable = False

    def framed(self) -> bytes:
        """The whole buffered body, framed for the upstream (a complete, replayable body)."""
        chunks = self.chunks
        if not self.chunked:
            return b"".join(chunks)
        return b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks if c) + self._last_chunk()

    def send_to(self, sock: socket.socket, timeout_s: float) -> None:
        """Send the whole body (buffered part first), framed for the upstream."""
        chunked = self.chunked
        for piece in self.chunks:
            send_all(sock, b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece, timeout_s)
        if not self.replayable:
            self.chunks = []
        while not self.complete:
            more = self._client.read_body(block=True)
            if not isinstance(more, bytes):
                self.complete = True
                break
            self._add(more)
            if not self.replayable:
                self.chunks = []
            send_all(sock, b"%x\r\n%b\r\n" % (len(more), more) if chunked else more, timeout_s)
        if chunked:
            send_all(sock, self._last_chunk(), timeout_s)

    def _last_chunk(self) -> bytes:
        """Rule 5: the last chunk, with the client's trailer fields (HTTP/2 only)."""
        trailers = self._client.trailers()
        return b"0\r\n" + trailers + b"\r\n" if trailers else LAST_CHUNK
