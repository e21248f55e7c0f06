"""The free list of connection greenlets (worker/runners.py) on a real gevent hub."""

from __future__ import annotations

import logging
import weakref
from typing import Any

import gevent
import gevent.event
import pytest

from prefork_lb.worker.runners import Runners


def settle() -> None:
    for _ in range(3):
        gevent.sleep(0)


def test_a_finished_runner_serves_the_next_connection() -> None:
    """Catches: a new greenlet (and a new 16 KiB data stack chunk) per connection."""
    runners = Runners(gevent.get_hub(), gevent.spawn_raw)
    ran: list[tuple[str, Any]] = []

    def handler(name: str) -> None:
        ran.append((name, gevent.getcurrent()))

    runners.spawn(handler, "first")
    assert ran == []  # rule 1: it starts from the hub's callbacks, not inside spawn()
    settle()
    assert runners.idle == 1
    runners.spawn(handler, "second")
    settle()
    assert [name for name, _ in ran] == ["first", "second"]
    assert ran[0][1] is ran[1][1]
    assert runners.idle == 1


class Conn:
    pass


def test_an_idle_runner_keeps_nothing_of_its_last_connection() -> None:
    """Catches: a waiting runner holding its last start (handler, connection objects) in
    a local, so every idle runner pins a finished connection's memory."""
    runners = Runners(gevent.get_hub(), gevent.spawn_raw)
    for _ in range(2):  # a new runner, then the same one reused
        conn = Conn()
        gone = weakref.ref(conn)
        runners.spawn(lambda c: None, conn)
        del conn
        settle()
        assert runners.idle == 1 and gone() is None


def test_an_exception_is_logged_and_the_runner_kept(caplog: pytest.LogCaptureFixture) -> None:
    runners = Runners(gevent.get_hub(), gevent.spawn_raw)
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("bug")

    with caplog.at_level(logging.INFO, logger="prefork_lb.error"):
        runners.spawn(broken)
        settle()
    assert "unexpected error in a connection handler" in caplog.text and "ValueError: bug" in caplog.text
    assert runners.idle == 1
    runners.spawn(ran.append, "after")
    settle()
    assert ran == ["after"]


def test_stale_wake_ups_of_an_idle_runner_are_dropped() -> None:
    """Catches: an idle runner taking a late wake-up aimed at its previous connection's
    wait (a value, or an error thrown in by cancel_wait) for a new start, or dying of it
    while still on the free list (the next connection would then never be served)."""
    hub = gevent.get_hub()
    runners = Runners(hub, gevent.spawn_raw)
    ran: list[str] = []
    runners.spawn(ran.append, "first")
    settle()
    (runner,) = runners._idle
    hub.loop.run_callback(runner.switch, "stale value")
    hub.loop.run_callback(runner.switch)
    hub.loop.run_callback(runner.throw, OSError(9, "File descriptor was closed in another greenlet"))
    settle()
    assert not runner.dead and runners.idle == 1 and ran == ["first"]
    runners.spawn(ran.append, "second")
    settle()
    assert ran == ["first", "second"]


def test_at_most_max_idle_runners_wait() -> None:
    runners = Runners(gevent.get_hub(), gevent.spawn_raw, max_idle=2)
    go = gevent.event.Event()
    for _ in range(3):
        runners.spawn(go.wait)
    settle()
    assert runners.idle == 0
    go.set()
    settle()
    assert runners.idle == 2
