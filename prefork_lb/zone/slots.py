"""Which zone slot each peer and each worker uses (master side, plain Python).

Peer identity is (upstream name, server string, address, backup, ordinal among equal
entries): a reload keeps the slot, and with it the live state, of every peer whose
identity is unchanged. Slots of removed peers are freed only once no worker of an older
generation can still be using them. Running out of slots is a config-time error.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

from prefork_lb.config.model import Config, UpstreamConfig, zone_name
from prefork_lb.health.state import seed_new
from prefork_lb.zone import layout as L
from prefork_lb.zone.servers import ServerTable
from prefork_lb.zone.zone import Zone, ZoneFullError

FOREIGN = -1  # retiring slots that belong to a previous master's workers (binary upgrade)


def peer_keys(upstream: UpstreamConfig) -> list[str]:
    """One key per peer, in server order (the order PeerGroup.build uses)."""
    seen: Counter[tuple[str, str, bool]] = Counter()
    keys = []
    for s in upstream.servers:
        ident = (s.name, s.address.text, s.backup)
        keys.append(
            f"{upstream.context}\0{upstream.name}\0{s.name}\0{s.address.text}\0{int(s.backup)}\0{seen[ident]}"
        )
        seen[ident] += 1
    return keys


def zone_keys(config: Config) -> dict[str, str]:
    """Slot key per server-zone key ("http\0name" / "stream\0name")."""
    names = {f"http\0{zone_name(s)}" for s in config.http.servers}
    names |= {f"stream\0{zone_name(s)}" for s in config.stream.servers}
    return {name: f"zone\0{name}" for name in sorted(names)}


def key_hash(key: str) -> int:
    """A stable 63-bit hash of a peer key, stored in the zone (int64, never 0)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF) or 1


