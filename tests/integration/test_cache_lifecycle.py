"""The content cache across the process lifecycle: a restart (differential: nginx keeps its
HITs, the cold cache reads the files it finds), and prefork-lb's reload and binary upgrade
(USR2, then QUIT to the old master) with several workers: the entries on disk and the shared
index stay usable, so no request after them reaches the upstream."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cache_harness import Rig
from tests.cache_upstream import CacheUpstream
from tests.harness import LB, wait_for
from tests.nginx_conf import NGINX, PID

pytestmark = [pytest.mark.nginx, pytest.mark.skipif(NGINX is None, reason="nginx is not installed")]
LOCATION = "proxy_cache_valid 10m;"


@pytest.fixture
def backend() -> Iterator[CacheUpstream]:
    with CacheUpstream() as b:
        yield b


@pytest.mark.parametrize("target", ["nginx", "prefork-lb"])
def test_restart_keeps_hits(target: str, tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: entries lost on a restart (an index that is only in memory, files not found
    again, or a first request after the start treated as a miss while the loader runs: nginx
    reads the file of a key its cold index does not know)."""
    with Rig(target, tmp_path, backend, LOCATION) as rig:
        assert rig.rows("/r", 2) == [(200, "MISS", 1), (200, "HIT", 1)]
    with Rig(target, tmp_path, backend, LOCATION) as rig:
        assert rig.rows("/r", 3) == [(200, "HIT", 1)] * 3
    assert backend.count("/r") == 1


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_reload_and_binary_upgrade_keep_hits(tmp_path: Path, backend: CacheUpstream) -> None:
    """Catches: the shared index or the entries dropped by a reload (HUP: new workers) or a
    binary upgrade (USR2: a new master, then QUIT to the old one), or one worker of the new
    generation not seeing them: 4 workers, every request after the first is a HIT and the
    upstream sees one request in all."""
    rig = Rig("prefork-lb", tmp_path, backend, LOCATION, workers=4)
    with rig:
        lb = rig.server
        assert isinstance(lb, LB)
        assert rig.ask("/u").row == (200, "MISS", 1)
        rig.wait_stored(1)  # with several workers the entry lands after the answer (nginx too)
        assert rig.ask("/u").row == (200, "HIT", 1)
        before = {w.pid for w in lb.workers()}
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: before.isdisjoint(w.pid for w in lb.workers()), what="the old workers to exit")
        assert rig.rows("/u", 8) == [(200, "HIT", 1)] * 8

        old = lb.master_pid
        pid_path = lb.dir / PID
        os.kill(old, signal.SIGUSR2)

        def new_master() -> int:
            if not (lb.dir / f"{PID}.oldbin").exists() or not pid_path.exists():
                return 0
            pid = int(pid_path.read_text())
            ready = re.search(rf" {pid}#0: \d+ worker process\(es\) ready", lb.output())
            return pid if pid != old and ready else 0

        new = int(wait_for(new_master, what="the new master's workers"))
        try:
            os.kill(old, signal.SIGQUIT)
            assert lb.proc is not None and lb.proc.wait(timeout=20) == 0
            assert rig.rows("/u", 8) == [(200, "HIT", 1)] * 8
        finally:
            os.kill(new, signal.SIGQUIT)
            wait_for(lambda: _gone(new), what="the new master to exit")
    assert backend.count("/u") == 1
