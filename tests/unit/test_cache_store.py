"""The cache store (issue 18): config, the shared index, entry files, CacheZone.

Real files in tmp_path, real shared mappings and real forked processes for the lock; no
mocks. Each test says what it catches.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from prefork_lb.cache import entry as E
from prefork_lb.cache import index as I
from prefork_lb.cache.store import CacheZone, key_md5, walk_entries
from prefork_lb.config.model import CachePathConfig
from prefork_lb.zone.zone import Zone
from tests.unit.test_config import error, load, make

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"


def now_ms() -> int:
    return int(time.time() * 1000)


def md5(text: str) -> bytes:
    return hashlib.md5(text.encode()).digest()


@pytest.fixture(params=["futex", "flock"])
def index(request: pytest.FixtureRequest) -> I.CacheIndex:
    """Both lock kinds (the flock one borrows the shared zone's lock, as a pure build)."""
    if request.param == "futex" and I._load_native() is None:
        pytest.skip("no compiled extension")
    zone = Zone.for_peers(1, lock="flock")
    idx = I.CacheIndex(16384, zone, lock=request.param)
    assert idx.lock_kind == request.param
    return idx


def make_zone(tmp_path: Path, levels: tuple[int, ...] = (1, 2), size: int = 65536) -> CacheZone:
    cp = CachePathConfig("c", str(tmp_path / "cache"), levels, size)
    os.makedirs(os.path.join(cp.path, "tmp"))
    return CacheZone(cp, I.CacheIndex(size, Zone.for_peers(1, lock="flock")))


def store(zone: CacheZone, key: bytes, body: bytes = b"hello", valid_s: int = 60) -> None:
    w = zone.writer(key, E.EntryMeta(valid_until_ms=now_ms() + valid_s * 1000, etag=b'"v1"'), HEAD)
    assert w is not None
    w.write(body)
    assert w.commit(len(body))


# ---- config ---------------------------------------------------------------------------------


CACHE = """[http.proxy_cache_paths.mycache]
path = "cache/mycache"
levels = "1:2"
keys_zone = "10m"
inactive = "60m"
max_size = "1g"
min_free = "100m"
"""


def test_cache_path_config_loads_relative_to_the_prefix(tmp_path: Path) -> None:
    cfg = load(tmp_path, make(http=CACHE), prefix=str(tmp_path))
    cp = cfg.http.cache_paths["mycache"]
    assert cp.path == str(tmp_path / "cache" / "mycache")
    assert (cp.levels, cp.keys_zone_bytes, cp.inactive_s) == ((1, 2), 10 << 20, 3600.0)
    assert (cp.max_size_bytes, cp.min_free_bytes) == (1 << 30, 100 << 20)
    assert I.slots_for(1 << 20) * 3 // 4 == 8187  # "about 8000 keys per MB", as nginx


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('levels = "1:2"\nlevels = "3"', "proxy_cache_paths.mycache.levels: must be 1 to 3 levels"),
        ('levels = "1:2"\nlevels = "1:2:2:1"', "levels: must be 1 to 3 levels"),
        ('inactive = "60m"\ninactive = "soon"', "proxy_cache_paths.mycache.inactive: invalid duration"),
        (
            'min_free = "100m"\nmax_sise = 1',
            'proxy_cache_paths.mycache.max_sise: unknown key (did you mean "max_size"?)',
        ),
    ],
)
def test_cache_path_config_errors_name_file_and_key(tmp_path: Path, extra: str, message: str) -> None:
    old, new = extra.split("\n")
    text = error(tmp_path, make(http=CACHE.replace(old, new)))
    assert message in text and "lb.toml" in text


def test_cache_path_config_errors_zone_and_path(tmp_path: Path) -> None:
    no_zone = '[http.proxy_cache_paths.a]\npath = "x"\n'
    assert "proxy_cache_paths.a.keys_zone: is required" in error(tmp_path, make(http=no_zone))
    tiny = '[http.proxy_cache_paths.a]\npath = "x"\nkeys_zone = "1k"\n'
    assert "keys_zone: is too small" in error(tmp_path, make(http=tiny))
    named = '[http.proxy_cache_paths.a]\npath = "x"\nkeys_zone = "a:1m"\n'
    assert "keys_zone: is the size only" in error(tmp_path, make(http=named))
    twice = CACHE + '[http.proxy_cache_paths.other]\npath = "cache/mycache/"\nkeys_zone = "1m"\n'
    assert "duplicate cache path" in error(tmp_path, make(http=twice))


