"""http/h2/guard.py (sans-IO): floods counted per one-second window end the connection
with ENHANCE_YOUR_CALM; ordinary traffic (WINDOW_UPDATEs of a fast download) does not."""

from __future__ import annotations

from h2.events import PingReceived, StreamReset, WindowUpdated

from prefork_lb.http.h2.guard import ENHANCE_YOUR_CALM, MAX_CONTROL, MAX_RESETS, OK, Guard


def reset(remote: bool = True) -> StreamReset:
    return StreamReset(stream_id=1, remote_reset=remote)


def test_rapid_reset_over_the_limit() -> None:
    g = Guard()
    assert g.check([reset() for _ in range(MAX_RESETS)], 10.0) == OK
    assert g.check([reset()], 10.5) == ENHANCE_YOUR_CALM


def test_counts_start_over_each_window_and_own_resets_are_free() -> None:
    g = Guard()
    assert g.check([reset() for _ in range(MAX_RESETS)], 10.0) == OK
    assert g.check([reset() for _ in range(MAX_RESETS)], 11.0) == OK
    assert g.check([reset(remote=False) for _ in range(5 * MAX_RESETS)], 11.5) == OK


def test_ping_flood_but_not_window_updates() -> None:
    g = Guard()
    assert g.check([WindowUpdated(stream_id=0, delta=1) for _ in range(20 * MAX_CONTROL)], 1.0) == OK
    assert (
        g.check([PingReceived(ping_data=b"12345678") for _ in range(MAX_CONTROL + 1)], 1.1)
        == ENHANCE_YOUR_CALM
    )
