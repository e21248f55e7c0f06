"""A worker's view of an upstream's runtime server list (issue 19, ``zone/servers.py``).

Rules:
1. Only upstreams that can change at run time have a ``Membership`` (some location has
   ``api = { write = true }``); the others keep ``members = None`` and pay one attribute
   test per pick, nothing else.
2. Every pick compares the entry's version word with the one the worker's PeerGroup was
   built from, under the zone lock (``changed``: one word read). A change rebuilds the
   group and the balancer from the table (``refresh_locked``): the records are copied under
   the lock, the objects are built with the lock released (a hash ring takes milliseconds)
   and installed under it again if the version did not move meanwhile (else it repeats).
3. A request's ``Selection`` made from an older group is moved to the current one before
   its next pick (``retarget``): a retry never picks a server that was removed (its slot
   may already serve another server), and the tried-set restarts on the new list. Its
   in-flight peer is still released through the old ``Peer`` object: the slot stays owned
   until its connections reach 0 (``servers.py`` rule 5).
4. An upstream whose entry disappeared (a reload dropped it) keeps its last group.
5. An entry with no records (the API deleted every server, as NGINX Plus allows) gives an
   empty group with the ``NoServers`` balancer: every pick is None (502 "no live
   upstreams"; a stream session is closed) until a server is added.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol

from prefork_lb.balance.base import Balancer
from prefork_lb.balance.peers import PeerGroup, Selection
from prefork_lb.config.model import UpstreamConfig
from prefork_lb.zone.servers import Record, ServerTable, group_key

log = logging.getLogger("prefork_lb.error")

MakeBalancer = Callable[[UpstreamConfig, PeerGroup], Balancer]


class Member(Protocol):
    """``http/runtime.UpstreamRuntime`` and ``stream/runtime.StreamUpstream``."""

    config: UpstreamConfig
    group: PeerGroup
    balancer: Balancer
    members: Membership | None


class Membership:
    __slots__ = ("entry", "ids", "key", "make", "mv", "records", "row", "seen", "table", "word")

    def __init__(self, table: ServerTable, entry: int, key: int, row: int, make: MakeBalancer) -> None:
        self.table = table
        self.entry = entry
        self.key = key
        self.row = row
        self.make = make
        self.mv = table.mv
        self.word = table.version_index(entry)
        self.seen = -1  # never equal: the first pick (or refresh) reads the table
        self.ids: dict[int, int] = {}  # zone slot -> server id (the API's "id")
        self.records: list[Record] = []

    def changed(self) -> bool:
        return bool(self.mv[self.word] != self.seen)


def attach(owner: Member, table: ServerTable | None, row: int, make: MakeBalancer) -> None:
    """Give ``owner`` a Membership when its upstream has an entry in the table."""
    if table is None or owner.config.implicit:
        return
    key = group_key(owner.config.context, owner.config.name)
    entry = table.find(key)
    if entry >= 0:
        owner.members = Membership(table, entry, key, row, make)


def refresh_locked(owner: Member) -> None:
    """Rule 2; called and returning with the zone lock held."""
    m = owner.members
    assert m is not None
    zone = owner.group.zone
    for _ in range(100):
        if m.table.key_of(m.entry) != m.key:  # rule 4
            m.seen = int(m.mv[m.word])
            return
        version, records = m.table.read(m.entry)
        zone.unlock()
        try:
            built = _build(owner, m, records)
        finally:
            zone.lock()
        if int(m.mv[m.word]) == version:
            if built is not None:
                owner.group, owner.balancer, sticky = built
                if sticky is not None:
                    owner.sticky = sticky  # type: ignore[attr-defined]  # http upstreams only
                m.ids = {r.slot: r.id for r in records}
                m.records = records
            m.seen = version
            return


def _build(owner: Member, m: Membership, records: list[Record]) -> tuple[PeerGroup, Balancer, Any] | None:
    """The new group and balancer, and the upstream's sticky persistence over them when it
    has one (``http/runtime.UpstreamRuntime.sticky``; its peer maps are keyed by Peer)."""
    up = dataclasses.replace(owner.config, servers=tuple(r.server for r in records))
    try:
        group = PeerGroup.build(up, owner.group.zone, [r.slot for r in records], m.row)
        balancer = m.make(up, group)  # no records: NoServers (rule 5, registry.make_balancer)
        old = getattr(owner, "sticky", None)
        return group, balancer, None if old is None else old.rebuilt(owner.config, group, balancer)
    except Exception:  # never a crashed worker: keep serving the previous list
        log.exception('cannot rebuild upstream "%s" from its runtime server list', owner.config.name)
        return None


def refresh(owner: Member) -> None:
    """Outside the lock (worker start, the API's reads): bring ``owner`` up to date."""
    m = owner.members
    if m is None:
        return
    zone = owner.group.zone
    zone.lock()
    try:
        if m.changed():
            refresh_locked(owner)
    finally:
        zone.unlock()


def retarget(sel: Selection, group: PeerGroup) -> None:
    """Rule 3."""
    sel.group = group
    sel.current = group.primary
    sel.tried = 0
    sel.hash = -1
    sel.hash_tries = 0
    sel.rehash = 0
    if sel.tries > group.tries:
        sel.tries = group.tries


def server_ids(owner: Any) -> dict[int, int]:
    """zone slot -> id for the API (an upstream without a Membership: list positions)."""
    m = getattr(owner, "members", None)
    if m is not None and m.ids:
        return dict(m.ids)
    return {p.slot: i for i, p in enumerate(owner.group.all_peers())}
