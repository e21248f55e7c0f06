"""The error log in nginx's format, with nginx's level names, reopenable on USR1.

Line format: ``2026/11/21 10:00:00 [error] 1234#0: message``. Loggers: ``prefork_lb.error``
(everything operators read). Nothing is ever logged from a signal handler: handlers only
record, the loops act and log.
"""

from __future__ import annotations

import logging
import os
import sys
import time

NOTICE = 25
ALERT = 60
EMERG = 70
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": ALERT,
    "emerg": EMERG,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    NOTICE: "notice",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "crit",
    ALERT: "alert",
    EMERG: "emerg",
}
for _value, _name in _NAMES.items():
    logging.addLevelName(_value, _name)

log = logging.getLogger("prefork_lb.error")


class NginxFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        level = _NAMES.get(record.levelno, record.levelname.lower())
        text = f"{stamp} [{level}] {os.getpid()}#0: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ReopenableFileHandler(logging.Handler):
    """Appends to a file opened with O_APPEND; ``reopen`` follows logrotate's rename."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fd = self._open()

    def _open(self) -> int:
        if self.path == "stderr":
            return 2
        if self.path == "stdout":
            return 1
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self.fd, (self.format(record) + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # a full disk must never stop the server; the access log reports it

    def reopen(self) -> None:
        if self.fd > 2:
            fd = self._open()
            old, self.fd = self.fd, fd
            os.close(old)

    def close(self) -> None:
        if self.fd > 2:
            os.close(self.fd)
            self.fd = -1
        super().close()


def setup_error_log(path: str, level: str, also_stderr: bool = False) -> ReopenableFileHandler:
    """Route ``prefork_lb.*`` loggers to ``path``; returns the handler for reopen/close."""
    root = logging.getLogger("prefork_lb")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler = ReopenableFileHandler(path)
    handler.setFormatter(NginxFormatter())
    root.addHandler(handler)
    if also_stderr and path != "stderr":
        err = ReopenableFileHandler("stderr")
        err.setFormatter(NginxFormatter())
        err.setLevel(logging.ERROR)
        root.addHandler(err)
    root.setLevel(LEVELS[level])
    root.propagate = False
    return handler


def reopen_error_log() -> None:
    for h in logging.getLogger("prefork_lb").handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()


def fallback_stderr() -> None:
    """Before the config is read, errors go to stderr in the same format."""
    root = logging.getLogger("prefork_lb")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(NginxFormatter())
        root.addHandler(handler)
        root.setLevel(NOTICE)
        root.propagate = False
