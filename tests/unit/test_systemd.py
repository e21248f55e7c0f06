"""prefork_lb.master.systemd against real sockets (no mocks of the socket layer)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.config.model import Address, ListenConfig
from prefork_lb.master import systemd
from prefork_lb.master.systemd import (
    adopt,
    forget_notify_socket,
    listen_fds,
    monotonic_usec,
    notify,
    socket_key,
)

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "conf" / "prefork-lb.service"
LOGROTATE = ROOT / "conf" / "logrotate" / "prefork-lb"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="sd-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(short_dir / "notify"))
    s.settimeout(2.0)
    yield s
    s.close()


def _listening(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(8)
    return s


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _lc(family: str, host: str, port: int, reuseport: bool = False) -> ListenConfig:
    return ListenConfig(Address(family, host, port), reuseport=reuseport)  # type: ignore[arg-type]


# ---- notify --------------------------------------------------------------------------------------


def test_notify_sends_one_datagram(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    assert notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"
    assert notify("STATUS=generation 2, 4 workers\nMAINPID=42") is True
    assert receiver.recv(4096) == b"STATUS=generation 2, 4 workers\nMAINPID=42"
    assert os.environ["NOTIFY_SOCKET"] == receiver.getsockname()  # kept for later notifications


def test_notify_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"prefork-lb-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1") is True
        assert s.recv(4096) == b"READY=1"


def test_notify_unset_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_notify_unreachable_never_raises(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="prefork_lb.error")
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "missing"))
    assert notify("READY=1") is False
    assert "sd_notify" in caplog.text
    # a socket file nobody receives on any more: ECONNREFUSED
    gone = short_dir / "gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(gone))
    monkeypatch.setenv("NOTIFY_SOCKET", str(gone))
    assert notify("READY=1") is False
    for bad in ("relative/path", "vsock:2:1234", "/" + "x" * 200, "@" + "y" * 200):
        monkeypatch.setenv("NOTIFY_SOCKET", bad)
        assert notify("READY=1") is False


def test_forget_notify_socket(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    forget_notify_socket()
    assert "NOTIFY_SOCKET" not in os.environ
    assert notify("READY=1") is False
    forget_notify_socket()  # idempotent


def test_forked_worker_cannot_notify(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    pid = os.fork()
    if pid == 0:  # a "worker"
        forget_notify_socket()
        os._exit(0 if notify("READY=1") is False else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    receiver.settimeout(0.1)
    with pytest.raises(TimeoutError):
        receiver.recv(4096)
    assert notify("READY=1") is True  # the master still can
    assert receiver.recv(4096) == b"READY=1"


def test_helpers(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.getsockname())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading()
    after = monotonic_usec()
    m = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=([0-9]+)", receiver.recv(4096))
    assert m is not None and before <= int(m.group(1)) <= after
    assert systemd.ready()
    assert receiver.recv(4096) == b"READY=1"
    assert systemd.ready("2 workers")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=2 workers"
    assert systemd.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"
    assert systemd.status("a\nb")
    assert receiver.recv(4096) == b"STATUS=a b"
    assert systemd.mainpid(1234)
    assert receiver.recv(4096) == b"MAINPID=1234"


def test_monotonic_usec_is_clock_monotonic() -> None:
    a = time.monotonic()
    u = monotonic_usec()
    b = time.monotonic()
    assert a * 1e6 - 1 <= u <= b * 1e6 + 1


# ---- listen_fds (in a fresh process, with a real listening socket at fd 3) -------------------------

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from prefork_lb.master.systemd import listen_fds, socket_key
    def _open(fd):
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    fd = int(sys.argv[1])
    if fd != 3:
        os.dup2(fd, 3, inheritable=False)
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid() + int(sys.argv[2]))
    os.environ["LISTEN_FDS"] = sys.argv[3]
    os.environ["LISTEN_FDNAMES"] = "http"
    if sys.argv[3] == "2":  # fd 4: a pipe, which is not a socket
        r, w = os.pipe()
        if r != 4:
            os.dup2(r, 4, inheritable=False)
    socks = listen_fds(unset=sys.argv[4] == "1")
    out = {
        "keys": [socket_key(s) for s in socks],
        "fds": [s.fileno() for s in socks],
        "inheritable": [s.get_inheritable() for s in socks],
        "blocking": [s.getblocking() for s in socks],
        "fd4_open": _open(4),
        "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")},
    }
    print(json.dumps(out))
    """
)


