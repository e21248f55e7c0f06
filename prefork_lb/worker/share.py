"""Whether this worker holds no more client connections than its share (sans-IO: reads of
the zone mapping, no lock, no syscall).

Rules:
1. The counts are the ``R_ACTIVE`` words of the worker rows (layout.py: one writer each,
   so an unlocked read is a recent value, never a torn one). The siblings are the live rows
   (``R_PID`` set) of this worker's generation that are not draining; ``refresh()`` finds
   them (a scan of every row) and runs once per housekeeping tick, not per accept.
2. The share is the total over the siblings divided by the configured ``workers``, not by
   the rows found: a sibling not started yet (the master forks them one after another) or
   not respawned yet counts as holding none, so a worker never batches because it thinks
   it is alone.
3. ``below(extra)``: this worker's count plus ``extra`` (connections accepted in this
   wake-up, which ``R_ACTIVE`` counts only once their greenlet runs) times ``workers`` is
   at most the siblings' total plus ``extra``: it holds no more than its share. One read per
   sibling, so O(workers) and nothing per request.
"""

from __future__ import annotations

from typing import Any

from prefork_lb.zone import layout as L


class FairShare:
    __slots__ = ("_cells", "_generation", "_mine", "_mv", "_peers", "_rows", "workers")

    def __init__(self, mv: Any, rows: int, peers: int, row: int, workers: int) -> None:
        self._mv = mv
        self._rows = rows
        self._peers = peers
        self._mine = L.row_base(row, peers) + L.R_ACTIVE
        self.workers = workers
        self._generation = int(mv[L.row_base(row, peers) + L.R_GENERATION])
        self._cells: tuple[int, ...] = (self._mine,)
        self.refresh()

    def refresh(self) -> None:
        mv, peers, generation = self._mv, self._peers, self._generation
        cells = []
        for r in range(self._rows):
            base = L.row_base(r, peers)
            if mv[base + L.R_PID] and mv[base + L.R_GENERATION] == generation and not mv[base + L.R_DRAINING]:
                cells.append(base + L.R_ACTIVE)
        if self._mine not in cells:
            cells.append(self._mine)
        self._cells = tuple(cells)

    @property
    def siblings(self) -> int:
        return len(self._cells)

    def below(self, extra: int) -> bool:
        mv = self._mv
        total: int = extra
        for cell in self._cells:
            total += mv[cell]
        mine: int = mv[self._mine] + extra
        return mine * self.workers <= total
