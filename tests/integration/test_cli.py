"""The command line as an operator uses it (issue 12): ``-t`` runs every startup check, boot
failures name the path and the key, ``-t`` wins over ``-s``, ``-T``/``-q``/``-V``, ``-s`` says
where it looked for the pid file, and log files are never followed through a symlink."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import free_port
from tests.harness import LB, REPO, basic_config, request, run_cli, upstream_block, wait_for

ROOT = os.geteuid() == 0
DEAD = upstream_block("backend", ["127.0.0.1:1"])  # never contacted: these tests do not proxy


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the worker user can reach (pytest's tmp_path sits in a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="prefork-lb-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _conf(tmp_path: Path, port: int, top_extra: str = "", server_extra: str = "") -> Path:
    conf = tmp_path / "prefork-lb.toml"
    conf.write_text(basic_config(port, DEAD, top_extra=top_extra, server_extra=server_extra))
    return conf


def _start(conf: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Start a master that is expected to refuse to start (it exits at once)."""
    return subprocess.run(
        [sys.executable, "-m", "prefork_lb", "-c", str(conf), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "access_log",
            'open() "{missing}/access.log" failed (2: No such file or directory) '
            "(http.servers[0].access_log)",
        ),
        ("error_log", 'open() "{missing}/error.log" failed (2: No such file or directory) (error_log)'),
        (
            "pid",
            'pid file "{missing}/lb.pid": directory "{missing}" does not exist '
            "(2: No such file or directory) (pid)",
        ),
        ("prefix", 'prefix "{missing}" is not a directory (2: No such file or directory) (-p)'),
    ],
)
def test_t_fails_where_startup_fails_and_both_name_path_and_key(
    tmp_path: Path, case: str, expected: str
) -> None:
    """Catches `-t` saying "successful" for a config whose start then fails (log or pid file in
    a missing directory, a missing -p prefix), and boot errors that name neither path nor key."""
    missing = tmp_path / "no-such-dir"
    port = free_port()
    top, server, extra = "", "", []
    if case == "access_log":
        server = f'access_log = "{missing}/access.log"'
    elif case == "error_log":
        top = f'error_log = "{missing}/error.log"'
    elif case == "pid":
        top = f'pid = "{missing}/lb.pid"'
    else:
        extra = ["-p", str(missing)]
    conf = tmp_path / "lb.toml"
    text = basic_config(port, DEAD, server_extra=server)
    if top:  # basic_config sets error_log; the key may appear once
        text = text.replace(
            'error_log = "error.log"', top if case == "error_log" else f'error_log = "error.log"\n{top}'
        )
    conf.write_text(text)
    line = f"prefork-lb: [emerg] {expected.format(missing=missing)}"
    tested = run_cli("-t", "-c", str(conf), *extra)
    assert tested.returncode == 1, tested.stderr
    assert line in tested.stderr.splitlines()
    assert tested.stderr.splitlines()[-1] == f"prefork-lb: configuration file {conf} test failed"
    started = _start(conf, *extra)
    assert started.returncode == 1
    assert line in started.stderr.splitlines()
    assert not missing.exists()


def test_a_config_without_any_listener_fails_t_and_startup(tmp_path: Path) -> None:
    """Catches a config with no server at all passing -t and starting (it serves nothing)."""
    conf = tmp_path / "lb.toml"
    conf.write_text('[http.upstreams.backend]\nservers = [{ address = "127.0.0.1:9001" }]\n')
    line = (
        f"prefork-lb: [emerg] {conf}: no listener: add an [[http.servers]] (or [[stream.servers]]) "
        "entry with a listen address (http.servers)"
    )
    tested = run_cli("-t", "-c", str(conf))
    assert tested.returncode == 1 and line in tested.stderr.splitlines()
    started = _start(conf)
    assert started.returncode == 1 and line in started.stderr.splitlines()


def test_t_probes_binds_but_not_the_running_masters_own(tmp_path: Path) -> None:
    """Catches `-t` passing while another process holds a listen address (startup then fails
    with EADDRINUSE), without turning `-t` on a live server into a false alarm."""
    port = free_port()
    conf = _conf(tmp_path, port)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        tested = run_cli("-t", "-c", str(conf))
    assert tested.returncode == 1
    assert (
        f"prefork-lb: [emerg] bind() to 127.0.0.1:{port} failed (98: address already in use) "
        "(http.servers[0].listen[0])"
    ) in tested.stderr.splitlines()
    with LB(tmp_path, conf.read_text(), port) as lb:
        tested = run_cli("-t", "-c", str(lb.conf))
        assert tested.returncode == 0, tested.stderr
        assert request(port, "GET", "/healthz")[0] == 502  # still serving (dead upstream)


def test_t_with_s_tests_and_never_signals(tmp_path: Path) -> None:
    """Catches `-t -s reload` silently reloading the running master (-s used to win over -t;
    nginx tests and exits without signalling)."""
    port = free_port()
    with LB(tmp_path, basic_config(port, DEAD), port) as lb:
        workers = {w.pid for w in lb.workers()}
        tested = run_cli("-t", "-s", "reload", "-c", str(lb.conf))
        assert tested.returncode == 0
        assert "prefork-lb: [warn] -s reload ignored: -t/-T only test the configuration (as nginx)" in (
            tested.stderr
        )
        # A later USR1 is logged after any HUP sent before it (pending signals are delivered in
        # signal-number order, HUP=1 before USR1=10), so its line is the barrier to wait on.
        assert lb.signal("reopen").returncode == 0
        wait_for(lambda: "(SIGUSR1) received" in lb.output(), what="the reopen")
        assert "SIGHUP" not in lb.output()
        assert {w.pid for w in lb.workers()} == workers


