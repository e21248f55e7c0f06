"""Micro-benchmark: the per-request cost of choosing and releasing an upstream peer.

    .venv/bin/python loadtest/pick_bench.py               # full table (~1.5 min)
    .venv/bin/python loadtest/pick_bench.py --quick       # short table (~10 s)
    .venv/bin/python loadtest/pick_bench.py --contention  # 1 process alone, then 2 on one zone
    .venv/bin/python loadtest/pick_bench.py --contention --work-us 50 --method least_conn
    .venv/bin/python loadtest/pick_bench.py --profile hash_consistent --peers 100
    .venv/bin/python loadtest/pick_bench.py --quick --scattered  # slots out of order (reloads)
    .venv/bin/python loadtest/pick_bench.py --ab --method least_conn --peers 100 --peers 1000 --peers 2000

``--ab`` measures every cell twice, on the compiled loops (``balance/_pickloop.c``) and on
the pure-Python ones (what ``PREFORK_LB_PURE=1`` runs), alternating, in one process.

One "request" is what ``http/proxy.py`` does around an upstream attempt that succeeds:
``new_selection``; ``zone.lock(); pick; zone.unlock()``; then ``zone.lock(); [bal.release
for least_time]; free; zone.unlock()``. Column "lock" times exactly that;
"no lock" is the same loop without the two lock/unlock pairs. Times are microseconds per
request, the median of several ``timeit`` repeats (timeit turns the GC off while timing).

The zone is a real shared zone (``Zone.create(2 MiB, rows)``, every row claimed) with the
group built on row 0. Before timing, every peer holds 1..5 connections taken from the other
rows, so least_conn, random two and least_time compare non-trivial counts; least_time also
has per-peer response times of 20..100 ms. Client addresses and URIs vary per request
(4096 distinct exchanges, cycled), so ip_hash and hash see changing keys. ``--scattered``
gives the servers their slots in a shuffled order, as after reloads that added peers (the
balancers then gather the words instead of slicing them: ``balance/table.py``).

``--contention`` forks 2 workers (rows 0 and 1) that run the locked loop on the same zone
for ``--seconds`` each, after one process alone; a control phase gives each worker a zone
of its own, which is what the CPUs deliver without sharing the lock. ``--work-us`` adds busy
CPU outside the lock per request (the proxying), which is how far real workers are from
this worst case. ``--profile METHOD`` runs cProfile over the locked loop.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass

from prefork_lb.balance import native
from prefork_lb.balance.base import Balancer
from prefork_lb.balance.peers import PeerGroup, free, new_selection, record_time, take
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.model import Address, Method, UpstreamConfig, UpstreamServer
from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.template import compile_template
from prefork_lb.zone import layout as L
from prefork_lb.zone.zone import Zone

NOW_S = 1_700_000_000  # a fixed "ngx_time()" second
NOW_MS = NOW_S * 1000
ZONE_SIZE = L.DEFAULT_SIZE
N_EXCHANGES = 4096
MIXED_WEIGHTS = (5, 1, 3, 2, 1, 4)
SCATTERED = False  # --scattered: server i gets a shuffled slot instead of slot i


@dataclass(frozen=True)
class Variant:
    key: str  # command-line name
    label: str  # table label
    method: Method
    consistent: bool = False
    random_two: bool = False
    mixed: bool = False


VARIANTS: tuple[Variant, ...] = (
    Variant("round_robin", "round_robin", "round_robin"),
    Variant("round_robin_mixed", "round_robin mixed w", "round_robin", mixed=True),
    Variant("least_conn", "least_conn", "least_conn"),
    Variant("ip_hash", "ip_hash", "ip_hash"),
    Variant("hash", "hash $request_uri", "hash"),
    Variant("hash_consistent", "hash ... consistent", "hash", consistent=True),
    Variant("random", "random", "random"),
    Variant("random_two", "random two", "random", random_two=True),
    Variant("least_time", "least_time header", "least_time"),
)
BY_KEY = {v.key: v for v in VARIANTS}


# ---- fixtures --------------------------------------------------------------------------------------


def held_conns(i: int) -> int:
    """Connections peer ``i`` holds from other workers: 1..5, spread over the peers."""
    return 1 + (i * 7 + 3) % 5


def response_ms(i: int) -> int:
    """least_time: peer ``i``'s steady response time, 20..100 ms."""
    return 20 + (i * 37 % 9) * 10


