"""What startup needs besides a config that parses, checked once for ``-t`` and startup alike.

Rules:
1. One function, ``check_startup``, used by ``prefork-lb -t`` / ``-T``, by startup (cli.serve,
   before the error log is set up) and by reload (the master, before new workers start). What
   passes ``-t`` does not fail startup on any of these; each failure names the path or the
   address and the key that configures it, nginx style:
   ``open() "/x/y/access.log" failed (2: No such file or directory) (http.servers[0].access_log)``.
2. Checks, in order: the config has a listener at all (a startup check: ``load_config`` also
   parses partial configs, for tools and tests); the prefix directory exists (``-p``); with
   ``user`` set and run as root, the log files are created for the worker user
   (log.prepare_log_files); every log file opens for append (created if missing, as
   ``nginx -t`` does; log.open_log_file refuses symlinks and non-regular files); the pid
   file's directory exists and is writable.
3. ``probe_binds`` (only ``-t``: startup and reload bind for real right after): each TCP/UDP
   listen address is bound once with SO_REUSEADDR (SO_REUSEPORT for ``reuseport``) and closed
   at once, never listened on, so a running master is not disturbed. EADDRINUSE is an error
   unless the running master of this config (its pid file, or the ``.oldbin`` one during a
   binary upgrade) holds a listening socket on that address: ``-t`` on a live server checks
   the new config, not the old one's sockets. Sockets held by pid 1 count as ours too: under
   systemd socket activation the socket unit holds the addresses when ``ExecStartPre=-t`` runs.
   Unix listen sockets: only their directory is checked (the master replaces a stale socket).
4. Each ``[http.proxy_cache_paths.NAME]`` directory and its ``tmp/`` are created if missing
   and, run as root with ``user``, given to the worker user (nginx creates and chowns its
   cache paths at startup too) and a file is created and removed in
   ``tmp/``: a directory that cannot be created or written fails ``-t`` and startup (nginx:
   "mkdir() failed"). A directory that becomes unwritable or full later never fails a
   request (cache/store.py rule 1).
"""

from __future__ import annotations

import errno
import os
import socket

from prefork_lb.config.model import Config, ListenConfig


class StartupError(Exception):
    """A startup check failed; ``str()`` is the whole message, without a level."""


def _fail(call: str, path: str, e: OSError, key: str) -> StartupError:
    return StartupError(f'{call} "{path}" failed ({e.errno}: {e.strerror}) ({key})')


def _where(config: Config, key: str) -> str:
    """``key``, and for a converted nginx.conf the line it came from: ``http.access_log,
    nginx.conf:14``."""
    if not config.origins:
        return key
    from prefork_lb.convert import origin

    line = origin(config.origins, key.split(" ")[0])
    return f"{key}, {line}" if line else key


def check_startup(config: Config, *, probe_binds: bool = False) -> None:
    """Raise StartupError on the first problem (see the module rules)."""
    if not config.http.servers and not config.stream.servers:
        raise StartupError(
            f"{config.path}: no listener: add an [[http.servers]] (or [[stream.servers]]) entry "
            "with a listen address (http.servers)"
        )
    if not os.path.isdir(config.prefix):
        raise StartupError(
            f'prefix "{config.prefix}" is not a directory ({errno.ENOENT}: {os.strerror(errno.ENOENT)}) (-p)'
        )
    files = {path: key for path, key in config.log_files().items() if path not in ("stderr", "stdout")}
    if config.user is not None and os.getuid() == 0:
        from prefork_lb.log import prepare_log_files
        from prefork_lb.worker.privileges import resolve

        uid, gid = resolve(config.user, config.group)
        prepare_log_files(list(files), uid, gid)
    from prefork_lb.log import open_log_file

    for path, key in files.items():
        try:
            os.close(open_log_file(path))
        except OSError as e:
            raise _fail("open()", path, e, _where(config, key)) from None
    pid_dir = os.path.dirname(config.pid_path) or "."
    if not os.path.isdir(pid_dir):
        raise StartupError(
            f'pid file "{config.pid_path}": directory "{pid_dir}" does not exist '
            f"({errno.ENOENT}: {os.strerror(errno.ENOENT)}) ({_where(config, 'pid')})"
        )
    if not os.access(pid_dir, os.W_OK | os.X_OK):
        raise StartupError(
            f'pid file "{config.pid_path}": directory "{pid_dir}" is not writable '
            f"({errno.EACCES}: {os.strerror(errno.EACCES)}) ({_where(config, 'pid')})"
        )
    check_cache_paths(config)
    if probe_binds:
        _probe_binds(config)