def test_startup_check_creates_the_directory_and_fails_on_one_it_cannot_create(tmp_path: Path) -> None:
    """-t / startup: the directory and tmp/ are made; a path under a regular file fails, named."""
    from prefork_lb.preflight import StartupError, check_startup

    cfg = load(tmp_path, make(http=CACHE), prefix=str(tmp_path))
    check_startup(cfg)
    assert (tmp_path / "cache" / "mycache" / "tmp").is_dir()
    (tmp_path / "file").write_text("x")
    bad = load(tmp_path, make(http=CACHE.replace("cache/mycache", "file/sub")), prefix=str(tmp_path))
    with pytest.raises(
        StartupError, match=r'mkdir\(\) ".*file/sub" failed .*http.proxy_cache_paths.mycache.path'
    ):
        check_startup(bad)


# ---- the index ------------------------------------------------------------------------------


def test_index_matches_a_dict_through_inserts_and_deletes(index: I.CacheIndex) -> None:
    """Open addressing with backward-shift deletion: after random inserts and removals every
    present key is found and every removed one is not (catches a broken cluster shift)."""
    rng = random.Random(7)
    present: set[bytes] = set()
    keys = [md5(str(i)) for i in range(index.max_entries)]
    for step in range(4000):
        k = rng.choice(keys)
        if k in present and rng.random() < 0.5:
            assert index.remove(k, force=True)
            present.discard(k)
        else:
            index.use(k, step)
            present.add(k)
        if step % 97 == 0:
            assert {k for k in keys if index.peek(k) is not None} == present
    assert index.entries == len(present)


def test_index_uses_size_and_exists(index: I.CacheIndex) -> None:
    k = md5("a")
    assert index.use(k, 1)[0].uses == 1
    view, _ = index.use(k, 2)
    assert (view.uses, view.exists) == (2, False)
    index.set_exists(k, 8192, 99, 3)
    index.set_exists(k, 4096, 99, 3)  # replaced: counted once
    assert index.size_on_disk == 4096
    assert index.peek(k).exists  # type: ignore[union-attr]
    index.clear_exists(k)
    assert index.size_on_disk == 0 and not index.peek(k).exists  # type: ignore[union-attr]


def test_a_full_index_forces_out_the_least_recently_used(index: I.CacheIndex) -> None:
    keys = [md5(f"k{i}") for i in range(index.max_entries)]
    for t, k in enumerate(keys):
        index.use(k, 1000 + t)
    _, evicted = index.use(md5("new"), 99999)
    assert evicted is not None and evicted in keys
    assert index.entries == index.max_entries
    assert index.peek(md5("new")) is not None and index.peek(evicted) is None


def test_lock_is_exclusive_until_unlocked_or_lock_age(index: I.CacheIndex) -> None:
    k = md5("k")
    assert index.try_lock(k, 1000, 5000)
    assert not index.try_lock(k, 2000, 5000)
    assert index.is_locked(k, 2000)
    assert index.try_lock(k, 6001, 5000)  # lock_age passed: a holder that died cannot wedge it
    index.release(k)
    assert not index.is_locked(k, 6002)
    assert index.try_lock(k, 6002, 5000)


def test_counters(index: I.CacheIndex) -> None:
    index.count("hit", 10)
    index.count("hit", 5)
    index.count("miss", 7, written=True)
    c = index.counters()
    assert c["hit"] == (2, 15, 0, 0) and c["miss"] == (0, 0, 1, 7)


def test_worker_counter_rows_are_lock_free_and_summed(tmp_path: Path) -> None:
    """index.py rule 7: three forked "workers" count 20000 HITs each at once into their own
    rows with no lock, a "respawned" one continues row 1, a process without a row counts
    under the lock; the API's sums are exact and each row holds only its writer's counts
    (rows that overlapped, or a row cleared at respawn, lose counts here)."""
    zone = Zone.for_peers(1, rows=4, lock="flock")
    indexes = I.IndexSet(zone).for_paths({"c": CachePathConfig("c", str(tmp_path / "c"), (1,), 65536)})
    idx = indexes["c"]
    assert idx.rows == zone.rows == 4
    cp = CachePathConfig("c", str(tmp_path / "c"), (1,), 65536)
    go_r, go_w = os.pipe()
    n = 20000

    def worker(row: int, hits: int) -> int:
        pid = os.fork()
        if pid == 0:
            os.read(go_r, 1)
            cz = CacheZone(cp, idx, row)
            for _ in range(hits):
                cz.count("hit", 3)
            cz.count_written("miss", 11)
            cz.count("miss", 11)
            os._exit(0)
        return pid

    pids = [worker(row, n) for row in (0, 1, 2)]
    os.write(go_w, b"xxx")
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    respawn = worker(1, 5)
    os.write(go_w, b"x")
    assert os.waitpid(respawn, 0)[1] == 0
    CacheZone(cp, idx).count("hit", 100)  # no row: the header's words, under the lock
    CacheZone(cp, idx, zone.rows).count("stale", 1)  # a row the index has none for: the same
    c = idx.counters()
    assert c["hit"] == (3 * n + 5 + 1, 3 * (3 * n + 5) + 100, 0, 0)
    assert c["miss"] == (4, 44, 4, 44) and c["stale"] == (1, 1, 0, 0)
    base = I.STATUSES.index("hit") * I.COUNTER_WORDS
    assert [idx.rows_mv[r * I.ROW_STRIDE + base] for r in range(4)] == [n, n + 5, n, 0]


