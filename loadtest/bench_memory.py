#!/usr/bin/env python3
"""Memory of prefork-lb beside nginx: idle worker RSS, and the cost of idle keep-alive connections.

    python3 loadtest/bench_memory.py                 # prefork-lb and nginx, 10,000 connections
    python3 loadtest/bench_memory.py --conns 2000 --only prefork-lb
    loadtest/bench --memory [same options]

For each balancer (2 workers each):

1. Idle: started with its benchmark config as it is (loadtest/bench.toml, a copy of
   ../shared/bench/lb-nginx.conf), no traffic; RSS and PSS of each worker after 1 s
   (/proc/PID/smaps_rollup; the workers are the master's children).
2. Connections: restarted with room for them (worker_connections 20000,
   worker_rlimit_nofile 30000 or the hard limit, keepalive_timeout 300s) in front of the backend nginx on
   18081/18082. A warm-up (50 connections x 1 request, closed) runs first so one-time costs
   are not charged to connections. Then the summed PSS of master + workers ("before"); this
   script opens --conns connections (non-blocking sockets, one selector), sends
   `GET / HTTP/1.1` on each and reads the whole response, so each one is an idle keep-alive
   connection; after --settle seconds it checks that they are still open (a peek on every
   socket, and the ESTABLISHED sockets on port 18080 in /proc/net/tcp) and takes the PSS
   sum again ("after"). KiB per connection = (after - before) / connections open.

PSS counts user-space memory only: kernel socket buffers are not in it, for either balancer.
Ports 18080-18082, 127.0.0.1 only; holds /tmp/prefork-lb-bench.lock (as loadtest/bench) for the
whole run; every server runs in its own process group and is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, cast

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("ANCHORS", str(REPO.parent / "shared/bench/anchors.sh"))).resolve().parent
LB = REPO / ".venv/bin/prefork-lb"
LOCK = "/tmp/prefork-lb-bench.lock"
PORTS = (18080, 18081, 18082)
PORT = 18080
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
TARGET_IDLE_MIB = 40.0
TARGET_KIB_PER_CONN = 8.0


def nofile_for_servers() -> int:
    """worker_rlimit_nofile for both balancers: 30000, or the hard limit if lower and it cannot be
    raised (no CAP_SYS_RESOURCE, e.g. in a container: prefork-lb's workers then fail to start)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= 30000:
        return 30000
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[0], 30000))
        return 30000
    except (ValueError, OSError):
        return hard


# ---- /proc ------------------------------------------------------------------------------------------


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB, from smaps_rollup (or smaps on old kernels)."""
    for name in ("smaps_rollup", "smaps"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                rss = pss = 0
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
                return rss, pss
        except FileNotFoundError:
            continue
    raise ProcessLookupError(pid)


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def workers_of(master: int) -> list[int]:
    """The master's children whose title says worker (nginx and prefork-lb both say so)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == master and "worker" in title(int(entry)):
            out.append(int(entry))
    return sorted(out)


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def established(port: int) -> int:
    """Server-side ESTABLISHED sockets on 127.0.0.1:port (what the balancer holds)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            pass
    return n


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- processes --------------------------------------------------------------------------------------


class Servers:
    """Servers started in their own process groups; ``stop_all`` ends every group."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.scratch / f"{name}.out").open("ab")
        self.logs.append(log)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            p.poll()
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p)
        for log in self.logs:
            log.close()


