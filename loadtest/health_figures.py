#!/usr/bin/env python3
"""Active health checks (issue 17): the two figures of the closing note.

    .venv/bin/python loadtest/health_figures.py [--rounds 3] [--interval-ms 1000]

1. Time out of rotation: backends a and b behind prefork-lb (``fails = 2``), clients in a
   loop; b's /healthz turns to 500 at T0. Printed per round: the arrival at b of the
   2nd failing probe (Tf, what makes it unhealthy), and of the last client request
   (Tl), as ``Tl - Tf`` and ``Tl - T0`` (target: Tl - Tf within one interval).
2. Probe traffic: probes b receives per interval over ``--window`` intervals, with 1 and
   with 8 workers (one prober: 1.0 whatever the worker count).

The backend is tests/health_backend.FlipBackend (threads, loopback only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.backends import free_port
from tests.harness import LB, basic_config, request, upstream_block, wait_for
from tests.health_backend import FlipBackend


def conf(port: int, addrs: list[str], workers: int, interval_ms: int) -> str:
    check = f'health_check = {{ interval = "{interval_ms}ms", fails = 2, passes = 2, uri = "/healthz" }}'
    return basic_config(port, upstream_block("backend", addrs), workers=workers, location_extra=check)


def out_of_rotation(interval_ms: int, workers: int) -> tuple[float, float]:
    with FlipBackend("a") as a, FlipBackend("b") as b:
        port = free_port()
        with LB(Path(tempfile.mkdtemp()), conf(port, [a.addr, b.addr], workers, interval_ms), port) as lb:
            stop = threading.Event()

            def clients() -> None:
                while not stop.is_set():
                    request(port, "GET", "/load")

            threads = [threading.Thread(target=clients, daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            wait_for(lambda: b.served_count() > 20, what="b serving")
            first = b.probe_count()
            t0 = time.monotonic()
            b.mode = "fail"
            wait_for(lambda: "is unhealthy" in lb.output(), what="b unhealthy")
            time.sleep(3 * interval_ms / 1000)  # long enough to see any straggler
            stop.set()
            for t in threads:
                t.join(10)
            with b.lock:
                tf = b.probes[first + 1][0]
                tl = max(b.served)
            return tl - tf, tl - t0


def probe_rate(interval_ms: int, workers: int, window: int) -> float:
    with FlipBackend("a") as a:
        port = free_port()
        with LB(Path(tempfile.mkdtemp()), conf(port, [a.addr], workers, interval_ms), port):
            wait_for(lambda: a.probe_count() >= 2, what="probing")
            start = a.probe_count()
            time.sleep(window * interval_ms / 1000)
            return (a.probe_count() - start) / window


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interval-ms", type=int, default=1000)
    ap.add_argument("--window", type=int, default=10, help="intervals counted for the probe rate")
    args = ap.parse_args()
    for workers in (1, 8):
        for r in range(args.rounds):
            after_fails, after_bad = out_of_rotation(args.interval_ms, workers)
            print(
                f"workers={workers} round={r}: last request {after_fails * 1000:.0f} ms after the 2nd "
                f"failing probe, {after_bad * 1000:.0f} ms after /healthz turned bad"
            )
    for workers in (1, 8):
        rate = probe_rate(args.interval_ms, workers, args.window)
        print(f"workers={workers}: {rate:.2f} probes per peer per interval ({args.window} intervals)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
