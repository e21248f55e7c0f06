"""The write API's sans-IO parts (issue 19): validation, documents, the shared server
table, a worker's membership (rebuild on a version change), the slot table's
reconciliation and state files. Processes and sockets: tests/integration/test_write_api.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from prefork_lb.balance.members import Membership, attach, refresh, refresh_locked, retarget
from prefork_lb.balance.peers import PeerGroup, new_selection
from prefork_lb.balance.registry import make_balancer
from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Address, Config, HttpConfig, UpstreamConfig, UpstreamServer
from prefork_lb.config.state_file import render_state, write_state
from prefork_lb.http.api import ApiError
from prefork_lb.http.upstream_conf import apply_fields, parse_body, parse_id, server_document
from prefork_lb.zone import layout as L
from prefork_lb.zone.servers import ServerTable, TableFull, group_key
from prefork_lb.zone.slots import SlotTable, peer_keys
from prefork_lb.zone.zone import Zone


def server(port: int, **kw: object) -> UpstreamServer:
    return UpstreamServer(Address("inet", "127.0.0.1", port), f"127.0.0.1:{port}", **kw)  # type: ignore[arg-type]


def upstream(*ports: int, method: str = "round_robin", **kw: object) -> UpstreamConfig:
    return UpstreamConfig("backend", method, tuple(server(p) for p in ports), **kw)  # type: ignore[arg-type]


def config_with(*ups: UpstreamConfig) -> Config:
    return Config(
        path="/x.toml",
        prefix="/",
        workers=1,
        pid_path="/x.pid",
        error_log_path="stderr",
        error_log_level="error",
        daemon=False,
        worker_connections=512,
        worker_shutdown_timeout_s=0.0,
        http=HttpConfig(upstreams={u.name: u for u in ups}),
    )


# ---- validation (upstream_conf.py) ----


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code", "needle"),
    [
        (b"{", b"application/json", 400, "JsonParseError", "JSON"),
        (b"[1]", None, 400, "JsonParseError", "object"),
        (b'{"weight": 1, "x": 2}', None, 400, "UpstreamConfFormatError", '"x"'),
        (b"{}", b"multipart/form-data; boundary=x", 415, "UnsupportedMediaType", "JSON"),
        (b'{ \\\n "weight": \\\n }', None, 400, "JsonParseError", "JSON"),  # still not JSON
        (b'{"server": "a\\\nb"}', None, 400, "JsonParseError", "JSON"),  # never inside a string
    ],
)
def test_body_errors(body: bytes, ctype: bytes | None, status: int, code: str, needle: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_body(body, ctype)
    assert (e.value.status, e.value.code) == (status, code)
    assert needle in e.value.text


def test_body_with_shell_line_continuations() -> None:
    """NGINX's guide spreads its POST body over shell lines ending in a backslash inside
    single quotes: the body carries backslash-newline pairs, read as whitespace (rule 4)."""
    body = b'{ \\\n   "server": "10.0.0.1:8089", \\\r\n   "weight": 4 \\\n }'
    assert parse_body(body, b"application/x-www-form-urlencoded") == {"server": "10.0.0.1:8089", "weight": 4}
    quoted = b'{"route": "a\\"b", \\\n "weight": 2}'  # an escaped quote does not end the string
    assert parse_body(quoted, None) == {"route": 'a"b', "weight": 2}


def test_body_content_types_of_documented_clients() -> None:
    """curl -d (form type), text/plain and JSON with a charset are all read as JSON."""
    for ctype in (
        None,
        b"application/x-www-form-urlencoded",
        b"text/plain",
        b"application/json; charset=utf-8",
    ):
        assert parse_body(b'{"weight": 2}', ctype) == {"weight": 2}


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"weight": 0}, "weight"),
        ({"weight": True}, "weight"),
        ({"weight": "2"}, "weight"),
        ({"max_fails": -1}, "max_fails"),
        ({"max_conns": 1.5}, "max_conns"),
        ({"fail_timeout": "abc"}, "fail_timeout"),
        ({"fail_timeout": "500ms"}, "fail_timeout"),
        ({"slow_start": [1]}, "slow_start"),
        ({"down": "true"}, "down"),
        ({"drain": 1}, "drain"),
        ({"route": "a b"}, "route"),
        ({"route": "x" * 33}, "route"),
    ],
)
def test_field_errors_name_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(ApiError) as e:
        apply_fields(server(1), doc, upstream(1))
    assert e.value.status == 400 and e.value.code == "UpstreamConfFormatError"
    assert f'"{field}"' in e.value.text


def test_fields_applied() -> None:
    s = apply_fields(
        server(1),
        {
            "weight": 3,
            "max_conns": 5,
            "max_fails": 0,
            "fail_timeout": "1m",
            "slow_start": 30,
            "route": "a",
            "down": True,
            "drain": True,
        },
        upstream(1),
    )
    assert (
        s.weight,
        s.max_conns,
        s.max_fails,
        s.fail_timeout_s,
        s.slow_start_s,
        s.route,
        s.down,
        s.drain,
    ) == (
        3,
        5,
        0,
        60.0,
        30.0,
        "a",
        True,
        True,
    )


def test_patch_immutables_and_method_limits() -> None:
    """PATCH cannot change server, backup or id; hash refuses backup, least_conn slow_start."""
    for doc in ({"server": "127.0.0.1:2"}, {"backup": True}, {"id": 7}):
        with pytest.raises(ApiError) as e:
            apply_fields(server(1), doc, upstream(1), patch_id=0)
        assert e.value.code == "UpstreamServerImmutable"
    assert apply_fields(server(1), {"server": "127.0.0.1:1", "id": 0}, upstream(1), patch_id=0) == server(1)
    with pytest.raises(ApiError, match='"backup"'):
        apply_fields(server(1), {"backup": True}, upstream(1, method="hash", hash_key="$uri"))
    with pytest.raises(ApiError, match='"slow_start"'):
        apply_fields(server(1), {"slow_start": "10s"}, upstream(1, method="least_conn"))
    with pytest.raises(ApiError, match='unknown parameter "route"'):
        apply_fields(server(1), {"route": "a"}, upstream(1, context="stream"))
    with pytest.raises(ApiError) as e:
        parse_id("x1")
    assert e.value.status == 400


def test_server_document_shapes() -> None:
    s = server(9, weight=2, drain=True, fail_timeout_s=30.0)
    assert server_document(4, s, "http") == {
        "id": 4,
        "server": "127.0.0.1:9",
        "weight": 2,
        "max_conns": 0,
        "max_fails": 1,
        "fail_timeout": "30s",
        "slow_start": "0s",
        "route": "",
        "backup": False,
        "down": False,
        "drain": True,
    }
    assert "route" not in server_document(4, s, "stream")
    doc = ApiError(404, "UpstreamNotFound", "x").document()
    assert set(doc) == {"error", "request_id", "href"}


# ---- the server table (zone/servers.py) and the slot table ----


def master(*ups: UpstreamConfig, peers: int = 8) -> tuple[Zone, ServerTable, SlotTable]:
    zone = Zone.for_peers(peers, rows=2)
    table = ServerTable(zone.peers, entries=8)
    slots = SlotTable(zone, servers=table)
    slots.assign(config_with(*ups), 1)
    return zone, table, slots


def test_sync_ids_follow_group_order_and_survive_reload() -> None:
    """Start: ids in PeerGroup order (primaries, then backups) as the read-only API had
    them; a reload keeps the ids of servers it keeps and never reuses one."""
    up = replace(upstream(1, 2), servers=(server(1, backup=True), server(2), server(3)))
    _zone, table, slots = master(up)
    e = table.find(group_key("http", "backend"))
    _, recs = table.read(e)
    assert [(r.id, r.server.address.port) for r in recs] == [(0, 2), (1, 3), (2, 1)]
    v = table.version(e)
    slots.assign(config_with(up), 2)
    assert table.version(e) == v  # unchanged list: no version bump, nobody rebuilds
    slots.assign(config_with(replace(up, servers=(server(3), server(4)))), 3)
    _, recs = table.read(e)
    assert [(r.id, r.server.address.port) for r in recs] == [(1, 3), (3, 4)]
    assert table.version(e) == v + 1


def test_add_patch_delete_and_zombies() -> None:
    """Runtime servers take free zone slots; a deleted server with connections is a zombie
    whose slot is freed by the sweep once they end; the slot table learns both at its next
    assignment and never hands out a slot a runtime server owns."""
    zone, table, slots = master(upstream(1), peers=4)
    e = table.find(group_key("http", "backend"))
    with zone:
        [rec] = table.add(e, [server(2)], "http", "backend", zone, 0)
    assert rec.id == 1 and zone.peer_word(rec.slot, L.P_USED) == L.USED_PEER
    assert rec.slot not in slots.free_slots()
    with zone:
        table.patch(e, 1, replace(rec.server, weight=5), zone)
    assert zone.peer_word(rec.slot, L.P_EW) == 5
    zone.mv[L.peer_base(rec.slot) + L.P_CONNS] = 1  # a request in flight
    with zone:
        table.delete(e, 1, zone)
        assert table.sweep(zone) == 0
    assert table.zombies(e) == 1 and zone.peer_word(rec.slot, L.P_USED) == L.USED_PEER
    zone.mv[L.peer_base(rec.slot) + L.P_CONNS] = 0
    with zone:
        assert table.sweep(zone) == 1
    assert table.zombies(e) == 0 and zone.peer_word(rec.slot, L.P_USED) == 0
    assert rec.slot in slots.free_slots()


def test_zone_full_writes_nothing() -> None:
    zone, table, _ = master(upstream(1), peers=1)
    e = table.find(group_key("http", "backend"))
    v = table.version(e)
    with zone, pytest.raises(TableFull, match="zone_size"):
        table.add(e, [server(2)], "http", "backend", zone, 0)
    assert table.version(e) == v and len(table.read(e)[1]) == 1


def test_reconcile_keeps_runtime_servers_listed_in_state() -> None:
    """A server added at run time that the next config lists (its state file) keeps its slot
    and counters; a configured server deleted at run time gets a fresh slot if the config
    brings it back (its old one belongs to the table's zombie until freed)."""
    zone, table, slots = master(upstream(1, 2), peers=6)
    e = table.find(group_key("http", "backend"))
    with zone:
        [added] = table.add(e, [server(3)], "http", "backend", zone, 0)
        zone.mv[L.peer_base(added.slot) + L.P_REQUESTS] = 7
        old2 = table.get(e, 1)
        assert old2 is not None
        zone.mv[L.peer_base(old2.slot) + L.P_CONNS] = 1
        table.delete(e, 1, zone)
    by_key = slots.assign(config_with(upstream(1, 2, 3)), 2)
    keys = peer_keys(upstream(1, 2, 3))
    assert by_key[keys[2]] == added.slot and zone.peer_word(added.slot, L.P_REQUESTS) == 7
    assert by_key[keys[1]] != old2.slot
    _, recs = table.read(e)
    assert [(r.id, r.server.address.port) for r in recs] == [(0, 1), (2, 3), (3, 2)]


def test_restore_frees_what_an_aborted_reload_set_up() -> None:
    zone, table, slots = master(upstream(1), peers=4)
    cfg = config_with(upstream(1))
    snap = slots.snapshot()
    used = sum(1 for s in range(zone.peers) if zone.peer_word(s, L.P_USED))
    slots.assign(config_with(upstream(1, 2, 3)), 2)
    slots.restore(snap, cfg)
    assert sum(1 for s in range(zone.peers) if zone.peer_word(s, L.P_USED)) == used
    _, recs = table.read(table.find(group_key("http", "backend")))
    assert [r.server.address.port for r in recs] == [1]


# ---- a worker's membership (balance/members.py) ----


class Owner:
    def __init__(self, up: UpstreamConfig, zone: Zone, slots: dict[str, int]) -> None:
        self.config = up
        self.group = PeerGroup.build(up, zone, [slots[k] for k in peer_keys(up)])
        self.balancer = make_balancer(up, self.group)
        self.members: Membership | None = None


def test_pick_side_rebuild_and_retarget() -> None:
    """A version change rebuilds group and balancer; a selection of the old group moves to
    the new one, so a retry cannot pick a deleted server."""
    zone, table, slots = master(upstream(1, 2), peers=6)
    owner = Owner(upstream(1, 2), zone, slots.by_key)
    attach(owner, table, 0, lambda up, group: make_balancer(up, group))
    assert owner.members is not None
    refresh(owner)
    old = owner.group
    sel = new_selection(old, 0)
    m = owner.members
    e = m.entry
    with zone:
        table.add(e, [server(3)], "http", "backend", zone, 0)
        table.delete(e, 0, zone)
    assert m.changed()
    with zone:
        refresh_locked(owner)
        assert not m.changed()
        retarget(sel, owner.group)
        picked = [owner.balancer.pick(sel, None, 0) for _ in range(2)]
    assert owner.group is not old
    assert [p.addr for p in owner.group.all_peers()] == ["127.0.0.1:2", "127.0.0.1:3"]
    assert {p.addr for p in picked if p is not None} == {"127.0.0.1:2", "127.0.0.1:3"}
    assert m.ids == {p.slot: i for p, i in zip(owner.group.all_peers(), (1, 2), strict=True)}


def test_no_membership_without_a_table_or_for_implicit_groups() -> None:
    zone, table, slots = master(upstream(1))
    owner = Owner(replace(upstream(1), implicit=True), zone, slots.by_key)
    attach(owner, table, 0, lambda up, group: make_balancer(up, group))
    assert owner.members is None
    attach(owner, None, 0, lambda up, group: make_balancer(up, group))
    assert owner.members is None


# ---- state files (config/state_file.py) ----


def test_state_roundtrip_through_the_config_loader(tmp_path: Path) -> None:
    servers = [server(1, weight=2, drain=True), server(2, backup=True, fail_timeout_s=30.0, route="b")]
    (tmp_path / "b.state").write_text(render_state(servers))
    (tmp_path / "c.toml").write_text(
        '[http.upstreams.backend]\nstate = "b.state"\nservers = [{ address = "127.0.0.1:9" }]\n'
        '[[http.servers]]\nlisten = ["127.0.0.1:1"]\n[[http.servers.locations]]\nmatch = "/"\n'
        'proxy_pass = "http://backend"\n'
    )
    up = load_config(str(tmp_path / "c.toml")).http.upstreams["backend"]
    assert up.servers == tuple(servers) and up.state_path == str(tmp_path / "b.state")
    (tmp_path / "b.state").write_text('servers = [{ address = "127.0.0.1:1", weight = 0 }]\n')
    with pytest.raises(ConfigError, match=r"b\.state.*servers\[0\]\.weight"):
        load_config(str(tmp_path / "c.toml"))
    (tmp_path / "b.state").unlink()  # no file yet: the config's servers
    assert load_config(str(tmp_path / "c.toml")).http.upstreams["backend"].servers == (server(9),)
    text = (tmp_path / "c.toml").read_text().replace('"b.state"', '"nodir/b.state"')
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"backend\.state: the directory"):
        load_config(str(tmp_path / "c.toml"))