def test_T_dumps_every_file_read(tmp_path: Path) -> None:
    """Catches a missing -T (nginx's test-and-dump, includes resolved)."""
    port = free_port()
    (tmp_path / "conf.d").mkdir()
    extra = tmp_path / "conf.d" / "extra.toml"
    extra.write_text("worker_connections = 512\n")
    conf = _conf(tmp_path, port, top_extra='include = ["conf.d/*.toml"]')
    dumped = run_cli("-T", "-c", str(conf))
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == (
        f"# configuration file {conf}:\n{conf.read_text()}\n"
        f"# configuration file {extra}:\n{extra.read_text()}\n"
    )
    assert "test is successful" in dumped.stderr


def test_q_keeps_only_errors(tmp_path: Path) -> None:
    """Catches a missing -q (quiet -t for scripts and ExecStartPre)."""
    port = free_port()
    conf = _conf(tmp_path, port)
    quiet = run_cli("-t", "-q", "-c", str(conf))
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    conf.write_text(conf.read_text().replace("workers = 1", "workers = 0"))
    failed = run_cli("-t", "-q", "-c", str(conf))
    assert failed.returncode == 1
    assert [line.split(":")[1].strip() for line in failed.stderr.splitlines()] == [
        "[emerg] " + str(conf),
        "configuration file " + str(conf) + " test failed",
    ]


def test_V_names_the_stack() -> None:
    """Catches a missing -V (version of prefork-lb, Python, gevent, libev and OpenSSL)."""
    shown = run_cli("-V")
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("prefork-lb version: prefork-lb/")
    assert lines[1].startswith("Python 3.")
    assert lines[2].startswith("gevent ") and "libev-" in lines[2]
    assert lines[3].startswith("built with OpenSSL ")


def test_s_without_a_pid_file_says_where_it_looked_and_why(tmp_path: Path) -> None:
    """Catches the bare 'open() failed' of `-s reload -c conf/prefork-lb.toml` for the demo
    (whose pid file is in .run/): the error must give the pid key, the prefix and its origin."""
    conf = tmp_path / "lb.toml"
    conf.write_text('pid = "lb.pid"\n')
    result = run_cli("-s", "reload", "-c", str(conf))
    assert result.returncode == 1
    assert f'open() "{tmp_path}/lb.pid" failed (2: No such file or directory)' in result.stderr
    assert (
        f'looked there because of pid = "lb.pid" in {conf}, relative to the prefix {tmp_path} '
        "(the config file's directory, as no -p was given)"
    ) in result.stderr
    other = tmp_path / "run"
    result = run_cli("-s", "reload", "-c", str(conf), "-p", str(other))
    assert f'open() "{other}/lb.pid" failed' in result.stderr and f"(-p {other})" in result.stderr


@pytest.mark.skipif(not ROOT, reason="the chown to the worker user happens only as root")
def test_a_symlinked_log_is_refused_at_start_and_never_chowned(tmp_path: Path) -> None:
    """Catches the master following a symlink planted as a log file and chowning its target
    (any root file) to the worker user, and workers appending to it as root."""
    tmp_path.chmod(0o755)
    target = tmp_path / "shadow"
    target.write_text("root only\n")
    target.chmod(0o600)
    (tmp_path / "access.log").symlink_to(target)
    conf = _conf(tmp_path, free_port(), top_extra='user = "nobody"')
    line = (
        f'prefork-lb: [emerg] open() "{tmp_path}/access.log" failed ({errno.ELOOP}: a symbolic link, '
        "refused) (http.access_log)"
    )
    tested = run_cli("-t", "-c", str(conf))
    assert tested.returncode == 1 and line in tested.stderr.splitlines()
    started = _start(conf)
    assert started.returncode == 1 and line in started.stderr.splitlines()
    assert (target.stat().st_uid, target.stat().st_mode & 0o777, target.read_text()) == (
        0,
        0o600,
        "root only\n",
    )


@pytest.mark.skipif(not ROOT, reason="the chown to the worker user happens only as root")
def test_a_symlink_planted_before_usr1_is_never_chowned(open_dir: Path) -> None:
    """Catches USR1 (logrotate) chowning the target of a symlink the worker user planted in
    its log directory after the start (the master re-prepares log files as root on USR1)."""
    nobody = pwd.getpwnam("nobody")
    target = open_dir / "shadow"
    target.write_text("root only\n")
    target.chmod(0o600)
    port = free_port()
    with LB(open_dir, basic_config(port, DEAD, top_extra='user = "nobody"'), port) as lb:
        log = open_dir / "access.log"
        assert log.stat().st_uid == nobody.pw_uid  # created by the master for the worker user
        log.rename(open_dir / "access.log.1")
        log.symlink_to(target)
        assert lb.signal("reopen").returncode == 0
        refused = f'access log "{log}" failed ({errno.ELOOP}: a symbolic link, refused)'
        wait_for(  # either outcome ends the wait: the refusal, or the target given away
            lambda: refused in lb.output() or target.stat().st_uid != 0,
            what="the worker to refuse the symlink",
        )
        assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (0, 0o600)
        assert refused in lb.output()
        assert target.read_text() == "root only\n"
        assert log.is_symlink()
