"""Access-log formats (compiled once) and per-file log writers.

Rules:
- ``compile_log_format`` turns a format into literal text plus one getter per variable, at
  config load; ``LogFormat.render`` fills the slots and joins once: no parsing, no regex and
  no lookup by name per request. Constant variables are folded into the literal text
  (``$remote_user`` is always unset here, so "combined" starts with ``ADDR - - [``).
- Values are rendered like nginx ``escape=default``. An unset value (nginx "not found") is
  ``-``: an absent header, cookie or argument, ``$args`` without "?", ``$remote_user``,
  ``$upstream_*`` when nothing was proxied. A value that is set but empty stays empty, as in
  nginx (``Referer:`` with no value, ``$is_args``, ``$server_name`` of an unnamed server).
  ``"``, ``\\`` and every char outside 0x20..0x7e are written as ``\\xHH`` (uppercase hex, as
  nginx). Literal text is copied as written (as its UTF-8 bytes). The line has no newline.
- ``AccessLogWriter`` owns one file descriptor, opened ``O_WRONLY|O_APPEND|O_CREAT`` (0644,
  ``O_NOFOLLOW``, regular files only: ``prefork_lb.log.open_log_file``),
  and writes whole lines with one ``os.write`` per line (unbuffered) or per buffer flush, so
  lines from several workers never interleave. With ``buffer_bytes`` a flush happens before a
  line would overflow the buffer, when a line fills it, and when the oldest buffered line is
  ``flush_s`` old (checked on ``write`` and by ``flush_expired``, which the worker calls from a
  timer). Lines are encoded latin-1 (values are one byte per char).
- Writing never raises: a failed write (ENOSPC on /dev/full, EBADF ...) drops the data and is
  reported on ``prefork_lb.error`` at most once per ``REPORT_INTERVAL_S`` per writer, with the
  number of failures suppressed meanwhile. Opening in ``__init__`` does raise ``OSError`` so the
  caller can refuse the config; a failed ``reopen`` is reported and keeps the old descriptor.
- ``reopen`` (USR1, logrotate) flushes, opens the path again, then closes the old descriptor.
  "stderr" / "stdout" write to fd 2 / 1, are never closed, and reopen only flushes them.
- ``AccessLogs`` shares one writer per path among all locations logging to it. Writers hold
  per-process buffers: create them after fork (or flush before forking).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import ClassVar, Final

from prefork_lb.http.exchange import Exchange
from prefork_lb.http.template import build_parts
from prefork_lb.http.variables import ENTRY_DASH, Getter, Variable, VariableError
from prefork_lb.log import open_log_file

__all__ = [
    "BUILTIN_FORMATS",
    "COMBINED",
    "AccessLogWriter",
    "AccessLogs",
    "LogFormat",
    "VariableError",
    "compile_log_format",
    "escape_log_value",
]

COMBINED: Final = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)
BUILTIN_FORMATS: Final[Mapping[str, str]] = MappingProxyType({"combined": COMBINED})

_error_log = logging.getLogger("prefork_lb.error")


class _EscapeTable(dict[int, str]):
    """``str.translate`` table: every latin-1 char maps to itself or to ``\\xHH``."""

    def __missing__(self, code: int) -> str:
        # beyond latin-1 (getters never produce it): escape its UTF-8 bytes
        return "".join(f"\\x{b:02X}" for b in chr(code).encode("utf-8", "surrogatepass"))


_ESCAPE: Final = _EscapeTable(
    {c: chr(c) if 0x20 <= c <= 0x7E and c not in (0x22, 0x5C) else f"\\x{c:02X}" for c in range(256)}
)


def escape_log_value(value: str) -> str:
    """nginx ``escape=default`` for one value (no "-" substitution)."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return value.translate(_ESCAPE)


def _log_getter(var: Variable) -> Getter | str:
    """The log rendering of ``var``: a constant string, or a getter returning escaped text."""
    if var.constant is not None:
        if not var.constant and var.empty_is_unset:
            return ENTRY_DASH
        return escape_log_value(var.constant)
    get = var.get
    lookup = var.lookup
    if lookup is not None:

        def get_lookup(ex: Exchange) -> str:
            v = lookup(ex)
            if v is None:
                return ENTRY_DASH
            if v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
                return v
            return v.translate(_ESCAPE)

        return get_lookup
    if var.empty_is_unset:
        if var.plain:

            def get_plain_or_dash(ex: Exchange) -> str:
                return get(ex) or ENTRY_DASH

            return get_plain_or_dash

        def get_or_dash(ex: Exchange) -> str:
            v = get(ex)
            if not v:
                return ENTRY_DASH
            if v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
                return v
            return v.translate(_ESCAPE)

        return get_or_dash
    if var.plain:
        return get

    def get_escaped(ex: Exchange) -> str:
        v = get(ex)
        if v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
            return v
        return v.translate(_ESCAPE)

    return get_escaped


