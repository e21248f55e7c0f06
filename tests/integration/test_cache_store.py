"""The cache store against the real master (issue 18): the loader, the manager,
the status API and purge, reload, a killed manager, faults.

Entries are written into the cache directory with the store's own writer (the same code a
worker's request path uses), then the real master, its workers and its cache manager
process run over them: what they do is observed on disk (files present or gone) and
through the status API served by the workers from the shared index.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from prefork_lb.cache.entry import EntryMeta
from prefork_lb.cache.index import CacheIndex
from prefork_lb.cache.store import CacheZone, key_md5, walk_entries
from prefork_lb.config.model import CachePathConfig
from prefork_lb.zone.zone import Zone
from tests.backends import free_port
from tests.harness import LB, request, wait_for

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"


def config(port: int, api_port: int, zones: str, workers: int = 2) -> str:
    return f"""
workers = {workers}
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
{zones}
[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
  [[http.servers.locations]]
  match = "/api/"
  api = {{ write = true }}
  allow = ["127.0.0.1/32"]
  [[http.servers.locations]]
  match = "/ro/"
  api = true
"""


def zone_toml(name: str, path: Path, extra: str = "", keys_zone: str = "1m") -> str:
    head = f'[http.proxy_cache_paths.{name}]\npath = "{path}"\nlevels = "1:2"\n'
    return f'{head}keys_zone = "{keys_zone}"\n{extra}\n'


def fill(path: Path, keys: list[bytes], body_size: int = 5000) -> CacheZone:
    """Entries written by the store's writer, as a worker does (a private index)."""
    cp = CachePathConfig("fill", str(path), (1, 2), 65536)
    zone = CacheZone(cp, CacheIndex(65536, Zone.for_peers(1, lock="flock")))
    for key in keys:
        w = zone.writer(key, EntryMeta(valid_until_ms=int(time.time() * 1000) + 600_000), HEAD)
        assert w is not None
        w.write(b"x" * body_size)
        assert w.commit(body_size)
    return zone


def files(path: Path) -> set[bytes]:
    return {md5 for _, md5 in walk_entries(str(path), (1, 2))}


def caches(api_port: int, prefix: str = "/api/9") -> Any:
    status, _, body = request(api_port, "GET", f"{prefix}/http/caches")
    assert status == 200, body
    return json.loads(body)


def children(lb: LB, title: str) -> list[int]:
    """The master's children whose process title contains ``title``."""
    out = []
    for p in lb.workers():
        try:
            if title in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            pass  # exited meanwhile
    return out


def manager_pids(lb: LB) -> list[int]:
    return children(lb, "cache manager")


def test_loader_indexes_the_directory_and_drops_bad_and_orphaned_files(tmp_path: Path) -> None:
    """After a (re)start the index is rebuilt from disk: entries and size in the API, cold
    until then; a corrupt file and a dead writer's temp file are removed. Catches a loader
    that does not run, misses files, or keeps bad ones."""
    cache = tmp_path / "c"
    keys = [f"http://be/{i}".encode() for i in range(3)]
    zone = fill(cache, keys)
    bad = Path(zone.path_of(key_md5(b"bad")))
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"PLBCACHE garbage")
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = cache / "tmp" / f"{key_md5(b'x').hex()}.{dead.pid}.1"
    orphan.write_bytes(b"partial")
    port, api_port = free_port(), free_port()
    with LB(tmp_path, config(port, api_port, zone_toml("c", cache)), port) as lb:
        doc = wait_for(lambda: (d := caches(api_port)["c"]) and not d["cold"] and d, what="the loader")
        assert doc["entries"] == 3 and doc["size"] == 3 * 8192
        assert doc["hit"] == {"responses": 0, "bytes": 0}
        assert doc["miss"] == {"responses": 0, "bytes": 0, "responses_written": 0, "bytes_written": 0}
        assert files(cache) == {key_md5(k) for k in keys}
        assert not orphan.exists()
        assert len(manager_pids(lb)) == 1
        assert 'cache "c": loader indexed 3 file(s)' in lb.output()
        assert caches(api_port, "/api/9")["c"] == caches(api_port, "/ro/9")["c"]  # any API location
        status, _, body = request(api_port, "GET", "/api/9/http/caches/c")  # one cache by name
        assert status == 200 and json.loads(body)["entries"] == 3
        assert request(api_port, "GET", "/api/9/http/caches/nope")[0] == 404


