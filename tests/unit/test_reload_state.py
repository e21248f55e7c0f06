"""The reload state machine's pieces, without processes: listener diffing and rollback,
peer-slot carry-over, the binary-upgrade hand-over spec."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config
from prefork_lb.master.listeners import BindError, ListenerSet
from prefork_lb.master.upgrade import parse_inherit
from prefork_lb.zone import layout as L
from prefork_lb.zone.slots import SlotTable, peer_keys
from prefork_lb.zone.zone import Zone
from tests.backends import free_port


def config(tmp_path: Path, listens: list[str], servers: list[str]) -> Config:
    entries = ", ".join(f'{{ address = "{s}" }}' for s in servers)
    listen = ", ".join(f'"{x}"' for x in listens)
    path = tmp_path / "lb.toml"
    path.write_text(
        f"[http.upstreams.u]\nservers = [{entries}]\n[[http.servers]]\nlisten = [{listen}]\n"
        '[[http.servers.locations]]\nmatch = "/"\nproxy_pass = "http://u"\n'
    )
    return load_config(str(path))


def test_sync_keeps_unchanged_sockets_binds_new_and_returns_removed(tmp_path: Path) -> None:
    p1, p2, p3 = free_port(), free_port(), free_port()
    ls = ListenerSet()
    assert ls.sync(config(tmp_path, [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"], ["127.0.0.1:9"]), 2) == []
    kept = ls.by_key[("inet", "127.0.0.1", p1)].sockets[0]
    removed = ls.sync(config(tmp_path, [f"127.0.0.1:{p1}", f"127.0.0.1:{p3}"], ["127.0.0.1:9"]), 2)
    assert [lst.config.key for lst in removed] == [("inet", "127.0.0.1", p2)]
    assert ls.by_key[("inet", "127.0.0.1", p1)].sockets[0] is kept  # same fd: queue kept
    assert ("inet", "127.0.0.1", p3) in ls.by_key
    # the removed socket is still open (old workers use it) until the caller closes it
    assert removed[0].sockets[0].fileno() >= 0
    for lst in removed:
        lst.close()
    ls.close_all()


def test_sync_is_all_or_nothing_when_a_bind_fails(tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    ls = ListenerSet()
    ls.sync(config(tmp_path, [f"127.0.0.1:{p1}"], ["127.0.0.1:9"]), 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        before = dict(ls.by_key)
        with pytest.raises(BindError):
            ls.sync(
                config(
                    tmp_path, [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}", f"127.0.0.1:{busy}"], ["127.0.0.1:9"]
                ),
                1,
            )
        assert ls.by_key == before  # p2 was bound and closed again
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", p2))  # free again
    ls.close_all()


def test_reuseport_slots_grow_with_workers_and_never_shrink(tmp_path: Path) -> None:
    port = free_port()
    ls = ListenerSet()
    ls.sync(config(tmp_path, [f"127.0.0.1:{port} reuseport"], ["127.0.0.1:9"]), 2)
    assert len(ls.by_key[("inet", "127.0.0.1", port)].sockets) == 2
    ls.sync(config(tmp_path, [f"127.0.0.1:{port} reuseport"], ["127.0.0.1:9"]), 4)
    assert len(ls.by_key[("inet", "127.0.0.1", port)].sockets) == 4
    ls.sync(config(tmp_path, [f"127.0.0.1:{port} reuseport"], ["127.0.0.1:9"]), 1)
    assert len(ls.by_key[("inet", "127.0.0.1", port)].sockets) == 4  # closing one would reset its queue
    key = ("inet", "127.0.0.1", port)
    slots = ls.by_key[key].sockets
    # every slot socket keeps an acceptor: the surviving worker serves all four
    assert ls.for_worker(0, 1) == [(key, s) for s in slots]
    assert ls.for_worker(1, 3) == [(key, slots[1])]
    assert ls.for_worker(0, 3) == [(key, slots[0]), (key, slots[3])]
    ls.close_all()


def test_adopt_after_exec_finds_slots_by_key_hash(tmp_path: Path) -> None:
    zone = Zone.create(L.size_for(8, 4), 4)
    cfg = config(tmp_path, [f"127.0.0.1:{free_port()}"], ["127.0.0.1:9001", "127.0.0.1:9002"])
    first = SlotTable(zone)
    slots = first.assign(cfg, 1)
    a = slots[peer_keys(cfg.http.upstreams["u"])[0]]
    zone.mv[L.peer_base(a) + L.P_FAILS] = 3  # state that must survive the hand-over
    cfg2 = config(tmp_path, [f"127.0.0.1:{free_port()}"], ["127.0.0.1:9001", "127.0.0.1:9003"])
    second = SlotTable(zone)
    second.adopt(cfg2)
    slots2 = second.assign(cfg2, 1)
    keys2 = peer_keys(cfg2.http.upstreams["u"])
    assert slots2[keys2[0]] == a and zone.mv[L.peer_base(a) + L.P_FAILS] == 3
    b_slot = slots[peer_keys(cfg.http.upstreams["u"])[1]]
    assert slots2[keys2[1]] != b_slot  # 9002's slot stays reserved for the old workers
    second.release_retired(None, foreign_rows_live=True)
    assert zone.mv[L.peer_base(b_slot) + L.P_USED] == 1
    second.release_retired(None, foreign_rows_live=False)
    assert zone.mv[L.peer_base(b_slot) + L.P_USED] == 0
    zone.close()


def test_slot_snapshot_restore_undoes_an_aborted_reload(tmp_path: Path) -> None:
    zone = Zone.create(L.size_for(8, 4), 4)
    table = SlotTable(zone)
    cfg = config(tmp_path, [f"127.0.0.1:{free_port()}"], ["127.0.0.1:9001", "127.0.0.1:9002"])
    table.assign(cfg, 1)
    snap = table.snapshot()
    table.assign(config(tmp_path, [f"127.0.0.1:{free_port()}"], ["127.0.0.1:9003"]), 2)
    table.restore(snap)
    assert table.by_key == snap[0] and table.retiring == snap[1]
    zone.close()


def test_inherit_spec_round_trip() -> None:
    assert parse_inherit("zone=7;sockets=3,4,5") == (7, [3, 4, 5])
    assert parse_inherit("zone=9;sockets=") == (9, [])
