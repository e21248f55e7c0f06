#!/usr/bin/env python3
"""Demo and test upstream HTTP/1.1 server for prefork-lb (Python standard library only).

Usage::

    python3 scripts/demo_backend.py [--host 127.0.0.1] --port P [--port P2 ...] [--name NAME]
                                    [--idle-timeout SECONDS] [-v]

``--port 0`` picks an ephemeral port.  Once every port listens, one line per port is printed
to stdout (flushed): ``LISTENING <host>:<port>``.  SIGTERM / SIGINT stop the server (exit 0).

Every response carries ``X-Port``, ``X-Conn`` (1-based sequence number of the connection on
this port), ``X-Conn-Requests`` (1-based request number within the connection) and, with
``--name``, ``X-Name``.  The default body is ``"<name or port>\\n"``.

Query-string knobs (any path; unknown parameters are ignored):

==============  ==========================================================================
delay=<ms>      sleep before answering
status=<code>   answer with this status (200-599); body unchanged
hang=1          read the request, never answer; keep the connection until the client closes
close=1         read the request, then close the connection without answering
size=<bytes>    body of exactly that many bytes, byte i = b"0123456789abcdef"[i % 16],
                streamed in pieces of up to 64 KiB
chunked=1       Transfer-Encoding: chunked, several chunks (HTTP/1.0 clients: close-delimited)
noframe=1       no Content-Length / Transfer-Encoding; body delimited by closing the connection
echo=1          JSON body describing the request (method, target, version, headers, trailers,
                body_len, body_sha256, port, conn)
shortbody=1     Content-Length: 10, send 2 bytes, close
rst=1           headers for a 100000-byte body, 1000 bytes of it, then a TCP reset
bigheader=<n>   add header X-Big with an n-byte value
connclose=1     answer normally with "Connection: close" and close afterwards
idle=<ms>       after this response, close the connection silently if the next request does
                not start within <ms>
==============  ==========================================================================

``delay``, ``status``, ``hang`` and ``close`` can be restricted to some listeners with
``<knob>port=<p>[,<p>...]`` (e.g. ``status=502&statusport=9001``); a value equal to ``--name``
matches too.  Listeners not named answer as if the knob were absent.

``/stats`` answers ``{"connections", "requests", "open", "accepted", "open_sockets", ...}``.
Connections and requests that only ever carried ``/stats`` requests are not counted in
``connections`` / ``requests`` / ``open`` (so probing does not disturb the counts, nor the
X-Conn numbering); ``accepted`` / ``open_sockets`` count every TCP connection.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qsl

PATTERN = b"0123456789abcdef"
PIECE = 65536
_PATTERN_BUF = memoryview(PATTERN * (PIECE // len(PATTERN) + 1))
MAX_HEAD = 1 << 20  # request line + headers (and, separately, trailers)
MAX_EMPTY_LINES = 16

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e\x80-\xff]+) HTTP/(\d)\.(\d)")
_HEADER_RE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)")
_CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_FALSE = frozenset({"0", "false", "no", "off"})
_NO_BODY_STATUS = frozenset({204, 304})


class HttpError(Exception):
    """Malformed or unsupported request: answer with this status and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client closed the connection in the middle of a request."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


_date_cache: list[object] = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True)
    return str(_date_cache[1])


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1]


class Knobs:
    __slots__ = (
        "bigheader",
        "chunked",
        "close",
        "connclose",
        "delay",
        "echo",
        "hang",
        "idle",
        "noframe",
        "rst",
        "shortbody",
        "size",
        "status",
    )

    def __init__(self) -> None:
        self.delay = 0.0
        self.status = 200
        self.hang = False
        self.close = False
        self.size: int | None = None
        self.chunked = False
        self.noframe = False
        self.echo = False
        self.shortbody = False
        self.rst = False
        self.bigheader = 0
        self.connclose = False
        self.idle: float | None = None


_NO_KNOBS = Knobs()


