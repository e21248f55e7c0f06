"""Remembered upstream errors in the cache index (differential scenario X22; cache/index.py rule 3,
cache/store.py rule 9): an error status and its valid-until in the key's node, no file.

Real shared mappings, real files in tmp_path; no mocks. Each test says what it catches.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from prefork_lb.cache import entry as E
from prefork_lb.cache import index as I
from prefork_lb.cache.store import CacheZone, key_md5
from prefork_lb.config.model import CachePathConfig
from prefork_lb.zone.zone import Zone

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"


def now_ms() -> int:
    return int(time.time() * 1000)


def md5(text: str) -> bytes:
    return hashlib.md5(text.encode()).digest()


@pytest.fixture(params=["futex", "flock"])
def index(request: pytest.FixtureRequest) -> I.CacheIndex:
    if request.param == "futex" and I._load_native() is None:
        pytest.skip("no compiled extension")
    return I.CacheIndex(16384, Zone.for_peers(1, lock="flock"), lock=request.param)


def make_zone(tmp_path: Path) -> CacheZone:
    cp = CachePathConfig("c", str(tmp_path / "cache"), (1, 2), 65536)
    os.makedirs(os.path.join(cp.path, "tmp"))
    return CacheZone(cp, I.CacheIndex(65536, Zone.for_peers(1, lock="flock")))


def store(zone: CacheZone, key: bytes, body: bytes = b"hello") -> None:
    w = zone.writer(key, E.EntryMeta(valid_until_ms=now_ms() + 60_000), HEAD)
    assert w is not None
    w.write(body)
    assert w.commit(len(body))


def test_an_error_is_reported_while_valid_then_renewed(index: I.CacheIndex) -> None:
    """Catches: a remembered error not reported, reported past its validity (inclusive end,
    as nginx's ``valid_sec < now``), or left behind after it expired (nginx's renew: the
    lookup is a miss and counts uses from 1 again); a node without one reports 0."""
    t = 1_000_000
    k = md5("k")
    assert index.set_error(k, 404, t + 1000, t) is None
    assert index.entries == 1 and index.size_on_disk == 0
    seen = [index.use(k, at)[0] for at in (t, t + 1000, t + 1001, t + 1002)]
    assert [(v.error, v.uses, v.exists) for v in seen] == [
        (404, 1, False),
        (404, 2, False),
        (0, 1, False),
        (0, 2, False),
    ]
    assert index.error_until_ms(k) == 0
    assert index.use(md5("other"), t)[0].error == 0


def test_no_error_is_remembered_without_a_validity_or_a_status(index: I.CacheIndex) -> None:
    """Catches: an error stored already expired, or a status that does not fit the packed
    word (0, >= 1000) corrupting the valid-until."""
    t = 1_000_000
    for status, until in ((404, t - 1), (0, t + 1000), (1000, t + 1000)):
        index.set_error(md5("k"), status, until, t)
    assert index.entries == 0
    index.set_error(md5("k"), 599, t, t)  # valid for this millisecond
    assert index.error_until_ms(md5("k")) == t
    view = index.peek(md5("k"))
    assert view is not None and view.error == 599


def test_an_expired_error_drops_the_older_file_and_a_commit_clears_the_error(
    index: I.CacheIndex,
) -> None:
    """Catches: the file a node had before the error served again once the error expired
    (nginx's renew forgets it: the next answer is fetched), its size still counted; or a
    newer stored answer (a BYPASS commit) still hidden behind the error."""
    t = 1_000_000
    k = md5("k")
    index.set_exists(k, 8192, t + 60_000, t)
    before = index.use(k, t)[0].version
    index.set_error(k, 502, t + 1000, t)
    view = index.use(k, t + 10)[0]
    assert (view.error, view.exists, index.size_on_disk) == (502, False, 8192)  # the error wins
    view = index.use(k, t + 2000)[0]
    assert (view.error, view.exists, index.size_on_disk) == (0, False, 0)
    assert view.version != before  # a worker's memo of the old file sees the change
    index.set_error(k, 404, t + 60_000, t)
    index.set_exists(k, 4096, t + 60_000, t)  # a commit (the loader's only_new would not)
    view = index.use(k, t + 10)[0]
    assert (view.error, view.exists, index.size_on_disk) == (0, True, 4096)
    index.set_error(k, 404, t + 60_000, t)
    index.set_exists(k, 4096, t + 60_000, t, only_new=True)
    assert index.use(k, t + 10)[0].error == 404


def test_the_store_reports_the_error_before_its_file_and_purge_removes_it(tmp_path: Path) -> None:
    """Catches: a lookup opening (or serving from its memo) the key's file while an error is
    remembered, an error node holding a file of its own, or a purge of the key or the zone
    leaving the error answering."""
    zone = make_zone(tmp_path)
    key = b"httpbackend/x"
    store(zone, key)
    found = zone.lookup(key, now_ms())
    assert found.entry is not None and found.error == 0
    found.entry.close()
    zone.remember_error(key_md5(key), 404, now_ms() + 60_000)
    found = zone.lookup(key, now_ms())
    assert (found.error, found.entry) == (404, None)
    assert zone.purge_key(key)
    found = zone.lookup(key, now_ms())
    assert (found.error, found.entry) == (0, None)
    other = b"httpbackend/error-only"
    zone.remember_error(key_md5(other), 503, now_ms() + 60_000)
    assert not os.path.exists(zone.path_of(key_md5(other)))
    assert zone.lookup(other, now_ms()).error == 503
    zone.purge_all()
    assert zone.lookup(other, now_ms()).error == 0


def test_the_manager_expires_an_error_node_by_inactive(tmp_path: Path) -> None:
    """Catches: an error node (no file) never evicted by ``inactive``, or its eviction
    failing for want of a file to unlink."""
    from prefork_lb.cache.manager import plan_removals

    zone = make_zone(tmp_path)
    k = md5("err")
    t = now_ms()
    zone.index.set_error(k, 404, t + 600_000, t - 10_000)
    zone.index.use(k, t - 10_000)
    nodes = zone.index.snapshot()
    assert [(n[1] & I.F_EXISTS, n[3]) for n in nodes] == [(0, 0)]
    assert plan_removals(nodes, t, 60_000, 0, 0, 0) == []  # used 10 s ago: kept
    ((words, access_ms, nbytes),) = plan_removals(nodes, t, 5_000, 0, 0, 0)
    assert (I.words_md5(*words), nbytes) == (k, 0)
    assert zone.index.remove(k, t, unless_accessed_after_ms=access_ms)
    assert zone.index.entries == 0 and zone.lookup(b"anything", t).error == 0
