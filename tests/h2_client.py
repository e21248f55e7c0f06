"""Test helper: a raw, synchronous HTTP/2 client on python-hyper's ``h2`` (issue 20).

    with H2Client(port) as c:                       # prior-knowledge h2c
        sid = c.request("GET", "/x")
        c.wait(lambda: c.streams[sid].ended)
        c.streams[sid].status, bytes(c.streams[sid].data)

TLS: ``H2Client(port, tls=ssl_context, server_hostname="a.test")`` offers ALPN h2 only.
Received DATA is acknowledged at once (both windows) unless the stream is in ``hold``:
then only the connection window is reopened, so the server sees a stalled stream reader.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)


class _Connection(H2Connection):
    """``ignore_limit``: open streams past the server's MAX_CONCURRENT_STREAMS (to see the
    server refuse them; h2 would raise instead of sending)."""

    ignore_limit = False

    @property
    def open_outbound_streams(self) -> int:
        count = super().open_outbound_streams
        return 0 if self.ignore_limit else count


@dataclass
class Stream:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None
    interim: list[list[tuple[bytes, bytes]]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    def __init__(
        self,
        port: int,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            sock = tls.wrap_socket(sock, server_hostname=server_hostname)
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()  # type: ignore[attr-defined]
        self.sock = sock
        self.timeout_s = timeout_s
        self.conn = _Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.streams: dict[int, Stream] = {}
        self.goaway: ConnectionTerminated | None = None
        self.open_at_goaway: list[int] = []  # streams not yet ended when the GOAWAY arrived
        self.closed = False
        self.hold: set[int] = set()
        self.flush()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        authority: str = "localhost",
        end: bool = True,
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":path", path), (":authority", authority)]
        fields += list(headers)
        self.streams[sid] = Stream()
        self.conn.send_headers(
            sid, [(k.encode(), v.encode()) for k, v in fields], end_stream=end and not body
        )
        self.flush()
        if body:
            self.send_body(sid, body, end)
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """Within the server's windows: waits for WINDOW_UPDATEs as needed."""
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump()
                continue
            piece, view = view[:room], view[room:]
            self.conn.send_data(sid, piece.tobytes(), end_stream=end and not view)
            self.flush()
        if end and not body:
            self.conn.end_stream(sid)
            self.flush()

    def pump(self, timeout_s: float | None = None) -> bool:
        """One read and its events; False once the server closed."""
        self.sock.settimeout(timeout_s or self.timeout_s)
        try:
            data = self.sock.recv(1 << 16)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        for ev in self.conn.receive_data(data):
            self._event(ev)
        self.flush()
        return True

    def _event(self, ev: Any) -> None:
        if isinstance(ev, ResponseReceived):
            self.streams[ev.stream_id].headers = ev.headers
        elif isinstance(ev, InformationalResponseReceived):
            self.streams[ev.stream_id].interim.append(ev.headers)
        elif isinstance(ev, TrailersReceived):
            pass
        elif isinstance(ev, DataReceived):
            self.streams[ev.stream_id].data += ev.data
            if ev.stream_id in self.hold:
                self.conn.increment_flow_control_window(ev.flow_controlled_length)
            else:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, StreamEnded):
            self.streams[ev.stream_id].ended = True
        elif isinstance(ev, StreamReset):
            if ev.stream_id in self.streams:
                self.streams[ev.stream_id].reset_code = int(ev.error_code)
        elif isinstance(ev, ConnectionTerminated):
            self.goaway = ev
            self.open_at_goaway = [sid for sid, st in self.streams.items() if not st.ended]
            if ev.error_code == 0:
                # h2 stops reading at any GOAWAY; a graceful one lets the streams at or
                # below last_stream_id finish (RFC 9113 6.8), as curl and browsers do
                self.conn.state_machine.state = ConnectionState.CLIENT_OPEN

    def wait(self, predicate: Callable[[], Any], timeout_s: float | None = None, what: str = "") -> None:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            if not self.pump(left):
                if predicate():
                    return
                raise AssertionError(f"the server closed the connection before {what or predicate}")

    def get(self, path: str, **kw: Any) -> Stream:
        sid = self.request("GET", path, **kw)
        self.wait(lambda: self.streams[sid].done, what=f"GET {path}")
        return self.streams[sid]
