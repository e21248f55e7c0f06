"""The shared-memory zone: layout arithmetic, header and peer records, the crash-safe lock,
repair of a dead worker's connections, and the master's slot and row tables."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefork_lb.balance.least_time import LeastTime, release_inflight
from prefork_lb.balance.peers import Peer, PeerGroup, free, new_selection, record_time, take
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Address, Config, UpstreamConfig, UpstreamServer
from prefork_lb.http.template import compile_template
from prefork_lb.zone import layout as L
from prefork_lb.zone import zone as zone_module
from prefork_lb.zone.slots import RowTable, SlotTable, peer_keys
from prefork_lb.zone.zone import Zone, ZoneFullError, ZoneLockUnavailable

NOW = 1_000


@pytest.fixture
def zones() -> Iterator[list[Zone]]:
    """Zones appended here are closed after the test (their memfds and lock fds)."""
    created: list[Zone] = []
    yield created
    for zone in created:
        zone.close()


def srv(port: int, weight: int = 1) -> UpstreamServer:
    return UpstreamServer(Address("inet", "127.0.0.1", port), f"127.0.0.1:{port}", weight=weight)


def word(zone: Zone, slot: int, field: int) -> int:
    return int(zone.mv[L.peer_base(slot) + field])


def active(zone: Zone, row: int, slot: int) -> int:
    return int(zone.mv[L.active_index(row, zone.peers, slot)])


# ---- layout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 3, 8])
@pytest.mark.parametrize("peers", [1, 2, 5, 17])
def test_size_for_and_peer_capacity_are_inverse(peers: int, rows: int) -> None:
    size = L.size_for(peers, rows)
    assert size % 8 == 0
    assert L.peer_capacity(size, rows) == peers
    assert L.peer_capacity(size + 7, rows) == peers  # a partial word holds nothing
    assert L.peer_capacity(size - 8, rows) == peers - 1  # one word short: one peer less
    assert L.peer_capacity(size + 8 * (L.PEER_WORDS + L.ROW_PEER_WORDS * rows), rows) == peers + 1
    assert L.size_for(L.peer_capacity(size, rows), rows) <= size


def test_peer_capacity_of_a_tiny_zone_is_zero() -> None:
    assert L.peer_capacity(0, 4) == 0
    assert L.peer_capacity(8 * (L.HEADER_WORDS + 4 * L.ROW_HEADER_WORDS), 4) == 0


@pytest.mark.parametrize(("peers", "rows"), [(1, 1), (1, 3), (3, 1), (3, 4), (6, 2)])
def test_regions_do_not_overlap_and_fill_the_zone(peers: int, rows: int) -> None:
    owner: dict[int, str] = {}

    def claim(index: int, what: str) -> None:
        assert index not in owner, f"{what} overlaps {owner[index]} at word {index}"
        owner[index] = what

    for i in range(L.HEADER_WORDS):
        claim(i, "header")
    for slot in range(peers):
        for i in range(L.PEER_WORDS):
            claim(L.peer_base(slot) + i, f"peer {slot}")
    for row in range(rows):
        for i in range(L.ROW_HEADER_WORDS):
            claim(L.row_base(row, peers) + i, f"row {row} header")
        for slot in range(peers):
            claim(L.active_index(row, peers, slot), f"row {row} active[{slot}]")
            claim(L.inflight_index(row, peers, slot), f"row {row} inflight[{slot}]")
    assert sorted(owner) == list(range(L.size_for(peers, rows) // 8))


def test_field_indexes_fit_their_records() -> None:
    assert max(L.H_MAGIC, L.H_VERSION, L.H_ROWS, L.H_PEERS, L.H_SIZE, L.H_DROPPED_GONE) < L.HEADER_WORDS
    assert L.P_KEY_HASH < L.P_S_1XX  # state words come before the statistics
    assert L.P_S_CODES + len(L.CODES) <= L.PEER_WORDS
    assert max(L.R_PID, L.R_GENERATION, L.R_SLOT, L.R_HEARTBEAT_NS, L.R_DRAINING) < L.ROW_HEADER_WORDS


# ---- Zone: header and peer records -----------------------------------------------------------------


def test_create_writes_the_header(zones: list[Zone]) -> None:
    size = L.size_for(5, 3)
    zone = Zone.create(size, rows=3)
    zones.append(zone)
    mv = zone.mv
    assert (mv[L.H_MAGIC], mv[L.H_VERSION], mv[L.H_ROWS], mv[L.H_PEERS], mv[L.H_SIZE]) == (
        L.MAGIC,
        L.VERSION,
        3,
        5,
        size,
    )
    assert (zone.rows, zone.peers, zone.size) == (3, 5, size)
    assert len(mv) == size // 8
    assert all(v == 0 for v in mv[L.HEADER_WORDS :].tolist())


def test_for_peers_makes_a_zone_just_big_enough(zones: list[Zone]) -> None:
    zone = Zone.for_peers(4, rows=2)
    zones.append(zone)
    assert (zone.peers, zone.rows, zone.size) == (4, 2, L.size_for(4, 2))


def test_create_rejects_a_zone_without_room_for_one_peer() -> None:
    with pytest.raises(ZoneFullError):
        Zone.create(L.size_for(1, 4) - 8, rows=4)


def test_attaching_to_the_memfd_reads_the_header_and_shares_the_words(zones: list[Zone]) -> None:
    zone = Zone.for_peers(3, rows=2)
    zones.append(zone)
    other = Zone(os.dup(zone.fd), zone.size)
    zones.append(other)
    assert (other.rows, other.peers) == (2, 3)
    with zone:
        zone.init_peer(1, 4)
    assert other.mv[L.peer_base(1) + L.P_EW] == 4


def test_init_peer_resets_the_record_and_its_active_cells(zones: list[Zone]) -> None:
    zone = Zone.for_peers(2, rows=3)
    zones.append(zone)
    mv = zone.mv
    with zone:
        for i in range(L.PEER_WORDS):  # stale state of a previous owner of the slot
            mv[L.peer_base(1) + i] = 99
        for row in range(3):
            mv[L.active_index(row, zone.peers, 1)] = 7
            mv[L.active_index(row, zone.peers, 0)] = 5
        zone.init_peer(1, 3)
    record = mv[L.peer_base(1) : L.peer_base(1) + L.PEER_WORDS].tolist()
    expected = [0] * L.PEER_WORDS
    expected[L.P_USED] = 1
    expected[L.P_EW] = 3
    expected[L.P_RT_MS] = -1
    assert record == expected
    assert [active(zone, row, 1) for row in range(3)] == [0, 0, 0]
    assert [active(zone, row, 0) for row in range(3)] == [5, 5, 5]  # other slots untouched


@pytest.mark.parametrize(("ew", "weight", "after"), [(5, 3, 3), (2, 3, 2), (3, 3, 3), (0, 1, 0)])
def test_reweigh_peer_clamps_the_effective_weight(
    zones: list[Zone], ew: int, weight: int, after: int
) -> None:
    zone = Zone.for_peers(1)
    zones.append(zone)
    with zone:
        zone.init_peer(0, 5)
        zone.mv[L.peer_base(0) + L.P_EW] = ew
        zone.reweigh_peer(0, weight)
    assert word(zone, 0, L.P_EW) == after
    assert word(zone, 0, L.P_USED) == 1


def test_free_peer_clears_only_the_used_flag(zones: list[Zone]) -> None:
    zone = Zone.for_peers(1)
    zones.append(zone)
    with zone:
        zone.init_peer(0, 2)
        zone.free_peer(0)
    assert (word(zone, 0, L.P_USED), word(zone, 0, L.P_EW)) == (0, 2)


# ---- the lock --------------------------------------------------------------------------------------


def wait_readable(fd: int, timeout: float = 5.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "child did not report in time"
    return os.read(fd, 1)


def flock_nb(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def test_a_killed_holder_never_leaves_the_zone_locked(zones: list[Zone]) -> None:
    zone = Zone.for_peers(1, lock="flock")
    zones.append(zone)
    zone.lock()  # gives the parent its own lock fd
    zone.unlock()
    parent_fd = zone._lock_fd
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            zone.lock()  # re-opens its own lock fd: a separate lock owner
            os.write(w, b"L" if zone._lock_fd != parent_fd else b"S")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert wait_readable(r) == b"L"
        assert not flock_nb(parent_fd)  # held by the child
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    deadline = time.monotonic() + 5
    while not flock_nb(parent_fd):
        assert time.monotonic() < deadline, "lock still held after the holder was killed"
        time.sleep(0.005)
    fcntl.flock(parent_fd, fcntl.LOCK_UN)
    with zone:  # the normal path works too
        pass


def test_the_lock_excludes_another_process(zones: list[Zone]) -> None:
    zone = Zone.for_peers(1, lock="flock")
    zones.append(zone)
    r, w = os.pipe()
    with zone:
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                fd = zone._ensure_lock_fd()
                os.write(w, b"1" if flock_nb(fd) else b"0")
            finally:
                os._exit(0)
        os.close(w)
        try:
            assert wait_readable(r) == b"0"
        finally:
            os.waitpid(pid, 0)
            os.close(r)


needs_native = pytest.mark.skipif(zone_module._native is None, reason="C extension not built, or pure")


def in_child(fn: Callable[[], bytes], timeout: float = 10.0) -> bytes:
    """Run ``fn`` in a forked child; its one-byte answer, or b"" if it did not answer in time
    (the child is then killed: a lock that never comes back fails the test, not the suite)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, fn())
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        return os.read(r, 1) if ready else b""
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)


