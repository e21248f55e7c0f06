"""The shared server table: every upstream's current server list, for runtime changes (issue 19).

One anonymous MAP_SHARED mapping created by the master before the first fork (so every
worker, the prober and every later generation inherits it; it lives as long as the
master) of little-endian int64 words:

    header   HEADER_WORDS: MAGIC, ENTRIES, RECORDS, ZOMBIES
    entries  ENTRIES x ENTRY_WORDS: E_KEY (hash of "context\\0name", 0 = free), E_VERSION,
             E_NEXT_ID (the next server id), E_COUNT (live servers)
    records  RECORDS x RECORD_WORDS: W_STATE (FREE, LIVE, ZOMBIE), W_ENTRY, W_ID, W_SLOT,
             W_LEN, then W_LEN bytes of JSON (the server's settings, ``encode``)

Rules:
1. Read and written only under the zone lock (``zone/zone.py``), by the master (at start
   and reload: ``sync``) and by workers (the write API: ``add``, ``patch``, ``delete``,
   ``sweep``). Nothing here does I/O.
2. Every change to an upstream's list bumps its ``E_VERSION``. A worker keeps the version
   its PeerGroup was built from and compares it on every pick, under the lock (one word
   read): a changed version rebuilds the group (``balance/members.py``) before the pick,
   so no pick ever chooses a server that was removed.
3. Ids are stable: a server keeps its id while it exists, across reloads too (the master
   matches servers by peer key, ``zone/slots.py``); new ids are ``E_NEXT_ID``, never reused.
4. Each server owns one zone peer slot (its counters). A server added at run time takes a
   free slot (``P_USED`` == 0) from the zone; the master's slot table learns about it
   before its next assignment (``SlotTable.assign`` reconciles with ``live_slots``).
5. A deleted server whose slot still has connections (``P_CONNS`` > 0) becomes a ZOMBIE
   record: its in-flight requests complete and release the slot normally; ``sweep``
   (every write, and each worker's housekeeping while ``ZOMBIES`` > 0) frees the slot once
   its connections reach 0. A slot is never reused while a request may still release it.
6. A reload replaces each configured upstream's list with the new config's (NGINX Plus:
   runtime changes survive a reload only through a ``state`` file, which the config then
   reads); an upstream the new config dropped loses its entry without a version bump, so
   the old generation keeps its last list until it exits (its slots retire as usual).
"""

from __future__ import annotations

import json
import mmap
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from prefork_lb.config.addresses import parse_address
from prefork_lb.config.model import UpstreamConfig, UpstreamServer
from prefork_lb.zone import layout as L

MAGIC: Final = 0x706C627372767331  # "plbsrvs1"
HEADER_WORDS: Final = 8
H_MAGIC, H_ENTRIES, H_RECORDS, H_ZOMBIES = range(4)
ENTRY_WORDS: Final = 4
E_KEY, E_VERSION, E_NEXT_ID, E_COUNT = range(4)
RECORD_WORDS: Final = 128  # 1 KiB per server
W_STATE, W_ENTRY, W_ID, W_SLOT, W_LEN = range(5)
DATA_WORD: Final = 5
MAX_DATA: Final = (RECORD_WORDS - DATA_WORD) * 8
FREE, LIVE, ZOMBIE = 0, 1, 2
DEFAULT_ENTRIES: Final = 1024


class TableFull(Exception):
    """No free record, entry or zone slot: the change is refused, nothing is written."""


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    slot: int
    server: UpstreamServer


def group_key(context: str, name: str) -> int:
    from prefork_lb.zone.slots import key_hash

    return key_hash(f"{context}\0{name}")