def test_lock_across_processes_one_winner(tmp_path: Path) -> None:
    """Six forked processes race for one key: exactly one try_lock succeeds (a lock that is
    not shared, or a non-atomic check-and-set, lets several through)."""
    idx = I.CacheIndex(16384, Zone.for_peers(1, lock="flock"))
    k = md5("burst")
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.read(go_r, 1)
            os.write(w, b"1" if idx.try_lock(k, now_ms(), 10000) else b"0")
            os._exit(0)
        pids.append(pid)
    os.close(w)
    os.write(go_w, b"x" * 6)
    got = b""
    while len(got) < 6:
        chunk = os.read(r, 6)
        assert chunk
        got += chunk
    for pid in pids:
        os.waitpid(pid, 0)
    assert got.count(b"1") == 1


def test_wait_unlocked_wakes_promptly_when_another_process_unlocks(tmp_path: Path) -> None:
    """The waiter wakes within a few ms of the unlock in another process (nginx: 500 ms
    poll); a waiter that only woke at its timeout would take 2 s here."""
    pytest.importorskip("gevent")
    zone = make_zone(tmp_path)
    k = key_md5(b"k")
    assert zone.try_lock(k, now_ms(), 10000)
    pid = os.fork()
    if pid == 0:
        time.sleep(0.2)
        zone.unlock(k)
        os._exit(0)
    t0 = time.monotonic()
    assert zone.wait_unlocked(k, 2.0)
    waited = time.monotonic() - t0
    os.waitpid(pid, 0)
    assert 0.15 < waited < 0.3
    assert zone.try_lock(k, now_ms(), 10000)
    t0 = time.monotonic()
    assert not zone.wait_unlocked(k, 0.1)  # nobody unlocks: the timeout
    assert time.monotonic() - t0 >= 0.1


# ---- entry files ----------------------------------------------------------------------------


def test_levels_from_the_end_of_the_md5_as_nginx() -> None:
    m = bytes.fromhex("00000000000000000000000000000" + "5c3")
    assert E.relative_path(m, (1, 2)) == f"3/5c/{m.hex()}"
    assert E.relative_path(m, (2,)) == f"c3/{m.hex()}"
    assert E.relative_path(m, ()) == m.hex()


def test_entry_round_trip(tmp_path: Path) -> None:
    zone = make_zone(tmp_path)
    meta = E.EntryMeta(
        valid_until_ms=now_ms() + 10000, date_s=1700000000, last_modified_s=1600000000, etag=b'"v1"',
        stale_while_revalidate_s=30, stale_if_error_s=60, vary=b"accept-language", variant_md5=md5("en"),
    )  # fmt: skip
    w = zone.writer(b"http://be/x", meta, HEAD)
    assert w is not None
    w.write(b"hel")
    w.write(b"lo")
    assert w.commit(5)
    found = zone.lookup(b"http://be/x", now_ms())
    assert found.entry is not None and found.uses == 1
    with found.entry as e:
        assert (e.status, e.head, e.body_length, e.meta) == (200, HEAD, 5, meta)
        assert e.read(3) + e.read() == b"hello" and e.read() == b""
        assert e.pread(2, 1) == b"el"
        assert e.fd == -1 and e.body == b"hello"  # a small body: in the worker's memo, no descriptor
    assert zone.index.size_on_disk == 4096 and zone.index.counters()["miss"][2:] == (1, 5)
    assert os.listdir(os.path.join(zone.root, "tmp")) == []