def make_upstream(variant: Variant, n: int) -> UpstreamConfig:
    servers = []
    for i in range(n):
        address = Address("inet", f"10.1.{i // 250}.{i % 250 + 1}", 8080)
        weight = MIXED_WEIGHTS[i % len(MIXED_WEIGHTS)] if variant.mixed else 1
        servers.append(UpstreamServer(address=address, name=address.text, weight=weight))
    return UpstreamConfig(
        name="bench",
        method=variant.method,
        servers=tuple(servers),
        hash_key="$request_uri" if variant.method == "hash" else "",
        consistent=variant.consistent,
        random_two=variant.random_two,
    )


def make_exchange(i: int) -> Exchange:
    """One parsed request; client address (first three octets) and URI vary with ``i``."""
    target = f"/catalog/item/{i * 7919 % 100_003}?page={i % 17}&sort=price".encode()
    path, _, args = target.decode("latin-1").partition("?")
    headers = [(b"Host", b"shop.example"), (b"User-Agent", b"bench/1.0"), (b"Accept", b"*/*")]
    remote = f"{10 + i % 200}.{(i * 13) % 256}.{(i * 29) % 256}.{i % 250 + 1}"
    return Exchange(
        conn=ConnectionInfo(remote, 40000 + i % 20000, "127.0.0.1", 8080, i, 1),
        method=b"GET",
        target=target,
        path=path,
        args=args,
        version=(1, 1),
        headers=headers,
        header_index={name.lower(): value for name, value in headers},
        host="shop.example",
        start_time=float(NOW_S),
        request_length=96,
    )


EXCHANGES: list[Exchange] = [make_exchange(i) for i in range(N_EXCHANGES)]


@dataclass
class Setup:
    zone: Zone
    upstream: UpstreamConfig
    held: list[int]  # expected P_CONNS per server while idle
    slots: list[int]  # zone slot per server

    def group(self, row: int, pure: bool = False) -> tuple[PeerGroup, Balancer]:
        """``pure``: the group's lists skip the compiled loops, as with PREFORK_LB_PURE=1."""
        group = PeerGroup.build(self.upstream, self.zone, self.slots, row)
        if pure:
            for plist in (group.primary, group.backup):
                if plist is not None:
                    plist.table.native = None
        return group, make_balancer(self.upstream, group, compile_template)

    def check(self) -> None:
        """Every pick was freed: the zone holds exactly the background connections."""
        mv = self.zone.mv
        got = [mv[L.peer_base(slot) + L.P_CONNS] for slot in self.slots]
        if got != self.held:
            raise AssertionError(f"conns drifted: {got[:8]}... != {self.held[:8]}...")


def make_setup(variant: Variant, n: int, rows: int) -> Setup:
    """A zone as the master leaves it: slots 0..n-1, rows claimed, background load from rows 1..rows-1."""
    zone = Zone.create(ZONE_SIZE, rows)
    upstream = make_upstream(variant, n)
    slots = list(range(n))
    if SCATTERED:
        random.Random(n).shuffle(slots)
    with zone:
        for slot, server in zip(slots, upstream.servers, strict=True):
            zone.init_peer(slot, server.weight)
        for row in range(rows):
            zone.claim_row(row, 1, row)
            zone.set_row_pid(row, os.getpid())
    setup = Setup(zone, upstream, [held_conns(i) for i in range(n)], slots)
    others = [setup.group(row)[0] for row in range(1, rows)]
    with zone:
        for i in range(n):
            for k in range(held_conns(i)):
                group = others[(i + k) % len(others)]
                take(new_selection(group, 0), group.primary.peers[i], NOW_S)
            record_time(others[0].primary.peers[i], response_ms(i))
    setup.check()
    return setup


# ---- the measured loops ----------------------------------------------------------------------------


