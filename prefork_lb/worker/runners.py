"""A free list of connection greenlets (gevent shell).

With ``Connection: close`` clients every request is a new connection, and a new raw
greenlet per connection costs its creation and, on Python 3.11+, a fresh 16 KiB data stack
chunk (an ``mmap``, page faults, a ``munmap`` when the greenlet dies). A runner greenlet
that finished one connection waits for the next one instead.

Rules:
1. ``spawn(function, *args)`` runs ``function(*args)`` in an idle runner if there is one,
   else in a new raw greenlet; either way it starts from the hub's callback queue, as
   ``gevent.spawn_raw`` does, so it never runs inside the caller (an acceptor's callback).
2. An exception from ``function`` is logged at alert and never reaches the hub (the old
   ``_guarded``); the runner then goes back to the free list as after a normal return.
3. At most ``max_idle`` runners wait; a runner that finds the list full ends.
4. An idle runner accepts only a start sent by ``spawn`` (a private token): a stale wake-up
   aimed at a wait of its previous connection is dropped, as a switch into a dead
   greenlet would have been.
5. Whatever wakes or throws into a connection's greenlet (a watcher, a timer, a deadline
   sweep) must be stopped or deregistered before the handler returns, as netio's waits
   close their timer and stop their watcher in ``finally``: the same greenlet then serves
   another connection, and a late ``throw`` would land in that connection's wait.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any, Final

from gevent import getcurrent

from prefork_lb.log import ALERT

MAX_IDLE: Final = 64
_START: Final = object()


def report(function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run ``function(*args)``; a bug in a handler is logged, never raised into the hub."""
    try:
        function(*args)
    except Exception:
        logging.getLogger("prefork_lb.error").log(
            ALERT, "unexpected error in a connection handler: %s", traceback.format_exc().replace("\n", " | ")
        )


class Runners:
    __slots__ = ("_hub", "_idle", "_run_callback", "_spawn_raw", "max_idle")

    def __init__(self, hub: Any, spawn_raw: Callable[..., Any], max_idle: int = MAX_IDLE) -> None:
        self._hub = hub
        self._run_callback = hub.loop.run_callback
        self._spawn_raw = spawn_raw
        self._idle: list[Any] = []
        self.max_idle = max_idle

    @property
    def idle(self) -> int:
        return len(self._idle)

    def spawn(self, function: Callable[..., Any], *args: Any) -> None:
        idle = self._idle
        if idle:
            self._run_callback(idle.pop().switch, _START, function, args)
        else:
            # a list it empties: the greenlet's first arguments live as long as it runs
            self._spawn_raw(self._run, [function, args])

    def _run(self, start: list[Any]) -> None:
        function, args = start
        start.clear()
        idle = self._idle
        switch = self._hub.switch
        me = getcurrent()
        while True:
            report(function, args)
            if len(idle) >= self.max_idle:
                return
            del function, args  # the finished connection is not kept alive by its runner
            idle.append(me)
            while True:
                try:
                    value = switch()
                except Exception:  # rule 4: thrown in by a stale wait (cancel_wait)
                    continue
                except BaseException:
                    idle.remove(me)
                    raise
                if type(value) is tuple and len(value) == 3 and value[0] is _START:
                    break
            _, function, args = value
            value = None
