"""The optional compiled loops (``_pickloop.c``) and the switch that turns them off.

``pip install`` builds ``prefork_lb/balance/_pickloop.c`` with the machine's C compiler
(``setup.py``: an optional extension, so the install still succeeds without one). When it
is importable and the environment does not set ``PREFORK_LB_PURE=1``, round_robin and
least_conn run nginx's per-peer loops in C over the zone words; otherwise the pure-Python
loops and bulk passes of ``round_robin.py``, ``least_conn.py`` and ``table.py`` do.

Rules:
1. Both builds choose the same peer and leave every zone word identical, in every state
   (``tests/unit/test_balance_native.py`` runs them side by side over random states).
2. The choice is made once, at import: ``PICKLOOP`` is the module or None, and each
   ``PeerTable`` copies it at config load (tests switch it per table).
3. The C code knows no offsets of its own: ``table.PeerTable`` passes the zone layout's
   field offsets in the header of each list's ``cfg`` record.
"""

from __future__ import annotations

import os
from typing import Protocol

PURE_ENV = "PREFORK_LB_PURE"  # "1": never use compiled code (the suite can run on both builds)


class PickLoop(Protocol):
    """What ``_pickloop`` offers (its stub: ``_pickloop.pyi``)."""

    def smooth(
        self, zone: memoryview, cfg: bytes, tried: int, now_s: int, now_ms: int, scaled: bool, /
    ) -> int: ...

    def least_conn(self, zone: memoryview, cfg: bytes, tried: int, now_s: int, /) -> int: ...


def _load() -> PickLoop | None:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        from prefork_lb.balance import _pickloop
    except ImportError:  # not built (no compiler at install time): the pure loops
        return None
    return _pickloop


PICKLOOP: PickLoop | None = _load()


def describe() -> str:
    """For logs and benchmarks: which build the balancers run."""
    if PICKLOOP is not None:
        return "compiled (_pickloop)"
    return "pure (PREFORK_LB_PURE)" if os.environ.get(PURE_ENV, "") not in ("", "0") else "pure (not built)"