def test_manager_removes_inactive_entries_and_keeps_max_size(tmp_path: Path) -> None:
    """inactive = 1s: every entry of that zone goes; max_size = 20k with six 8 KiB entries:
    the manager removes until the files fit (two stay). Observed on disk and in the API."""
    idle, big = tmp_path / "idle", tmp_path / "big"
    fill(idle, [b"a", b"b"])
    fill(big, [f"k{i}".encode() for i in range(6)])
    zones = zone_toml("idle", idle, 'inactive = "1s"') + zone_toml("big", big, 'max_size = "20k"')
    port, api_port = free_port(), free_port()
    with LB(tmp_path, config(port, api_port, zones), port):
        wait_for(lambda: not files(idle), timeout_s=10, what="inactive entries removed")
        wait_for(lambda: len(files(big)) == 2, timeout_s=10, what="max_size enforced")
        doc = wait_for(lambda: (d := caches(api_port)) and d["idle"]["entries"] == 0 and d, what="api")
        assert doc["idle"]["size"] == 0
        assert doc["big"]["size"] == 2 * 8192 <= doc["big"]["max_size"] == 20 * 1024
        assert doc["big"]["entries"] == 2
        time.sleep(1.5)  # a few more manager passes: nothing more goes (the ones left fit)
        assert len(files(big)) == 2


def test_purge_through_the_api(tmp_path: Path) -> None:
    """DELETE empties a cache, removes one key or a prefix; a read-only API location gets
    405 and removes nothing; an unknown cache is 404."""
    cache = tmp_path / "c"
    keys = [b"http://be/a/1", b"http://be/a/2", b"http://be/b/1", b"http://be/c?x=1", b"http://be/d"]
    fill(cache, keys)
    port, api_port = free_port(), free_port()
    with LB(tmp_path, config(port, api_port, zone_toml("c", cache)), port) as lb:
        wait_for(lambda: not caches(api_port)["c"]["cold"], what="the loader")
        status, _, body = request(api_port, "DELETE", "/ro/9/http/caches/c")
        assert (status, json.loads(body)["error"]["code"]) == (405, "MethodDisabled")
        assert len(files(cache)) == 5
        status, _, body = request(api_port, "DELETE", "/api/9/http/caches/nope")
        assert (status, json.loads(body)["error"]["code"]) == (404, "CacheNotFound")
        assert request(api_port, "DELETE", "/api/9/http/caches/c?key=http%3A%2F%2Fbe%2Fc%3Fx%3D1")[0] == 204
        assert key_md5(b"http://be/c?x=1") not in files(cache) and len(files(cache)) == 4
        assert request(api_port, "DELETE", "/api/9/http/caches/c?key=http://be/a/*")[0] == 204
        assert files(cache) == {key_md5(b"http://be/b/1"), key_md5(b"http://be/d")}
        assert caches(api_port)["c"]["entries"] == 2 and caches(api_port)["c"]["size"] == 2 * 8192
        assert request(api_port, "DELETE", "/api/9/http/caches/c")[0] == 204
        assert files(cache) == set() and caches(api_port)["c"]["size"] == 0
        assert 'cache "c" purged key "http://be/a/*": 2 entries removed, client: 127.0.0.1' in lb.output()


def test_reload_keeps_the_index_and_a_new_size_rebuilds_it(tmp_path: Path) -> None:
    """A reload keeps the zone's index (warm, the same entries, counters kept) and replaces
    the manager; a changed keys_zone gets a new index that the new manager's loader fills."""
    cache = tmp_path / "c"
    fill(cache, [b"a", b"b"])
    port, api_port = free_port(), free_port()
    lb = LB(tmp_path, config(port, api_port, zone_toml("c", cache)), port)
    with lb:
        wait_for(lambda: not caches(api_port)["c"]["cold"], what="the loader")
        first = manager_pids(lb)
        lb.conf.write_text(
            config(port, api_port, zone_toml("c", cache)).replace("workers = 2", "workers = 1")
        )
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: (m := manager_pids(lb)) and m != first, what="a new manager")
        wait_for(
            lambda: len([p for p in lb.workers() if "worker" in " ".join(p.cmdline())]) == 1, what="reload"
        )
        assert lb.output().count("loader indexed") == 1  # the kept index was not loaded again
        assert caches(api_port)["c"]["entries"] == 2
        lb.conf.write_text(config(port, api_port, zone_toml("c", cache, keys_zone="2m")))
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: lb.output().count("loader indexed 2 file(s)") == 2, what="the new index loaded")
        assert caches(api_port)["c"]["entries"] == 2


