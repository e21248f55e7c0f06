"""The error log in nginx's format, with nginx's level names, reopenable on USR1.

Line format: ``2026/11/21 10:00:00 [error] 1234#0: message``. Loggers: ``prefork_lb.error``
(everything operators read). Nothing is ever logged from a signal handler: handlers only
record, the loops act and log.

Log files (error log and access logs) are opened by ``open_log_file`` only, everywhere (master,
workers, ``-t``): ``O_WRONLY|O_APPEND|O_CREAT|O_NOFOLLOW`` (0644), and anything but a regular
file with a single link or a character device (/dev/null) is refused, so a symlink, hard link
or FIFO planted in a log directory is never written through, even as root. "stdout" and
"stderr" (the loader maps /dev/stdout and /dev/stderr to them) write to fd 1/2.
``prepare_log_files`` (master, as root, with ``user`` set; at start, reload and USR1) hands the
worker user only the files it creates itself (``O_EXCL``); an existing file keeps its owner.
nginx's USR1 reopen chowns by path instead; we never chown what we did not create.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
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


_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _checked(fd: int, path: str) -> int:
    """``fd`` if it is a regular file with one link, or a character device (/dev/null); closed
    otherwise. O_NONBLOCK is dropped again (it only kept the open of a FIFO from blocking)."""
    st = os.fstat(fd)
    why = ""
    if stat.S_ISREG(st.st_mode):
        if st.st_nlink > 1:  # a hard link planted to a file we must not write
            why = f"has {st.st_nlink} hard links, refused"
    elif not stat.S_ISCHR(st.st_mode):
        why = "not a regular file, refused"
    if why:
        os.close(fd)
        raise OSError(errno.EINVAL, why, path)
    os.set_blocking(fd, True)
    return fd


def open_log_file(path: str) -> int:
    """Open ``path`` for appending, creating it (0644); never follows a symlink at the last
    component (ELOOP) and refuses anything but a regular file. Raises OSError (with the
    path as ``filename``)."""
    try:
        fd = os.open(path, _LOG_FLAGS | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link, refused", path) from None
        raise OSError(e.errno, e.strerror, path) from None
    return _checked(fd, path)


def prepare_log_files(paths: list[str], uid: int, gid: int) -> list[str]:
    """Master, as root, with ``user`` set: create each missing log file and hand it to the
    worker user, so workers can reopen it after logrotate. A file that already exists is
    never chowned (only created-by-us files are; nginx's reopen chowns by path). Returns one
    warning per file a worker will not be able to reopen; open errors are left to whoever
    opens the file next (``-t`` and startup report them with the key)."""
    warnings: list[str] = []
    for path in paths:
        if path in ("stderr", "stdout", "off"):
            continue
        try:
            fd = os.open(path, _LOG_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                fd = _checked(os.open(path, _LOG_FLAGS), path)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if st.st_uid != uid and not (st.st_gid == gid and st.st_mode & 0o020):
                    warnings.append(
                        f'log file "{path}" is owned by uid {st.st_uid}, not the worker user '
                        f"(uid {uid}): not chowned (prefork-lb only chowns files it creates), "
                        "so workers cannot reopen it after rotation"
                    )
            finally:
                os.close(fd)
            continue
        except OSError:
            continue
        try:
            os.fchown(fd, uid, gid)  # just created by us (O_EXCL): a regular file, ours to give
        except OSError:
            pass
        finally:
            os.close(fd)
    return warnings


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
        return open_log_file(self.path)

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
