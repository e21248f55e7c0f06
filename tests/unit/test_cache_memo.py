"""The worker's open-entry memo (cache/store.py rule 8, cache/index.py N_VERSION): a HIT on a
known entry opens nothing, and every change the store makes to an entry (a new commit, a
refresh, a purge, purge_all, an eviction, a failure while served) is seen at the next lookup.

Each test counts the ``os.open`` calls of the store (monkeypatched spy that calls the real
one) so a memo that is not used, or used when it must not be, fails."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork_lb.cache import entry as E
from prefork_lb.cache import store as S
from prefork_lb.cache.store import CacheZone, key_md5
from tests.unit.test_cache_store import make_zone, store


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Files opened while the test runs (the real open runs)."""
    seen: list[str] = []
    real = os.open

    def spy(path: str, flags: int, *a: int) -> int:
        seen.append(os.path.basename(path))
        return real(path, flags, *a)

    monkeypatch.setattr(os, "open", spy)  # the entry module calls os.open
    yield seen


def body_of(zone: CacheZone, key: bytes) -> bytes | None:
    found = zone.lookup(key, now_ms())
    if found.entry is None:
        return None
    with found.entry as e:
        return e.pread(e.body_length, 0)


def test_a_known_entry_is_served_without_opening_the_file(tmp_path: Path, opens: list[str]) -> None:
    zone = make_zone(tmp_path)
    store(zone, b"k", b"hello")
    opens.clear()
    assert [body_of(zone, b"k") for _ in range(5)] == [b"hello"] * 5
    assert len(opens) == 1  # the first lookup verifies the file, the others use the memo


def test_a_new_commit_is_seen_at_once(tmp_path: Path, opens: list[str]) -> None:
    zone = make_zone(tmp_path)
    store(zone, b"k", b"one")
    assert body_of(zone, b"k") == b"one"
    store(zone, b"k", b"two")
    assert body_of(zone, b"k") == b"two"


def test_a_refresh_is_seen_at_once(tmp_path: Path) -> None:
    """REVALIDATED rewrites the header in place: the memo's parsed meta must not stay."""
    zone = make_zone(tmp_path)
    store(zone, b"k")
    first = zone.lookup(b"k", now_ms()).entry
    assert first is not None
    first.close()
    meta = E.EntryMeta(valid_until_ms=now_ms() + 99_000, etag=b'"v2"')
    assert zone.refresh(key_md5(b"k"), meta, b"k")
    again = zone.lookup(b"k", now_ms()).entry
    assert again is not None
    with again as e:
        assert e.meta == meta


def test_purge_key_and_purge_all_are_seen_at_once(tmp_path: Path) -> None:
    zone = make_zone(tmp_path)
    store(zone, b"a")
    store(zone, b"b")
    assert body_of(zone, b"a") == body_of(zone, b"b") == b"hello"
    assert zone.purge_key(b"a")
    assert body_of(zone, b"a") is None
    assert body_of(zone, b"b") == b"hello"
    zone.purge_all()
    assert body_of(zone, b"b") is None
    assert zone._memo == {}


def test_purge_all_from_another_process_empties_the_memo(tmp_path: Path) -> None:
    """purge_all in the API worker: this worker's memo is dropped at its next lookup of any
    key, so no unlinked file stays open here."""
    zone = make_zone(tmp_path)
    other = CacheZone(zone.config, zone.index)  # the same index, another worker's view
    store(zone, b"big", b"x" * (S.MEMO_BODY_MAX + 1))
    found = zone.lookup(b"big", now_ms()).entry
    assert found is not None
    found.close()
    held = next(iter(zone._memo.values()))
    assert held.fd >= 0
    other.purge_all()
    store(zone, b"new")
    assert body_of(zone, b"new") == b"hello"
    assert held.fd == -1 and list(zone._memo) == [key_md5(b"new")]


def test_a_big_body_keeps_its_descriptor_until_the_last_borrower_closes(tmp_path: Path) -> None:
    zone = make_zone(tmp_path)
    big = os.urandom(S.MEMO_BODY_MAX + 10)
    store(zone, b"big", big)
    one = zone.lookup(b"big", now_ms()).entry
    two = zone.lookup(b"big", now_ms()).entry
    assert one is not None and two is not None and one.fd == two.fd >= 0 and one.body is None
    fd = one.fd
    assert zone.purge_key(b"big")
    assert zone.lookup(b"big", now_ms()).entry is None  # dropped from the memo...
    assert os.pread(fd, 4, two.body_offset) == big[:4]  # ...but still open for its borrowers
    one.close()
    assert two.pread(len(big), 0) == big
    two.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_an_entry_that_failed_while_served_is_verified_again(tmp_path: Path, opens: list[str]) -> None:
    """A file cut short under a HIT (cache_serve calls invalidate): the next lookup opens it,
    finds it truncated, drops the node: a miss."""
    zone = make_zone(tmp_path)
    store(zone, b"big", b"y" * (S.MEMO_BODY_MAX + 10))
    e = zone.lookup(b"big", now_ms()).entry
    assert e is not None
    os.truncate(zone.path_of(key_md5(b"big")), 100)
    e.invalidate()
    e.close()
    opens.clear()
    assert zone.lookup(b"big", now_ms()).entry is None
    assert opens  # verified again (twice: the REVALIDATED race retry)
    assert not zone.index.peek(key_md5(b"big")).exists  # type: ignore[union-attr]


def test_the_memo_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "MEMO_MAX", 3)
    monkeypatch.setattr(S, "MEMO_FDS_MAX", 1)
    zone = make_zone(tmp_path)
    for k in (b"a", b"b", b"c", b"d"):
        store(zone, k)
        assert body_of(zone, k) == b"hello"
    assert list(zone._memo) == [key_md5(k) for k in (b"b", b"c", b"d")]
    for k in (b"x", b"y"):
        store(zone, k, b"z" * (S.MEMO_BODY_MAX + 1))
        assert body_of(zone, k) == b"z" * (S.MEMO_BODY_MAX + 1)
    assert zone._memo_fds == 1 and key_md5(b"y") in zone._memo and key_md5(b"x") not in zone._memo