def test_a_killed_manager_is_respawned(tmp_path: Path) -> None:
    """SIGKILL to the manager: the master logs it and starts another, which manages the same
    shared index (entries the first one loaded are removed once inactive)."""
    cache = tmp_path / "c"
    fill(cache, [b"a", b"b"])
    port, api_port = free_port(), free_port()
    with LB(tmp_path, config(port, api_port, zone_toml("c", cache, 'inactive = "3s"')), port) as lb:
        wait_for(lambda: not caches(api_port)["c"]["cold"], what="the loader")
        old = manager_pids(lb)[0]
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (m := manager_pids(lb)) and m[0] != old and m[0], what="a respawned manager")
        assert f"cache manager process {old} exited on signal 9" in lb.output()
        assert files(cache) == {key_md5(b"a"), key_md5(b"b")}
        wait_for(lambda: not files(cache), timeout_s=10, what="the new manager to remove inactive entries")
        assert manager_pids(lb) == [new] and caches(api_port)["c"]["entries"] == 0


def test_a_cache_directory_on_a_full_filesystem_never_fails(tmp_path: Path) -> None:
    """A 64 KiB tmpfs: writers stop storing once it is full, commit returns False, no temp
    file or partial entry stays (store.py rule 1); remounted read-only, no writer at all
    and stored entries still read."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cp = CachePathConfig("small", str(mnt), (1, 2), 65536)
        (mnt / "tmp").mkdir()
        zone = CacheZone(cp, CacheIndex(65536, Zone.for_peers(1, lock="flock")))
        stored = 0
        for i in range(20):
            w = zone.writer(f"k{i}".encode(), EntryMeta(valid_until_ms=int(time.time() * 1000) + 60000), HEAD)
            if w is None:
                continue
            w.write(b"x" * 20000)
            stored += w.commit(20000)
        assert 0 < stored < 20
        assert os.listdir(mnt / "tmp") == []
        keys = {key_md5(f"k{i}".encode()): f"k{i}".encode() for i in range(20)}
        on_disk = [md5 for _, md5 in walk_entries(str(mnt), (1, 2))]
        assert len(on_disk) == stored
        for md5 in on_disk:  # every entry that stayed is complete
            e = zone.lookup(keys[md5], 0).entry
            assert e is not None and e.body_length == 20000
            e.close()
        # made read-only under it: no writer (EROFS), lookups still serve what is there
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        assert zone.writer(b"new", EntryMeta(valid_until_ms=int(time.time() * 1000) + 60000), HEAD) is None
        e = zone.lookup(keys[on_disk[0]], 0).entry
        assert e is not None and e.read(10) == b"x" * 10
        e.close()
    finally:
        subprocess.run(["umount", str(mnt)])


def test_metrics_expose_the_cache_series(tmp_path: Path) -> None:
    """nginx-prometheus-exporter's cache families (nginxplus_cache_*{cache}) from the index."""
    cache = tmp_path / "c"
    fill(cache, [b"a", b"b", b"c"])
    port, api_port = free_port(), free_port()
    zones = zone_toml("c", cache, 'max_size = "1m"')
    with LB(
        tmp_path,
        config(port, api_port, zones).replace(
            'match = "/ro/"\n  api = true', 'match = "= /metrics"\n  metrics = true'
        ),
        port,
    ):
        wait_for(lambda: not caches(api_port)["c"]["cold"], what="the loader")
        status, _, body = request(api_port, "GET", "/metrics")
        text = body.decode()
        assert status == 200
        assert 'nginxplus_cache_size{cache="c"} 24576.0' in text
        assert 'nginxplus_cache_max_size{cache="c"} 1.048576e+06' in text
        assert 'nginxplus_cache_cold{cache="c"} 0.0' in text
        assert re.search(r'^nginxplus_cache_miss_responses_written_total\{cache="c"\} 0\.0$', text, re.M)
        assert 'nginxplus_cache_hit_responses_total{cache="c"} 0.0' in text


