"""``prefork-lb [-c FILE] [-p PREFIX] [-t | -T] [-q] [-s reload|stop|quit|reopen] [-v | -V]``;
``prefork-lb top``

Signals (nginx's meanings): reload = HUP (re-read the config, new workers, old ones retire
gracefully), stop = TERM (fast), quit = QUIT (graceful), reopen = USR1 (reopen log files).

Rules (nginx's ``main``):
1. ``-t`` tests the config and every startup check (preflight.check_startup: prefix, log
   files opened for append, pid directory, a bind probe of each address the running master
   does not already hold) and exits 0 or 1; ``-T`` also dumps every file read, includes
   resolved, to stdout, each after a ``# configuration file PATH:`` line; ``-q`` keeps only
   errors. ``-t``/``-T`` win over ``-s``: the signal is not sent (as nginx), a warning says so.
2. ``-v`` / ``-V`` print the version (``-V``: Python, gevent, libev, OpenSSL too) to stdout
   and exit, unless ``-t``/``-T`` is given too (then the test runs as well, as nginx).
3. ``-s`` only needs to find the pid file: it reads the ``pid`` key from the config if the
   file parses as TOML at all, and otherwise falls back to the default, so a broken config
   never blocks ``-s stop`` (unlike ``nginx -s``). A missing pid file is an error saying where
   it looked and why there (the ``pid`` key, the prefix and where the prefix came from).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tomllib

from prefork_lb import __version__
from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import DEFAULT_CONFIG_PATH, load_config
from prefork_lb.config.model import Config

SIGNALS = {"reload": signal.SIGHUP, "stop": signal.SIGTERM, "quit": signal.SIGQUIT, "reopen": signal.SIGUSR1}
DEFAULT_PID = "prefork-lb.pid"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefork-lb",
        description="nginx-style load balancer: a prefork master with gevent workers.",
        epilog="signals: reload=HUP, stop=TERM/INT (fast), quit=QUIT (graceful), reopen=USR1; "
        "`prefork-lb top --url http://127.0.0.1:8081/api/` shows the status API in a terminal",
    )
    p.add_argument(
        "-c",
        dest="config",
        default=os.environ.get("PREFORK_LB_CONF", DEFAULT_CONFIG_PATH),
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument(
        "-p",
        dest="prefix",
        default=None,
        help="prefix for relative paths (default: the configuration file's directory)",
    )
    p.add_argument(
        "-t",
        dest="test",
        action="store_true",
        help="test the configuration and what startup needs (log files, pid directory, addresses), exit",
    )
    p.add_argument("-T", dest="dump", action="store_true", help="as -t, then dump the configuration files")
    p.add_argument("-q", dest="quiet", action="store_true", help="with -t/-T: print only errors")
    p.add_argument(
        "-s",
        dest="signal",
        choices=sorted(SIGNALS),
        help="send a signal to the master process (ignored with -t/-T, as nginx)",
    )
    p.add_argument("-v", "--version", action="version", version=f"prefork-lb/{__version__}")
    p.add_argument(
        "-V", dest="versions", action="store_true", help="show versions of prefork-lb and its stack"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["top"]:  # prefork-lb top [--url URL] [--interval S] [--once]
        from prefork_lb.top import main as top_main

        return top_main(argv[1:])
    if argv[:1] == ["convert"]:  # prefork-lb convert nginx.conf [-o out.toml] [--strict]
        return convert_main(argv[1:])
    args = build_parser().parse_args(argv)
    testing = args.test or args.dump
    if args.versions:
        sys.stdout.write(version_info())
        if not testing:
            return 0
    if testing:
        if args.signal and not args.quiet:
            _err(f"[warn] -s {args.signal} ignored: -t/-T only test the configuration (as nginx)")
        return test_config(args.config, args.prefix, quiet=args.quiet, dump=args.dump)
    if args.signal:
        return send_signal(args.config, args.prefix, args.signal)
    return serve(args.config, args.prefix)


def _err(message: str) -> None:
    sys.stderr.write(f"prefork-lb: {message}\n")


def version_info() -> str:
    """``-V``: the versions that decide behaviour and performance."""
    import platform
    import ssl

    import gevent

    try:
        from gevent.libev import corecext

        libev = str(corecext.get_version())
    except Exception:  # another gevent loop (libuv) or no compiled core
        libev = "not available"
    return (
        f"prefork-lb version: prefork-lb/{__version__}\n"
        f"Python {platform.python_version()} ({platform.python_implementation()}, {sys.executable})\n"
        f"gevent {gevent.__version__}, {libev}\n"
        f"built with {ssl.OPENSSL_VERSION}\n"
    )


def test_config(path: str, prefix: str | None, quiet: bool = False, dump: bool = False) -> int:
    from prefork_lb.preflight import StartupError, check_startup

    where = os.path.abspath(path)
    try:
        config = load_config(path, prefix)
    except ConfigError as e:
        _err(f"[emerg] {e}")
        _err(f"configuration file {where} test failed")
        return 1
    if not quiet:
        for note in config.notes:
            _err(f"[warn] {note}")
        _err(f"the configuration file {where} syntax is ok")
    try:
        check_startup(config, probe_binds=True)
    except StartupError as e:
        _err(f"[emerg] {e}")
        _err(f"configuration file {where} test failed")
        return 1
    if not quiet:
        _err(f"configuration file {where} test is successful")
    if dump and config.converted:  # an nginx.conf: what it became
        out = sys.stdout.buffer
        out.write(f"# configuration file {config.path} (converted to TOML):\n".encode())
        out.write(config.converted.encode())
        out.flush()
    elif dump:
        out = sys.stdout.buffer
        for file in config.files:
            out.write(f"# configuration file {file}:\n".encode())
            with open(file, "rb") as f:
                out.write(f.read())
            out.write(b"\n")
        out.flush()
    return 0


def pid_path_for(path: str, prefix: str | None) -> str:
    """The pid file ``-s`` should read; needs no valid config (see module docstring)."""
    return _pid_lookup(path, prefix)[0]


def _pid_lookup(path: str, prefix: str | None) -> tuple[str, str]:
    """(pid file path, why that path) for ``-s``."""
    base = os.path.abspath(prefix) if prefix else os.path.dirname(os.path.abspath(path))
    pid, source = DEFAULT_PID, f'the default "{DEFAULT_PID}"'
    try:
        value = _pid_key(path)
        if isinstance(value, str) and value:
            pid, source = value, f'pid = "{value}" in {path}'
        else:
            source += f" ({path} sets no pid)"
    except OSError as e:
        source += f" ({path} could not be read: {e.strerror})"
    except tomllib.TOMLDecodeError:
        source += f" ({path} is not valid TOML)"
    except ValueError as e:  # ConvertError
        source += f" ({path} could not be converted: {str(e).splitlines()[0]})"
    if os.path.isabs(pid):
        return pid, source
    origin = f"-p {prefix}" if prefix else "the config file's directory, as no -p was given"
    return os.path.join(base, pid), f"{source}, relative to the prefix {base} ({origin})"


def _pid_key(path: str) -> object:
    """The ``pid`` key of a TOML file, or of what an nginx.conf converts to."""
    from prefork_lb.convert import ConvertError, convert_file, is_nginx_conf

    if is_nginx_conf(path):
        try:
            return tomllib.loads(convert_file(path).toml).get("pid")
        except ConvertError as e:
            raise ValueError(str(e)) from None
    with open(path, "rb") as f:
        return tomllib.load(f).get("pid")


def convert_main(argv: list[str]) -> int:
    """``prefork-lb convert nginx.conf [-o out.toml] [--strict] [-q]``: the TOML on stdout (or
    in ``-o``), the report on stderr, then the result validated as ``-t`` validates it (without
    the startup checks: the files and addresses are those of the machine it will run on)."""
    from prefork_lb.convert import ConvertError, convert_file

    p = argparse.ArgumentParser(
        prog="prefork-lb convert",
        description="Convert an nginx configuration (and its includes) to prefork-lb's TOML.",
        epilog="`prefork-lb -c nginx.conf` converts in memory and serves; -T shows the result",
    )
    p.add_argument("file", help="the nginx configuration file, e.g. /etc/nginx/nginx.conf")
    p.add_argument("-o", dest="output", help="write the TOML here instead of stdout")
    p.add_argument("--strict", action="store_true", help="exit 1 if any directive is unsupported")
    p.add_argument("-q", dest="quiet", action="store_true", help="do not print the report")
    args = p.parse_args(argv)
    try:
        conversion = convert_file(args.file)
    except ConvertError as e:
        for line in str(e).splitlines():
            _err(f"[emerg] {line}")
        return 1
    if not args.quiet:
        for note in conversion.notes:
            sys.stderr.write(f"{note}\n")
    if args.strict and conversion.unsupported:
        _err(f"[emerg] {len(conversion.unsupported)} unsupported directive(s) (--strict); nothing written")
        return 1
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(conversion.toml)
        except OSError as e:
            _err(f'[emerg] open() "{args.output}" failed ({e.errno}: {e.strerror})')
            return 1
    else:
        sys.stdout.write(conversion.toml)
        sys.stdout.flush()
    try:
        load_config(os.path.abspath(args.file))
    except ConfigError as e:
        _err(f"[emerg] {e}")
        _err("the converted configuration does not pass -t: fix the nginx line named above")
        return 1
    return 0


def send_signal(path: str, prefix: str | None, name: str) -> int:
    from prefork_lb.master.pidfile import read_pidfile

    pid_path, why = _pid_lookup(path, prefix)
    try:
        pid = read_pidfile(pid_path)
    except OSError as e:
        _err(f'[error] open() "{pid_path}" failed ({e.errno}: {e.strerror})')
        _err(
            f"[error] looked there because of {why}; is the master running, "
            "and was it started with the same -c and -p?"
        )
        return 1
    except ValueError as e:
        _err(f"[error] {e}")
        return 1
    try:
        os.kill(pid, SIGNALS[name])
    except ProcessLookupError:
        _err(f"[error] kill({pid}, {int(SIGNALS[name])}) failed (3: No such process) (pid file {pid_path})")
        return 1
    except PermissionError:
        _err(f"[error] kill({pid}, {int(SIGNALS[name])}) failed (1: Operation not permitted)")
        return 1
    return 0


def serve(path: str, prefix: str | None) -> int:
    from prefork_lb.log import fallback_stderr, setup_error_log
    from prefork_lb.master.arbiter import Master
    from prefork_lb.master.listeners import BindError

    fallback_stderr()
    from prefork_lb.preflight import StartupError, check_startup

    try:
        config = load_config(path, prefix)
    except ConfigError as e:
        _err(f"[emerg] {e}")
        return 1
    try:
        check_startup(config)  # the same checks as -t (binding follows for real below)
    except StartupError as e:
        _err(f"[emerg] {e}")
        return 1
    try:
        setup_error_log(config.error_log_path, config.error_log_level, also_stderr=not config.daemon)
    except OSError as e:
        _err(f'[emerg] open() "{config.error_log_path}" failed ({e.errno}: {e.strerror})')
        return 1
    log_notes(config)
    from prefork_lb.master.upgrade import INHERIT_ENV

    inherited = os.environ.pop(INHERIT_ENV, None)  # binary upgrade: sockets and zone
    from prefork_lb.zone.zone import ZoneLockUnavailable, ZoneVersionError

    try:
        master = Master(config, path, prefix, inherited)
    except (ZoneVersionError, ZoneLockUnavailable) as e:
        _err(f"[emerg] {e}")
        return 1
    from prefork_lb.master import systemd
    from prefork_lb.master.listeners import wanted_listens

    passed = systemd.listen_fds()
    if passed:  # systemd socket activation: systemd owns these queues across restarts
        wanted = wanted_listens(config)
        master.listeners.adopt(systemd.adopt(passed, wanted), wanted)
    try:
        master.bind()
    except BindError as e:
        _err(f"[emerg] {e}")
        return 1
    if config.daemon and not os.environ.get("NOTIFY_SOCKET"):
        daemonize()  # under systemd (Type=notify) the master must stay the main process
    return master.run()


def log_notes(config: Config) -> None:
    """The conversion report of an nginx.conf, at startup and on reload."""
    from prefork_lb.log import log

    for note in config.notes:
        log.warning("%s", note)


def daemonize() -> None:
    """Classic double fork; the listeners are already bound and survive it."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
