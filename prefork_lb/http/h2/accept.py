"""Which protocol a connection on an HTTP/2 address speaks (gevent shell, issue 20).

Rules (config/http2.py rule 2):
1. TLS: the protocol ALPN selected; "h2" is HTTP/2, anything else (or none) HTTP/1.1.
2. Plain: the client's first bytes are peeked at (not consumed) within
   ``client_header_timeout``: the HTTP/2 connection preface is HTTP/2 (prior knowledge),
   anything else HTTP/1.1, whose reader then reads the same bytes. A read that ends
   inside the preface is consumed and the rest awaited; those bytes are then handed to
   the protocol chosen (``H2Session.initial``, or fed to the HTTP/1.1 reader).
"""

from __future__ import annotations

import socket
from time import monotonic
from typing import Any, Final

from prefork_lb.netio import ClientSocket, wait_readable

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT


def is_h2_tls(sslsock: Any) -> bool:
    """Rule 1."""
    return bool(sslsock.selected_alpn_protocol() == "h2")


def sniff_preface(sock: ClientSocket, timeout_s: float) -> tuple[bool, bytes] | None:
    """Rule 2: (True for HTTP/2 or False for HTTP/1.x, the bytes already consumed), None
    when the client closed or sent nothing conclusive within ``timeout_s`` (the connection
    ends quietly, as a header timeout). Bytes are only consumed when a read ends inside
    the preface (rare): a socket with unread bytes stays readable, so waiting for more
    would spin."""
    raw = sock._sock
    deadline = monotonic() + timeout_s
    got = b""
    while True:
        try:
            data = raw.recv(len(PREFACE), _PEEK) if not got else raw.recv(len(PREFACE) - len(got))
        except BlockingIOError:
            data = None
        except OSError:
            return None
        if data is not None:
            if not data:
                return None
            seen = got + data
            consumed = seen if got else b""  # peeked bytes stay in the socket
            if not PREFACE.startswith(seen):
                return False, consumed
            if len(seen) == len(PREFACE):
                return True, consumed
            if not got:  # a prefix: take it, then wait for the rest
                try:
                    got = raw.recv(len(data))
                except OSError:
                    return None
                if not got:
                    return None
                continue
            got = seen
        left_s = deadline - monotonic()
        if left_s <= 0:
            return None
        try:
            wait_readable(sock, left_s)
        except OSError:  # TimeoutError included
            return None