def test_write_state_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    write_state(str(path), lambda: [server(1)])
    write_state(str(path), lambda: [server(1), server(2, down=True)])
    assert path.read_text().count("address") == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".state.")] == []


def test_api_write_option_parsing(tmp_path: Path) -> None:
    base = '[[http.servers]]\nlisten = ["127.0.0.1:1"]\n[[http.servers.locations]]\nmatch = "/api/"\n'
    for text, write in (
        ("api = true", False),
        ("api = { write = true }", True),
        ("api = { write = false }", False),
    ):
        (tmp_path / "c.toml").write_text(base + text + "\n")
        loc = load_config(str(tmp_path / "c.toml")).http.servers[0].locations[0]
        assert (loc.status, loc.api_write) == ("api", write)
    (tmp_path / "c.toml").write_text(base + "api = { writ = true }\n")
    with pytest.raises(ConfigError, match=r"api\.writ"):
        load_config(str(tmp_path / "c.toml"))
    assert json.dumps(server_document(0, server(1), "http"))


def test_a_server_document_is_a_valid_body() -> None:
    """Clients that read-modify-write whole objects (nginx-plus-go-client's UpdateHTTPServers
    PATCHes the full server, ``id`` included): a GET document sent back changes nothing,
    and as a POST body it recreates the same server."""
    s = server(
        9, weight=4, max_conns=3, max_fails=2, fail_timeout_s=20.0, slow_start_s=5.0, route="r1", drain=True
    )
    doc = json.loads(json.dumps(server_document(3, s, "http")))
    assert apply_fields(s, doc, upstream(9), patch_id=3) == s
    posted = {k: v for k, v in doc.items() if k != "id"}
    assert apply_fields(server(9), parse_body(json.dumps(posted).encode(), None), upstream(9)) == s