def parse_knobs(query: str, port: int, name: str | None) -> Knobs:
    q = dict(parse_qsl(query, keep_blank_values=True))
    k = Knobs()

    def applies(knob: str) -> bool:
        sel = q.get(knob + "port")
        if sel is None:
            return True
        tokens = [t.strip() for t in sel.split(",")]
        return str(port) in tokens or (name is not None and name in tokens)

    def num(key: str) -> int | None:
        v = q.get(key)
        if v is None:
            return None
        v = v.strip()
        if not (v.isascii() and v.isdigit()):
            raise HttpError(400, f"bad value for knob {key}: {v!r}")
        return int(v)

    def flag(key: str) -> bool:
        v = q.get(key)
        return v is not None and v.strip().lower() not in _FALSE

    delay = num("delay")
    if delay and applies("delay"):
        k.delay = delay / 1000.0
    status = num("status")
    if status is not None and applies("status"):
        if not 200 <= status <= 599:
            raise HttpError(400, f"status knob out of range 200-599: {status}")
        k.status = status
    k.hang = flag("hang") and applies("hang")
    k.close = flag("close") and applies("close")
    k.size = num("size")
    k.chunked = flag("chunked")
    k.noframe = flag("noframe")
    k.echo = flag("echo")
    k.shortbody = flag("shortbody")
    k.rst = flag("rst")
    k.bigheader = num("bigheader") or 0
    k.connclose = flag("connclose")
    idle = num("idle")
    if idle is not None:
        k.idle = idle / 1000.0
    return k


