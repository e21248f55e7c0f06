"""CLI and process lifecycle against the real master: -t, -s, signals, respawn, reload.

Each lifecycle test names in its docstring the mutation of the code it was seen to catch
(the behaviour broken on purpose once, the test run and seen to fail, the code restored).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import psutil

from tests.backends import Backend, free_port
from tests.harness import LB, accepts, basic_config, refused, request, run_cli, upstream_block, wait_for


def test_t_accepts_the_demo_config(tmp_path: Path) -> None:
    """Mutation caught: ``-t`` not printing nginx's "test is successful"."""
    # -p: -t opens the log files (as startup does), which must not land in conf/
    result = run_cli("-t", "-c", "conf/prefork-lb.toml", "-p", str(tmp_path))
    assert result.returncode == 0
    assert "test is successful" in result.stderr


def test_t_names_file_and_key_path(tmp_path: Path) -> None:
    """Mutation caught: ConfigError leaving the file name out of its message."""
    conf = tmp_path / "bad.toml"
    conf.write_text(
        "[http.upstreams.backend]\n"
        'servers = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002", weight = 0 }]\n'
    )
    result = run_cli("-t", "-c", str(conf))
    assert result.returncode == 1
    assert f"{conf}: http.upstreams.backend.servers[1].weight: must be a positive integer" in result.stderr
    assert "test failed" in result.stderr


def test_t_suggests_the_key_meant(tmp_path: Path) -> None:
    """Mutation caught: ``did_you_mean`` finding no close match."""
    conf = tmp_path / "typo.toml"
    conf.write_text("wokers = 2\n")
    result = run_cli("-t", "-c", str(conf))
    assert result.returncode == 1 and 'wokers: unknown key (did you mean "workers"?)' in result.stderr


def test_version() -> None:
    """Mutation caught: ``--version`` not in nginx's ``name/version`` form."""
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("prefork-lb/")


def test_signal_without_a_running_master_is_a_clear_error(tmp_path: Path) -> None:
    """Mutation caught: the error not naming the pid file it looked for."""
    conf = tmp_path / "x.toml"
    conf.write_text("this is not toml [[[")
    result = run_cli("-c", str(conf), "-s", "stop")
    assert result.returncode == 1 and "prefork-lb.pid" in result.stderr


def test_reload_switches_upstreams_and_retires_old_workers(tmp_path: Path) -> None:
    """Mutations caught: the reload not sending QUIT to the old generation (old workers
    stay); new workers spawned with the old config (not ready: the reload is aborted and
    the old workers are never replaced)."""
    port = free_port()
    with Backend(count=2) as b:
        a_addr, b_addr = b.addrs
        with LB(tmp_path, basic_config(port, upstream_block("backend", [a_addr]), workers=2), port) as lb:
            assert request(port, "GET", "/")[1]["x-port"] == str(b.ports[0])
            old = {w.pid for w in lb.workers()}
            assert len(old) == 2
            lb.conf.write_text(basic_config(port, upstream_block("backend", [b_addr]), workers=2))
            assert lb.signal("reload").returncode == 0
            wait_for(
                lambda: old.isdisjoint(w.pid for w in lb.workers()) and len(lb.workers()) == 2,
                what="old workers to be replaced",
            )
            assert {request(port, "GET", "/")[1]["x-port"] for _ in range(4)} == {str(b.ports[1])}


def test_reload_with_a_broken_config_keeps_serving(tmp_path: Path) -> None:
    """Mutation caught: a config error in ``reload`` stopping the server (``_fast_stop``)
    instead of keeping the previous configuration."""
    port = free_port()
    with Backend(count=1) as b:
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs)), port) as lb:
            before = {w.pid for w in lb.workers()}
            lb.conf.write_text(lb.conf.read_text() + "\nbogus_key = 1\n")
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: "reload aborted" in lb.output(), what="reload error in the error log")
            assert "bogus_key: unknown key" in lb.output()
            assert request(port, "GET", "/")[0] == 200
            assert {w.pid for w in lb.workers()} == before
            # and -s still works although the config is broken (nginx cannot do this)
            assert lb.signal("quit").returncode == 0
            assert lb.proc is not None
            assert lb.proc.wait(timeout=15) == 0


