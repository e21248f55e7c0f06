"""The worker's acceptor (worker/acceptor.py) when the process runs out of descriptors."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.backends import Backend, free_port
from tests.harness import LB, basic_config, request, upstream_block, wait_for


def test_out_of_descriptors_pauses_accepting_and_recovers(tmp_path: Path) -> None:
    """EMFILE is logged as nginx logs it and accepting resumes once descriptors are free,
    instead of a worker spinning on a readable listening socket or dying."""
    port = free_port()
    with Backend() as b:
        conf = basic_config(port, upstream_block("backend", b.addrs), top_extra="worker_rlimit_nofile = 64")
        with LB(tmp_path, conf, port):
            clients = []
            try:
                for _ in range(80):  # more than the worker can hold open
                    clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                log = tmp_path / "error.log"
                wait_for(
                    lambda: "accept() failed (24: Too many open files)" in log.read_text(),
                    what="EMFILE logged",
                )
            finally:
                for c in clients:
                    c.close()
            wait_for(lambda: request(port, "GET", "/", timeout_s=10)[0] == 200, what="serving again")
