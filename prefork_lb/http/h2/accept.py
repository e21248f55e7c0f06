"""Which protocol a connection on an HTTP/2 address speaks (gevent shell, issue 20).

Rules (config/http2.py rule 2):
1. TLS: the protocol ALPN selected; "h2" is HTTP/2, anything else (or none) HTTP/1.1.
2. Plain: the client's first bytes are peeked at (not consumed) within
   ``client_header_timeout``: the HTTP/2 connection preface is HTTP/2 (prior knowledge),
   anything else HTTP/1.1, whose reader then reads the same bytes. A prefix of the preface
   waits for more.
"""

from __future__ import annotations

import socket
from time import monotonic
from typing import Any, Final

import gevent

from prefork_lb.netio import ClientSocket, wait_readable

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PARTIAL_POLL_S: Final = 0.01
_PEEK: Final = socket.MSG_PEEK | socket.MSG_DONTWAIT


def is_h2_tls(sslsock: Any) -> bool:
    """Rule 1."""
    return bool(sslsock.selected_alpn_protocol() == "h2")


def sniff_preface(sock: ClientSocket, timeout_s: float) -> bool | None:
    """Rule 2: True for HTTP/2, False for HTTP/1.x, None when the client closed or sent
    nothing within ``timeout_s`` (the connection ends quietly, as a header timeout)."""
    raw = sock._sock
    deadline = monotonic() + timeout_s
    while True:
        try:
            data = raw.recv(len(PREFACE), _PEEK)
        except BlockingIOError:
            data = None
        except OSError:
            return None
        if data is not None:
            if not data:
                return None
            if not PREFACE.startswith(data):
                return False
            if len(data) == len(PREFACE):
                return True
        left_s = deadline - monotonic()
        if left_s <= 0:
            return None
        if data:  # a prefix: the socket stays readable, so poll rather than spin
            gevent.sleep(min(PARTIAL_POLL_S, left_s))
            continue
        try:
            wait_readable(sock, left_s)
        except OSError:  # TimeoutError included
            return None
