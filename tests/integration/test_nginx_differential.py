"""Differential tests: the same upstream config and requests through real nginx and prefork-lb.

nginx (Debian's nginx-light, installed by .ci/run) is the oracle: per request we compare
which backend answered and the logged ``$upstream_addr | $upstream_status`` (which shows
every attempt). Scenarios come from shared/reference/nginx-semantics.md section 11; both
balancers run one worker, so the per-worker round robin state is the whole state. Most
scenarios are one nginx.conf for both (``one_conf``: prefork-lb runs it with ``-c
nginx.conf``, tests/nginx_conf.py); the others keep a hand-written TOML twin, so the
contract itself stays under the oracle too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.backends import Backend, GatedBackend, free_port
from tests.harness import LB, request, wait_for
from tests.nginx_conf import NGINX, Nginx, lb_from_conf, scenario

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]
LOG = "$upstream_addr|$upstream_status"


def _nginx_conf(port: int, servers: list[tuple[str, str]], location_extra: str = "", method: str = "") -> str:
    lines = "\n".join(f"        server {addr}{(' ' + params) if params else ''};" for addr, params in servers)
    return scenario(f"""
    log_format diff '{LOG}';
    access_log access.log diff;
    upstream backend {{
        {method}
{lines}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 60s;
            {location_extra}
        }}
    }}
""")


def _toml(port: int, servers: list[tuple[str, str]], location_extra: str = "", method: str = "") -> str:
    def params(p: str) -> str:
        out = []
        for word in p.split():
            key, _, value = word.partition("=")
            if key in ("backup", "down"):
                out.append(f"{key} = true")
            elif key in ("fail_timeout", "slow_start"):
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
{method}
servers = [
{entries}
]
[[http.servers]]
listen = ["127.0.0.1:{port}"]
log_format = "diff"
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
  proxy_read_timeout = "60s"
  {location_extra}
"""


@pytest.fixture(scope="module")
def backends() -> Iterator[Backend]:
    with Backend(count=3) as b:
        yield b


Ask = Callable[[int], list[tuple[int, str]]]


def run_both(
    tmp_path: Path,
    servers: list[tuple[str, str]],
    paths: list[str] | Ask,
    nginx_extra: str = "",
    toml_extra: str = "",
    nginx_method: str = "",
    toml_method: str = "",
    one_conf: bool = False,
) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[str], list[str]]:
    """The same requests through nginx, then prefork-lb; ``paths`` may be a custom client.
    ``one_conf``: prefork-lb runs nginx's own nginx.conf (``-c nginx.conf``, converted),
    else the hand-written TOML (``toml_extra``, ``toml_method``)."""
    ask: Ask = paths if callable(paths) else (lambda port: [_ask(port, p) for p in paths])
    results = []
    logs = []
    port = free_port()
    with Nginx(tmp_path / "nginx", port, _nginx_conf(port, servers, nginx_extra, nginx_method)) as ngx:
        results.append(ask(port))
        logs.append(ngx.access_log(len(results[0])))
    port = free_port()
    (tmp_path / "lb").mkdir()
    lb_run = (
        lb_from_conf(tmp_path / "lb", _nginx_conf(port, servers, nginx_extra, nginx_method), port)
        if one_conf
        else LB(tmp_path / "lb", _toml(port, servers, toml_extra, toml_method), port)
    )
    with lb_run as lb:
        results.append(ask(port))
        logs.append(lb.access_log(len(results[1])))
    return results[0], results[1], logs[0], logs[1]


def _ask(port: int, path: str, source: str | None = None) -> tuple[int, str]:
    status, headers, _ = request(port, "GET", path, source=source)
    return status, headers.get("x-port", "-")


def test_weighted_round_robin(tmp_path: Path, backends: Backend) -> None:
    a, b, c = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(
        tmp_path, [(a, "weight=5"), (b, ""), (c, "")], ["/"] * 14, one_conf=True
    )
    assert ours == ngx
    assert our_log == ngx_log


def test_weights_3_2_1(tmp_path: Path, backends: Backend) -> None:
    a, b, c = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(
        tmp_path, [(a, "weight=3"), (b, "weight=2"), (c, "")], ["/"] * 12, one_conf=True
    )
    assert ours == ngx and our_log == ngx_log


def test_dead_server_fallback_and_disable(tmp_path: Path, backends: Backend) -> None:
    dead = f"127.0.0.1:{free_port()}"
    servers = [(backends.addrs[0], ""), (dead, "")]
    ngx, ours, ngx_log, our_log = run_both(tmp_path, servers, ["/"] * 5, one_conf=True)
    assert ours == ngx
    assert our_log == ngx_log  # includes "dead, a" / "502, 200" on the second request


def test_backup_after_dead_primaries(tmp_path: Path, backends: Backend) -> None:
    d1, d2 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    servers = [(d1, ""), (d2, ""), (backends.addrs[2], "backup")]
    ngx, ours, ngx_log, our_log = run_both(tmp_path, servers, ["/"] * 4, one_conf=True)
    assert ours == ngx and our_log == ngx_log


def test_down_server_is_skipped(tmp_path: Path, backends: Backend) -> None:
    a, b, c = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(
        tmp_path, [(a, "down"), (b, "weight=2"), (c, "")], ["/"] * 6, one_conf=True
    )
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
        one_conf=True,
    )
    assert ours == ngx and our_log == ngx_log


