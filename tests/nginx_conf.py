"""One nginx.conf for both servers: real nginx as the oracle, prefork-lb with ``-c nginx.conf``.

A differential scenario is written once, in nginx syntax (``scenario``): ``Nginx`` runs it
with the nginx binary (``-p`` its directory), ``lb_from_conf`` runs the same text through
prefork-lb's converter (``-c nginx.conf``: converted in memory, relative paths against the
file's directory). ``run_conf_both`` does both in turn and returns what the client saw and
what each access log says, for the test to compare.

The preamble is what both need: one worker (the per-worker balancer state is the whole
state), nginx's temp paths inside the directory, ``user root`` when the tests run as root
(nginx's workers would drop to nobody), the pid file ``run.pid`` and ``error.log`` (the LB
harness reads its readiness from there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.backends import free_port
from tests.harness import LB, accepts, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
PID = "run.pid"


def scenario(http: str, main: str = "") -> str:
    """A whole nginx.conf: the shared preamble, ``main`` (e.g. a stream block) and ``http``."""
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
daemon off;
pid {PID};
error_log error.log info;
events {{ worker_connections 256; }}
{main}
http {{
    client_body_temp_path tmp-body;
    proxy_temp_path tmp-proxy;
{http}
}}
"""


class Nginx:
    """The nginx binary on ``conf`` (nginx syntax), ``-p`` its directory."""

    def __init__(self, directory: Path, port: int, conf: str) -> None:
        self.dir = directory
        self.port = port
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "nginx.conf").write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        assert NGINX is not None
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: accepts(self.port), what="nginx to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def access_log(self, lines: int) -> list[str]:
        path = self.dir / "access.log"
        return list(
            wait_for(
                lambda: (
                    path.exists()
                    and len(path.read_text().splitlines()) >= lines
                    and path.read_text().splitlines()
                ),
                what="nginx access log",
            )
        )


def lb_from_conf(directory: Path, conf: str, port: int) -> LB:
    """prefork-lb on the same nginx.conf text (not started)."""
    directory.mkdir(parents=True, exist_ok=True)
    return LB(directory, conf, port, conf_name="nginx.conf", pid_name=PID)


Result = tuple[list[tuple[int, str]], list[str]]  # (per request: status, backend), access log


def run_conf_both(
    tmp_path: Path, conf: Callable[[int], str], ask: Callable[[int], list[tuple[int, str]]]
) -> tuple[Result, Result]:
    """``conf(port)`` through nginx, then through prefork-lb; ``ask(port)`` is the client.
    Returns (nginx's result, prefork-lb's result)."""
    port = free_port()
    with Nginx(tmp_path / "nginx", port, conf(port)) as ngx:
        ngx_answers = ask(port)
        ngx_log = ngx.access_log(len(ngx_answers))
    port = free_port()
    with lb_from_conf(tmp_path / "lb", conf(port), port) as lb:
        our_answers = ask(port)
        our_log = lb.access_log(len(our_answers))
    return (ngx_answers, ngx_log), (our_answers, our_log)