class PortState:
    """Counters and configuration of one listening port."""

    def __init__(self, port: int, name: str | None, idle_timeout: float | None, verbose: bool) -> None:
        self.name = name
        self.idle_timeout = idle_timeout
        self.verbose = verbose
        self.accepted = 0  # every TCP connection
        self.open_sockets = 0
        self.connections = 0  # connections that carried at least one non-/stats request
        self.open = 0
        self.requests = 0  # non-/stats requests
        self.transports: set[asyncio.WriteTransport] = set()
        self.set_port(port)

    def set_port(self, port: int) -> None:
        self.port = port
        label = self.name if self.name is not None else str(port)
        self.default_body = (label + "\n").encode("utf-8")
        fixed = f"Server: demo-backend\r\nX-Port: {port}\r\n"
        if self.name is not None:
            fixed += f"X-Name: {self.name}\r\n"
        self.fixed_headers = fixed

    def stats(self) -> dict[str, object]:
        return {
            "connections": self.connections,
            "requests": self.requests,
            "open": self.open,
            "accepted": self.accepted,
            "open_sockets": self.open_sockets,
            "port": self.port,
            "name": self.name,
        }

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_sockets += 1
        transport = writer.transport
        self.transports.add(transport)
        conn = Connection(self, reader, writer)
        try:
            await conn.run()
        except (ClientGone, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Shutdown: the task ends here; re-raising only makes asyncio's stream callback log it.
            pass
        except OSError:
            pass
        except Exception as exc:  # never let one connection take the server down
            print(f"demo_backend[{self.port}]: connection error: {exc!r}", file=sys.stderr, flush=True)
        finally:
            self.open_sockets -= 1
            if conn.seq:
                self.open -= 1
            self.transports.discard(transport)
            if not transport.is_closing():
                transport.close()


class Request:
    __slots__ = ("headers", "method", "minor", "target", "version")

    def __init__(self, method: str, target: str, version: str, minor: int, headers: list[tuple[str, str]]):
        self.method = method
        self.target = target
        self.version = version
        self.minor = minor
        self.headers = headers


class Connection:
    def __init__(self, state: PortState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.state = state
        self.reader = reader
        self.writer = writer
        self.seq = 0
        self.nreq = 0
        self.idle_timeout = state.idle_timeout

    def _count_connection(self) -> None:
        if not self.seq:
            st = self.state
            st.connections += 1
            st.open += 1
            self.seq = st.connections

    # ------------------------------------------------------------------ reading
    async def _readline(self) -> bytes:
        try:
            line = await self.reader.readline()
        except ValueError:  # line longer than the stream limit
            raise HttpError(431, "request header line too long") from None
        if not line.endswith(b"\n"):
            raise ClientGone()
        return line

    async def _read_first_line(self) -> bytes | None:
        for _ in range(MAX_EMPTY_LINES + 1):
            try:
                if self.idle_timeout:
                    async with asyncio.timeout(self.idle_timeout):
                        line = await self.reader.readline()
                else:
                    line = await self.reader.readline()
            except TimeoutError:
                return None
            except ValueError:
                raise HttpError(431, "request line too long") from None
            if not line:
                return None  # clean EOF between requests
            if not line.endswith(b"\n"):
                raise ClientGone()
            if line not in (b"\r\n", b"\n"):
                return line
        raise HttpError(400, "too many empty lines before the request line")

    async def _read_fields(self, what: str) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        total = 0
        while True:
            line = await self._readline()
            total += len(line)
            if total > MAX_HEAD:
                raise HttpError(431, f"{what} too large")
            if line in (b"\r\n", b"\n"):
                return fields
            m = _HEADER_RE.fullmatch(_strip_eol(line))
            if m is None:
                raise HttpError(400, f"malformed {what} line: {line[:80]!r}")
            fields.append((m.group(1).decode("ascii"), m.group(2).rstrip(b" \t").decode("latin-1")))

    async def _read_head(self) -> Request | None:
        line = await self._read_first_line()
        if line is None:
            return None
        m = _REQUEST_LINE_RE.fullmatch(_strip_eol(line))
        if m is None:
            raise HttpError(400, f"malformed request line: {line[:80]!r}")
        major = int(m.group(3))
        if major != 1:
            raise HttpError(505 if major > 1 else 400, "unsupported HTTP version")
        headers = await self._read_fields("header")
        minor = int(m.group(4))
        version = f"HTTP/1.{minor}"
        return Request(m.group(1).decode("ascii"), m.group(2).decode("latin-1"), version, minor, headers)

    async def _read_body_fixed(self, length: int, digest: hashlib._Hash | None) -> None:
        reader = self.reader
        remaining = length
        while remaining:
            data = await reader.read(min(remaining, PIECE))
            if not data:
                raise ClientGone()
            remaining -= len(data)
            if digest is not None:
                digest.update(data)

    async def _read_body_chunked(self, digest: hashlib._Hash | None) -> tuple[int, list[tuple[str, str]]]:
        total = 0
        while True:
            line = await self._readline()
            m = _CHUNK_SIZE_RE.fullmatch(_strip_eol(line))
            if m is None:
                raise HttpError(400, f"malformed chunk size line: {line[:80]!r}")
            size = int(m.group(1), 16)
            if size == 0:
                break
            await self._read_body_fixed(size, digest)
            total += size
            if await self._readline() not in (b"\r\n", b"\n"):
                raise HttpError(400, "chunk data not followed by CRLF")
        trailers = await self._read_fields("trailer")
        return total, trailers

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        while True:
            try:
                req = await self._read_head()
                if req is None:
                    return
                if not await self._handle(req):
                    return
            except HttpError as err:
                await self._send_error(err)
                return

    async def _handle(self, req: Request) -> bool:
        st = self.state
        path, _, query = req.target.partition("?")
        is_stats = path == "/stats"
        if not is_stats:
            self._count_connection()
            st.requests += 1
        self.nreq += 1

        conn_tokens: set[str] = set()
        content_length: int | None = None
        te: list[str] = []
        expect_continue = False
        for name, value in req.headers:
            lname = name.lower()
            if lname == "connection":
                conn_tokens.update(t.strip().lower() for t in value.split(","))
            elif lname == "content-length":
                if content_length is not None:
                    raise HttpError(400, "duplicate Content-Length")
                if not (value.isascii() and value.isdigit()) or len(value) > 18:
                    raise HttpError(400, f"bad Content-Length: {value!r}")
                content_length = int(value)
            elif lname == "transfer-encoding":
                te.extend(t.strip().lower() for t in value.split(",") if t.strip())
            elif lname == "expect":
                expect_continue = value.strip().lower() == "100-continue"
        chunked_body = False
        if te:
            if req.minor == 0:
                raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if content_length is not None:
                raise HttpError(400, "both Content-Length and Transfer-Encoding")
            if te != ["chunked"]:
                raise HttpError(501, f"unsupported Transfer-Encoding: {','.join(te)}")
            chunked_body = True
        if req.minor >= 1:
            keep = "close" not in conn_tokens
        else:
            keep = "keep-alive" in conn_tokens and "close" not in conn_tokens

        knobs = parse_knobs(query, st.port, st.name) if query and not is_stats else _NO_KNOBS

        # ---- request body
        digest = hashlib.sha256() if knobs.echo else None
        body_len = 0
        trailers: list[tuple[str, str]] = []
        if chunked_body or content_length:
            if expect_continue and req.minor >= 1:
                self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if chunked_body:
                body_len, trailers = await self._read_body_chunked(digest)
            else:
                body_len = content_length or 0
                await self._read_body_fixed(body_len, digest)

        if st.verbose:
            print(
                f"demo_backend[{st.port}] conn={self.seq} #{self.nreq} {req.method} {req.target} "
                f"{req.version}",
                file=sys.stderr,
                flush=True,
            )

        if is_stats:
            body = json.dumps(st.stats()).encode() + b"\n"
            return await self._respond(req, keep, 200, body, None, "application/json", _NO_KNOBS)

        if knobs.delay:
            await asyncio.sleep(knobs.delay)
        if knobs.close:
            self.writer.close()
            return False
        if knobs.hang:
            while await self.reader.read(PIECE):
                pass
            return False

        if knobs.echo:
            info = {
                "method": req.method,
                "target": req.target,
                "version": req.version,
                "headers": [[n, v] for n, v in req.headers],
                "trailers": [[n, v] for n, v in trailers],
                "body_len": body_len,
                "body_sha256": digest.hexdigest() if digest is not None else "",
                "port": st.port,
                "conn": self.seq,
            }
            return await self._respond(
                req, keep, knobs.status, json.dumps(info).encode() + b"\n", None, "application/json", knobs
            )
        if knobs.size is not None:
            return await self._respond(req, keep, knobs.status, None, knobs.size, "text/plain", knobs)
        return await self._respond(req, keep, knobs.status, st.default_body, None, "text/plain", knobs)

    # ------------------------------------------------------------------ writing
    def _head(self, status: int, extra: str) -> bytes:
        st = self.state
        return (
            f"HTTP/1.1 {status} {_reason(status)}\r\nDate: {_http_date()}\r\n{st.fixed_headers}"
            f"X-Conn: {self.seq}\r\nX-Conn-Requests: {self.nreq}\r\n{extra}\r\n"
        ).encode("latin-1")

    async def _respond(
        self,
        req: Request,
        keep: bool,
        status: int,
        body: bytes | None,
        size: int | None,
        ctype: str,
        knobs: Knobs,
    ) -> bool:
        """Send one response; returns whether the connection stays open for the next request."""
        w = self.writer
        length = len(body) if body is not None else (size or 0)
        send_body = req.method != "HEAD"
        asked_close = not keep or knobs.connclose
        extra = f"Content-Type: {ctype}\r\n"
        if knobs.bigheader:
            extra += "X-Big: " + "x" * knobs.bigheader + "\r\n"

        if status in _NO_BODY_STATUS:
            mode = "none"
            send_body = False
        elif knobs.shortbody:
            mode = "short"
        elif knobs.rst:
            mode = "rst"
        elif knobs.noframe or (knobs.chunked and req.minor == 0):
            mode = "close"
        elif knobs.chunked:
            mode = "chunked"
        else:
            mode = "length"
        will_keep = not asked_close and mode in ("none", "length", "chunked")

        if mode == "length":
            extra += f"Content-Length: {length}\r\n"
        elif mode == "chunked":
            extra += "Transfer-Encoding: chunked\r\n"
        elif mode == "short":
            extra += "Content-Length: 10\r\n"
        elif mode == "rst":
            extra += "Content-Length: 100000\r\n"
        if asked_close:
            extra += "Connection: close\r\n"
        elif req.minor == 0 and will_keep:
            extra += "Connection: keep-alive\r\n"
        head = self._head(status, extra)

        if mode == "short":
            w.write(head + (PATTERN[:2] if send_body else b""))
            await w.drain()
            w.close()
            return False
        if mode == "rst":
            w.write(head + (bytes(_PATTERN_BUF[:1000]) if send_body else b""))
            await w.drain()
            await asyncio.sleep(0.05)
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
            return False

        if not send_body:
            w.write(head)
        elif mode == "chunked":
            w.write(head)
            for piece in self._pieces(body, length, chunked=True):
                w.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
                await w.drain()
            w.write(b"0\r\n\r\n")
        elif body is not None:
            w.write(head + body)
        else:
            w.write(head)
            for piece in self._pieces(None, length, chunked=False):
                w.write(piece)
                await w.drain()
        await w.drain()

        if not will_keep:
            await self._close_gracefully()
            return False
        if knobs.idle is not None:
            self.idle_timeout = knobs.idle
        return True

    @staticmethod
    def _pieces(body: bytes | None, length: int, chunked: bool) -> Iterator[bytes | memoryview]:
        """Split a body (bytes, or the pattern when body is None) into pieces of <= 64 KiB.

        For chunked output small bodies are split in several (up to 4) chunks.
        """
        step = PIECE
        if chunked:
            step = max(1, min(PIECE, -(-length // 4)))
        off = 0
        while off < length:
            n = min(step, length - off)
            if body is not None:
                yield memoryview(body)[off : off + n]
            else:
                start = off % len(PATTERN)
                yield _PATTERN_BUF[start : start + n]
            off += n

    async def _close_gracefully(self) -> None:
        """Half-close, then drain what the client still sends (briefly) so it sees our data, not a RST."""
        w = self.writer
        try:
            await w.drain()
            if w.can_write_eof():
                w.write_eof()
            async with asyncio.timeout(1.0):
                while await self.reader.read(PIECE):
                    pass
        except (OSError, TimeoutError, ValueError):
            pass
        w.close()

    async def _send_error(self, err: HttpError) -> None:
        self._count_connection()
        self.nreq += 1
        body = (err.message + "\n").encode("utf-8", "replace")
        extra = f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        print(f"demo_backend[{self.state.port}]: {err.status} {err.message}", file=sys.stderr, flush=True)
        try:
            self.writer.write(self._head(err.status, extra) + body)
        except (OSError, RuntimeError):
            return
        await self._close_gracefully()


def _raise_nofile_limit() -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - non-Unix
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (OSError, ValueError):
        pass


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    # Plain signal.signal handlers rather than loop.add_signal_handler: closing the loop would reset
    # the disposition to SIG_DFL, and a late second SIGTERM would then kill us with status 143.
    def on_signal(signum: int, frame: object) -> None:
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # loop already closed: we are exiting anyway
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    states: list[PortState] = []
    servers: list[asyncio.Server] = []
    for port in args.port:
        st = PortState(port, args.name, args.idle_timeout, args.verbose)
        try:
            server = await asyncio.start_server(st.on_connect, args.host, port, limit=MAX_HEAD, backlog=4096)
        except OSError as exc:
            print(f"demo_backend: cannot listen on {args.host}:{port}: {exc}", file=sys.stderr, flush=True)
            for s in servers:
                s.close()
            return 1
        st.set_port(server.sockets[0].getsockname()[1])
        states.append(st)
        servers.append(server)

    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        for st in states:
            print(f"LISTENING {host}:{st.port}", flush=True)
    except OSError:
        pass

    await stop.wait()
    for server in servers:
        server.close()
    for st in states:
        for transport in list(st.transports):
            transport.abort()
    return 0


def _exit_early(signum: int, frame: object) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    # Until the event loop installs its own handlers, SIGTERM/SIGINT still mean "exit 0".
    signal.signal(signal.SIGTERM, _exit_early)
    signal.signal(signal.SIGINT, _exit_early)
    parser = argparse.ArgumentParser(description="Demo/test HTTP/1.1 upstream server for prefork-lb.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        required=True,
        help="port to listen on (repeatable; 0 = ephemeral)",
    )
    parser.add_argument("--name", default=None, help="name used for the body and the X-Name header")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="close keep-alive connections idle for this many seconds (default: never)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    _raise_nofile_limit()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