class LogFormat:
    """A compiled log format; ``render`` returns one line without the trailing newline."""

    __slots__ = ("_parts", "_slots", "text", "variables")

    def __init__(self, text: str, lookup: Callable[[str], Variable] | None = None) -> None:
        parts, slots, names = build_parts(text, _log_getter, lookup)
        self.text = text
        self.variables = names
        self._parts = parts
        self._slots = slots

    def render(self, ex: Exchange) -> str:
        buf = self._parts.copy()
        for i, get in self._slots:
            buf[i] = get(ex)
        return "".join(buf)

    def __repr__(self) -> str:
        return f"LogFormat({self.text!r})"


def compile_log_format(text: str, lookup: Callable[[str], Variable] | None = None) -> LogFormat:
    """Compile a log_format string; raises ``VariableError`` for unknown variables or bad syntax."""
    return LogFormat(text, lookup)


# --- writers -----------------------------------------------------------------------------------

_STD_FDS: Final = {"stderr": 2, "stdout": 1}


def _open(path: str) -> int:
    return open_log_file(path)  # O_APPEND|O_CREAT|O_NOFOLLOW, regular files only (prefork_lb.log)


class AccessLogWriter:
    """One access-log file (or stderr/stdout); see the module rules."""

    REPORT_INTERVAL_S: ClassVar[float] = 60.0

    __slots__ = (
        "_chunks",
        "_closed",
        "_deadline",
        "_fd",
        "_last_report",
        "_size",
        "_suppressed",
        "buffer_bytes",
        "flush_s",
        "path",
    )

    def __init__(self, path: str, buffer_bytes: int = 0, flush_s: float = 1.0) -> None:
        self.path = path
        self.buffer_bytes = max(0, buffer_bytes)
        self.flush_s = flush_s
        std = _STD_FDS.get(path)
        self._fd = std if std is not None else _open(path)
        self._chunks: list[bytes] = []
        self._size = 0
        self._deadline = 0.0  # monotonic time by which the buffered lines must be written
        self._closed = False
        self._last_report: float | None = None
        self._suppressed = 0

    @property
    def is_std(self) -> bool:
        return self.path in _STD_FDS

    def write(self, line: str) -> None:
        """Append ``line`` and a newline; never raises."""
        if self._closed:
            return
        line += "\n"
        try:
            data = line.encode("latin-1")
        except UnicodeEncodeError:
            data = line.encode("utf-8", "backslashreplace")
        limit = self.buffer_bytes
        if not limit:
            self._write(data)
            return
        now = time.monotonic()
        if self._size and self._size + len(data) > limit:
            self.flush()
        if not self._size:
            self._deadline = now + self.flush_s
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= limit or now >= self._deadline:
            self.flush()

    def flush(self) -> None:
        """Write out the buffered lines (one syscall); never raises."""
        if not self._size:
            return
        data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        self._size = 0
        self._write(data)

    def flush_expired(self, now: float | None = None) -> None:
        """Flush if the oldest buffered line is ``flush_s`` old (``now``: ``time.monotonic()``)."""
        if self._size and (time.monotonic() if now is None else now) >= self._deadline:
            self.flush()

    def reopen(self) -> None:
        """Flush, then point the writer at a fresh open of ``path`` (after logrotate renamed it)."""
        if self._closed:
            return
        self.flush()
        if self.is_std:
            return
        try:
            fd = _open(self.path)
        except OSError as e:
            self._report("open()", e)
            return
        old, self._fd = self._fd, fd
        with contextlib.suppress(OSError):
            os.close(old)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if not self.is_std:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _write(self, data: bytes) -> None:
        try:
            n = os.write(self._fd, data)
            while 0 < n < len(data):  # partial write (pipe, disk filling up): write the rest
                data = data[n:]
                n = os.write(self._fd, data)
        except OSError as e:
            self._report("write()", e)

    def _report(self, op: str, err: OSError) -> None:
        now = time.monotonic()
        if self._last_report is not None and now - self._last_report < self.REPORT_INTERVAL_S:
            self._suppressed += 1
            return
        more = f", {self._suppressed} more failures since the last report" if self._suppressed else ""
        _error_log.error(
            '%s to access log "%s" failed (%s: %s)%s', op, self.path, err.errno, err.strerror, more
        )
        self._last_report = now
        self._suppressed = 0

    def __repr__(self) -> str:
        return f"AccessLogWriter({self.path!r}, buffer_bytes={self.buffer_bytes})"


class AccessLogs:
    """The writers of one process, one per path, shared by every location logging there."""

    __slots__ = ("_writers",)

    def __init__(self) -> None:
        self._writers: dict[str, AccessLogWriter] = {}

    def get(self, path: str, buffer_bytes: int = 0, flush_s: float = 1.0) -> AccessLogWriter:
        """The writer for ``path``, opened on first use (the first caller's buffering wins)."""
        writer = self._writers.get(path)
        if writer is None:
            writer = self._writers[path] = AccessLogWriter(path, buffer_bytes, flush_s)
        return writer

    def __iter__(self) -> Iterator[AccessLogWriter]:
        return iter(list(self._writers.values()))

    def __len__(self) -> int:
        return len(self._writers)

    def reopen_all(self) -> None:
        for writer in self:
            writer.reopen()

    def flush_expired(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for writer in self:
            writer.flush_expired(now)

    def close_all(self) -> None:
        for writer in self:
            writer.close()
        self._writers.clear()
