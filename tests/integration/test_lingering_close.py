"""Lingering close (issue 11 item 9): a response sent before the request body was read
reaches a client that is still sending, and the connection ends afterwards.

What these catch on the old code, which closed at once with the body unread (the kernel
then sends an RST instead of a FIN):
- ``test_*_client_reads_the_response``: the client's ``sendall`` of the 8 MiB body failed
  with ECONNRESET/EPIPE before it could read the 413 (or the ``return`` answer);
- ``test_lingering_timeout_*`` / ``test_lingering_time_*``: after the 413 the client got an
  RST (ECONNRESET on recv) instead of a clean EOF, and its next send failed at once;
- ``test_lingering_close_off_*`` checks the switch: with ``off`` the old behaviour is back.
- ``test_a_draining_worker_ends_lingering``: a drain that waited out lingering_timeout.
The end of the connection is observed in the worker's own socket table (psutil), never
timed with sleeps.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, wait_for

BIG_BODY = 8 * 1024 * 1024

CONFIG = """
workers = 1
error_log = "error.log"
[http]
access_log = "access.log"
client_max_body_size = "1m"
{http_extra}
[http.upstreams.backend]
servers = [{{ address = "{backend}" }}]

[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  [[http.servers.locations]]
  match = "= /return"
  return = "200 early"
  client_max_body_size = "16m"
"""


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    with Backend(count=1) as b:
        yield b.addrs[0]


def _lb(tmp_path: Path, backend: str, http_extra: str = "") -> tuple[LB, int]:
    port = free_port()
    return LB(tmp_path, CONFIG.format(backend=backend, port=port, http_extra=http_extra), port), port


def _head(path: str, length: int) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path.encode(), length)


def _read_to_eof(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _server_side_open(lb: LB, port: int) -> bool:
    """Does a worker still hold the other end of the client socket bound to ``port``?"""
    for worker in lb.workers():
        try:
            conns = worker.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.raddr and c.raddr.port == port for c in conns):
            return True
    return False


@pytest.mark.parametrize(("path", "status"), [("/upload", b"413"), ("/return", b"200")])
def test_early_response_client_reads_the_response(
    tmp_path: Path, backend: str, path: str, status: bytes
) -> None:
    """A client that sends its whole 8 MiB body before reading (the way most clients are
    written) reads the complete early response, then EOF; the worker then closes."""
    lb, port = _lb(tmp_path, backend)
    with lb, socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(_head(path, BIG_BODY) + b"x" * BIG_BODY)  # old code: ECONNRESET / EPIPE here
        out = _read_to_eof(s)
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status + b" ")
        assert b"Connection: close" in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert len(body) == length
        cport = s.getsockname()[1]
        s.close()
        wait_for(lambda: not _server_side_open(lb, cport), what="the worker to close the connection")
        assert f'" {status.decode()} ' in lb.access_log(1)[0]  # logged before lingering


def test_lingering_timeout_closes_a_stalled_client(tmp_path: Path, backend: str) -> None:
    """A client that stops sending mid-body (without closing) gets the 413 and a clean EOF;
    the worker closes after ``lingering_timeout`` without more data."""
    lb, port = _lb(tmp_path, backend, 'lingering_timeout = "1s"')
    with lb, socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(_head("/upload", BIG_BODY) + b"x" * (2 * 1024 * 1024))
        out = _read_to_eof(s)  # old code: ECONNRESET instead of EOF after the 413
        assert out.startswith(b"HTTP/1.1 413 ")
        s.sendall(b"x" * 65536)  # still being read and discarded
        wait_for(
            lambda: not _server_side_open(lb, s.getsockname()[1]),
            what="lingering_timeout to close the connection",
        )


def test_lingering_time_caps_a_client_that_keeps_sending(tmp_path: Path, backend: str) -> None:
    """A client that never pauses for ``lingering_timeout`` is cut at ``lingering_time``."""
    lb, port = _lb(tmp_path, backend, 'lingering_time = "1s"\nlingering_timeout = "30s"')
    with lb, socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(_head("/upload", 10 * BIG_BODY) + b"x" * (2 * 1024 * 1024))
        assert _read_to_eof(s).startswith(b"HTTP/1.1 413 ")
        stop = threading.Event()
        failed: list[BaseException] = []

        def keep_sending() -> None:
            try:
                while not stop.is_set():
                    s.sendall(b"x" * 4096)
                    stop.wait(0.02)
            except OSError as e:  # the worker closed: EPIPE / ECONNRESET
                failed.append(e)

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            wait_for(
                lambda: not _server_side_open(lb, s.getsockname()[1]),
                what="lingering_time to close the connection",
            )
            wait_for(lambda: failed, what="the client's sends to fail")
        finally:
            stop.set()
            sender.join()


def test_lingering_close_off_resets_a_sending_client(tmp_path: Path, backend: str) -> None:
    """``lingering_close = "off"``: closed at once with the body unread, so the sending
    client is reset (the old behaviour, as nginx with lingering_close off)."""
    lb, port = _lb(tmp_path, backend, 'lingering_close = "off"')
    with lb, socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            s.sendall(_head("/upload", BIG_BODY) + b"x" * BIG_BODY)
            _read_to_eof(s)


def test_lingering_keys_inherit_and_validate(tmp_path: Path) -> None:
    """The keys load at http, server and location level (inherited downwards, as nginx)
    and a bad mode names the key."""
    from prefork_lb.config.errors import ConfigError
    from prefork_lb.config.load import load_config

    text = CONFIG.format(backend="127.0.0.1:1", port=free_port(), http_extra='lingering_time = "7s"')
    text = text.replace('listen = ["', 'lingering_close = "always"\nlisten = ["', 1)
    text = text.replace('  return = "200 early"', '  return = "200 early"\n  lingering_close = "off"')
    conf = tmp_path / "lb.toml"
    conf.write_text(text)
    server = load_config(str(conf)).http.servers[0]
    assert (server.lingering_close, server.lingering_time_s, server.lingering_timeout_s) == (
        "always",
        7.0,
        5.0,
    )
    proxied, returned = server.locations
    assert (proxied.lingering_close, proxied.lingering_time_s) == ("always", 7.0)
    assert (returned.lingering_close, returned.lingering_time_s) == ("off", 7.0)
    conf.write_text(text.replace('lingering_close = "off"', 'lingering_close = "yes"'))
    with pytest.raises(ConfigError, match=r"lingering_close.*must be one of: off, on, always"):
        load_config(str(conf))


def test_a_draining_worker_ends_lingering(tmp_path: Path, backend: str) -> None:
    """On reload the old worker ends a lingering connection like an idle one (after 1 s)
    instead of waiting out ``lingering_timeout`` (30 s here): without that, the old worker
    would outlive this test's 20 s deadline."""
    lb, port = _lb(tmp_path, backend, 'lingering_timeout = "30s"')
    with lb, socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        (old,) = lb.workers()
        s.sendall(_head("/upload", BIG_BODY) + b"x" * 65536)
        assert _read_to_eof(s).startswith(b"HTTP/1.1 413 ")  # lingering now: the FIN came
        assert _server_side_open(lb, s.getsockname()[1])
        assert lb.signal("reload").returncode == 0
        wait_for(
            lambda: not old.is_running() or old.status() == psutil.STATUS_ZOMBIE,
            what="the old worker to exit",
        )
