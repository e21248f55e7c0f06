"""What the master knows of each worker process, and how it signals processes.

Rules:
- One ``WorkerProc`` per forked worker, created by ``Master.spawn`` and dropped when the
  worker is reaped; only the master process reads or writes them.
- Signalling a process that is already gone (ESRCH) is not an error: it is being reaped.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from prefork_lb.config.model import Config

EXIT_BOOT_FAILED = 3  # a child that could not start (the worker's own code, or a failed exec)


@dataclass(slots=True)
class WorkerProc:
    pid: int
    slot: int
    generation: int
    config: Config
    started: float
    ready_fd: int  # read end of the readiness pipe; -1 once ready
    row: int = -1  # zone row
    ready: bool = False
    quitting: bool = False


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as e:
        if e.errno != errno.ESRCH:
            raise


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