@pytest.mark.parametrize("damage", ["header", "key", "truncate", "grow", "version", "empty"])
def test_a_damaged_file_is_a_miss_and_drops_the_node(tmp_path: Path, damage: str) -> None:
    zone = make_zone(tmp_path)
    store(zone, b"k")
    path = zone.path_of(key_md5(b"k"))
    data = bytearray(Path(path).read_bytes())
    if damage == "header":
        data[20] ^= 1  # valid_until: covered by the crc
    elif damage == "key":
        data[E.HEADER.size] ^= 1
    elif damage == "truncate":
        data = data[:-1]
    elif damage == "grow":
        data += b"x"
    elif damage == "version":
        data[8] = 9
    else:
        data = bytearray()
    Path(path).write_bytes(bytes(data))
    assert zone.lookup(b"k", now_ms()).entry is None
    assert not zone.index.peek(key_md5(b"k")).exists  # type: ignore[union-attr]
    assert zone.index.size_on_disk == 0


def test_another_keys_file_under_this_md5_is_a_miss(tmp_path: Path) -> None:
    zone = make_zone(tmp_path)
    store(zone, b"other")
    os.makedirs(os.path.dirname(zone.path_of(key_md5(b"k"))), exist_ok=True)
    os.rename(zone.path_of(key_md5(b"other")), zone.path_of(key_md5(b"k")))
    zone.index.set_exists(key_md5(b"k"), 4096, now_ms() + 1000, now_ms())
    assert zone.lookup(b"k", now_ms()).entry is None


def test_abort_and_a_short_body_leave_no_entry(tmp_path: Path) -> None:
    """An upstream that dies mid-body: commit with the announced length stores nothing."""
    zone = make_zone(tmp_path)
    w = zone.writer(b"k", E.EntryMeta(now_ms() + 1000), HEAD)
    assert w is not None
    w.write(b"hel")
    assert not w.commit(5)
    w2 = zone.writer(b"k", E.EntryMeta(now_ms() + 1000), HEAD)
    assert w2 is not None
    w2.write(b"hello")
    w2.abort()
    assert list(walk_entries(zone.root, zone.levels)) == []
    assert os.listdir(os.path.join(zone.root, "tmp")) == []
    assert zone.lookup(b"k", now_ms()).entry is None


def test_no_reader_sees_a_partial_entry(tmp_path: Path) -> None:
    zone = make_zone(tmp_path)
    w = zone.writer(b"k", E.EntryMeta(now_ms() + 1000), HEAD)
    assert w is not None
    w.write(b"x" * 100000)
    assert zone.lookup(b"k", now_ms()).entry is None  # still in tmp/
    assert w.commit()
    e = zone.lookup(b"k", now_ms()).entry
    assert e is not None and e.body_length == 100000
    e.close()


def test_unwritable_directory_gives_no_writer_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = CachePathConfig("c", str(tmp_path / "file"), (1, 2), 65536)
    (tmp_path / "file").write_text("not a directory")
    zone = CacheZone(cp, I.CacheIndex(65536, Zone.for_peers(1, lock="flock")))
    with caplog.at_level("ERROR", logger="prefork_lb.error"):
        assert zone.writer(b"k", E.EntryMeta(now_ms() + 1000), HEAD) is None
        assert zone.writer(b"k2", E.EntryMeta(now_ms() + 1000), HEAD) is None
    errors = [r for r in caplog.records if "serving uncached" in r.getMessage()]
    assert len(errors) == 1 and "file" in errors[0].getMessage()
    assert zone.lookup(b"k", now_ms()).entry is None


def test_refresh_rewrites_freshness_in_place_and_with_a_new_etag_length(tmp_path: Path) -> None:
    zone = make_zone(tmp_path)
    store(zone, b"k", valid_s=1)
    m = key_md5(b"k")
    later = now_ms() + 50000
    assert zone.refresh(m, E.EntryMeta(valid_until_ms=later, etag=b'"v2"'), key=b"k")
    e = zone.lookup(b"k", now_ms()).entry
    assert e is not None and e.meta.valid_until_ms == later and e.meta.etag == b'"v2"'
    assert e.read() == b"hello"
    e.close()
    assert zone.refresh(m, E.EntryMeta(valid_until_ms=later + 1, etag=b'"a-longer-etag"'))
    e = zone.lookup(b"k", now_ms()).entry
    assert e is not None and e.meta.etag == b'"a-longer-etag"' and e.read() == b"hello"
    e.close()
    assert not zone.refresh(key_md5(b"none"), E.EntryMeta(valid_until_ms=later))


def test_a_cold_index_finds_files_already_on_disk(tmp_path: Path) -> None:
    """After a restart the index is empty and cold: the first lookup still HITs."""
    zone = make_zone(tmp_path)
    store(zone, b"k")
    fresh = CacheZone(zone.config, I.CacheIndex(65536, Zone.for_peers(1, lock="flock")))
    e = fresh.lookup(b"k", now_ms()).entry
    assert e is not None and e.read() == b"hello"
    e.close()
    assert fresh.index.peek(key_md5(b"k")).exists  # type: ignore[union-attr]
    fresh.index.set_cold(False)
    other = CacheZone(zone.config, I.CacheIndex(65536, Zone.for_peers(1, lock="flock")))
    other.index.set_cold(False)
    assert other.lookup(b"k", now_ms()).entry is None  # warm and unknown: not even opened


