"""A small stdlib load client for reload tests, for machines without wrk and for the tests.

    python3 loadtest/reload_client.py --port 18080 --seconds 10 --concurrency 20 [--close] [--path /]

Each thread sends GETs to 127.0.0.1 until the time is up:

- keep-alive (default): one ``http.client`` connection per thread, reused until the server
  closes it or a request fails;
- ``--close``: a new connection per request, sent with ``Connection: close``.

On exit it prints one JSON line::

    {"requests": n, "ok": n, "non2xx": n,
     "errors": {"ECONNREFUSED": n, "ECONNRESET": n, "EOF": n, "timeout": n, "other": n},
     "retried_idempotent": n}

``requests`` counts logical requests (= ok + non2xx + sum of errors). Error classes:
ECONNREFUSED (connect refused), ECONNRESET (reset or EPIPE on read or write), EOF (the
connection closed before the response was complete, including before the status line),
timeout (connect or read took longer than ``--timeout``), other (anything else, e.g. a
malformed response).

Idempotent retry (RFC 9112 section 9.3.1): in keep-alive mode, a request that fails on a
*reused* connection before any byte of its response arrived, because the server closed or
reset that connection (the idle keep-alive close race), is retried once on a new
connection. Such a first attempt is counted in ``retried_idempotent``, not as an error; the
retry's outcome is what ``ok``/``non2xx``/``errors`` count. Nothing else is ever retried,
and ``--close`` mode never retries.

Importable: ``run(port, seconds, concurrency, close, path) -> dict`` does the same and
returns the dict, so a test can call it in a thread while it reloads the server.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import io
import json
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

ERROR_KINDS = ("ECONNREFUSED", "ECONNRESET", "EOF", "timeout", "other")
ERROR_BACKOFF_S = 0.01  # after a failure, so a refusing port does not turn a thread into a spin loop


class _CountingRaw(io.RawIOBase):
    """Raw reader over a socket that counts the bytes received (for 'before any byte')."""

    def __init__(self, owner: _CountingSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._owner.sock.recv_into(buffer)
        self._owner.received += n
        return n


class _CountingSocket:
    """Wraps the connection's socket; http.client only calls sendall, makefile and close."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = 0

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_CountingRaw(self))

    def close(self) -> None:
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection whose socket counts received bytes.

    The counter outlives ``self.sock``: http.client closes the connection (sock = None)
    before it re-raises a ConnectionError from getresponse(), and that is exactly when the
    count is needed.
    """

    counter: _CountingSocket | None = None

    def connect(self) -> None:
        super().connect()
        self.counter = _CountingSocket(self.sock)
        self.sock = self.counter

    @property
    def received(self) -> int:
        return self.counter.received if self.counter is not None else 0


def classify(exc: BaseException) -> str:
    """Map an exception from http.client/socket to one of ERROR_KINDS."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "ECONNREFUSED"
    # RemoteDisconnected (EOF before the status line) subclasses ConnectionResetError: test it first.
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return "EOF"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "ECONNRESET"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "ECONNRESET"
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return "ECONNREFUSED"
    return "other"


def _retryable(kind: str, reused: bool, bytes_before: int, bytes_after: int) -> bool:
    """A clean close or reset on a reused connection before any byte of the response."""
    return reused and kind in ("EOF", "ECONNRESET") and bytes_after == bytes_before


class _Worker:
    def __init__(self, host: str, port: int, path: str, close: bool, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.close = close
        self.timeout_s = timeout_s
        self.stats: Counter[str] = Counter()
        self.conn: _Connection | None = None
        self.served = 0  # responses received on self.conn (0: it is fresh)

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.served = 0

    def _once(self) -> int:
        """One request on the current (or a new) connection; returns the status."""
        if self.conn is None:
            self.conn = _Connection(self.host, self.port, timeout=self.timeout_s)
            self.served = 0
        headers = {"Connection": "close"} if self.close else {}
        self.conn.request("GET", self.path, headers=headers)
        resp = self.conn.getresponse()
        resp.read()
        self.served += 1
        if self.close or resp.will_close:
            self._drop()
        return resp.status

    def one_request(self) -> None:
        self.stats["requests"] += 1
        for attempt in (1, 2):
            reused = self.conn is not None and self.served > 0
            before = self.conn.received if self.conn is not None else 0
            try:
                status = self._once()
            except (OSError, http.client.HTTPException) as exc:
                after = self.conn.received if self.conn is not None else 0
                self._drop()
                kind = classify(exc)
                if attempt == 1 and not self.close and _retryable(kind, reused, before, after):
                    self.stats["retried_idempotent"] += 1
                    continue
                self.stats["err:" + kind] += 1
                time.sleep(ERROR_BACKOFF_S)
                return
            self.stats["ok" if 200 <= status < 300 else "non2xx"] += 1
            return

    def loop(self, deadline: float, stop: threading.Event | None) -> None:
        try:
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                self.one_request()
        finally:
            self._drop()


def run(
    port: int,
    seconds: float,
    concurrency: int,
    close: bool = False,
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 5.0,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Drive ``concurrency`` threads for ``seconds`` (or until ``stop`` is set); return the counts."""
    deadline = time.monotonic() + seconds
    workers = [_Worker(host, port, path, close, timeout_s) for _ in range(concurrency)]
    threads = [
        threading.Thread(target=w.loop, args=(deadline, stop), name=f"reload-client-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total: Counter[str] = Counter()
    for w in workers:
        total.update(w.stats)
    return {
        "requests": total["requests"],
        "ok": total["ok"],
        "non2xx": total["non2xx"],
        "errors": {kind: total["err:" + kind] for kind in ERROR_KINDS},
        "retried_idempotent": total["retried_idempotent"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="stdlib HTTP load client for reload-under-load tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--close", action="store_true", help="a new connection per request (Connection: close)")
    p.add_argument("--path", default="/")
    p.add_argument("--timeout", type=float, default=5.0, help="connect/read timeout per request (s)")
    args = p.parse_args(argv)
    result = run(
        args.port,
        args.seconds,
        args.concurrency,
        args.close,
        args.path,
        host=args.host,
        timeout_s=args.timeout,
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