def _run_child(sock: socket.socket, pid_offset: int = 0, count: str = "1", unset: bool = True) -> Any:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(sock.fileno()), str(pid_offset), count, "1" if unset else "0"],
        pass_fds=[sock.fileno()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_listen_fds_adopts_fd_3() -> None:
    with _listening(socket.AF_INET, "127.0.0.1") as s:
        port = s.getsockname()[1]
        out = _run_child(s)
    assert out["keys"] == [["inet", "127.0.0.1", port]]
    assert out["fds"] == [3]
    assert out["inheritable"] == [True]
    assert out["blocking"] == [False]
    assert out["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


def test_listen_fds_closes_fds_that_are_not_sockets() -> None:
    with _listening(socket.AF_INET, "127.0.0.1") as s:
        port = s.getsockname()[1]
        out = _run_child(s, count="2")
    assert out["keys"] == [["inet", "127.0.0.1", port]]
    assert out["fd4_open"] is False


def test_listen_fds_keeps_environment_when_asked() -> None:
    with _listening(socket.AF_INET, "127.0.0.1") as s:
        out = _run_child(s, unset=False)
    assert len(out["keys"]) == 1
    assert out["env"]["LISTEN_FDS"] == "1"
    assert out["env"]["LISTEN_FDNAMES"] == "http"


def test_listen_fds_wrong_pid_is_ignored() -> None:
    with _listening(socket.AF_INET, "127.0.0.1") as s:
        out = _run_child(s, pid_offset=1)
    assert out["keys"] == []
    assert out["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing")
def test_listen_fds_under_systemd_socket_activate(short_dir: Path) -> None:
    """The environment and fd layout as systemd's own tool sets them up."""
    path = str(short_dir / "act.sock")
    code = (
        "import json, os\n"
        "from prefork_lb.master.systemd import listen_fds, socket_key\n"
        "socks = listen_fds()\n"
        "print(json.dumps([[socket_key(s) for s in socks], os.environ.get('LISTEN_FDS')]), flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", path, sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):  # it binds, then waits for the first connection
            assert time.monotonic() < deadline and proc.poll() is None, "socket never appeared"
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out) == [[["unix", path, 0]], None]


def test_listen_fds_in_process_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    # None of these may touch fd 3 (pytest may own it): they all stop before the fds.
    for pid, count in [
        (str(os.getpid() + 1), "1"),
        (str(os.getpid()), "0"),
        (str(os.getpid()), "-2"),
        (str(os.getpid()), "x"),
        ("nope", "1"),
        ("", "1"),
    ]:
        monkeypatch.setenv("LISTEN_PID", pid)
        monkeypatch.setenv("LISTEN_FDS", count)
        assert listen_fds() == []
        assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert listen_fds() == []


# ---- socket_key ----------------------------------------------------------------------------------


def test_socket_key_inet() -> None:
    with _listening(socket.AF_INET, "127.0.0.1") as s:
        assert socket_key(s) == ("inet", "127.0.0.1", s.getsockname()[1])


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_socket_key_inet6() -> None:
    with _listening(socket.AF_INET6, "::1") as s:
        assert socket_key(s) == ("inet6", "::1", s.getsockname()[1])


def test_socket_key_unix(short_dir: Path) -> None:
    path = str(short_dir / "http.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        assert socket_key(s) is None  # bound, not listening
        s.listen(8)
        assert socket_key(s) == ("unix", path, 0)


def test_socket_key_not_a_listener() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        assert socket_key(udp) is None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        assert socket_key(tcp) is None  # bound but never listen()ed
    with _listening(socket.AF_INET, "127.0.0.1") as lst:
        with socket.create_connection(lst.getsockname()) as client:
            conn, _ = lst.accept()
            with conn:
                assert socket_key(client) is None  # connected, not listening
                assert socket_key(conn) is None
    s = _listening(socket.AF_INET, "127.0.0.1")
    s.close()
    assert socket_key(s) is None


# ---- adopt ---------------------------------------------------------------------------------------


def test_adopt_matches_by_key_and_closes_the_rest(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = _listening(socket.AF_INET, "127.0.0.1")
    b = _listening(socket.AF_INET, "127.0.0.1")  # no listen entry for it
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    path = str(short_dir / "u.sock")
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.bind(path)
    u.listen(8)
    port_a = a.getsockname()[1]
    wanted = {
        lc.key: lc
        for lc in (
            _lc("inet", "127.0.0.1", port_a),
            _lc("unix", path, 0),
            _lc("inet", "127.0.0.1", 1),  # wanted but not passed: the master binds it
        )
    }
    with caplog.at_level(logging.WARNING, logger="prefork_lb.error"):
        got = adopt([a, b, udp, u], wanted)
    try:
        assert got == {("inet", "127.0.0.1", port_a): a, ("unix", path, 0): u}
        assert a.fileno() >= 0 and u.fileno() >= 0
        assert b.fileno() == -1 and udp.fileno() == -1  # closed
        assert "no listen entry" in caplog.text and "not a listening stream socket" in caplog.text
    finally:
        for s in (a, b, udp, u):
            s.close()


def test_adopt_duplicates_and_nothing_passed() -> None:
    assert adopt([], {}) == {}
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    a.bind(("127.0.0.1", 0))
    a.listen(8)
    host, port = a.getsockname()
    b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    b.bind((host, port))
    b.listen(8)
    lc = _lc("inet", host, port, reuseport=True)
    try:
        got = adopt([a, b], {lc.key: lc})
        assert got == {lc.key: a}
        assert b.fileno() == -1
    finally:
        a.close()
        b.close()


def test_adopt_slots_keeps_every_reuseport_slot_in_order() -> None:
    """Binary upgrade: the new master keeps all inherited slot sockets (systemd rule 6);
    a plain (not reuseport) address still keeps one."""
    socks = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
        s.listen(8)
        socks.append(s)
    port = socks[0].getsockname()[1]
    try:
        lc = _lc("inet", "127.0.0.1", port, reuseport=True)
        assert systemd.adopt_slots(list(socks), {lc.key: lc}) == {lc.key: socks}
        plain = _lc("inet", "127.0.0.1", port)
        assert systemd.adopt_slots(list(socks), {plain.key: plain}) == {plain.key: socks[:1]}
        assert socks[1].fileno() == -1 and socks[2].fileno() == -1
    finally:
        for s in socks:
            s.close()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_adopt_compares_ip_literals_by_value() -> None:
    s = _listening(socket.AF_INET6, "::1")
    port = s.getsockname()[1]
    lc = _lc("inet6", "0:0:0:0:0:0:0:1", port)  # as the config may spell it
    try:
        assert adopt([s], {lc.key: lc}) == {("inet6", "0:0:0:0:0:0:0:1", port): s}
    finally:
        s.close()


def test_adopt_warns_about_reuseport_without_so_reuseport(caplog: pytest.LogCaptureFixture) -> None:
    s = _listening(socket.AF_INET, "127.0.0.1")
    lc = _lc("inet", "127.0.0.1", s.getsockname()[1], reuseport=True)
    try:
        with caplog.at_level(logging.WARNING, logger="prefork_lb.error"):
            assert adopt([s], {lc.key: lc}) == {lc.key: s}
        assert "ReusePort=yes" in caplog.text
    finally:
        s.close()


def test_wanted_listens_prefers_reuseport() -> None:
    from types import SimpleNamespace

    plain = _lc("inet", "0.0.0.0", 80)
    rp = _lc("inet", "0.0.0.0", 80, reuseport=True)
    other = _lc("unix", "/run/x.sock", 0)
    config = SimpleNamespace(all_listens=lambda: [plain, other, rp])
    from prefork_lb.master.listeners import wanted_listens

    assert wanted_listens(config) == {plain.key: rp, other.key: other}  # type: ignore[arg-type]


# ---- conf files ----------------------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def test_unit_file_settings() -> None:
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["KillSignal"] == ["SIGQUIT"]
    assert s["KillMode"] == ["mixed"]
    assert s["PIDFile"] == ["/run/prefork-lb.pid"]
    # the console script of the venv docs/operations.md "Install" creates
    assert s["ExecStart"] == ["/opt/prefork-lb/bin/prefork-lb -c /etc/prefork-lb/prefork-lb.toml"]
    assert s["ExecStartPre"] == ["/opt/prefork-lb/bin/prefork-lb -t -q -c /etc/prefork-lb/prefork-lb.toml"]
    assert s["ExecReload"] == [
        "/opt/prefork-lb/bin/prefork-lb -t -q -c /etc/prefork-lb/prefork-lb.toml",
        "/opt/prefork-lb/bin/prefork-lb -s reload -c /etc/prefork-lb/prefork-lb.toml",
    ]
    assert s["Restart"] == ["on-failure"]
    assert "User" not in s  # the master must start as root to bind :80


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path: Path) -> None:
    # verify insists that Exec*= binaries exist: point them at a stub, keep everything else.
    stub = tmp_path / "prefork-lb"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "prefork-lb.service"
    unit.write_text(UNIT.read_text().replace("/opt/prefork-lb/bin/prefork-lb", str(stub)))
    cmd = ["systemd-analyze", "verify", "--man=no"]
    helptext = subprocess.run(["systemd-analyze", "--help"], capture_output=True, text=True).stdout
    if "--recursive-errors" in helptext:
        cmd.append("--recursive-errors=no")
    proc = subprocess.run([*cmd, str(unit)], capture_output=True, text=True, timeout=60)
    own = [line for line in (proc.stdout + proc.stderr).splitlines() if unit.name in line]
    assert proc.returncode == 0 and not own, proc.stdout + proc.stderr


def test_logrotate_snippet() -> None:
    text = LOGROTATE.read_text()
    assert text.startswith("#") and "/var/log/prefork-lb/*.log {" in text
    words = {
        line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    }
    for directive in (
        "daily",
        "compress",
        "delaycompress",
        "missingok",
        "notifempty",
        "sharedscripts",
        "nocreate",  # prefork-lb creates the new file (for the worker user), never chowns one
    ):
        assert directive in words
    assert re.search(r"^\s*rotate 14$", text, re.M)
    body = text[text.index("postrotate") : text.index("endscript")]
    assert "prefork-lb -s reopen -c /etc/prefork-lb/prefork-lb.toml" in body