@dataclass(slots=True)
class SlotTable:
    zone: Zone
    by_key: dict[str, int] = field(default_factory=dict)
    retiring: list[tuple[int, list[int]]] = field(default_factory=list)  # (generation, slots)
    servers: ServerTable | None = None  # issue 19: the runtime server lists (zone/servers.py)

    def free_slots(self) -> list[int]:
        """Slots nobody owns: not ours, not retiring, not taken by a worker (the write API)."""
        used = set(self.by_key.values()) | {s for _, slots in self.retiring for s in slots}
        mv = self.zone.mv
        return [s for s in range(self.zone.peers) if s not in used and not mv[L.peer_base(s) + L.P_USED]]

    def _reconcile(self) -> None:
        """Under the lock: learn the servers the write API added and forget the ones it
        deleted (their slots belong to the server table until freed: servers.py rule 5)."""
        if self.servers is None:
            return
        prefixes, live = self.servers.live_slots()
        for key in list(self.by_key):
            if "\0".join(key.split("\0", 2)[:2]) in prefixes and key not in live:
                del self.by_key[key]
        self.by_key.update(live)

    def assign(self, config: Config, generation: int) -> dict[str, int]:
        """Slots for every peer of ``config``; state of surviving peers is kept.

        Raises ZoneFullError (before touching the zone) if the peers do not fit.
        """
        wanted: dict[str, int] = {}  # key -> weight
        mandatory = {(c.context, c.upstream) for c in config.health_checks() if c.mandatory}
        checking: set[str] = set()  # new peers of a mandatory health check start "checking"
        for up in config.all_upstreams():
            for key, server in zip(peer_keys(up), up.servers, strict=True):
                wanted[key] = server.weight
                if (up.context, up.name) in mandatory:
                    checking.add(key)
        for key in zone_keys(config).values():
            wanted[key] = 1
        now_ms = int(time.time() * 1000)
        with self.zone:
            self._reconcile()
            new_keys = [k for k in wanted if k not in self.by_key]
            free = self.free_slots()
            if len(new_keys) > len(free):
                raise ZoneFullError(
                    f"the zone has room for {self.zone.peers} peers, the configuration needs "
                    f"{len(self.by_key) + len(new_keys)} (raise zone_size)"
                )
            dropped = [slot for key, slot in self.by_key.items() if key not in wanted]
            self.by_key = {k: s for k, s in self.by_key.items() if k in wanted}
            for key, slot in zip(new_keys, free, strict=False):
                used = L.USED_ZONE if key.startswith("zone\0") else L.USED_PEER
                self.zone.init_peer(slot, wanted[key], key_hash(key), used)
                if key in checking:
                    seed_new(self.zone, slot, True, now_ms)
                self.by_key[key] = slot
            for key, slot in self.by_key.items():
                self.zone.reweigh_peer(slot, wanted[key])
            if self.servers is not None:
                self.servers.sync(config.all_upstreams(), self.by_key)
        if dropped:
            self.retiring.append((generation - 1, dropped))
        return dict(self.by_key)

    def adopt(self, config: Config) -> None:
        """After a binary upgrade: take over the slots the previous master set up. Peers of
        ``config`` find their slot (and state) by key hash; slots of other peers stay
        reserved (``FOREIGN``) while the previous master's workers may use them."""
        by_hash: dict[int, int] = {}
        for slot in range(self.zone.peers):
            if self.zone.peer_word(slot, L.P_USED):
                by_hash[self.zone.peer_word(slot, L.P_KEY_HASH)] = slot
        for key in [k for up in config.all_upstreams() for k in peer_keys(up)] + list(
            zone_keys(config).values()
        ):
            slot = by_hash.pop(key_hash(key), -1)
            if slot >= 0:
                self.by_key[key] = slot
        if by_hash:
            self.retiring.append((FOREIGN, list(by_hash.values())))

    def snapshot(self) -> tuple[dict[str, int], list[tuple[int, list[int]]]]:
        if self.servers is not None:  # runtime additions are ours before anything is undone
            with self.zone:
                self._reconcile()
        return dict(self.by_key), list(self.retiring)

    def restore(
        self, snap: tuple[dict[str, int], list[tuple[int, list[int]]]], config: Config | None = None
    ) -> None:
        """Undo an ``assign`` whose generation never started (slots it set up fall free).
        ``config``: the configuration that keeps running (its server lists come back)."""
        with self.zone:
            kept = set(snap[0].values()) | {s for _, slots in snap[1] for s in slots}
            for slot in set(self.by_key.values()) - kept:
                self.zone.free_peer(slot)
            self.by_key, self.retiring = dict(snap[0]), list(snap[1])
            if self.servers is not None and config is not None:
                self.servers.sync(config.all_upstreams(), self.by_key)

    def release_retired(self, oldest_live_generation: int | None, foreign_rows_live: bool = False) -> None:
        """Free slots of removed peers once every worker that could use them is gone."""
        keep = []
        for generation, slots in self.retiring:
            if (generation == FOREIGN and foreign_rows_live) or (
                generation != FOREIGN
                and oldest_live_generation is not None
                and oldest_live_generation <= generation
            ):
                keep.append((generation, slots))
            else:
                with self.zone:
                    for slot in slots:
                        self.zone.free_peer(slot)
        self.retiring = keep


@dataclass(slots=True)
class RowTable:
    """Worker rows: one per live worker process, reused after it is reaped."""

    zone: Zone
    by_pid: dict[int, int] = field(default_factory=dict)

    pending: set[int] = field(default_factory=set)  # claimed before fork, pid not known yet

    def foreign_live(self) -> bool:
        """Rows held by another master's workers (before/after a binary upgrade)."""
        ours = set(self.by_pid.values()) | self.pending
        return any(self.zone.row_pid(r) for r in range(self.zone.rows) if r not in ours)

    def claim(self, generation: int, worker_slot: int) -> int:
        ours = set(self.by_pid.values()) | self.pending
        used = ours | {r for r in range(self.zone.rows) if self.zone.row_pid(r)}
        for row in range(self.zone.rows):
            if row not in used:
                self.pending.add(row)
                self.zone.claim_row(row, generation, worker_slot)
                return row
        raise ZoneFullError(f"no free worker row in the zone ({self.zone.rows} rows)")

    def bind(self, row: int, pid: int) -> None:
        self.pending.discard(row)
        self.by_pid[pid] = row
        self.zone.set_row_pid(row, pid)

    def release(self, pid: int) -> None:
        row = self.by_pid.pop(pid, None)
        if row is not None:
            self.zone.release_row(row)