def test_all_down_is_no_live_upstreams(tmp_path: Path, backends: Backend) -> None:
    a, b, _ = backends.addrs
    ngx, ours, ngx_log, our_log = run_both(tmp_path, [(a, "down"), (b, "down")], ["/"] * 2)
    assert ours == ngx == [(502, "-")] * 2
    assert our_log == ngx_log == ["backend|502"] * 2


# ---- balancing methods -------------------------------------------------------------------------

KEYS = [f"/?k=k{i}" for i in range(30)]


@pytest.mark.parametrize("consistent", [False, True], ids=["hash", "consistent"])
@pytest.mark.parametrize(
    "params", [("", "", ""), ("weight=3", "", ""), ("", "down", ""), ("", "", "weight=2")]
)
def test_hash_key_maps(
    tmp_path: Path, backends: Backend, consistent: bool, params: tuple[str, str, str]
) -> None:
    servers = list(zip(backends.addrs, params, strict=True))
    ngx, ours, ngx_log, our_log = run_both(
        tmp_path,
        servers,
        KEYS,
        nginx_method=f"hash $arg_k{' consistent' if consistent else ''};",
        one_conf=True,
    )
    assert ours == ngx and our_log == ngx_log


def test_hash_with_empty_key_is_round_robin(tmp_path: Path, backends: Backend) -> None:
    servers = [(a, "") for a in backends.addrs]
    ngx, ours, _, _ = run_both(
        tmp_path,
        servers,
        ["/?k="] * 6,
        nginx_method="hash $arg_k consistent;",
        toml_method='method = "hash"\nhash = "$arg_k"\nconsistent = true',
    )
    assert ours == ngx


@pytest.mark.parametrize("weights", [("", "", ""), ("weight=2", "", "")])
def test_ip_hash_client_maps(tmp_path: Path, backends: Backend, weights: tuple[str, str, str]) -> None:
    # clients bound to 127.0.i.1 and 127.0.i.200: ip_hash keys on the first three octets
    sources = [f"127.0.{i}.{last}" for i in range(15) for last in (1, 200)]

    def ask(port: int) -> list[tuple[int, str]]:
        return [_ask(port, "/", source) for source in sources]

    servers = list(zip(backends.addrs, weights, strict=True))
    ngx, ours, ngx_log, our_log = run_both(tmp_path, servers, ask, nginx_method="ip_hash;", one_conf=True)
    assert ours == ngx and our_log == ngx_log


@pytest.fixture(scope="module")
def gates() -> Iterator[list[GatedBackend]]:
    held = [GatedBackend() for _ in range(3)]
    yield held
    for gate in held:
        gate.close()


def held_requests(count: int, gates: list[GatedBackend]) -> Ask:
    """``count`` concurrent requests held at the gates, each started once the previous one
    reached a gate (or was answered without one, e.g. a 502); the gates open only when all
    are in. Nothing finishes early, so the balancer sees exactly ``count`` connections
    however slow the machine (a ``delay`` could run out while requests were still being
    started, and change the counts both balancers decide on)."""

    def ask(port: int) -> list[tuple[int, str]]:
        for gate in gates:
            gate.shut()
        results: list[tuple[int, str] | None] = [None] * count
        threads = []
        for i in range(count):
            before = sum(g.arrived for g in gates)

            def run(i: int = i) -> None:
                results[i] = _ask(port, f"/held{i}")

            t = threading.Thread(target=run)
            t.start()
            threads.append(t)
            wait_for(
                lambda i=i, before=before: sum(g.arrived for g in gates) > before or results[i] is not None,
                what=f"request {i} to reach a backend",
            )
        assert all(g.answered == 0 for g in gates)
        for gate in gates:
            gate.release()
        for t in threads:
            t.join(30)
        assert all(r is not None for r in results), results
        return [r for r in results if r is not None]

    return ask


def test_least_conn_with_held_requests(tmp_path: Path, gates: list[GatedBackend]) -> None:
    """Catches: least_conn ignoring the connection counts (plain weighted round robin)."""
    a, b, _ = (g.addr for g in gates)
    ngx, ours, _, _ = run_both(
        tmp_path,
        [(a, "weight=3"), (b, "")],
        held_requests(8, gates),
        nginx_method="least_conn;",
        one_conf=True,
    )
    assert ours == ngx


def test_least_conn_ties_use_round_robin(tmp_path: Path, gates: list[GatedBackend]) -> None:
    """Catches: least_conn ignoring the connection counts."""
    ngx, ours, _, _ = run_both(
        tmp_path,
        [(g.addr, "") for g in gates],
        held_requests(7, gates),
        nginx_method="least_conn;",
        toml_method='method = "least_conn"',
    )
    assert ours == ngx


def test_max_conns_and_backup(tmp_path: Path, gates: list[GatedBackend]) -> None:
    """Catches: max_conns off by one (``conns > max_conns``): one request too many on a."""
    a, b, c = (g.addr for g in gates)
    ngx, ours, _, _ = run_both(
        tmp_path,
        [(a, "max_conns=2"), (b, "max_conns=1"), (c, "backup")],
        held_requests(5, gates),
        one_conf=True,
    )
    assert ours == ngx