def test_reload_adds_and_removes_listen_addresses(tmp_path: Path) -> None:
    """The removed address is *refused* (ECONNREFUSED), not merely "not accepting".

    This test used to wait for ``not accepts(port)``, which passed only because its own
    probes filled the 511-entry backlog of the socket the new workers had inherited
    (issue 12, defect 1; it still passed with the first mutation below). Mutations
    caught: ``enter_child`` not closing inherited descriptors (the new workers keep the
    old socket); ``_close_retired_listeners`` never closing (the master keeps it)."""
    port, port2 = free_port(), free_port()
    with Backend(count=1) as b:
        cfg = basic_config(port, upstream_block("backend", b.addrs))
        with LB(tmp_path, cfg, port) as lb:
            lb.conf.write_text(
                cfg.replace(f'listen = ["127.0.0.1:{port}"]', f'listen = ["127.0.0.1:{port2}"]')
            )
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: accepts(port2), what="new listener")
            assert request(port2, "GET", "/")[0] == 200
            wait_for(lambda: refused(port), what="the old address to be refused")


def test_killed_worker_is_respawned(tmp_path: Path) -> None:
    """Mutation caught: ``_reap`` not scheduling a respawn (``respawn_at``)."""
    port = free_port()
    with Backend(count=1) as b:
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs), workers=2), port) as lb:
            victim = lb.workers()[0]
            victim.send_signal(signal.SIGKILL)
            wait_for(
                lambda: len(lb.workers()) == 2 and victim.pid not in {w.pid for w in lb.workers()},
                what="respawned worker",
            )
            assert all(request(port, "GET", "/")[0] == 200 for _ in range(4))
            assert f"worker process {victim.pid} exited on signal 9" in lb.output()


def test_quit_is_graceful_and_finishes_in_flight_requests(tmp_path: Path) -> None:
    """Mutation caught: ``handle_quit`` doing a fast stop (the in-flight request is cut)."""
    port = free_port()
    with Backend(count=1) as b:
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs)), port) as lb:
            result: list[int] = []
            t = threading.Thread(target=lambda: result.append(request(port, "GET", "/?delay=700")[0]))
            t.start()
            wait_for(lambda: b.stats()["open"] >= 1, what="request in flight")
            assert lb.signal("quit").returncode == 0
            t.join(10)
            assert result == [200]
            assert lb.proc is not None and lb.proc.wait(timeout=15) == 0
            assert not lb.pid_path.exists()


def test_stop_is_fast(tmp_path: Path) -> None:
    """``-s stop`` with a request in flight (the backend would answer after 60 s): the
    client's connection is cut without a response and the master and its workers exit.

    This test used to check only that the master exits, which a graceful stop does too
    (it passed with the mutation below). Mutation caught: ``_fast_stop`` sending QUIT
    instead of TERM (the request is still answered: a 504 at proxy_read_timeout)."""
    port = free_port()
    with Backend(count=1) as b:
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs), workers=2), port) as lb:
            workers = lb.workers()
            outcome: list[object] = []

            def slow() -> None:
                try:
                    outcome.append(request(port, "GET", "/?delay=60000", timeout_s=90)[0])
                except OSError as e:  # RemoteDisconnected, reset
                    outcome.append(e)

            t = threading.Thread(target=slow)
            t.start()
            wait_for(lambda: b.stats()["open"] >= 1, what="a request in flight")
            assert lb.signal("stop").returncode == 0
            assert lb.proc is not None and lb.proc.wait(timeout=15) == 0
            assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
            t.join(15)
            assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome


def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    """Mutation caught: the master not forwarding USR1 to its workers (the worker keeps
    writing to the rotated access.log)."""
    port = free_port()
    with Backend(count=1) as b:
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs)), port) as lb:
            request(port, "GET", "/before")
            lb.access_log(1)
            os.rename(tmp_path / "access.log", tmp_path / "access.log.1")
            os.rename(tmp_path / "error.log", tmp_path / "error.log.1")
            assert lb.signal("reopen").returncode == 0
            wait_for(lambda: (tmp_path / "error.log").exists(), what="master to reopen error.log")
            # USR1 reaches the worker asynchronously: requests may still go to the rotated
            # file for a moment, so poll until one lands in the new access.log
            new_log = tmp_path / "access.log"

            def after_in_new_log() -> bool:
                request(port, "GET", "/after")
                return new_log.exists() and "/after" in new_log.read_text()

            wait_for(after_in_new_log, what="worker to reopen access.log")
            assert "/before" in (tmp_path / "access.log.1").read_text()
            assert "/before" not in new_log.read_text()