def encode(s: UpstreamServer) -> bytes:
    doc: dict[str, Any] = {
        "a": s.address.text,
        "n": s.name,
        "w": s.weight,
        "mf": s.max_fails,
        "ft": s.fail_timeout_s,
        "mc": s.max_conns,
        "b": s.backup,
        "d": s.down,
        "ss": s.slow_start_s,
        "r": s.route,
        "dr": s.drain,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> UpstreamServer:
    d = json.loads(data)
    return UpstreamServer(
        address=parse_address(d["a"]),
        name=d["n"],
        weight=d["w"],
        max_fails=d["mf"],
        fail_timeout_s=d["ft"],
        max_conns=d["mc"],
        backup=d["b"],
        down=d["d"],
        slow_start_s=d["ss"],
        route=d["r"],
        drain=d["dr"],
    )


def ordered(servers: Iterable[UpstreamServer]) -> list[UpstreamServer]:
    """PeerGroup order: primaries, then backups (the API's ids follow it at start)."""
    servers = list(servers)
    return [s for s in servers if not s.backup] + [s for s in servers if s.backup]


def peer_key(context: str, upstream: str, s: UpstreamServer, ordinal: int) -> str:
    """The same key ``zone/slots.peer_keys`` makes for a configured server."""
    return f"{context}\0{upstream}\0{s.name}\0{s.address.text}\0{int(s.backup)}\0{ordinal}"


def record_keys(context: str, upstream: str, records: Iterable[Record]) -> list[tuple[str, Record]]:
    seen: Counter[tuple[str, str, bool]] = Counter()
    out = []
    for r in records:
        ident = (r.server.name, r.server.address.text, r.server.backup)
        out.append((peer_key(context, upstream, r.server, seen[ident]), r))
        seen[ident] += 1
    return out


class ServerTable:
    """Created by the master; inherited by fork (anonymous shared mapping)."""

    def __init__(self, records: int, entries: int = DEFAULT_ENTRIES) -> None:
        self.entries = entries
        self.records = records
        size = 8 * (HEADER_WORDS + entries * ENTRY_WORDS + records * RECORD_WORDS)
        self._mmap = mmap.mmap(-1, size)
        self.mv = memoryview(self._mmap).cast("q")
        self.raw = memoryview(self._mmap)
        self.mv[H_MAGIC] = MAGIC
        self.mv[H_ENTRIES] = entries
        self.mv[H_RECORDS] = records
        self._names: dict[int, tuple[str, str]] = {}  # master only: entry key -> (context, name)

    # ---- layout ----

    def entry_base(self, e: int) -> int:
        return HEADER_WORDS + e * ENTRY_WORDS

    def version_index(self, e: int) -> int:
        """The word a worker compares on every pick (rule 2)."""
        return self.entry_base(e) + E_VERSION

    def _rec(self, i: int) -> int:
        return HEADER_WORDS + self.entries * ENTRY_WORDS + i * RECORD_WORDS

    # ---- entries ----

    def find(self, key: int) -> int:
        mv = self.mv
        for e in range(self.entries):
            if mv[self.entry_base(e) + E_KEY] == key:
                return e
        return -1

    def key_of(self, e: int) -> int:
        return int(self.mv[self.entry_base(e) + E_KEY])

    def version(self, e: int) -> int:
        return int(self.mv[self.entry_base(e) + E_VERSION])

    def _new_entry(self, key: int) -> int:
        mv = self.mv
        for e in range(self.entries):
            b = self.entry_base(e)
            if mv[b + E_KEY] == 0:
                mv[b + E_KEY] = key
                mv[b + E_NEXT_ID] = 0
                mv[b + E_COUNT] = 0
                mv[b + E_VERSION] += 1  # never reset: a reader of a freed entry sees a change
                return e
        raise TableFull(f"the server table has room for {self.entries} upstreams")

    # ---- records ----

    def _server(self, i: int) -> UpstreamServer:
        b = self._rec(i)
        n = int(self.mv[b + W_LEN])
        start = (b + DATA_WORD) * 8
        return decode(bytes(self.raw[start : start + n]))

    def _write(self, i: int, e: int, id_: int, slot: int, server: UpstreamServer, data: bytes = b"") -> None:
        data = data or encode(server)
        if len(data) > MAX_DATA:
            raise ValueError(f"server settings too long ({len(data)} bytes, at most {MAX_DATA})")
        b = self._rec(i)
        mv = self.mv
        start = (b + DATA_WORD) * 8
        self.raw[start : start + len(data)] = data
        mv[b + W_LEN] = len(data)
        mv[b + W_ENTRY] = e
        mv[b + W_ID] = id_
        mv[b + W_SLOT] = slot
        mv[b + W_STATE] = LIVE

    def _column(self, word: int) -> list[int]:
        """One word of every record (a strided view: C speed, ~20 us for 3000 records)."""
        start = self._rec(0)
        return self.mv[start + word : start + self.records * RECORD_WORDS : RECORD_WORDS].tolist()

    def _indexes(self, e: int, state: int = LIVE) -> list[int]:
        states, entries, ids = self._column(W_STATE), self._column(W_ENTRY), self._column(W_ID)
        out = [i for i, (st, en) in enumerate(zip(states, entries, strict=True)) if st == state and en == e]
        out.sort(key=lambda i: ids[i])
        return out

    def _free_records(self, n: int) -> list[int]:
        return [i for i, st in enumerate(self._column(W_STATE)) if st == FREE][:n]

    def _free_record(self) -> int:
        found = self._free_records(1)
        if not found:
            raise TableFull(f"the server table is full ({self.records} servers)")
        return found[0]

    def read(self, e: int) -> tuple[int, list[Record]]:
        """(version, live servers in id order), under the lock (rule 1)."""
        mv = self.mv
        recs = [
            Record(int(mv[self._rec(i) + W_ID]), int(mv[self._rec(i) + W_SLOT]), self._server(i))
            for i in self._indexes(e)
        ]
        return self.version(e), recs

    def _bump(self, e: int) -> None:
        b = self.entry_base(e)
        self.mv[b + E_VERSION] += 1
        self.mv[b + E_COUNT] = len(self._indexes(e))

    # ---- master (start, reload) ----

    def live_slots(self) -> tuple[set[str], dict[str, int]]:
        """Rule 4: (prefixes "context\\0name" of the upstreams this table lists, peer key ->
        slot of every live server), for the master's slot table."""
        prefixes: set[str] = set()
        slots: dict[str, int] = {}
        for e in range(self.entries):
            key = self.key_of(e)
            if not key or key not in self._names:
                continue
            context, name = self._names[key]
            prefixes.add(f"{context}\0{name}")
            _, recs = self.read(e)
            for k, r in record_keys(context, name, recs):
                slots[k] = r.slot
        return prefixes, slots

    def sync(self, upstreams: Iterable[UpstreamConfig], slots: dict[str, int]) -> None:
        """Rule 6: each configured upstream's list becomes its config's (ids kept by key)."""
        wanted: dict[int, UpstreamConfig] = {}
        for up in upstreams:
            if not up.implicit:
                wanted[group_key(up.context, up.name)] = up
        for e in range(self.entries):  # upstreams the config dropped: entry and records go
            key = self.key_of(e)
            if key and key not in wanted:
                for i in self._indexes(e):
                    self.mv[self._rec(i) + W_STATE] = FREE
                self.mv[self.entry_base(e) + E_KEY] = 0
                self._names.pop(key, None)
        for key, up in wanted.items():
            self._names[key] = (up.context, up.name)
            e = self.find(key)
            if e < 0:
                e = self._new_entry(key)
            _, old = self.read(e)
            old_ids = {k: r.id for k, r in record_keys(up.context, up.name, old)}
            next_id = int(self.mv[self.entry_base(e) + E_NEXT_ID])
            servers = ordered(up.servers)
            new: list[Record] = []
            seen: Counter[tuple[str, str, bool]] = Counter()
            for s in servers:
                ident = (s.name, s.address.text, s.backup)
                k = peer_key(up.context, up.name, s, seen[ident])
                seen[ident] += 1
                id_ = old_ids.get(k)
                if id_ is None:
                    id_ = next_id
                    next_id += 1
                new.append(Record(id_, slots[k], s))
            if [(r.id, r.slot, r.server) for r in new] == [(r.id, r.slot, r.server) for r in old]:
                continue
            for i in self._indexes(e):
                self.mv[self._rec(i) + W_STATE] = FREE
            for r in new:
                self._write(self._free_record(), e, r.id, r.slot, r.server)
            self.mv[self.entry_base(e) + E_NEXT_ID] = next_id
            self._bump(e)

    # ---- workers (the write API, under the zone lock) ----

    def add(
        self, e: int, servers: list[UpstreamServer], context: str, upstream: str, zone: Any, checking_ms: int
    ) -> list[Record]:
        """New servers (one per address of a hostname); TableFull before writing anything.
        ``checking_ms``: a mandatory health check's group: the slot starts "checking"."""
        from prefork_lb.zone.slots import key_hash

        data = [encode(s) for s in servers]
        for d in data:
            if len(d) > MAX_DATA:
                raise ValueError("server settings too long")
        mv = self.mv
        free_recs = self._free_records(len(servers))
        zmv = zone.mv
        used = zmv[L.peer_base(0) + L.P_USED : L.peer_base(zone.peers) : L.PEER_WORDS].tolist()
        free_slots = [s for s, u in enumerate(used) if u == 0][: len(servers)]
        if len(free_recs) < len(servers) or len(free_slots) < len(servers):
            raise TableFull(
                f"the zone has no free peer slot ({zone.peers} slots in use or reserved): raise zone_size"
            )
        _, existing = self.read(e)
        keys = {k for k, _ in record_keys(context, upstream, existing)}
        b = self.entry_base(e)
        out = []
        for s, d, i, slot in zip(servers, data, free_recs, free_slots, strict=True):
            ordinal = 0
            while peer_key(context, upstream, s, ordinal) in keys:
                ordinal += 1
            k = peer_key(context, upstream, s, ordinal)
            keys.add(k)
            zone.init_peer(slot, s.weight, key_hash(k), L.USED_PEER)
            if checking_ms:
                zmv[L.peer_base(slot) + L.P_HC_STATE] = L.HC_CHECKING
                zmv[L.peer_base(slot) + L.P_HC_DOWNSTART_MS] = checking_ms
            id_ = int(mv[b + E_NEXT_ID])
            mv[b + E_NEXT_ID] = id_ + 1
            self._write(i, e, id_, slot, s, d)
            out.append(Record(id_, slot, s))
        self._bump(e)
        return out

    def _find_id(self, e: int, id_: int) -> int:
        for i in self._indexes(e):
            if self.mv[self._rec(i) + W_ID] == id_:
                return i
        return -1

    def get(self, e: int, id_: int) -> Record | None:
        i = self._find_id(e, id_)
        if i < 0:
            return None
        return Record(id_, int(self.mv[self._rec(i) + W_SLOT]), self._server(i))

    def patch(self, e: int, id_: int, server: UpstreamServer, zone: Any) -> Record:
        i = self._find_id(e, id_)
        slot = int(self.mv[self._rec(i) + W_SLOT])
        old = self._server(i)
        self._write(i, e, id_, slot, server)
        zb = L.peer_base(slot)
        if server.weight != old.weight:  # nginx Plus: the new weight applies at once
            zone.mv[zb + L.P_EW] = server.weight
            zone.mv[zb + L.P_CW] = 0
        self._bump(e)
        return Record(id_, slot, server)

    def delete(self, e: int, id_: int, zone: Any) -> None:
        i = self._find_id(e, id_)
        b = self._rec(i)
        slot = int(self.mv[b + W_SLOT])
        if zone.mv[L.peer_base(slot) + L.P_CONNS] > 0:
            self.mv[b + W_STATE] = ZOMBIE  # rule 5
            self.mv[H_ZOMBIES] += 1
        else:
            self.mv[b + W_STATE] = FREE
            zone.free_peer(slot)
        self._bump(e)

    def zombies(self, e: int) -> int:
        return len(self._indexes(e, ZOMBIE)) if self.mv[H_ZOMBIES] else 0

    def sweep(self, zone: Any) -> int:
        """Rule 5: free the slots of deleted servers whose last request ended."""
        mv = self.mv
        if not mv[H_ZOMBIES]:
            return 0
        freed = 0
        for i in [i for i, st in enumerate(self._column(W_STATE)) if st == ZOMBIE]:
            b = self._rec(i)
            slot = int(mv[b + W_SLOT])
            if zone.mv[L.peer_base(slot) + L.P_CONNS] <= 0:
                mv[b + W_STATE] = FREE
                zone.free_peer(slot)
                mv[H_ZOMBIES] -= 1
                freed += 1
        return freed

    def pending_zombies(self) -> int:
        return int(self.mv[H_ZOMBIES])
