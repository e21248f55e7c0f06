"""What the proxy may do with the client connection (the proxy's side of the interface).

``http/connection.py`` serves the connection and runs ``Proxy`` for a proxied request;
the proxy, its request body and its relay see the connection only through ``Client``, and
tell it what it needs to know through their result (``proxy.ProxyOutcome``), never by
writing its state. So ``connection`` imports ``proxy`` and nothing of ``proxy`` imports
``connection``.

Rules:
1. ``ClientGone``: the client connection failed while we read from or wrote to it. Raised
   by ``read_body`` and ``send``; the request ends without a response (499 if none began).
2. ``abort`` ends the connection without completing the response (the client sees a
   truncated body); the connection is not kept alive after it.
3. ``respond_error`` sends an error page and returns whether the connection may serve
   another request.
4. A tunnel (issue 14, http/tunnel.py) takes the client socket and the bytes the client
   sent behind its upgrade head (``tunnel_io``); while it runs the connection holds it
   (``hold_tunnel``) so that ``abort`` ends both of its sockets.
5. ``trailers`` gives the trailer fields the client sent after its body, as HTTP/1.1 field
   lines ("name: value\r\n" each), for a chunked body sent upstream (issue 20: HTTP/2
   streams; HTTP/1.1 trailers are dropped when parsed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prefork_lb.http.exchange import Exchange
    from prefork_lb.http.tunnel import Tunnel


class ClientGone(Exception):
    """The client connection failed while we were reading from or writing to it (rule 1)."""


class Client(Protocol):
    @property
    def clock(self) -> Callable[[], float]: ...  # the worker's cached loop clock (seconds)

    def read_body(self, block: bool) -> bytes | bool | None:
        """The next body piece, True at its end, None if ``block`` is False and nothing is queued."""

    def send(self, data: bytes) -> None: ...

    def abort(self) -> None: ...

    def respond_error(self, ex: Exchange, status: int) -> bool: ...

    def tunnel_io(self) -> tuple[Any, bytes]:
        """Rule 4: the client socket and the bytes already read behind the upgrade head."""

    def hold_tunnel(self, tunnel: Tunnel | None) -> None: ...

    def trailers(self) -> bytes:
        """Rule 5: the request's trailer section as field lines (b"" for none)."""
