"""Upstream peers and the per-request selection state, with nginx's exact accounting.

Spec: shared/reference/nginx-semantics.md sections 0, 1.3 and 5 (nginx 1.22).

Rules:
1. Times are whole seconds (nginx's ``ngx_time()``), so "unavailable" is
   ``fails >= max_fails and now - checked <= fail_timeout`` with integer ``now``: a peer
   that failed at second T is usable again from second T + fail_timeout + 1.
2. ``fails`` is not a sliding window: only a success that started after a later
   ``checked`` resets it (``accessed < checked``); that is nginx's one-probe-per-period.
3. A failure lowers ``effective_weight`` by ``weight // max_fails`` (clamped at 0); every
   selection pass in which the peer is usable raises it by 1 up to ``weight``.
4. A ``single`` group (one primary peer, no backups) ignores max_fails entirely and never
   retries: nginx forces tries to 0 after its one attempt.
5. ``total_weight`` counts ``down`` peers (hash methods depend on it); ``tries`` does not.
6. A request starts on the primary list; when it yields nothing the request switches to
   the backup list with a fresh tried-set and stays there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prefork_lb.config.model import UpstreamConfig, UpstreamServer

log = logging.getLogger("prefork_lb.error")


class Peer:
    """One upstream address: configuration plus this worker's live state."""

    __slots__ = (
        "accessed_s",
        "addr",
        "backup",
        "checked_s",
        "conns",
        "current_weight",
        "down",
        "effective_weight",
        "fail_timeout_s",
        "fails",
        "index",
        "max_conns",
        "max_fails",
        "name",
        "server",
        "weight",
    )

    def __init__(self, server: UpstreamServer, index: int) -> None:
        self.server = server
        self.index = index  # position in its list (primary or backup): the tried-set bit
        self.addr = server.address.text
        self.name = server.name
        self.weight = server.weight
        self.max_fails = server.max_fails
        self.fail_timeout_s = int(server.fail_timeout_s)
        self.max_conns = server.max_conns
        self.down = server.down
        self.backup = server.backup
        self.current_weight = 0
        self.effective_weight = server.weight
        self.conns = 0
        self.fails = 0
        self.accessed_s = 0
        self.checked_s = 0

    def __repr__(self) -> str:
        return f"Peer({self.addr})"

    def usable(self, now_s: int) -> bool:
        """nginx's peer filter, without the per-request tried bit."""
        if self.down:
            return False
        if self.max_fails and self.fails >= self.max_fails and now_s - self.checked_s <= self.fail_timeout_s:
            return False
        return not (self.max_conns and self.conns >= self.max_conns)


@dataclass(slots=True)
class PeerList:
    peers: tuple[Peer, ...]
    total_weight: int  # including down peers (rule 5)
    tries: int  # peers that are not down

    @classmethod
    def build(cls, servers: list[UpstreamServer]) -> PeerList:
        peers = tuple(Peer(s, i) for i, s in enumerate(servers))
        return cls(peers, sum(p.weight for p in peers), sum(1 for p in peers if not p.down))


@dataclass(slots=True)
class PeerGroup:
    name: str
    primary: PeerList
    backup: PeerList | None
    single: bool
    tries: int

    @classmethod
    def build(cls, upstream: UpstreamConfig) -> PeerGroup:
        primary = PeerList.build([s for s in upstream.servers if not s.backup])
        backups = [s for s in upstream.servers if s.backup]
        backup = PeerList.build(backups) if backups else None
        single = len(primary.peers) == 1 and backup is None
        tries = primary.tries + (backup.tries if backup else 0)
        return cls(upstream.name, primary, backup, single, tries)

    def all_peers(self) -> tuple[Peer, ...]:
        return self.primary.peers + (self.backup.peers if self.backup else ())


@dataclass(slots=True)
class Selection:
    """Per-request balancer state (nginx's "peer data")."""

    group: PeerGroup
    tries: int  # attempts left, including the current one
    current: PeerList = field(init=False)
    tried: int = 0  # bitmap over ``current``

    def __post_init__(self) -> None:
        self.current = self.group.primary

    def switch_to_backup(self) -> bool:
        backup = self.group.backup
        if backup is None or self.current is backup:
            return False
        self.current = backup
        self.tried = 0
        return True


def new_selection(group: PeerGroup, next_upstream_tries: int) -> Selection:
    tries = group.tries
    if next_upstream_tries and next_upstream_tries < tries:
        tries = next_upstream_tries
    return Selection(group, tries)


def take(sel: Selection, peer: Peer, now_s: int) -> Peer:
    """Book-keeping every method does once it has chosen ``peer``."""
    if now_s - peer.checked_s > peer.fail_timeout_s:
        peer.checked_s = now_s
    peer.conns += 1
    sel.tried |= 1 << peer.index
    return peer


def free(sel: Selection, peer: Peer, failed: bool, now_s: int) -> None:
    """Release ``peer`` after an attempt; ``failed`` charges it (nginx's NGX_PEER_FAILED)."""
    peer.conns -= 1
    if sel.group.single:
        sel.tries = 0
        return
    if failed:
        peer.fails += 1
        peer.accessed_s = now_s
        peer.checked_s = now_s
        if peer.max_fails:
            peer.effective_weight -= peer.weight // peer.max_fails
            if peer.fails >= peer.max_fails:
                log.warning(
                    "upstream server temporarily disabled while connecting to upstream, upstream: %s",
                    peer.addr,
                )
        if peer.effective_weight < 0:
            peer.effective_weight = 0
    elif peer.accessed_s < peer.checked_s:
        peer.fails = 0
    if sel.tries:
        sel.tries -= 1
