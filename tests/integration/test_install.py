"""Install and deploy as docs/operations.md "Install" says, for real: build the wheel, install
it into a fresh venv, and run the shipped systemd unit's and logrotate's command lines (paths
swapped for the test's) against the installed console script."""

from __future__ import annotations

import shlex
import shutil
import signal
import site
import subprocess
import sys
from pathlib import Path

from tests.backends import free_port
from tests.harness import REPO, request, wait_for

UNIT_BIN = "/opt/prefork-lb/bin/prefork-lb"
UNIT_CONF = "/etc/prefork-lb/prefork-lb.toml"


def _run(cmd: list[str], cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)


def _unit_commands(key: str, binary: Path, conf: Path) -> list[list[str]]:
    """Every ``key=`` command line of conf/prefork-lb.service, with the test's paths."""
    out = []
    for line in (REPO / "conf" / "prefork-lb.service").read_text().splitlines():
        if line.startswith(f"{key}="):
            text = line.split("=", 1)[1].replace(UNIT_BIN, str(binary)).replace(UNIT_CONF, str(conf))
            out.append(shlex.split(text))
    assert out, f"no {key}= in the unit"
    return out


def test_wheel_installs_into_a_fresh_venv_and_the_unit_commands_work(tmp_path: Path) -> None:
    """Catches: a build that warns (setuptools' license-table deprecation), a unit that points
    at a path the documented install does not create (/usr/local/bin), a missing -V, and an
    installed package that cannot test, start, reload and reopen (ExecStartPre=, ExecStart=,
    ExecReload=, logrotate's postrotate)."""
    src = tmp_path / "src"  # build from a copy: an in-tree build leaves build/ in the repo
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "prefork_lb", src / "prefork_lb", ignore=shutil.ignore_patterns("__pycache__"))
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", str(src), "-w", str(tmp_path / "dist")], src
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "deprecated" not in (built.stdout + built.stderr).lower(), built.stderr
    wheel = next((tmp_path / "dist").glob("prefork_lb-*.whl"))

    venv = tmp_path / "opt-prefork-lb"  # stands for /opt/prefork-lb
    made = _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    pip = _run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", str(wheel)], tmp_path)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    # Runtime dependencies from this interpreter's site-packages (no network install); a path
    # line in a .pth adds the directory, not the .pth files in it (no editable hook of ours).
    (venv_site,) = venv.glob("lib/python3*/site-packages")
    deps = [p for p in site.getsitepackages() if Path(p, "gevent").is_dir()]
    (venv_site / "deps.pth").write_text("\n".join(deps) + "\n")
    binary = venv / "bin" / "prefork-lb"
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import prefork_lb; print(prefork_lb.__file__)"], tmp_path
    )
    assert where.stdout.startswith(str(venv_site)), where.stdout + where.stderr

    versions = _run([str(binary), "-V"], tmp_path)
    assert versions.returncode == 0 and versions.stdout.startswith("prefork-lb version: prefork-lb/")
    assert "gevent " in versions.stdout and "OpenSSL" in versions.stdout

    port = free_port()
    etc, logs = tmp_path / "etc", tmp_path / "log"
    etc.mkdir()
    logs.mkdir()
    conf = etc / "prefork-lb.toml"
    conf.write_text(
        f'pid = "{tmp_path}/prefork-lb.pid"\nerror_log = "{logs}/error.log"\n'
        f'[http]\naccess_log = "{logs}/access.log"\n'
        f'[[http.servers]]\nlisten = ["127.0.0.1:{port}"]\n'
        '  [[http.servers.locations]]\n  match = "/"\n  return = "200 installed"\n'
    )
    for cmd in _unit_commands("ExecStartPre", binary, conf):
        pre = _run(cmd, tmp_path)
        assert (pre.returncode, pre.stderr) == (0, ""), pre.stderr  # -q: nothing on success
    (start,) = _unit_commands("ExecStart", binary, conf)
    master = subprocess.Popen(start, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        error_log = logs / "error.log"
        wait_for(lambda: error_log.exists() and "worker process(es) ready" in error_log.read_text())
        status, _, body = request(port, "GET", "/")
        assert (status, body) == (200, b"installed")
        for cmd in _unit_commands("ExecReload", binary, conf):
            assert _run(cmd, tmp_path).returncode == 0
        wait_for(lambda: "(SIGHUP) received" in error_log.read_text(), what="the reload")
        (logs / "access.log").rename(logs / "access.log.1")
        postrotate = (REPO / "conf" / "logrotate" / "prefork-lb").read_text()
        reopen = next(line for line in postrotate.splitlines() if "-s reopen" in line).split(">")[0]
        cmd = shlex.split(reopen.replace(UNIT_BIN, str(binary)).replace(UNIT_CONF, str(conf)))
        assert _run(cmd, tmp_path).returncode == 0

        def reopened() -> bool:
            request(port, "GET", "/after-rotate")
            path = logs / "access.log"
            return path.exists() and "/after-rotate" in path.read_text()

        wait_for(reopened, what="the access log to be reopened")
        master.send_signal(signal.SIGQUIT)  # KillSignal=SIGQUIT
        assert master.wait(timeout=30) == 0
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