def test_purge_key_prefix_and_all(tmp_path: Path) -> None:
    zone = make_zone(tmp_path)
    for k in (b"http://be/a/1", b"http://be/a/2", b"http://be/b/1", b"http://be/c"):
        store(zone, k)
    assert zone.purge_key(b"http://be/c")
    assert zone.lookup(b"http://be/c", now_ms()).entry is None
    assert zone.purge_prefix(b"http://be/a/") == 2
    assert sorted(p for p, _ in walk_entries(zone.root, zone.levels)) == [
        zone.path_of(key_md5(b"http://be/b/1"))
    ]
    assert zone.purge_all() == 1
    assert list(walk_entries(zone.root, zone.levels)) == [] and zone.index.entries == 0


# ---- the manager's plan (sans-IO) ---------------------------------------------------------------


def test_manager_plan_inactive_then_max_size_then_min_free_lru_first() -> None:
    from prefork_lb.cache.manager import plan_removals

    F = I.F_USED | I.F_EXISTS
    nodes = [
        (b"old", F, 1000, 4096, 0),
        (b"mid", F, 5000, 8192, 0),
        (b"new", F, 9000, 4096, 0),
        (b"lock", F | I.F_UPDATING, 100, 4096, 99999),  # someone fetches it: never removed
        (b"nofile", I.F_USED, 2000, 0, 0),
    ]
    assert plan_removals(nodes, 10000, 60000, 0, 20480, 0) == []
    # inactive 6 s at t=10 s: old (1 s) and nofile (2 s) go, the locked one stays
    assert [m for m, _, _ in plan_removals(nodes, 10000, 6000, 0, 20480, 0)] == [b"old", b"nofile"]
    # max_size 8k: least recently used files go until the rest fits
    assert [m for m, _, _ in plan_removals(nodes, 10000, 60000, 8192, 20480, 0)] == [b"old", b"mid"]
    # min_free: 5000 bytes short -> two files (4096 is not enough)
    assert [m for m, _, _ in plan_removals(nodes, 10000, 60000, 0, 20480, 5000)] == [b"old", b"mid"]
    expired_lock = [(b"lock", F | I.F_UPDATING, 100, 4096, 50)]  # its lock_age passed
    assert [m for m, _, _ in plan_removals(expired_lock, 10000, 6000, 0, 4096, 0)] == [b"lock"]


def test_a_process_killed_inside_the_index_lock_does_not_wedge_it(index: I.CacheIndex) -> None:
    """A child takes the index lock and is SIGKILLed holding it: the next user gets the lock
    (futex: taken over from the dead holder; flock: released by the kernel) instead of
    hanging, and the master's break_dead_holder frees it too. Without either, use() blocks."""
    import signal

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        index.lock()
        os.write(w, b"L")
        time.sleep(60)
        os._exit(0)
    assert os.read(r, 1) == b"L"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    t0 = time.monotonic()
    index.use(md5("after"), 1)  # would block forever on a wedged lock
    assert time.monotonic() - t0 < 2.0
    assert index.peek(md5("after")) is not None


def test_the_key_locks_of_a_dead_process_are_released_at_reap(tmp_path: Path) -> None:
    """A worker takes a key lock and dies: before the master reaps it the key stays locked
    (until lock_age); the reap (IndexSet.break_dead_holder) clears it at once, and only its
    locks: another process's lock stays."""
    zone_lock = Zone.for_peers(1, lock="flock")
    indexes = I.IndexSet(zone_lock)
    cp = CachePathConfig("c", str(tmp_path), (), 16384)
    index = indexes.for_paths({"c": cp})["c"]
    mine, theirs = md5("dies"), md5("lives")
    assert index.try_lock(theirs, now_ms(), 60000, pid=os.getpid())
    pid = os.fork()
    if pid == 0:
        index.try_lock(mine, now_ms(), 60000, pid=os.getpid())
        os._exit(0)
    os.waitpid(pid, 0)
    assert index.is_locked(mine, now_ms())  # nobody cleared it yet
    indexes.break_dead_holder(pid)
    assert not index.is_locked(mine, now_ms())
    assert index.is_locked(theirs, now_ms())
    assert index.release_locks_of(pid) == 0
