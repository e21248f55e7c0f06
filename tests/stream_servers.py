"""Small real TCP/UDP servers for stream tests (threads, real sockets on 127.0.0.1).

TcpEcho: on connect sends "<port>\\n", then echoes everything; when the client half-closes
it sends "EOF <n>\\n" (bytes received) and closes. With ``server_first`` it instead sends
``server_first`` bytes and half-closes its side first, then keeps reading until EOF and
answers nothing more (tests the other half-close direction).
UdpEcho: answers every datagram with "<port> " + the datagram; ``peers`` is the set of
source addresses seen (one per proxied UDP session). With ``hold=True`` it answers nothing
until ``release()``, which answers everything held and every later datagram at once.
"""

from __future__ import annotations

import socket
import threading


class TcpEcho:
    def __init__(self, server_first: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.server_first = server_first
        self.received_after_close: list[int] = []
        self.open = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.open += 1
        try:
            conn.sendall(f"{self.port}\n".encode())
            if self.server_first:
                conn.sendall(b"s" * self.server_first)
                conn.shutdown(socket.SHUT_WR)
                total = 0
                while chunk := conn.recv(65536):
                    total += len(chunk)
                self.received_after_close.append(total)
                return
            total = 0
            while chunk := conn.recv(262144):
                total += len(chunk)
                conn.sendall(chunk)
            conn.sendall(f"EOF {total}\n".encode())
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class UdpEcho:
    def __init__(self, hold: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.peers: set[tuple[str, int]] = set()
        self._held: list[tuple[bytes, tuple[str, int]]] | None = [] if hold else None
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
                with self._lock:
                    self.peers.add(peer)
                    if self._held is not None:
                        self._held.append((data, peer))
                        continue
                self.sock.sendto(f"{self.port} ".encode() + data, peer)
            except OSError:
                return

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
        for data, peer in held:
            self.sock.sendto(f"{self.port} ".encode() + data, peer)

    def close(self) -> None:
        self.sock.close()
