"""The interface every balancing method implements (one module per method).

A method is constructed once per worker per upstream group and answers ``pick`` for one
attempt of one request. It must call ``peers.take`` on the peer it returns, and return
None when no peer is usable (nginx's BUSY: "no live upstreams"). Releasing a peer and
failure accounting are shared (``peers.free``), never method-specific.

Rules:
- A method reads the request only through ``RequestKey`` (http's ``Exchange`` and the
  stream ``Session`` both satisfy it), so this package never imports ``http`` or
  ``stream``: it serves both contexts alike.
- A ``hash`` key is compiled by the context that owns the variables (``KeyCompiler``,
  passed to ``registry.make_balancer``) and rendered only against that context's requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prefork_lb.balance.peers import Peer, PeerGroup, Selection


class RequestKey(Protocol):
    """What a method may read of the request it places."""

    @property
    def remote_addr(self) -> str: ...  # the client address as text (ip_hash's key)


class KeyTemplate(Protocol):
    """A compiled ``hash`` key; ``render`` takes the compiling context's request."""

    def render(self, key: Any, /) -> str: ...


KeyCompiler = Callable[[str], KeyTemplate]


class Balancer(Protocol):
    group: PeerGroup

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None: ...
