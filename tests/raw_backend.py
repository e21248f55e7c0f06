"""A raw-socket HTTP/1.1 upstream that misbehaves on request, for the upstream-safety tests.

It runs in threads of the test process and listens on 127.0.0.1 (an ephemeral port), so a
test can both drive it and read what it did. The request path picks the behaviour; every
response body is the request's ``id`` query parameter, so a client can tell whose response
it got. Modes (``/<mode>?id=<id>[&ms=<n>]``):

==========  ===========================================================================
ok          200, ``Content-Length``, keep-alive
extra       like ok, then ``ms`` (default 20) later an unsolicited second response with
            ``Set-Cookie: session=attacker`` and body ``STRAY!`` on the same connection
headlate    for HEAD: the head announces 5 bytes; ``ms`` later the body ``EVIL!`` follows
nocontent   204; ``ms`` later a body ``EVIL!`` follows (a 204 has none)
rstnext     like ok; then the next request on this connection is never read: the socket
            is closed with it unread, so the kernel answers it with a reset
closeafter  like ok (no ``Connection: close``), then the connection is closed at once
closenoresp reads the request, closes without answering
slow        like ok after ``ms`` (default 3000) milliseconds
early       ``103 Early Hints`` and the final 200 in one write
lfonly      the whole head with bare-LF line ends
==========  ===========================================================================

``processed`` lists ``(method, path, id)`` for every request the backend read in full;
``stray`` counts the late writes done (``extra``, ``headlate``, ``nocontent``), so a test
waits for them instead of sleeping.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

STRAY_RESPONSE = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=attacker\r\nContent-Length: 6\r\n\r\nSTRAY!"


class RawBackend:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.processed: list[tuple[str, str, str]] = []
        self.stray = 0
        self.connections = 0
        self._closed = False
        self._conns: list[socket.socket] = []

    # ---- lifecycle ----

    def __enter__(self) -> RawBackend:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.sock.close()
        with self.lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass

    # ---- what happened ----

    def count(self, path: str, ident: str | None = None) -> int:
        with self.lock:
            return sum(1 for _, p, i in self.processed if p == path and (ident is None or i == ident))

    def stray_written(self) -> int:
        with self.lock:
            return self.stray

    # ---- serving ----

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            # Without TCP_NODELAY a late write waits for the ACK of the previous one (Nagle
            # and delayed ACK: up to 40 ms), so "written" would not mean "arrived".
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target, _version = lines[0].decode().split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                url = urlsplit(target)
                query = parse_qs(url.query)
                ident = query.get("id", [""])[0]
                ms = int(query["ms"][0]) if "ms" in query else None
                with self.lock:
                    self.processed.append((method, url.path, ident))
                if not self._respond(conn, method, url.path.strip("/"), ident, ms):
                    return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _late(self, conn: socket.socket, data: bytes, ms: int | None) -> None:
        time.sleep((20 if ms is None else ms) / 1000)
        try:
            conn.sendall(data)
        except OSError:
            pass
        with self.lock:
            self.stray += 1

    def _respond(self, conn: socket.socket, method: str, mode: str, ident: str, ms: int | None) -> bool:
        """Answer one request; False when the connection is finished."""
        body = ident.encode()
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Mode: %s\r\n\r\n" % (len(body), mode.encode())
        ok_full = ok + (b"" if method == "HEAD" else body)
        if mode == "extra":
            conn.sendall(ok_full)
            self._late(conn, STRAY_RESPONSE, ms)
        elif mode == "headlate":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            self._late(conn, b"EVIL!", ms)
        elif mode == "nocontent":
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            self._late(conn, b"EVIL!", ms)
        elif mode == "rstnext":
            conn.sendall(ok_full)
            select.select([conn], [], [])  # the next request is here: close with it unread
            return False
        elif mode == "closeafter":
            conn.sendall(ok_full)
            return False
        elif mode == "closenoresp":
            return False
        elif mode == "slow":
            time.sleep((3000 if ms is None else ms) / 1000)
            conn.sendall(ok_full)
        elif mode == "early":
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + ok_full)
        elif mode == "lfonly":
            conn.sendall(ok_full.replace(b"\r\n", b"\n"))
        else:
            conn.sendall(ok_full)
        return True
