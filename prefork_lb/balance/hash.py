"""``hash $key`` and ``hash $key consistent``, exactly nginx's upstream hash module.

Non-consistent (Cache::Memcached compatible): per attempt
``acc += (crc32(str(rehash) + key if rehash else key) >> 16) & 0x7fff`` (mod 2**32),
``rehash += 1``, then ``acc % total_weight`` walks the static weights; an unusable
candidate rehashes; after 20 the request falls back to round robin.

Consistent (ketama, Cache::Memcached::Fast compatible): a ring of ``160 * weight`` points
per primary server, ``crc32(host + "\\0" + port + le32(prev))``, built once from the
literal server strings, so the key -> server map is nginx's for the same config. Per
request ``crc32(key)`` finds the first point at or after it; each attempt takes the
server at the current index (smooth WRR among the peers sharing that server string) and
an unusable one moves the index clockwise. A down or failed server therefore behaves as
if it were removed from the ring.

An empty key means round robin (nginx). Primary servers only.
"""

from __future__ import annotations

import bisect
import re
import struct
import zlib

from prefork_lb.balance.base import KeyCompiler, NoRelease, RequestKey
from prefork_lb.balance.ip_hash import MAX_TRIES, walk
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, take
from prefork_lb.balance.round_robin import pick_round_robin, smooth_pick
from prefork_lb.config.model import UpstreamConfig

_PORT = re.compile(r":([0-9]+)$")


class Hash(NoRelease):
    __slots__ = ("group", "key")

    def __init__(self, group: PeerGroup, upstream: UpstreamConfig, compile_key: KeyCompiler) -> None:
        self.group = group
        self.key = compile_key(upstream.hash_key)  # the upstream's context's variables

    def key_bytes(self, req: RequestKey | None) -> bytes:
        return self.key.render(req).encode("latin-1") if req is not None else b""

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None:
        group = self.group
        key = self.key_bytes(req)
        if sel.hash_tries > MAX_TRIES or group.single or not key:
            return pick_round_robin(group, sel, now_s)
        plist = group.primary
        acc = 0 if sel.hash < 0 else sel.hash
        while True:
            rehash = sel.rehash
            data = str(rehash).encode() + key if rehash else key
            acc = (acc + ((zlib.crc32(data) >> 16) & 0x7FFF)) & 0xFFFFFFFF
            sel.rehash = rehash + 1
            peer = walk(plist, acc % plist.total_weight)
            if not sel.tried & (1 << peer.index) and peer.usable(now_s):
                break
            sel.hash_tries += 1
            if sel.hash_tries > MAX_TRIES:
                sel.hash = acc
                return pick_round_robin(group, sel, now_s)
        sel.hash = acc
        return take(sel, peer, now_s)


class ConsistentHash(Hash):
    __slots__ = ("by_server", "points", "servers")

    def __init__(self, group: PeerGroup, upstream: UpstreamConfig, compile_key: KeyCompiler) -> None:
        super().__init__(group, upstream, compile_key)
        self.points, self.servers = build_ring(group)
        # the peers behind each server string (several when a hostname resolved to several)
        by_server: dict[str, list[Peer]] = {}
        for peer in group.primary.peers:
            by_server.setdefault(peer.name, []).append(peer)
        self.by_server = {name: tuple(peers) for name, peers in by_server.items()}

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None:
        group = self.group
        key = self.key_bytes(req)
        if sel.hash_tries > MAX_TRIES or group.single or not key or not self.points:
            return pick_round_robin(group, sel, now_s)
        if sel.hash < 0:
            sel.hash = bisect.bisect_left(self.points, zlib.crc32(key))
        n = len(self.points)
        while True:
            server = self.servers[sel.hash % n]
            best = smooth_pick(self.by_server[server], sel.tried, now_s)
            if best is not None:
                return take(sel, best, now_s)
            sel.hash += 1
            sel.hash_tries += 1
            if sel.hash_tries > MAX_TRIES:
                return pick_round_robin(group, sel, now_s)


def split_server(name: str) -> tuple[bytes, bytes]:
    """nginx's host/port split of a server string for the ring."""
    if name.startswith("unix:"):
        return name[5:].encode(), b""
    m = _PORT.search(name)
    if m:
        return name[: m.start()].encode(), m.group(1).encode()
    return name.encode(), b""


def build_ring(group: PeerGroup) -> tuple[list[int], list[str]]:
    points: list[tuple[int, int, str]] = []
    for order, peer in enumerate(group.primary.peers):
        host, port = split_server(peer.name)
        base = zlib.crc32(host + b"\0" + port)
        prev = 0
        for _ in range(peer.weight * 160):
            prev = zlib.crc32(struct.pack("<I", prev), base)
            points.append((prev, order, peer.name))
    points.sort()
    hashes: list[int] = []
    servers: list[str] = []
    for h, _, server in points:
        if hashes and hashes[-1] == h:
            continue  # nginx drops a point equal to the previous one
        hashes.append(h)
        servers.append(server)
    return hashes, servers