def test_process_titles(tmp_path: Path) -> None:
    """Mutation caught: the master's title without "master process"."""
    port = free_port()
    with Backend(count=1) as b:
        with LB(tmp_path, basic_config(port, upstream_block("backend", b.addrs)), port) as lb:
            master = psutil.Process(lb.master_pid)
            assert " ".join(master.cmdline()).startswith("prefork-lb: master process")
            assert " ".join(lb.workers()[0].cmdline()).startswith("prefork-lb: worker process")


def test_bind_failure_is_reported(tmp_path: Path) -> None:
    """Mutation caught: the bind error reported with strerror instead of nginx's wording."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "c.toml"
        conf.write_text(basic_config(port, upstream_block("backend", ["127.0.0.1:9"])))
        result = run_cli("-c", str(conf))
    assert result.returncode == 1
    assert f"bind() to 127.0.0.1:{port} failed (98: address already in use)" in result.stderr


def test_daemon_mode_detaches_and_obeys_signals(tmp_path: Path) -> None:
    """Mutation caught: ``daemon = true`` not daemonizing (the CLI never returns)."""
    port = free_port()
    with Backend(count=1) as b:
        conf = tmp_path / "prefork-lb.toml"
        conf.write_text(basic_config(port, upstream_block("backend", b.addrs), top_extra="daemon = true"))
        result = run_cli("-c", str(conf))
        assert result.returncode == 0  # the foreground process returns once detached
        pid_path = tmp_path / "prefork-lb.pid"
        wait_for(lambda: pid_path.exists() and "ready" in (tmp_path / "error.log").read_text(), what="daemon")
        master = psutil.Process(int(pid_path.read_text()))
        assert request(port, "GET", "/")[0] == 200
        assert run_cli("-c", str(conf), "-s", "stop").returncode == 0
        wait_for(
            lambda: not master.is_running() or master.status() == psutil.STATUS_ZOMBIE, what="daemon exit"
        )


def test_failed_reload_closes_the_addresses_it_bound(tmp_path: Path) -> None:
    """The address only the aborted config wanted is *refused* again (it used to wait for
    "not accepting", which a bound, unserved socket also reaches once its backlog fills,
    and passed with the mutation below). Mutation caught: the aborted reload keeping
    what it bound instead of closing it."""
    port, port2 = free_port(), free_port()
    with Backend(count=1) as b:
        cfg = basic_config(port, upstream_block("backend", b.addrs))
        with LB(tmp_path, cfg, port) as lb:
            before = {w.pid for w in lb.workers()}
            # valid config, but its workers cannot boot: the access log path is a directory
            (tmp_path / "blocked").mkdir()
            broken = cfg.replace('access_log = "access.log"', 'access_log = "blocked"')
            lb.conf.write_text(
                broken.replace(f'"127.0.0.1:{port}"', f'"127.0.0.1:{port}", "127.0.0.1:{port2}"')
            )
            lb.signal("reload")
            wait_for(lambda: "reload aborted" in lb.output(), what="aborted reload")
            assert {w.pid for w in lb.workers()} == before
            assert request(port, "GET", "/")[0] == 200
            wait_for(lambda: refused(port2), what="the new address to be closed again")


def test_a_refused_worker_rlimit_nofile_is_an_alert_not_an_outage(tmp_path: Path) -> None:
    """Above fs.nr_open no process may raise its hard limit: nginx logs an alert and serves.
    Mutation caught: the refused setrlimit not logged as an alert."""
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    port = free_port()
    with Backend() as b:
        conf = basic_config(
            port, upstream_block("backend", b.addrs), top_extra=f"worker_rlimit_nofile = {nr_open + 1}"
        )
        with LB(tmp_path, conf, port) as lb:
            assert request(port, "GET", "/")[0] == 200
            log = (tmp_path / "error.log").read_text()
            assert "[alert]" in log and f"setrlimit(RLIMIT_NOFILE, {nr_open + 1}) failed" in log
            (worker,) = lb.workers()
            soft, hard = worker.rlimit(psutil.RLIMIT_NOFILE)
            assert soft == hard or hard == psutil.RLIM_INFINITY  # as high as allowed
