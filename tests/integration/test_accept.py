"""The worker's acceptor (worker/acceptor.py) when the process runs out of descriptors."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil

from tests.backends import Backend, free_port
from tests.harness import LB, basic_config, request, upstream_block, wait_for


def test_out_of_descriptors_pauses_accepting_and_recovers(tmp_path: Path) -> None:
    """EMFILE from accept() is logged as nginx words it, at alert and at most once a
    second, and accepting resumes once descriptors are free, instead of a worker spinning
    on a readable listening socket or dying. The worker's limit is lowered under it (as
    `prlimit` does), so its descriptor budget, counted from the start-up limit, is wrong
    and accept() itself fails. Catches: the line was logged at error on every 0.5 s
    pause."""
    port = free_port()
    with Backend() as b:
        conf = basic_config(port, upstream_block("backend", b.addrs), top_extra="worker_rlimit_nofile = 1000")
        with LB(tmp_path, conf, port) as lb:
            (worker,) = lb.workers()
            hard = worker.rlimit(psutil.RLIMIT_NOFILE)[1]
            worker.rlimit(psutil.RLIMIT_NOFILE, (64, hard))
            clients = []
            started = time.monotonic()
            try:
                for _ in range(80):  # more than the worker can hold open
                    clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                failed = "accept() failed (24: Too many open files)"
                wait_for(lambda: lb.output().count(failed) >= 2, what="EMFILE logged twice")
                lines = [x for x in lb.output().splitlines() if failed in x]
                elapsed_s = time.monotonic() - started  # the lines were logged within this
            finally:
                for c in clients:
                    c.close()
            assert all("[alert]" in x for x in lines)
            assert len(lines) <= elapsed_s + 1  # at most once a second (a pause is 0.5 s)
            wait_for(lambda: request(port, "GET", "/", timeout_s=10)[0] == 200, what="serving again")
