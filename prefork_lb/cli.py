"""``prefork-lb [-c FILE] [-p PREFIX] [-t] [-s reload|stop|quit|reopen] [-v]``; ``prefork-lb top``

Signals (nginx's meanings): reload = HUP (re-read the config, new workers, old ones retire
gracefully), stop = TERM (fast), quit = QUIT (graceful), reopen = USR1 (reopen log files).

``-s`` only needs to find the pid file: it reads the ``pid`` key from the config if the
file parses as TOML at all, and otherwise falls back to the default, so a broken config
never blocks ``-s stop`` (unlike ``nginx -s``).
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

SIGNALS = {"reload": signal.SIGHUP, "stop": signal.SIGTERM, "quit": signal.SIGQUIT, "reopen": signal.SIGUSR1}
DEFAULT_PID = "prefork-lb.pid"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefork-lb",
        description="nginx-style load balancer: a prefork master with gevent workers.",
        epilog="signals: reload=HUP, stop=TERM (fast), quit=QUIT (graceful), reopen=USR1; "
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
    p.add_argument("-t", dest="test", action="store_true", help="test the configuration and exit")
    p.add_argument("-s", dest="signal", choices=sorted(SIGNALS), help="send a signal to the master process")
    p.add_argument("-v", "--version", action="version", version=f"prefork-lb/{__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["top"]:  # prefork-lb top [--url URL] [--interval S] [--once]
        from prefork_lb.top import main as top_main

        return top_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.signal:
        return send_signal(args.config, args.prefix, args.signal)
    if args.test:
        return test_config(args.config, args.prefix)
    return serve(args.config, args.prefix)


def _err(message: str) -> None:
    sys.stderr.write(f"prefork-lb: {message}\n")


def test_config(path: str, prefix: str | None) -> int:
    try:
        load_config(path, prefix)
    except ConfigError as e:
        _err(f"[emerg] {e}")
        _err(f"configuration file {os.path.abspath(path)} test failed")
        return 1
    _err(f"the configuration file {os.path.abspath(path)} syntax is ok")
    _err(f"configuration file {os.path.abspath(path)} test is successful")
    return 0


def pid_path_for(path: str, prefix: str | None) -> str:
    """The pid file ``-s`` should read; needs no valid config (see module docstring)."""
    base = os.path.abspath(prefix) if prefix else os.path.dirname(os.path.abspath(path))
    pid = DEFAULT_PID
    try:
        with open(path, "rb") as f:
            value = tomllib.load(f).get("pid")
        if isinstance(value, str) and value:
            pid = value
    except (OSError, tomllib.TOMLDecodeError):
        pass
    return pid if os.path.isabs(pid) else os.path.join(base, pid)


def send_signal(path: str, prefix: str | None, name: str) -> int:
    from prefork_lb.master.pidfile import read_pidfile

    pid_path = pid_path_for(path, prefix)
    try:
        pid = read_pidfile(pid_path)
    except FileNotFoundError:
        _err(f'[error] open() "{pid_path}" failed (2: No such file or directory)')
        return 1
    except (OSError, ValueError) as e:
        _err(f"[error] {e}")
        return 1
    try:
        os.kill(pid, SIGNALS[name])
    except ProcessLookupError:
        _err(f"[error] kill({pid}, {int(SIGNALS[name])}) failed (3: No such process)")
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
    try:
        config = load_config(path, prefix)
    except ConfigError as e:
        _err(f"[emerg] {e}")
        return 1
    try:
        setup_error_log(config.error_log_path, config.error_log_level, also_stderr=not config.daemon)
    except OSError as e:
        _err(f'[emerg] open() "{config.error_log_path}" failed ({e.errno}: {e.strerror})')
        return 1
    from prefork_lb.master.arbiter import INHERIT_ENV

    inherited = os.environ.pop(INHERIT_ENV, None)  # binary upgrade: sockets and zone
    master = Master(config, path, prefix, inherited)
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
