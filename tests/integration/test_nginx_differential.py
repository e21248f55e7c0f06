"""Differential tests: the same upstream config and requests through real nginx and prefork-lb.

nginx (Debian's nginx-light, installed by .ci/run) is the oracle: per request we compare
which backend answered and the logged ``$upstream_addr | $upstream_status`` (which shows
every attempt). Scenarios come from shared/reference/nginx-semantics.md section 11; both
balancers run one worker, so the per-worker round robin state is the whole state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, accepts, request, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]
LOG = "$upstream_addr|$upstream_status"


class Nginx:
    def __init__(
        self, directory: Path, port: int, servers: list[tuple[str, str]], location_extra: str = ""
    ) -> None:
        self.dir = directory
        self.port = port
        directory.mkdir(parents=True, exist_ok=True)
        lines = "\n".join(
            f"        server {addr}{(' ' + params) if params else ''};" for addr, params in servers
        )
        user = "user root;" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log info;
events {{ worker_connections 256; }}
http {{
    log_format diff '{LOG}';
    access_log access.log diff;
    client_body_temp_path tmp-body;
    proxy_temp_path tmp-proxy;
    upstream backend {{
{lines}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 5s;
            {location_extra}
        }}
    }}
}}
""")
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


def _toml(port: int, servers: list[tuple[str, str]], location_extra: str = "") -> str:
    def params(p: str) -> str:
        out = []
        for word in p.split():
            key, _, value = word.partition("=")
            if key in ("backup", "down"):
                out.append(f"{key} = true")
            elif key == "fail_timeout":
                out.append(f'{key} = "{value}"')
            else:
                out.append(f"{key} = {value}")
        return "".join(", " + o for o in out)

    entries = ",\n".join(f'  {{ address = "{a}"{params(p)} }}' for a, p in servers)
    return f"""
workers = 1
error_log = "error.log"
[http]
access_log = "access.log"
[http.log_formats]
diff = '{LOG}'
[http.upstreams.backend]
servers = [
{entries}
]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
log_format = "diff"
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_read_timeout = "5s"
  {location_extra}
"""


@pytest.fixture(scope="module")
def backends() -> Iterator[Backend]:
    with Backend(count=3) as b:
        yield b


def run_both(
    tmp_path: Path,
    servers: list[tuple[str, str]],
    paths: list[str],
    nginx_extra: str = "",
    toml_extra: str = "",
) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[str], list[str]]:
    results = []
    logs = []
    port = free_port()
    with Nginx(tmp_path / "nginx", port, servers, nginx_extra) as ngx:
        results.append([_ask(port, p) for p in paths])
        logs.append(ngx.access_log(len(paths)))
    port = free_port()
    (tmp_path / "lb").mkdir()
    with LB(tmp_path / "lb", _toml(port, servers, toml_extra), port) as lb:
        results.append([_ask(port, p) for p in paths])
        logs.append(lb.access_log(len(paths)))
    return results[0], results[1], logs[0], logs[1]


def _ask(port: int, path: str) -> tuple[int, str]:
    status, headers, _ = request(port, "GET", path)
    return status, headers.get("x-port", "-")


def test_weighted_round_robin(tmp_path: Path, backends: Backend) -> None:
    a, b, c = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(tmp_path, [(a, "weight=5"), (b, ""), (c, "")], ["/"] * 14)
    assert ours == ngx
    assert our_log == ngx_log


def test_weights_3_2_1(tmp_path: Path, backends: Backend) -> None:
    a, b, c = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(tmp_path, [(a, "weight=3"), (b, "weight=2"), (c, "")], ["/"] * 12)
    assert ours == ngx and our_log == ngx_log


def test_dead_server_fallback_and_disable(tmp_path: Path, backends: Backend) -> None:
    dead = f"127.0.0.1:{free_port()}"
    servers = [(backends.addrs[0], ""), (dead, "")]
    ngx, ours, ngx_log, our_log = run_both(tmp_path, servers, ["/"] * 5)
    assert ours == ngx
    assert our_log == ngx_log  # includes "dead, a" / "502, 200" on the second request


def test_backup_after_dead_primaries(tmp_path: Path, backends: Backend) -> None:
    d1, d2 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    servers = [(d1, ""), (d2, ""), (backends.addrs[2], "backup")]
    ngx, ours, ngx_log, our_log = run_both(tmp_path, servers, ["/"] * 4)
    assert ours == ngx and our_log == ngx_log


def test_down_server_is_skipped(tmp_path: Path, backends: Backend) -> None:
    a, b, c = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(tmp_path, [(a, "down"), (b, "weight=2"), (c, "")], ["/"] * 6)
    assert ours == ngx and our_log == ngx_log


def test_status_failure_lowers_effective_weight(tmp_path: Path, backends: Backend) -> None:
    # nginx scenario 6: a w4 max_fails=4, b, c; request 1 gets 502 from a and moves on.
    a, b, c = backends.addrs
    servers = [(a, "weight=4 max_fails=4 fail_timeout=60"), (b, ""), (c, "")]
    paths = [f"/?status=502&statusport={a.split(':')[1]}"] + ["/"] * 13
    ngx, ours, ngx_log, our_log = run_both(
        tmp_path,
        servers,
        paths,
        nginx_extra="proxy_next_upstream error timeout http_502;",
        toml_extra='proxy_next_upstream = ["error", "timeout", "http_502"]',
    )
    assert ours == ngx and our_log == ngx_log


def test_all_down_is_no_live_upstreams(tmp_path: Path, backends: Backend) -> None:
    a, b, _ = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(tmp_path, [(a, "down"), (b, "down")], ["/"] * 2)
    assert ours == ngx == [(502, "-")] * 2
    assert our_log == ngx_log == ["backend|502"] * 2
