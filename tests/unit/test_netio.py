"""netio's waits (rules 2, 3 and 5): per-wait timeouts on the shared lazily re-armed timer,
and the client read watcher kept started between waits. Real socketpairs, the real hub."""

from __future__ import annotations

import socket as stdsocket
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent import get_hub

from prefork_lb.netio import ClientSocket, recv, send_all


@pytest.fixture
def pair() -> Iterator[tuple[ClientSocket, stdsocket.socket]]:
    a, b = stdsocket.socketpair()
    a.setblocking(False)
    sock = ClientSocket(a, get_hub())
    yield sock, b
    sock.close()
    b.close()


def test_the_client_read_watcher_stays_started_after_a_wait(
    pair: tuple[ClientSocket, stdsocket.socket],
) -> None:
    """Catches the stop/start per wait that cost one epoll_ctl per keep-alive request: the
    watcher is still started when the wait is over (rule 5)."""
    sock, peer = pair
    peer.send(b"x")
    assert recv(sock, 100, 5.0, wait_first=True) == b"x"
    assert sock._read_event.active


def test_readable_with_nobody_waiting_stops_the_watcher(pair: tuple[ClientSocket, stdsocket.socket]) -> None:
    """Bytes arriving while nobody waits (a pipelined request) stop the watcher instead of
    spinning the loop, and the next recv still gets them."""
    sock, peer = pair
    peer.send(b"x")
    assert recv(sock, 100, 5.0, wait_first=True) == b"x"
    peer.send(b"y")
    deadline = time.monotonic() + 5
    while sock._read_event.active:
        assert time.monotonic() < deadline, "the watcher kept firing with nobody waiting"
        gevent.sleep(0.001)
    assert recv(sock, 100, 5.0, wait_first=True) == b"y"


def test_a_short_timeout_after_a_long_one_fires_on_its_own_deadline(
    pair: tuple[ClientSocket, stdsocket.socket],
) -> None:
    """The timer armed for a 60 s wait must be re-armed for a later 0.2 s wait."""
    sock, peer = pair
    peer.send(b"x")
    assert recv(sock, 100, 60.0, wait_first=True) == b"x"
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        recv(sock, 100, 0.2)
    took = time.monotonic() - start
    assert 0.19 <= took < 30


def test_no_timeout_is_raised_outside_a_wait(pair: tuple[ClientSocket, stdsocket.socket]) -> None:
    """A deadline belongs to one wait: the timer of a finished short wait that fires while
    the greenlet does something else raises nothing there."""
    sock, peer = pair
    peer.send(b"x")
    assert recv(sock, 100, 0.05, wait_first=True) == b"x"
    gevent.sleep(0.3)  # the 0.05 s timer fires in here, with no socket wait in progress
    peer.send(b"y")
    assert recv(sock, 100, 5.0) == b"y"


def test_a_timeout_spans_one_wait_not_the_transfer(pair: tuple[ClientSocket, stdsocket.socket]) -> None:
    """nginx's *_timeout: successive waits each get the whole timeout, whatever came before."""
    sock, peer = pair

    def drip() -> None:
        for piece in (b"a", b"b", b"c"):
            gevent.sleep(0.15)
            peer.send(piece)

    dripper = gevent.spawn(drip)
    got = b"".join(recv(sock, 100, 0.5) for _ in range(3))
    dripper.join()
    assert got == b"abc"  # each wait took ~0.15 s of its 0.5 s; the three together more


def test_closing_wakes_a_reader_blocked_in_another_greenlet(
    pair: tuple[ClientSocket, stdsocket.socket],
) -> None:
    """Rule 3. Catches the reader never woken: the old close cancelled the wait and closed
    the watcher at once, so the deferred cancel found it inactive and threw nothing."""
    sock, _peer = pair
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            recv(sock, 100, 30.0)
        except OSError as e:
            errors.append(e)

    g = gevent.spawn(reader)
    gevent.sleep(0.01)
    sock.close()
    g.join(5)
    assert len(errors) == 1 and getattr(errors[0], "errno", None) == 9


def test_closing_wakes_a_writer_blocked_in_another_greenlet(
    pair: tuple[ClientSocket, stdsocket.socket],
) -> None:
    """Rule 3 for writes (same catch as above): a peer that reads nothing fills the buffer."""
    sock, _peer = pair
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            send_all(sock, b"x" * (16 << 20), 30.0)
        except OSError as e:
            errors.append(e)

    g = gevent.spawn(writer)
    deadline = time.monotonic() + 5
    while sock._write_event.callback is None:  # blocked once the buffers are full
        assert time.monotonic() < deadline
        gevent.sleep(0.01)
    sock.close()
    g.join(5)
    assert len(errors) == 1 and getattr(errors[0], "errno", None) == 9


def test_a_parked_socket_is_watched_by_its_own_started_watcher(
    pair: tuple[ClientSocket, stdsocket.socket],
) -> None:
    """Parking (worker._park) calls back once when the client writes, through the same read
    watcher, which is still started after a resumed greenlet read the bytes (no epoll set
    change for park and resume).

    Catches: a second io watcher per park, or the callback firing again for the same bytes."""
    sock, peer = pair
    peer.send(b"x")
    assert recv(sock, 100, 5.0, wait_first=True) == b"x"
    calls: list[bool] = []
    got: list[bytes] = []

    def resume() -> None:  # what the worker does: serve it again in a new greenlet
        calls.append(sock._read_event.active)
        gevent.spawn_raw(lambda: got.append(recv(sock, 100, 5.0)))

    sock.watch_readable(resume)
    peer.send(b"y")
    deadline = time.monotonic() + 5
    while not got:
        assert time.monotonic() < deadline, "the parked socket was never resumed"
        gevent.sleep(0.001)
    assert got == [b"y"] and calls == [True]
    assert sock._read_event.active