@needs_native
def test_the_futex_lock_names_its_holder_and_excludes_another_process(zones: list[Zone]) -> None:
    """The futex word holds the holder's pid (the child's own after fork, not the parent's
    cached one) and a second process waits until it is released."""
    zone = Zone.for_peers(1)
    zones.append(zone)
    assert zone.lock_kind == "futex" and zone.lock_holder() == 0
    r, w = os.pipe()
    zone.lock()
    assert zone.lock_holder() == os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            zone.lock()
            os.write(w, b"L" if zone.lock_holder() == os.getpid() else b"P")
            zone.unlock()
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 0.3)
        assert not ready, "the child got the lock while the parent held it"
        zone.unlock()
        assert wait_readable(r) == b"L"
    finally:
        os.waitpid(pid, 0)
        os.close(r)
    assert zone.lock_holder() == 0


@needs_native
def test_a_killed_futex_holder_is_taken_over_even_as_a_zombie(zones: list[Zone]) -> None:
    """A holder SIGKILLed inside the critical section and not reaped yet (a zombie: the
    master may itself be the waiter) does not lock the others out."""
    zone = Zone.for_peers(1)
    zones.append(zone)
    r, w = os.pipe()
    holder = os.fork()
    if holder == 0:
        try:
            os.close(r)
            zone.lock()
            os.write(w, b"L")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert wait_readable(r) == b"L"
        assert zone.lock_holder() == holder
        os.kill(holder, signal.SIGKILL)
        wait_for_zombie(holder)

        def take() -> bytes:
            zone.lock()
            return b"T" if zone.lock_holder() == os.getpid() else b"?"

        assert in_child(take) == b"T", "a dead holder's lock was never taken over"
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        os.close(r)
    zone.lock()  # the lock word is usable again after the take-over
    zone.unlock()