def locked_loop(group: PeerGroup, bal: Balancer, batch: list[Exchange]) -> int:
    """The proxy's calls for one successful attempt per exchange (``Proxy.run`` / ``_free``)."""
    zone = group.zone
    now_s, now_ms = NOW_S, NOW_MS
    n = 0
    for ex in batch:
        sel = new_selection(group, 0)
        zone.lock()
        try:
            peer = bal.pick(sel, ex, now_s)
        finally:
            zone.unlock()
        if peer is None:
            raise AssertionError("no live upstreams")
        zone.lock()
        try:
            if bal.releases:  # least_time: the measured time, the in-flight start
                took_s = response_ms(peer.index) / 1000
                bal.release(peer, sel, took_s, took_s)
            free(sel, peer, False, now_s, now_ms)
        finally:
            zone.unlock()
        n += 1
    return n


def unlocked_loop(group: PeerGroup, bal: Balancer, batch: list[Exchange]) -> int:
    """``locked_loop`` without the two lock/unlock pairs (the try/finally stays)."""
    now_s, now_ms = NOW_S, NOW_MS
    n = 0
    for ex in batch:
        sel = new_selection(group, 0)
        try:
            peer = bal.pick(sel, ex, now_s)
        finally:
            pass
        if peer is None:
            raise AssertionError("no live upstreams")
        try:
            if bal.releases:  # least_time: the measured time, the in-flight start
                took_s = response_ms(peer.index) / 1000
                bal.release(peer, sel, took_s, took_s)
            free(sel, peer, False, now_s, now_ms)
        finally:
            pass
        n += 1
    return n


def working_loop(group: PeerGroup, bal: Balancer, batch: list[Exchange], work_us: float) -> int:
    """``locked_loop`` plus ``work_us`` of busy CPU outside the lock between pick and free (the proxying)."""
    if work_us <= 0:
        return locked_loop(group, bal, batch)
    zone = group.zone
    now_s, now_ms = NOW_S, NOW_MS
    clock = time.perf_counter
    work_s = work_us / 1e6
    for ex in batch:
        sel = new_selection(group, 0)
        zone.lock()
        try:
            peer = bal.pick(sel, ex, now_s)
        finally:
            zone.unlock()
        if peer is None:
            raise AssertionError("no live upstreams")
        end = clock() + work_s
        while clock() < end:
            pass
        zone.lock()
        try:
            if bal.releases:  # least_time: the measured time, the in-flight start
                took_s = response_ms(peer.index) / 1000
                bal.release(peer, sel, took_s, took_s)
            free(sel, peer, False, now_s, now_ms)
        finally:
            zone.unlock()
    return len(batch)


def batch_of(size: int, start: int = 0) -> list[Exchange]:
    return [EXCHANGES[(start + i) % N_EXCHANGES] for i in range(size)]


def median_us(loop: Callable[[], int], size: int, repeat: int) -> float:
    times = timeit.Timer(loop).repeat(repeat=repeat, number=1)
    return statistics.median(times) / size * 1e6


@dataclass
class Cell:
    lock_us: float
    nolock_us: float


def measure(variant: Variant, n: int, rows: int, target_s: float, repeat: int, pure: bool = False) -> Cell:
    setup = make_setup(variant, n, rows)
    group, bal = setup.group(0, pure)
    # calibrate: batch size so that one locked repeat takes about target_s
    probe = batch_of(200)
    t0 = time.perf_counter()
    locked_loop(group, bal, probe)
    per = (time.perf_counter() - t0) / len(probe)
    size = max(200, min(200_000, int(target_s / max(per, 1e-7))))
    batch = batch_of(size, 200)
    # alternate the two loops, so a noisy neighbour or a clock change hits both alike
    with_lock = timeit.Timer(lambda: locked_loop(group, bal, batch))
    without = timeit.Timer(lambda: unlocked_loop(group, bal, batch))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        times[0].append(with_lock.timeit(number=1))
        times[1].append(without.timeit(number=1))
    locked, unlocked = (statistics.median(t) / size * 1e6 for t in times)
    setup.check()
    setup.zone.close()
    return Cell(locked, unlocked)


def bare_lock_us(repeat: int) -> float:
    zone = Zone.create(ZONE_SIZE, 2)
    zone.lock()
    zone.unlock()

    def pairs() -> int:
        for _ in range(50_000):
            zone.lock()
            zone.unlock()
        return 50_000

    us = median_us(pairs, 50_000, repeat)
    zone.close()
    return us


