"""``prefork-lb top``: the pure formatting, the unreachable API, ``--once`` against a real
prefork-lb (peers up, then one peer unavail), and the curses screen driven in tmux."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork_lb import top
from tests.backends import Backend, free_port
from tests.harness import LB, REPO, accepts, request, status_config, wait_for

# ---------------------------------------------------------------- pure formatting


def peer(pid: int, server: str, state: str, requests: int, **extra: Any) -> dict[str, Any]:
    responses = {"1xx": 0, "2xx": requests, "3xx": 0, "4xx": 0, "5xx": 0, "total": requests}
    responses.update(extra.pop("responses", {}))
    doc = {"id": pid, "server": server, "name": server, "backup": False, "weight": 1, "state": state}
    doc.update({"active": 0, "requests": requests, "responses": responses, "fails": 0, "response_time": 3})
    doc.update(extra)
    return doc


def documents(scale: int) -> dict[str, Any]:
    """A hand-made document set; ``scale`` 1 is the first sample, 2 the second."""
    return {
        "nginx": {
            "version": "0.1.0",
            "generation": 2,
            "load_timestamp": "2026-11-21T10:00:00.000Z",
            "timestamp": "2026-11-21T11:02:03.000Z",
        },
        "connections": {"accepted": 500, "dropped": 0, "active": 7, "idle": 3},
        "requests": {"total": 1000 * scale, "current": 1},
        "upstreams": {
            "backend": {
                "peers": [
                    peer(0, "10.0.0.1:80", "up", 10 * scale, active=2, max_conns=50),
                    peer(1, "10.0.0.2:80", "unavail", 5, responses={"5xx": 2}, fails=3, response_time=12),
                    peer(2, "10.0.0.3:80", "checking", 0, backup=True),
                ],
                "keepalive": 0,
                "zombies": 0,
            }
        },
        "zones": {
            "example.com": {"processing": 1, "requests": 100 * scale, "responses": {"2xx": 99, "4xx": 1}}
        },
        "streams": {
            "db": {
                "peers": [
                    {
                        "id": 0,
                        "server": "10.0.1.1:5432",
                        "state": "up",
                        "active": 1,
                        "connections": 4 * scale,
                        "connect_time": 1,
                        "response_time": 1500,
                        "fails": 0,
                    }
                ]
            }
        },
        "limit_reqs": {
            "perip": {"passed": 90, "delayed": 4, "rejected": 6 * scale, "delayed_dry_run": 0}
            | {"rejected_dry_run": 0}
        },
        "limit_conns": {"addr": {"passed": 12, "rejected": 0, "rejected_dry_run": 3}},
        "workers": [
            {"pid": 101, "generation": 1, "slot": 0, "state": "shutting down", "uptime": 4000, "rss": 1 << 20}
            | {"cpu": 9.0, "connections": 1, "heartbeat_age": 12.0},
            {"pid": 202, "generation": 2, "slot": 0, "state": "running", "uptime": 42.0, "rss": 50 << 20}
            | {"cpu": 1.0 + 0.5 * (scale - 1), "connections": 5, "heartbeat_age": 0.2},
        ],
    }


def cells(text: str, prefix: str) -> list[str]:
    """The columns of the first line starting (after the indent) with ``prefix``."""
    for line in text.splitlines():
        if line.strip().startswith(prefix):
            return line.split()
    raise AssertionError(f"no line starting with {prefix!r} in\n{text}")


def test_render_formats_every_section() -> None:
    first = top.Sample(documents(1), t=100.0, wall=1_790_000_000.0)
    second = top.Sample(documents(2), t=102.0, wall=1_790_000_002.0)
    lines = top.render(second, first)
    text = top.plain(lines)

    head = text.splitlines()[0]
    assert head.startswith("prefork-lb 0.1.0  gen 2  up 1h 2m 3s")
    assert "conns active 7 idle 3 accepted 500" in head
    assert "requests 2,000 (500/s)" in head

    assert "HTTP upstream backend  1/3 up" in text
    # server, state, active, requests, req/s, 2xx, 4xx, 5xx, resp time, fails
    assert " ".join(cells(text, "10.0.0.1:80")) == "10.0.0.1:80 up 2/50 20 5.0 20 0 0 3ms 0"
    assert " ".join(cells(text, "10.0.0.2:80")) == "10.0.0.2:80 unavail 0 5 0.0 5 0 2 12ms 3"
    assert cells(text, "10.0.0.3:80")[:3] == ["10.0.0.3:80", "[backup]", "checking"]
    assert cells(text, "example.com") == ["example.com", "1", "200", "50.0", "99", "1", "-"]
    # limits: zone, limit, passed, delayed, rejected, rej/s, dry-run rejected
    assert cells(text, "perip") == ["perip", "limit_req", "90", "4", "12", "3.0", "0"]
    assert cells(text, "addr") == ["addr", "limit_conn", "12", "-", "0", "0.0", "3"]
    assert "Stream upstream db  1/1 up" in text
    assert cells(text, "10.0.1.1:5432") == ["10.0.1.1:5432", "up", "1", "8", "2.0", "1ms", "1.50s", "0"]
    # workers: newest generation first; pid, gen, slot, state, uptime, RSS MiB, CPU s, CPU %, conns, heartbeat
    assert cells(text, "202") == ["202", "2", "0", "running", "42s", "50.0", "1.5", "25%", "5", "0.2s"]
    assert " ".join(cells(text, "101")) == "101 1 0 shutting down 1h 6m 40s 1.0 9.0 0% 1 12s"
    assert text.index("202 ") < text.index("101 ")

    # Columns line up: each table's heading ends where its numbers end.
    heading = next(line for line in text.splitlines() if "Req/s" in line and "Server" in line)
    row = next(line for line in text.splitlines() if "10.0.0.1:80" in line)
    assert heading.index("Req/s") + len("Req/s") == row.index(" 5.0 ") + len(" 5.0")

    # Styles for the curses colours: green up, red unavail/down, yellow otherwise.
    styles = {text.strip(): style for line in lines for text, style in line if text.strip()}
    assert styles["up"] == "up" and styles["running"] == "up"
    assert styles["unavail"] == "bad"
    assert styles["checking"] == "warn" and styles["shutting down"] == "warn"
    assert styles["12s"] == "bad"  # the heartbeat of a worker that stopped beating
    assert styles["5.0"] == "" and styles["Workers"] == "title"


def test_render_without_rates_or_documents() -> None:
    text = top.plain(top.render(top.Sample(documents(1), t=1.0, wall=0.0)))
    assert cells(text, "10.0.0.1:80")[4] == "-"  # req/s needs two samples
    assert "(-/s)" in text.splitlines()[0]
    # A counter that went backwards (a reload, a restart) has no rate either.
    backwards = top.plain(top.render(top.Sample(documents(1), 2.0, 0.0), top.Sample(documents(2), 1.0, 0.0)))
    assert cells(backwards, "10.0.0.1:80")[4] == "-" and cells(backwards, "202")[7] == "-"
    assert cells(backwards, "10.0.0.2:80")[4] == "0.0"  # unchanged: a rate of zero
    empty = top.plain(top.render(top.Sample({}, t=0.0, wall=0.0)))
    assert empty.startswith("prefork-lb ?") and "Workers" in empty
    assert "limits" not in empty  # no zone, no table
    assert top.duration(3 * 86400 + 7200 + 5) == "3d 2h 0m" and top.ms(0.5) == "0.5ms"


def test_unreachable_api_is_one_clear_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/"
    assert top.main(["--once", "--url", url, "--interval", "0.1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"prefork-lb top: cannot reach the status API at {url}: ")
    assert "refused" in err.lower()
    with pytest.raises(SystemExit):
        top.main(["--once", "--interval", "0"])


# ---------------------------------------------------------------- against a real prefork-lb


def lb_config(port: int, api_port: int, backends: list[str]) -> str:
    return status_config(port, api_port, backends)


class Running:
    def __init__(self, port: int, api_port: int, backends: list[Backend]) -> None:
        self.port, self.api_port, self.backends = port, api_port, backends
        self.url = f"http://127.0.0.1:{api_port}/api/"
        self.addrs = [b.addrs[0] for b in backends]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        port, api_port = free_port(), free_port()
        with LB(tmp_path, lb_config(port, api_port, [a.addrs[0], b.addrs[0]]), port):
            wait_for(lambda: accepts(api_port), what="the API server")
            for _ in range(6):
                assert request(port, "GET", "/")[0] == 200
            yield Running(port, api_port, [a, b])


def top_once(url: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "prefork_lb.top", "--once", "--url", url, "--interval", "0.3"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def api_peers(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(url + "9/http/upstreams/backend", timeout=5) as resp:
        return {p["server"]: p for p in json.load(resp)["peers"]}


def peer_state(url: str, server: str) -> str:
    return str(api_peers(url)[server]["state"])


def test_once_shows_peers_up_then_unavail(running: Running) -> None:
    out = top_once(running.url)
    assert "HTTP upstream backend  2/2 up" in out
    for addr in running.addrs:
        row = cells(out, addr)
        assert row[1] == "up", out
        assert int(row[3]) > 0, out  # requests
        assert int(row[5]) > 0, out  # 2xx
    assert "Workers" in out and out.count("running") == 2

    dead = running.addrs[1]
    running.backends[1].stop()

    def marked_unavail() -> bool:
        assert request(running.port, "GET", "/")[0] == 200  # retried on the live peer
        return peer_state(running.url, dead) == "unavail"

    wait_for(marked_unavail, what=f"{dead} to be unavail")
    out = top_once(running.url)
    assert "HTTP upstream backend  1/2 up" in out
    assert cells(out, dead)[1] == "unavail"
    assert int(cells(out, dead)[-1]) >= 1  # fails
    assert cells(out, running.addrs[0])[1] == "up"
    # An already versioned URL is used as it is.
    assert cells(top_once(running.url + "8/"), dead)[1] == "unavail"


class Tmux:
    """A private tmux server (its own socket, no user config) running ``top`` in a shell."""

    def __init__(self, socket: Path) -> None:
        self.cmd = ["tmux", "-S", str(socket), "-f", "/dev/null"]

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [*self.cmd, *args], capture_output=True, text=True, timeout=10, check=True, env=env
        )
        return done.stdout

    def start_top(self, url: str, width: int = 120, height: int = 40) -> None:
        top_cmd = f"{shlex.quote(sys.executable)} -m prefork_lb.top --url {url} --interval 0.3"
        # Stale LINES/COLUMNS in the environment (readline exports them, for one) must not pin the size.
        env = os.environ | {"LINES": "24", "COLUMNS": "80"}
        size = ["-x", str(width), "-y", str(height)]
        shell = f"{top_cmd}; echo top-exited-$?; sleep 60"
        self.run("new-session", "-d", "-s", "top", *size, "-c", str(REPO), shell, env=env)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def wait_screen(self, *needles: str, what: str = "the top screen") -> str:
        def showing() -> str | None:
            screen = self.screen()
            return screen if all(n in screen for n in needles) else None

        return str(wait_for(showing, what=f"{what}: {needles}"))


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    directory = tempfile.mkdtemp(prefix="top-tmux-")  # short: a socket path is at most 107 bytes
    session = Tmux(Path(directory) / "socket")
    try:
        yield session
    finally:
        subprocess.run([*session.cmd, "kill-server"], capture_output=True, timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def test_curses_screen_in_tmux(running: Running, tmux: Tmux) -> None:
    """The live screen: peers, rates from the second sample, the figures following new
    traffic, a redraw on resize, q quits.

    Catches: a loop that stops sampling after the first two samples (rates would show,
    but the request counts would stay at their first figures)."""
    tmux.start_top(running.url)
    screen = tmux.wait_screen(*running.addrs, "Workers", "q quit")
    for addr in running.addrs:
        assert cells(screen, addr)[1] == "up", screen
    # Rates appear from the second sample on.
    wait_for(lambda: cells(tmux.screen(), running.addrs[0])[4] != "-", what="a req/s figure")
    # New traffic shows up: each peer's requests column reaches the API's figure.
    for _ in range(4):
        assert request(running.port, "GET", "/")[0] == 200
    want = {addr: str(p["requests"]) for addr, p in api_peers(running.url).items()}
    assert want == {addr: "5" for addr in running.addrs}  # 6 + 4 requests, round robin
    wait_for(
        lambda: all(cells(tmux.screen(), addr)[3] == want[addr] for addr in running.addrs),
        what=f"the screen to show the request counts {want}",
    )

    tmux.run("resize-window", "-t", "top", "-x", "60", "-y", "12")
    small = tmux.wait_screen(running.addrs[0], what="the redrawn screen")
    assert all(len(line) <= 60 for line in small.splitlines())
    wait_for(lambda: "q quit" in (tmux.screen().splitlines() or [""])[-1], what="the footer on the last row")

    tmux.run("send-keys", "-t", "top", "q")
    tmux.wait_screen("top-exited-0", what="top to quit on q")


def test_curses_unreachable_api_retries(tmux: Tmux) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/"
    tmux.start_top(url, width=160, height=10)
    tmux.wait_screen(f"cannot reach the status API at {url}", "retrying every 0.3s", "q quit")
    assert "top-exited" not in tmux.screen()  # still running, still retrying
    tmux.run("send-keys", "-t", "top", "q")
    tmux.wait_screen("top-exited-0", what="top to quit on q")