def test_binary_upgrade_rebuilds_the_index_in_the_new_master(tmp_path: Path) -> None:
    """USR2: the new master makes its own index (nginx too: shared memory does not cross
    exec) and its cache manager's loader fills it from the directory; after WINCH and QUIT
    to the old master, the API (now served by the new workers only) shows every entry."""
    cache = tmp_path / "c"
    fill(cache, [b"a", b"b", b"c"])
    port, api_port = free_port(), free_port()
    with LB(tmp_path, config(port, api_port, zone_toml("c", cache)), port) as lb:
        wait_for(lambda: not caches(api_port)["c"]["cold"], what="the loader")
        old = lb.master_pid
        os.kill(old, signal.SIGUSR2)

        def new_master() -> int:
            pid = int(lb.pid_path.read_text()) if lb.pid_path.exists() else 0
            if not pid or pid == old or not (tmp_path / f"{lb.pid_name}.oldbin").exists():
                return 0
            titles = [" ".join(c.cmdline()) for c in psutil.Process(pid).children()]
            return pid if len([t for t in titles if "worker process" in t]) == 2 else 0

        new = wait_for(new_master, what="the new master and its workers")
        os.kill(old, signal.SIGWINCH)
        os.kill(old, signal.SIGQUIT)
        assert lb.proc is not None and lb.proc.wait(timeout=20) == 0
        wait_for(
            lambda: (
                sum("cache manager" in " ".join(c.cmdline()) for c in psutil.Process(new).children()) == 1
            ),
            what="the new master's cache manager",
        )
        doc = wait_for(lambda: (d := caches(api_port)["c"]) and not d["cold"] and d, what="the new loader")
        assert doc["entries"] == 3 and doc["size"] == 3 * 8192
        assert files(cache) == {key_md5(k) for k in (b"a", b"b", b"c")}
        os.kill(new, signal.SIGQUIT)
        wait_for(lambda: not psutil.pid_exists(new), what="the new master to exit")


def test_manager_keeps_min_free_on_a_small_filesystem(tmp_path: Path) -> None:
    """A 256 KiB tmpfs holding eight 20 KB entries, min_free = 150k: the manager removes the
    least recently used entries until the filesystem has that much free, and no more."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fill(mnt, [f"k{i}".encode() for i in range(8)], body_size=20000)

        def free() -> int:
            st = os.statvfs(mnt)
            return st.f_bavail * st.f_frsize

        assert free() < 150 * 1024
        port, api_port = free_port(), free_port()
        with LB(tmp_path, config(port, api_port, zone_toml("c", mnt, 'min_free = "150k"')), port):
            wait_for(lambda: free() >= 150 * 1024, timeout_s=10, what="min_free reached")
            left = len(files(mnt))
            assert 0 < left < 8
            time.sleep(1.5)  # more manager passes: nothing more goes
            assert len(files(mnt)) == left
            assert caches(api_port)["c"]["entries"] == left
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.skipif(os.getuid() != 0, reason="the worker user applies only to a master run as root")
def test_with_a_worker_user_the_directory_is_theirs_and_the_manager_runs_as_them() -> None:
    """user = "nobody": the master gives an existing root-owned cache directory (and tmp/)
    to the worker user, as nginx; the manager drops to that user and still loads the
    entries; a purge by a worker (also that user) removes the files."""
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="prefork-lb-cache-"))
    base.chmod(0o755)
    try:
        cache = base / "c"
        fill(cache, [b"a", b"b"])
        for path in [p for p in cache.rglob("*") if p != cache / "tmp"]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)  # an earlier run's worker wrote them
        assert cache.stat().st_uid == 0 and (cache / "tmp").stat().st_uid == 0
        port, api_port = free_port(), free_port()
        text = config(port, api_port, zone_toml("c", cache)).replace(
            "workers = 2", 'workers = 2\nuser = "nobody"'
        )
        with LB(base, text, port) as lb:
            doc = wait_for(lambda: (d := caches(api_port)["c"]) and not d["cold"] and d, what="the loader")
            assert doc["entries"] == 2
            assert cache.stat().st_uid == nobody.pw_uid and (cache / "tmp").stat().st_uid == nobody.pw_uid
            manager = psutil.Process(manager_pids(lb)[0])
            assert manager.uids().real == nobody.pw_uid
            assert request(api_port, "DELETE", "/api/9/http/caches/c")[0] == 204
            assert files(cache) == set()
    finally:
        shutil.rmtree(base, ignore_errors=True)