def machine_note() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0))
    return (
        f"machine: nproc={nproc}, {model}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


# ---- modes -----------------------------------------------------------------------------------------


def run_table(quick: bool, peer_counts: list[int], row_counts: list[int], only: list[str], ab: bool) -> None:
    target_s, repeat = (0.03, 3) if quick else (0.08, 7)
    variants = [v for v in VARIANTS if not only or v.key in only]
    print(machine_note())
    print(f"balancer build: {native.describe()}{'; --ab: every cell compiled and pure' if ab else ''}")
    if ab and native.PICKLOOP is None:
        raise SystemExit("--ab needs the compiled loops (pip install -e ., PREFORK_LB_PURE unset)")
    print(
        f"mode: {'quick' if quick else 'full'}, {repeat} repeats x ~{target_s * 1000:.0f} ms, median, "
        f"{'scattered' if SCATTERED else 'in-order'} slots; "
        f"bare zone lock+unlock pair: {bare_lock_us(repeat):.2f} us"
    )
    print("us per request = new_selection + pick + (least_time: release) + free")
    print()
    heads = [f"{r} rows {kind}" for r in row_counts for kind in ("lock", "no lock")]
    first = 29
    header = f"{'method':<{first}} {'peers':>5}  " + "  ".join(f"{h:>13}" for h in heads)
    header += "   lock share"
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    builds = (False, True) if ab else (False,)
    for variant in variants:
        for n in peer_counts:
            for pure in builds:
                cells = [measure(variant, n, rows, target_s, repeat, pure) for rows in row_counts]
                values = "  ".join(f"{x:>13.2f}" for c in cells for x in (c.lock_us, c.nolock_us))
                c0 = cells[0]
                share = (c0.lock_us - c0.nolock_us) / c0.lock_us * 100 if c0.lock_us else 0.0
                label = variant.label + (" [pure]" if pure else " [C]" if ab else "")
                print(f"{label:<{first}} {n:>5}  {values}   {share:>9.0f}%", flush=True)
    print(
        f"\n(total {time.perf_counter() - started:.1f} s; lock share = (lock - no lock) / lock, "
        f"{row_counts[0]} rows)"
    )


def run_profile(key: str, n: int, rows: int, count: int) -> None:
    variant = BY_KEY[key]
    setup = make_setup(variant, n, rows)
    group, bal = setup.group(0)
    batch = batch_of(count)
    prof = cProfile.Profile()
    prof.enable()
    locked_loop(group, bal, batch)
    prof.disable()
    setup.check()
    print(f"cProfile: {variant.label}, {n} peers, {rows} rows, {count} requests (locked loop)")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(14)


def _child(
    setup: Setup,
    variant: Variant,
    row: int,
    private: bool,
    seconds: float,
    work_us: float,
    go_r: int,
    out_w: int,
) -> None:
    """Body of one forked worker: say ready, wait for the start signal, pick/free until time is up."""
    try:
        if private:  # control: the same work on a zone of its own (no shared lock, no shared lines)
            setup = make_setup(variant, len(setup.held), setup.zone.rows)
        group, bal = setup.group(row)
        batch = batch_of(256, row * 1000)
        working_loop(group, bal, batch, work_us)  # warm up (and open this process's lock fd)
        gc.disable()
        os.write(out_w, b"r")
        os.read(go_r, 1)  # EOF when the parent closes its end: everybody starts together
        picks = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            picks += working_loop(group, bal, batch, work_us)
            now = time.perf_counter()
            if now >= deadline:
                break
        if private:  # a shared zone is checked by the parent, once every worker is done
            setup.check()
        os.write(out_w, f"{picks} {now - t0}\n".encode())
        os._exit(0)
    except BaseException as exc:  # never return into the parent's code after fork
        os.write(2, f"child row {row}: {exc!r}\n".encode())
        os._exit(1)


def run_workers(
    setup: Setup, variant: Variant, rows: list[int], seconds: float, work_us: float, private: bool = False
) -> list[float]:
    """Fork one process per row, start them together; picks/s of each."""
    go_r, go_w = os.pipe()
    outs: list[tuple[int, int]] = []
    for row in rows:
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(out_r)
            _child(setup, variant, row, private, seconds, work_us, go_r, out_w)
        os.close(out_w)
        outs.append((pid, out_r))
    os.close(go_r)
    for _, out_r in outs:
        if os.read(out_r, 1) != b"r":
            raise SystemExit("a worker failed to start")
    os.close(go_w)
    rates: list[float] = []
    for pid, out_r in outs:
        data = b""
        while chunk := os.read(out_r, 256):
            data += chunk
        os.close(out_r)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not data:
            raise SystemExit(f"worker {pid} failed")
        picks, elapsed = data.split()
        rates.append(int(picks) / float(elapsed))
    return rates


def run_contention(key: str, n: int, seconds: float, work_us: float) -> None:
    variant = BY_KEY[key]
    setup = make_setup(variant, n, 16)  # workers on rows 0 and 1; background conns from rows 1..15
    print(machine_note())
    print(
        f"contention: {variant.label}, {n} peers, locked pick+free loop, {seconds:g} s per phase, "
        f"{work_us:g} us of CPU work outside the lock per request"
    )
    print()
    run_workers(
        setup, variant, [0, 1], min(1.0, seconds), work_us
    )  # warm-up (CPU clocks, page faults), discarded
    solo = run_workers(setup, variant, [0], seconds, work_us)[0]
    shared = run_workers(setup, variant, [0, 1], seconds, work_us)
    setup.check()
    private = run_workers(setup, variant, [0, 1], seconds, work_us, private=True)
    print(f"{'phase':<40} {'picks/s':>10} {'us/request':>11} {'vs alone':>9}")

    def line(label: str, rate: float) -> None:
        print(f"{label:<40} {rate:>10,.0f} {1e6 / rate:>11.2f} {rate / solo:>8.2f}x")

    line("1 process alone", solo)
    for i, rate in enumerate(shared):
        line(f"2 processes, same zone: worker {i}", rate)
    line("2 processes, same zone: total", sum(shared))
    for i, rate in enumerate(private):
        line(f"control, own zone each: worker {i}", rate)
    line("control, own zone each: total", sum(private))
    print()
    print(
        f"same zone reaches {sum(shared) / sum(private):.0%} of the control's throughput "
        f"(the control is what {len(os.sched_getaffinity(0))} CPUs give without sharing the zone)"
    )
    print("state check: every pick was freed, conns back to the background load: ok")
    setup.zone.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (~10 s)")
    ap.add_argument("--contention", action="store_true", help="2 processes picking on one zone")
    ap.add_argument("--profile", metavar="METHOD", choices=sorted(BY_KEY), help="cProfile one method")
    ap.add_argument("--method", action="append", choices=sorted(BY_KEY), help="only these (table)")
    ap.add_argument("--peers", type=int, action="append", help="peer counts (default 2 10 100 1000 2000)")
    ap.add_argument("--rows", type=int, action="append", help="zone rows (default 2 16)")
    ap.add_argument("--seconds", type=float, default=3.0, help="contention: seconds per phase")
    ap.add_argument(
        "--work-us", type=float, default=0.0, help="contention: busy CPU per request outside the lock"
    )
    ap.add_argument("--requests", type=int, default=200_000, help="profile: requests")
    ap.add_argument("--scattered", action="store_true", help="servers on shuffled zone slots")
    ap.add_argument("--ab", action="store_true", help="table: every cell on the compiled and the pure loops")
    args = ap.parse_args(argv)
    global SCATTERED
    SCATTERED = args.scattered
    peers: list[int] = args.peers or [2, 10, 100, 1000, 2000]
    rows: list[int] = args.rows or [2, 16]
    if any(r < 2 for r in rows):
        ap.error("--rows: at least 2 (row 0 picks, the others hold background connections)")
    if args.profile:
        run_profile(args.profile, peers[-1], rows[-1], args.requests)
    elif args.contention:
        methods: list[str] = args.method or ["round_robin"]
        for i, key in enumerate(methods):
            if i:
                print()
            run_contention(key, peers[-1] if args.peers else 10, args.seconds, args.work_us)
    else:
        run_table(args.quick, peers, rows, args.method or [], args.ab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
