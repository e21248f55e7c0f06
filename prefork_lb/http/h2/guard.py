"""Per-connection accounting of hostile HTTP/2 input (sans-IO; owned by h2edge, issue 20).

``Guard.check(events, now)`` is called by the connection loop after every
``receive_data()`` with the events it returned, and answers ``OK`` (0) or the GOAWAY
error code that ends the connection. It only counts: no I/O, no clock of its own.

Rules (a first version; the hostile-input work refines the thresholds):
1. Rapid reset (CVE-2023-44487): streams the client opens and resets itself are counted
   per window of ``WINDOW_S``; over ``MAX_RESETS`` -> ENHANCE_YOUR_CALM (11).
2. Control-frame floods (SETTINGS, PING, PRIORITY): over ``MAX_CONTROL`` per window ->
   ENHANCE_YOUR_CALM. WINDOW_UPDATE is not counted here: a client downloading fast may
   send thousands a second legitimately (telling a flood from that needs the DATA sent).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from h2.events import (
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    StreamReset,
)

OK: Final = 0
ENHANCE_YOUR_CALM: Final = 11
WINDOW_S: Final = 1.0
MAX_RESETS: Final = 200
MAX_CONTROL: Final = 1000
_CONTROL: Final = (PingReceived, PriorityUpdated, RemoteSettingsChanged)


class Guard:
    __slots__ = ("_control", "_resets", "_window_start")

    def __init__(self) -> None:
        self._window_start = 0.0
        self._resets = 0
        self._control = 0

    def check(self, events: Iterable[object], now: float) -> int:
        if now - self._window_start >= WINDOW_S:
            self._window_start = now
            self._resets = 0
            self._control = 0
        for event in events:
            if type(event) is StreamReset:
                if event.remote_reset:
                    self._resets += 1
            elif isinstance(event, _CONTROL):
                self._control += 1
        if self._resets > MAX_RESETS or self._control > MAX_CONTROL:
            return ENHANCE_YOUR_CALM
        return OK
