"""The pid file: written by the master, read by ``prefork-lb -s``."""

from __future__ import annotations

import contextlib
import os


def write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str) -> None:
    """Remove the pid file if it still names this process (a newer master may own it)."""
    with contextlib.suppress(OSError, ValueError):
        if read_pidfile(path) == os.getpid():
            os.unlink(path)


def read_pidfile(path: str) -> int:
    """The pid in ``path``; raises OSError or ValueError with a usable message."""
    with open(path) as f:
        text = f.read().strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError(f'invalid PID number "{text}" in "{path}"')
    return int(text)