def check_cache_paths(config: Config) -> None:
    """Rule 4: every proxy_cache_path directory (and its tmp/) exists, created if missing
    (owned by the worker user when the master runs as root), and is writable."""
    import tempfile

    owner: tuple[int, int] | None = None
    if config.user is not None and os.getuid() == 0:
        from prefork_lb.worker.privileges import resolve

        owner = resolve(config.user, config.group)
    for name, cp in config.http.cache_paths.items():
        key = _where(config, f"http.proxy_cache_paths.{name}.path")
        for path in (cp.path, os.path.join(cp.path, "tmp")):
            if not os.path.isdir(path):
                try:
                    os.makedirs(path, 0o700, exist_ok=True)
                except OSError as e:
                    raise _fail("mkdir()", path, e, key) from None
            if owner is not None and os.stat(path).st_uid != owner[0]:  # nginx chowns its paths too
                try:
                    os.chown(path, *owner)
                except OSError as e:
                    raise _fail("chown()", path, e, key) from None
        try:
            fd, probe = tempfile.mkstemp(dir=os.path.join(cp.path, "tmp"), prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise _fail("open()", os.path.join(cp.path, "tmp", ".probe-*"), e, key) from None


def listen_keys(config: Config) -> list[tuple[ListenConfig, str]]:
    """Every listen entry with its key path (``http.servers[0].listen[1]``)."""
    out = []
    for kind, servers in (("http", config.http.servers), ("stream", config.stream.servers)):
        for s in servers:
            for i, lc in enumerate(s.listen):
                out.append((lc, f"{kind}.servers[{s.index}].listen[{i}]"))
    return out


def _probe_binds(config: Config) -> None:
    held: set[tuple[str, int, bool]] | None = None
    seen: set[tuple[str, str, int]] = set()
    for lc, key in listen_keys(config):
        if lc.key in seen:
            continue
        seen.add(lc.key)
        addr = lc.address
        if addr.family == "unix":
            d = os.path.dirname(addr.host) or "."
            if not os.path.isdir(d):
                raise StartupError(
                    f"bind() to {addr.text} failed ({errno.ENOENT}: {os.strerror(errno.ENOENT)}) "
                    f"({_where(config, key)})"
                )
            continue
        try:
            _probe_one(lc)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                if held is None:
                    held = _held_by_running_master(config)
                host = "*" if addr.host in ("0.0.0.0", "::") else addr.host
                if (host, addr.port, lc.udp) in held or ("*", addr.port, lc.udp) in held:
                    continue
            why = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise StartupError(
                f"bind() to {addr.text} failed ({e.errno}: {why}) ({_where(config, key)})"
            ) from None


def _probe_one(lc: ListenConfig) -> None:
    addr = lc.address
    family = socket.AF_INET6 if addr.family == "inet6" else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM if lc.udp else socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if lc.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr.host, addr.port))


def _held_by_running_master(config: Config) -> set[tuple[str, int, bool]]:
    """(host, port, udp) of the sockets the running master(s) of this config (and pid 1)
    hold; host "*" for a wildcard address. Empty if none runs or can be inspected."""
    import psutil

    from prefork_lb.master.pidfile import read_pidfile

    pids = {1}  # systemd socket activation: pid 1 holds the sockets it will pass us
    for path in (config.pid_path, config.pid_path + ".oldbin"):
        try:
            pids.add(read_pidfile(path))
        except (OSError, ValueError):
            pass
    out: set[tuple[str, int, bool]] = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (OSError, psutil.Error):
            continue
        for c in conns:
            udp = c.type == socket.SOCK_DGRAM
            if not udp and c.status != psutil.CONN_LISTEN:
                continue
            host = c.laddr.ip
            out.add(("*" if host in ("0.0.0.0", "::") else host, c.laddr.port, udp))
    return out