def wait_port(port: int, p: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited with {p.returncode} before port {port} opened")
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def wait_workers(p: subprocess.Popen[bytes], n: int, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = workers_of(p.pid)
        if len(found) >= n:
            return found
        if p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited with {p.returncode} before its workers were up")
        time.sleep(0.05)
    raise RuntimeError(f"master {p.pid}: {len(workers_of(p.pid))} of {n} workers after {timeout:g} s")


# ---- the client -------------------------------------------------------------------------------------


def response_done(buf: bytes | bytearray) -> bool | None:
    """None: incomplete; True: a complete 200; False: a complete other status."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    ok = head.split(" ", 2)[1:2] == ["200"]
    length = re.search(r"(?im)^content-length:\s*(\d+)", head)
    if length:
        return ok if len(buf) >= end + 4 + int(length[1]) else None
    if re.search(r"(?im)^transfer-encoding:.*chunked", head):
        return ok if buf.endswith(b"0\r\n\r\n") else None
    return ok


@dataclass
class Opened:
    socks: list[socket.socket] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def open_idle(n: int, window: int = 256, timeout: float = 120.0) -> Opened:
    """Open ``n`` connections to 127.0.0.1:PORT, one GET on each, responses read: idle keep-alive."""
    sel = selectors.DefaultSelector()
    out = Opened()
    started = inflight = 0
    t0 = time.monotonic()
    deadline = t0 + timeout

    def fail(s: socket.socket, why: str) -> None:
        nonlocal inflight
        out.errors[why] += 1
        sel.unregister(s)
        s.close()
        inflight -= 1

    while (started < n or inflight) and time.monotonic() < deadline:
        while started < n and inflight < window:
            started += 1
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", PORT))
            if err not in (0, errno.EINPROGRESS):
                out.errors[errno.errorcode.get(err, str(err))] += 1
                s.close()
                continue
            sel.register(s, selectors.EVENT_WRITE, bytearray())
            inflight += 1
        for key, events in sel.select(timeout=1.0):
            s = cast(socket.socket, key.fileobj)
            buf: bytearray = key.data
            if events & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s, errno.errorcode.get(err, str(err)))
                    continue
                try:
                    sent = s.send(REQUEST)
                except OSError as e:
                    fail(s, errno.errorcode.get(e.errno or 0, "send"))
                    continue
                if sent != len(REQUEST):
                    fail(s, "short send")
                    continue
                sel.modify(s, selectors.EVENT_READ, buf)
                continue
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(s, errno.errorcode.get(e.errno or 0, "recv"))
                continue
            if not chunk:
                fail(s, "EOF")
                continue
            buf += chunk
            done = response_done(buf)
            if done is None:
                continue
            if not done:
                fail(s, "non-200")
                continue
            sel.unregister(s)
            inflight -= 1
            out.socks.append(s)
    for key in list(sel.get_map().values()):
        fail(cast(socket.socket, key.fileobj), "timeout")
    out.errors["not started (timeout)"] += n - started
    out.errors = Counter({k: v for k, v in out.errors.items() if v})
    sel.close()
    out.seconds = time.monotonic() - t0
    return out


def still_open(socks: list[socket.socket]) -> int:
    """Connections the server has not closed: a non-blocking peek finds nothing to read."""
    n = 0
    for s in socks:
        try:
            s.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    socks.clear()


# ---- one balancer -----------------------------------------------------------------------------------


@dataclass
class Measure:
    name: str
    idle: list[tuple[int, int]] = field(default_factory=list)  # (RSS, PSS) KiB per worker
    idle_master: tuple[int, int] = (0, 0)
    pss_before: int = 0  # KiB, master + workers
    pss_after: int = 0
    worker_rss_after: list[int] = field(default_factory=list)
    worker_fds_after: list[int] = field(default_factory=list)
    wanted: int = 0
    opened: int = 0
    alive: int = 0
    established: int = 0
    open_seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    error: str = ""

    @property
    def per_conn_kib(self) -> float | None:
        return (self.pss_after - self.pss_before) / self.alive if self.alive else None


def group_pss(master: int, workers: list[int]) -> int:
    return sum(memory_kib(pid)[1] for pid in [master, *workers])


def measure(
    name: str,
    servers: Servers,
    idle_cmd: list[str],
    conn_cmd: list[str],
    workers: int,
    conns: int,
    settle: float,
) -> Measure:
    m = Measure(name, wanted=conns)
    # 1. idle, the benchmark config as it is
    p = servers.start(f"{name}-idle", idle_cmd)
    wait_port(PORT, p)
    found = wait_workers(p, workers)
    time.sleep(1.0)
    m.idle = [memory_kib(pid) for pid in found]
    m.idle_master = memory_kib(p.pid)
    servers.stop(p)
    # 2. idle keep-alive connections
    p = servers.start(f"{name}-conns", conn_cmd)
    wait_port(PORT, p)
    found = wait_workers(p, workers)
    warm = open_idle(50)
    if warm.errors:
        print(f"   {name}: warm-up errors {dict(warm.errors)}", file=sys.stderr)
    close_all(warm.socks)
    time.sleep(1.0)
    m.pss_before = group_pss(p.pid, found)
    got = open_idle(conns)
    m.opened, m.errors, m.open_seconds = len(got.socks), got.errors, got.seconds
    time.sleep(settle)
    m.alive = still_open(got.socks)
    m.established = established(PORT)
    m.pss_after = group_pss(p.pid, found)
    m.worker_rss_after = [memory_kib(pid)[0] for pid in found]
    m.worker_fds_after = [fd_count(pid) for pid in found]
    if sorted(workers_of(p.pid)) != found:
        m.error = f"workers changed during the measurement: {found} -> {workers_of(p.pid)}"
    close_all(got.socks)
    servers.stop(p)
    return m


# ---- configs ----------------------------------------------------------------------------------------


def replace_once(text: str, old: str, new: str, what: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"bench_memory: cannot patch {what}: {old!r} occurs {text.count(old)} times")
    return text.replace(old, new)


def prefork_configs(d: Path, workers: int, nofile: int) -> tuple[Path, Path]:
    d.mkdir()
    base = re.sub(r"(?m)^workers = \d+$", f"workers = {workers}", (HERE / "bench.toml").read_text())
    idle = d / "idle.toml"
    idle.write_text(base)
    text = replace_once(
        base,
        "worker_connections = 8192\n",
        f"worker_connections = 20000\nworker_rlimit_nofile = {nofile}\n",
        "bench.toml",
    )
    text = replace_once(
        text,
        'listen = ["127.0.0.1:18080"]\n',
        'listen = ["127.0.0.1:18080"]\nkeepalive_timeout = "300s"\n',
        "bench.toml",
    )
    conns = d / "conns.toml"
    conns.write_text(text)
    for conf in (idle, conns):
        t = subprocess.run([str(LB), "-t", "-c", str(conf)], capture_output=True, text=True)
        if t.returncode != 0:
            raise SystemExit(f"bench_memory: prefork-lb -t rejects {conf}:\n{t.stderr}{t.stdout}")
    return idle, conns


def nginx_configs(d: Path, workers: int, nofile: int) -> tuple[Path, Path]:
    d.mkdir()
    base = (SHARED / "lb-nginx.conf").read_text()
    base = replace_once(base, "worker_processes 2;", f"worker_processes {workers};", "lb-nginx.conf")
    idle = d / "idle.conf"
    idle.write_text(base)
    text = replace_once(
        base, "worker_connections 8192;", "worker_connections 20000;", "lb-nginx.conf worker_connections"
    )
    text = replace_once(
        text,
        f"worker_processes {workers};",
        f"worker_processes {workers};\nworker_rlimit_nofile {nofile};",
        "lb-nginx.conf",
    )
    text = replace_once(
        text,
        "keepalive_requests 1000000;",
        "keepalive_requests 1000000;\n    keepalive_timeout 300s;",
        "lb-nginx.conf",
    )
    conns = d / "conns.conf"
    conns.write_text(text)
    return idle, conns


# ---- report -----------------------------------------------------------------------------------------


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def report(results: list[Measure]) -> None:
    print()
    for m in results:
        idle = ", ".join(f"worker {i}: RSS {mib(r)} MiB, PSS {mib(p)} MiB" for i, (r, p) in enumerate(m.idle))
        print(
            f"{m.name}: idle {idle}; master RSS {mib(m.idle_master[0])} MiB, PSS {mib(m.idle_master[1])} MiB"
        )
        print(
            f"{m.name}: {m.opened:,} of {m.wanted:,} connections answered in {m.open_seconds:.1f} s, "
            f"{m.alive:,} still open after the settle time, {m.established:,} ESTABLISHED on :{PORT}; "
            f"worker RSS after {' / '.join(mib(r) for r in m.worker_rss_after)} MiB, "
            f"worker fds {' / '.join(map(str, m.worker_fds_after))}"
        )
        if m.errors:
            print(f"{m.name}: client errors {dict(m.errors)}")
        if m.error:
            print(f"{m.name}: {m.error}")
    print()
    print(
        "| balancer | idle worker RSS (MiB) | PSS before (MiB) | PSS after (MiB) | KiB per conn "
        "| connections open |"
    )
    print("|---|---|---|---|---|---|")
    for m in results:
        per = m.per_conn_kib
        print(
            f"| {m.name} | {' / '.join(mib(r) for r, _ in m.idle)} | {mib(m.pss_before)} "
            f"| {mib(m.pss_after)} | {'-' if per is None else f'{per:.2f}'} | {m.alive:,} of {m.wanted:,} |"
        )
    ours = next((m for m in results if m.name == "prefork-lb"), None)
    if ours and ours.idle:
        worst = max(r for r, _ in ours.idle) / 1024
        per = ours.per_conn_kib
        print(
            f"\ntargets (prefork-lb): idle worker RSS < {TARGET_IDLE_MIB:g} MB: {worst:.1f} MiB "
            f"{'ok' if worst < TARGET_IDLE_MIB else 'MISS'}; < {TARGET_KIB_PER_CONN:g} KiB per connection: "
            + ("-" if per is None else f"{per:.2f} KiB {'ok' if per < TARGET_KIB_PER_CONN else 'MISS'}")
            + ("" if ours.alive == ours.wanted else f" (only {ours.alive:,} of {ours.wanted:,} open)")
        )


# ---- main -------------------------------------------------------------------------------------------


def raise_nofile(conns: int) -> int:
    """Raise this process's RLIMIT_NOFILE for ``conns`` sockets; the connections it can hold."""
    want = conns + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
            return conns
        except (ValueError, OSError):
            pass
    new_soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft < new_soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return min(conns, new_soft - 1024)


def on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=10_000, help="idle keep-alive connections (default 10000)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between opening and measuring")
    ap.add_argument("--workers", type=int, default=2, help="workers of each balancer (default 2)")
    ap.add_argument("--only", default="prefork-lb,nginx", help="comma list: prefork-lb,nginx")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (configs, logs)")
    args = ap.parse_args(argv)
    names = args.only.split(",")
    if any(n not in ("prefork-lb", "nginx") for n in names):
        ap.error("--only: prefork-lb and/or nginx")
    missing = [f"{t} (apt-get install nginx-light)" for t in ("nginx",) if shutil.which(t) is None]
    if not (SHARED / "backend-nginx.conf").is_file():
        missing.append(f"{SHARED / 'backend-nginx.conf'} (the shared benchmark configs)")
    if "prefork-lb" in names and not os.access(LB, os.X_OK):
        missing.append(f"{LB} (run `make test` once to build .venv)")
    if missing:
        print("bench_memory: missing (nothing is installed by this script):", file=sys.stderr)
        for item in missing:
            print(f"  - {item}", file=sys.stderr)
        return 2
    nofile = nofile_for_servers()
    if nofile < 30000:
        print(f"bench_memory: worker_rlimit_nofile {nofile} (the hard limit; 30000 is not allowed here)")
    conns = raise_nofile(args.conns)
    if conns < args.conns:
        print(f"bench_memory: RLIMIT_NOFILE allows {conns} connections, not {args.conns}", file=sys.stderr)

    signal.signal(signal.SIGTERM, on_term)
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"bench_memory: waiting for {LOCK} (another benchmark is running)", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    busy = [p for p in PORTS if port_open(p)]
    if busy:
        print(
            f"bench_memory: port(s) {busy} in use although {LOCK} is free: a stale server?", file=sys.stderr
        )
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="prefork-lb-mem-"))
    servers = Servers(scratch)
    results: list[Measure] = []
    try:
        (scratch / "backend").mkdir()
        backend = servers.start(
            "backend", ["nginx", "-p", str(scratch / "backend"), "-c", str(SHARED / "backend-nginx.conf")]
        )
        wait_port(18082, backend)
        for name in names:
            print(f"== {name}: idle, then {conns:,} idle keep-alive connections", flush=True)
            if name == "prefork-lb":
                idle, conf = prefork_configs(scratch / name, args.workers, nofile)
                idle_cmd, conn_cmd = [str(LB), "-c", str(idle)], [str(LB), "-c", str(conf)]
            else:
                idle, conf = nginx_configs(scratch / name, args.workers, nofile)
                prefix = str(scratch / name)
                idle_cmd = ["nginx", "-p", prefix, "-c", str(idle)]
                conn_cmd = ["nginx", "-p", prefix, "-c", str(conf)]
            results.append(measure(name, servers, idle_cmd, conn_cmd, args.workers, conns, args.settle))
    except KeyboardInterrupt:
        print("\nbench_memory: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench_memory: {e} (logs in {scratch})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        servers.stop_all()
        os.close(lock)
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        if results:
            report(results)
    return 0 if all(m.alive == m.wanted and not m.error for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