def wait_for_zombie(pid: int) -> None:
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.005)


@needs_native
def test_release_row_breaks_the_hold_of_the_dead_worker_it_repairs(zones: list[Zone]) -> None:
    """The master repairing a dead worker's row releases a futex lock still recorded as
    that worker's, even when its pid already belongs to a live process again."""
    zone = Zone.for_peers(1, rows=2)
    zones.append(zone)
    zone.claim_row(0, 1, 0)
    live = os.getppid()  # stands for a reused pid: alive, but not a holder any more
    zone.set_row_pid(0, live)
    zone.mv[L.H_LOCK] = live  # what the dead worker left in the word

    def repair() -> bytes:
        zone.release_row(0)
        return b"R"

    assert in_child(repair) == b"R", "release_row waited for a lock its dead worker held"


@needs_native
def test_a_zone_keeps_the_lock_kind_its_creator_chose(
    zones: list[Zone], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process sharing a zone uses one lock: attaching (a binary upgrade's new master)
    follows the header, and a build without the extension refuses a futex zone instead of
    locking with flock beside processes that use the futex word."""
    futex, flock = Zone.for_peers(1), Zone.for_peers(1, lock="flock")
    zones += [futex, flock]
    assert Zone(futex.fd, futex.size).lock_kind == "futex"
    assert Zone(flock.fd, flock.size).lock_kind == "flock"
    monkeypatch.setattr(zone_module, "_native", None)
    with pytest.raises(ZoneLockUnavailable):
        Zone(futex.fd, futex.size)
    assert Zone(flock.fd, flock.size).lock_kind == "flock"


# ---- repair after a worker died --------------------------------------------------------------------


def two_workers(zones: list[Zone], claim: bool = True) -> tuple[Zone, PeerGroup, PeerGroup]:
    """Peers a, b in slots 0, 1 of a two-row zone; one PeerGroup per worker row."""
    upstream = UpstreamConfig("u", "round_robin", (srv(24081), srv(24082)))
    zone = Zone.for_peers(2, rows=2)
    zones.append(zone)
    with zone:
        zone.init_peer(0, 1)
        zone.init_peer(1, 1)
    if claim:
        zone.claim_row(0, 1, 0)
        zone.set_row_pid(0, 1001)
        zone.claim_row(1, 1, 1)
        zone.set_row_pid(1, 1002)
    g0 = PeerGroup.build(upstream, zone, [0, 1], 0)
    g1 = PeerGroup.build(upstream, zone, [0, 1], 1)
    return zone, g0, g1


def hold(group: PeerGroup, index: int, n: int) -> None:
    with group.zone:
        for _ in range(n):
            take(new_selection(group, 0), group.primary.peers[index], NOW)


def test_release_row_recounts_connections_from_the_live_rows(zones: list[Zone]) -> None:
    zone, g0, g1 = two_workers(zones)
    hold(g0, 0, 2)
    hold(g0, 1, 1)
    hold(g1, 0, 3)
    hold(g1, 1, 4)
    a0, b0 = g0.primary.peers
    assert (a0.conns, b0.conns) == (5, 5)
    assert [active(zone, 0, s) for s in (0, 1)] == [2, 1]
    assert [active(zone, 1, s) for s in (0, 1)] == [3, 4]
    zone.release_row(1)
    assert (a0.conns, b0.conns) == (2, 1)
    assert zone.row_pid(1) == 0
    assert [active(zone, 1, s) for s in (0, 1)] == [0, 0]
    assert [active(zone, 0, s) for s in (0, 1)] == [2, 1]
    # the survivor keeps working: releasing its own requests brings the peer to 0, not below
    sel = new_selection(g0, 0)
    with zone:
        for _ in range(2):
            free(sel, a0, False, NOW)
    assert a0.conns == 0
    assert zone.mv[L.peer_base(0) + L.P_FAILS] == 0


def test_release_row_is_exact_when_killed_between_the_global_and_row_counts(zones: list[Zone]) -> None:
    zone, g0, g1 = two_workers(zones)
    hold(g0, 0, 1)
    hold(g1, 0, 2)
    mv = zone.mv
    with zone:
        mv[L.peer_base(0) + L.P_CONNS] += 1  # worker 1 killed after the global increment of a take
    assert g0.primary.peers[0].conns == 4
    assert active(zone, 1, 0) == 2
    zone.release_row(1)
    assert g0.primary.peers[0].conns == 1
    assert g0.primary.peers[1].conns == 0


def test_release_row_after_a_half_done_free(zones: list[Zone]) -> None:
    zone, g0, g1 = two_workers(zones)
    hold(g0, 1, 2)
    hold(g1, 1, 2)
    with zone:
        zone.mv[L.peer_base(1) + L.P_CONNS] -= 1  # worker 1 killed between the two decrements
    assert g0.primary.peers[1].conns == 3
    zone.release_row(1)
    assert g0.primary.peers[1].conns == 2


def test_rows_claimed_but_not_yet_bound_count_as_live(zones: list[Zone]) -> None:
    zone, g0, g1 = two_workers(zones, claim=False)
    zone.claim_row(0, 1, 0)  # pid -1: forked, pid not recorded yet
    zone.claim_row(1, 1, 1)
    zone.set_row_pid(1, 2002)
    hold(g0, 0, 2)
    hold(g1, 0, 1)
    zone.release_row(1)
    assert g0.primary.peers[0].conns == 2


def test_recount_ignores_free_slots(zones: list[Zone]) -> None:
    zone, _, g1 = two_workers(zones)
    hold(g1, 1, 1)
    with zone:
        zone.free_peer(1)
        zone.mv[L.peer_base(1) + L.P_CONNS] = 42
    zone.release_row(0)
    assert word(zone, 1, L.P_CONNS) == 42


def test_release_row_drops_a_dead_workers_inflight_start_times(zones: list[Zone]) -> None:
    upstream = UpstreamConfig("u", "least_time", (srv(24081), srv(24082)), least_time_inflight=True)
    zone = Zone.for_peers(2, rows=2)
    zones.append(zone)
    with zone:
        zone.init_peer(0, 1)
        zone.init_peer(1, 1)
    for row in (0, 1):
        zone.claim_row(row, 1, row)
        zone.set_row_pid(row, 3000 + row)
    g0 = PeerGroup.build(upstream, zone, [0, 1], 0)
    g1 = PeerGroup.build(upstream, zone, [0, 1], 1)
    b0, b1 = make_balancer(upstream, g0, compile_template), make_balancer(upstream, g1, compile_template)
    assert isinstance(b0, LeastTime) and isinstance(b1, LeastTime)
    a0 = g0.primary.peers[0]
    with zone:  # one finished request each at NOW: "checked" is recent, no halving of the averages
        for p in g0.primary.peers:
            sel = new_selection(g0, 0)
            take(sel, p, NOW)
            free(sel, p, False, NOW)
    record_time(a0, 20)  # eta 40
    record_time(g0.primary.peers[1], 100)  # eta 120
    with zone:
        dead = b1.pick(new_selection(g1, 0), None, NOW)  # worker 1 starts a request on a, then dies
    assert dead is not None and dead.slot == 0
    zone.release_row(1)
    assert a0.conns == 0
    # worker 0 starts a request on a 5 s later; 1 s after that its in-flight age is 1000 ms
    sel = new_selection(g0, 0)
    later = NOW + 5
    with zone:
        got = b0.pick(sel, None, later)
    assert got is a0
    with zone:
        # rt = max(20, 1000) -> 1000 + 20 bucket, times (1 + 1 conn)
        assert b0.eta(a0, later + 1) == 2040
        release_inflight(a0, sel)
        free(sel, a0, False, later + 1)


# ---- SlotTable -------------------------------------------------------------------------------------


def load(tmp_path: Path, upstreams: dict[str, list[str]], file: str = "lb.toml") -> Config:
    """A config with the given upstreams; each server is the inside of a TOML inline table."""
    lines = []
    for up, servers in upstreams.items():
        lines.append(f"[http.upstreams.{up}]")
        lines.append("servers = [")
        lines.extend(f"  {{ {s} }}," for s in servers)
        lines.append("]")
    path = tmp_path / file
    path.write_text(textwrap.dedent("\n".join(lines)) + "\n")
    return load_config(str(path))


A = 'address = "127.0.0.1:24081"'
B = 'address = "127.0.0.1:24082"'
C = 'address = "127.0.0.1:24083"'
D = 'address = "127.0.0.1:24084"'


def keys(config: Config, up: str = "u") -> list[str]:
    return peer_keys(config.http.upstreams[up])


def test_peer_keys_are_unique_and_ordinal_for_repeated_servers(tmp_path: Path) -> None:
    config = load(tmp_path, {"u": [A, A, f"{A}, backup = true", B], "v": [A]})
    ku, kv = keys(config), keys(config, "v")
    assert len(set(ku + kv)) == 5
    assert ku[0] != ku[1]  # same server twice: ordinals 0 and 1


def test_assign_gives_every_peer_a_slot_initialised_with_its_weight(
    tmp_path: Path, zones: list[Zone]
) -> None:
    zone = Zone.for_peers(4)
    zones.append(zone)
    table = SlotTable(zone)
    config = load(tmp_path, {"u": [f"{A}, weight = 3", B], "v": [C]})
    slots = table.assign(config, 1)
    assert sorted(slots.values()) == [0, 1, 2]
    ka, kb = keys(config)
    (kc,) = keys(config, "v")
    assert [word(zone, slots[k], L.P_EW) for k in (ka, kb, kc)] == [3, 1, 1]
    assert all(word(zone, s, L.P_USED) == 1 and word(zone, s, L.P_RT_MS) == -1 for s in slots.values())
    assert table.free_slots() == [3]
    # PeerGroup.build with these slots sees the records
    up = config.http.upstreams["u"]
    group = PeerGroup.build(up, zone, [slots[k] for k in keys(config)], 0)
    assert [p.effective_weight for p in group.primary.peers] == [3, 1]


def test_a_reload_keeps_the_slot_and_state_of_unchanged_peers(tmp_path: Path, zones: list[Zone]) -> None:
    zone = Zone.for_peers(3)
    zones.append(zone)
    table = SlotTable(zone)
    first = load(tmp_path, {"u": [f"{A}, weight = 2", B]}, "one.toml")
    s1 = table.assign(first, 1)
    ka, kb = keys(first)
    with zone:  # live state written by workers of generation 1
        for field, value in ((L.P_CONNS, 3), (L.P_FAILS, 1), (L.P_CW, 7), (L.P_CHECKED, 900)):
            zone.mv[L.peer_base(s1[ka]) + field] = value
        zone.mv[L.peer_base(s1[kb]) + L.P_CONNS] = 5
    second = load(tmp_path, {"u": [f"{A}, weight = 2", C]}, "two.toml")  # b removed, c new
    s2 = table.assign(second, 2)
    assert keys(second)[0] == ka
    kc = keys(second)[1]
    assert s2[ka] == s1[ka]
    a = s2[ka]
    assert [word(zone, a, f) for f in (L.P_CONNS, L.P_FAILS, L.P_CW, L.P_CHECKED, L.P_EW)] == [
        3,
        1,
        7,
        900,
        2,
    ]
    # b's slot is retiring (generation 1 may still use it): not reused for c, its state intact
    assert kb not in s2
    assert table.retiring == [(1, [s1[kb]])]
    assert s2[kc] not in (s1[ka], s1[kb])
    assert word(zone, s1[kb], L.P_USED) == 1 and word(zone, s1[kb], L.P_CONNS) == 5
    # c is fresh
    assert [word(zone, s2[kc], f) for f in (L.P_USED, L.P_EW, L.P_CONNS, L.P_RT_MS)] == [1, 1, 0, -1]
    assert table.free_slots() == []


def test_retired_slots_are_freed_only_when_no_older_generation_is_alive(
    tmp_path: Path, zones: list[Zone]
) -> None:
    zone = Zone.for_peers(3)
    zones.append(zone)
    table = SlotTable(zone)
    first = load(tmp_path, {"u": [A, B]}, "one.toml")
    s1 = table.assign(first, 1)
    kb = keys(first)[1]
    table.assign(load(tmp_path, {"u": [A]}, "two.toml"), 2)
    assert table.retiring == [(1, [s1[kb]])]
    table.release_retired(1)  # a generation-1 worker is still alive
    assert table.retiring == [(1, [s1[kb]])]
    assert word(zone, s1[kb], L.P_USED) == 1
    assert s1[kb] not in table.free_slots()
    table.release_retired(2)
    assert table.retiring == []
    assert word(zone, s1[kb], L.P_USED) == 0
    assert s1[kb] in table.free_slots()
    # a new peer may now take the slot, with a clean record
    with zone:
        zone.mv[L.peer_base(s1[kb]) + L.P_CONNS] = 9
    third = load(tmp_path, {"u": [A, f"{D}, weight = 4"]}, "three.toml")
    s3 = table.assign(third, 3)
    kd = keys(third)[1]
    assert s3[kd] in (s1[kb], 2)
    assert [word(zone, s3[kd], f) for f in (L.P_USED, L.P_EW, L.P_CONNS)] == [1, 4, 0]


def test_release_retired_without_live_workers_frees_everything(tmp_path: Path, zones: list[Zone]) -> None:
    zone = Zone.for_peers(3)
    zones.append(zone)
    table = SlotTable(zone)
    s1 = table.assign(load(tmp_path, {"u": [A, B, C]}, "one.toml"), 1)
    table.assign(load(tmp_path, {"u": [A]}, "two.toml"), 2)
    table.release_retired(None)
    assert table.retiring == []
    assert sorted(table.free_slots()) == sorted(s for s in s1.values() if s != min(s1.values()))


def test_reweighing_on_reload_clamps_the_effective_weight(tmp_path: Path, zones: list[Zone]) -> None:
    zone = Zone.for_peers(2)
    zones.append(zone)
    table = SlotTable(zone)
    s1 = table.assign(load(tmp_path, {"u": [f"{A}, weight = 5", f"{B}, weight = 1"]}, "one.toml"), 1)
    ka, kb = list(s1)
    s2 = table.assign(load(tmp_path, {"u": [f"{A}, weight = 2", f"{B}, weight = 3"]}, "two.toml"), 2)
    assert s2 == s1  # the weight is not part of the identity
    assert word(zone, s1[ka], L.P_EW) == 2  # lowered to the new weight
    assert word(zone, s1[kb], L.P_EW) == 1  # raised weights recover through selection passes


def test_snapshot_restore_undoes_an_assign(tmp_path: Path, zones: list[Zone]) -> None:
    zone = Zone.for_peers(4)
    zones.append(zone)
    table = SlotTable(zone)
    first = load(tmp_path, {"u": [A, B]}, "one.toml")
    s1 = table.assign(first, 1)
    snap = table.snapshot()
    free_before = table.free_slots()
    table.assign(load(tmp_path, {"u": [A, C, D]}, "two.toml"), 2)
    assert table.retiring and table.free_slots() != free_before
    table.restore(snap)
    assert table.by_key == s1
    assert table.retiring == []
    assert table.free_slots() == free_before
    # the snapshot is a copy: later assigns do not change it
    table.assign(load(tmp_path, {"u": [A]}, "three.toml"), 2)
    assert snap[0] == s1 and snap[1] == []
    table.restore(snap)
    # and b kept its state through the undone reload
    assert word(zone, s1[keys(first)[1]], L.P_USED) == 1


def test_too_many_peers_raise_zone_full_without_changing_anything(tmp_path: Path, zones: list[Zone]) -> None:
    zone = Zone.for_peers(3)
    zones.append(zone)
    table = SlotTable(zone)
    s1 = table.assign(load(tmp_path, {"u": [A, B]}, "one.toml"), 1)
    before = zone.mv.tobytes()
    big = load(tmp_path, {"u": [A, B, C, D]}, "two.toml")
    with pytest.raises(ZoneFullError, match="room for 3 peers"):
        table.assign(big, 2)
    assert table.by_key == s1
    assert table.retiring == []
    assert zone.mv.tobytes() == before


def test_a_removed_peers_slot_is_not_reusable_in_the_same_reload(tmp_path: Path, zones: list[Zone]) -> None:
    """Old workers may still use c's slot, so replacing c by d needs a fourth slot."""
    zone = Zone.for_peers(3)
    zones.append(zone)
    table = SlotTable(zone)
    s1 = table.assign(load(tmp_path, {"u": [A, B, C]}, "one.toml"), 1)
    with pytest.raises(ZoneFullError):
        table.assign(load(tmp_path, {"u": [A, B, D]}, "two.toml"), 2)
    assert table.by_key == s1 and table.retiring == []


# ---- RowTable --------------------------------------------------------------------------------------


def row_word(zone: Zone, row: int, field: int) -> int:
    return int(zone.mv[L.row_base(row, zone.peers) + field])


def test_rows_claim_bind_release_and_reuse(zones: list[Zone]) -> None:
    zone = Zone.for_peers(2, rows=2)
    zones.append(zone)
    rows = RowTable(zone)
    r0 = rows.claim(generation=1, worker_slot=0)
    assert r0 == 0
    assert zone.row_pid(0) == -1  # live before the pid is known
    assert (row_word(zone, 0, L.R_GENERATION), row_word(zone, 0, L.R_SLOT)) == (1, 0)
    assert row_word(zone, 0, L.R_STARTED_MS) > 0 and row_word(zone, 0, L.R_HEARTBEAT_NS) > 0
    assert rows.pending == {0}
    r1 = rows.claim(generation=1, worker_slot=1)
    assert r1 == 1
    with pytest.raises(ZoneFullError):
        rows.claim(generation=1, worker_slot=2)
    rows.bind(0, 4242)
    assert zone.row_pid(0) == 4242
    assert rows.pending == {1}
    assert rows.by_pid == {4242: 0}
    rows.bind(1, 4243)
    with pytest.raises(ZoneFullError):
        rows.claim(generation=2, worker_slot=0)
    rows.release(4242)
    assert zone.row_pid(0) == 0
    assert row_word(zone, 0, L.R_GENERATION) == 0
    assert rows.by_pid == {4243: 1}
    assert rows.claim(generation=2, worker_slot=0) == 0  # reused
    assert zone.row_pid(0) == -1 and row_word(zone, 0, L.R_GENERATION) == 2
    rows.release(99999)  # unknown pid: nothing happens
    assert zone.row_pid(1) == 4243


def test_claiming_a_reused_row_clears_its_active_cells(zones: list[Zone]) -> None:
    zone = Zone.for_peers(2, rows=1)
    zones.append(zone)
    rows = RowTable(zone)
    with zone:
        zone.mv[L.active_index(0, zone.peers, 1)] = 6  # left by an earlier owner
    assert rows.claim(1, 0) == 0
    assert active(zone, 0, 1) == 0


def test_releasing_a_workers_row_recounts_its_connections(zones: list[Zone]) -> None:
    upstream = UpstreamConfig("u", "round_robin", (srv(24081), srv(24082)))
    zone = Zone.for_peers(2, rows=2)
    zones.append(zone)
    with zone:
        zone.init_peer(0, 1)
        zone.init_peer(1, 1)
    rows = RowTable(zone)
    r0, r1 = rows.claim(1, 0), rows.claim(1, 1)
    rows.bind(r0, 500)
    rows.bind(r1, 501)
    g0 = PeerGroup.build(upstream, zone, [0, 1], r0)
    g1 = PeerGroup.build(upstream, zone, [0, 1], r1)
    hold(g0, 0, 1)
    hold(g1, 0, 2)
    hold(g1, 1, 1)
    a: Peer = g0.primary.peers[0]
    assert a.conns == 3
    rows.release(501)
    assert (a.conns, g0.primary.peers[1].conns) == (1, 0)


def test_a_zone_of_another_layout_version_is_refused() -> None:
    """A binary upgrade across layout versions (3: 72-word peer records with the health-check
    words) would read every peer at the wrong offset; the new master refuses the zone."""
    from prefork_lb.zone.zone import ZoneVersionError

    zone = Zone.for_peers(2)
    try:
        zone.mv[L.H_VERSION] = 2
        with pytest.raises(ZoneVersionError, match="layout version 2"):
            Zone(os.dup(zone.fd), zone.size)
    finally:
        zone.close()
