"""NGINX Plus ``state`` files: an upstream's runtime server list in config syntax (issue 19).

Rules:
1. The file is TOML holding one key, ``servers``, an array of the same server tables an
   upstream block takes (``address``, ``weight``, ``max_fails``, ``fail_timeout``,
   ``max_conns``, ``backup``, ``down``, ``slow_start``, ``route``, ``drain``), so it reads
   with the config's own parser and its errors name the state file and key path.
2. Loaded at start, at reload and by ``-t`` (``load_shared.upstream``): when the file
   exists the group takes its servers from it instead of the config's ``servers`` (as
   NGINX Plus); a missing file means "no runtime changes yet": the config's servers. An
   empty list is valid there (the API deleted every server): the group starts empty.
3. Written after every successful write through the API (``write_state``), outside the
   zone lock: a temporary file in the same directory, fsync, then ``rename`` over the old
   one, so a reader (a reload, a crash) sees the old or the new list, never a torn one.
   Writers serialise on ``flock`` of ``<state>.lock`` and write the table as it is when
   they hold it, so the last rename always carries the newest list.
4. A server is written with its resolved address (each address of a hostname is its own
   server with its own id, as the API shows it); values equal to the defaults are left out.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.model import UpstreamServer
from prefork_lb.config.source import Source, Table

if TYPE_CHECKING:
    from prefork_lb.config.load_shared import SectionLoader

HEADER = "# prefork-lb upstream state (written by the API on every change; config syntax)\n"


def read_state(loader: SectionLoader, path: str) -> list[Table] | None:
    """The state file's server tables, or None when it does not exist (rule 2)."""
    if not os.path.exists(path):
        return None
    try:
        source = Source(path)
    except ConfigError:
        raise
    top = Table(source, source.data, "")
    tables = top.table_list("servers")
    top.finish()
    return tables


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def server_entry(s: UpstreamServer) -> str:
    """One server as an inline TOML table (rule 4)."""
    parts = [f"address = {_toml_string(s.address.text)}"]
    if s.weight != 1:
        parts.append(f"weight = {s.weight}")
    if s.max_fails != 1:
        parts.append(f"max_fails = {s.max_fails}")
    if s.fail_timeout_s != 10.0:
        parts.append(f'fail_timeout = "{int(s.fail_timeout_s)}s"')
    if s.max_conns:
        parts.append(f"max_conns = {s.max_conns}")
    if s.backup:
        parts.append("backup = true")
    if s.down:
        parts.append("down = true")
    if s.slow_start_s:
        parts.append(f'slow_start = "{int(s.slow_start_s)}s"')
    if s.route:
        parts.append(f"route = {_toml_string(s.route)}")
    if s.drain:
        parts.append("drain = true")
    return "{ " + ", ".join(parts) + " }"


def render_state(servers: Iterable[UpstreamServer]) -> str:
    """The file's text."""
    lines = [HEADER, "servers = [\n"]
    for s in servers:
        lines.append(f"  {server_entry(s)},\n")
    lines.append("]\n")
    return "".join(lines)


def write_state(path: str, current: Callable[[], Iterable[UpstreamServer]]) -> None:
    """Rule 3: ``current`` reads the table (under the zone lock) once the file lock is held."""
    directory = os.path.dirname(path) or "."
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        text = render_state(current())
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    finally:
        os.close(lock_fd)  # releases the flock
