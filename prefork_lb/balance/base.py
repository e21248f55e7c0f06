"""The interface every balancing method implements (one module per method).

A method is constructed once per worker per upstream group and answers ``pick`` for one
attempt of one request. It must call ``peers.take`` on the peer it returns, and return
None when no peer is usable (nginx's BUSY: "no live upstreams"). Releasing a peer and
failure accounting are shared (``peers.free``); what a method itself learns or undoes when
an attempt ends (least_time: the measured time, the in-flight start) is its ``release``,
which the caller runs in the same zone critical section as ``free``, before it (http's
proxy; stream upstreams offer no method with release work, so the stream module skips it).

Rules:
- A method reads the request only through ``RequestKey`` (http's ``Exchange`` and the
  stream ``Session`` both satisfy it), so this package never imports ``http`` or
  ``stream``: it serves both contexts alike.
- A ``hash`` key is compiled by the context that owns the variables (``KeyCompiler``,
  passed to ``registry.make_balancer``) and rendered only against that context's requests.
- ``release`` costs nothing where a method has no release work: such a method inherits
  ``NoRelease`` (``releases`` False, a no-op ``release``) and callers test the flag
  before calling.
- A group without any server (the write API deleted them all, as NGINX Plus allows) gets
  ``NoServers`` instead of its method: every pick is None, "no live upstreams" (502), and
  no method has to handle an empty list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

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

    @property
    def releases(self) -> bool: ...  # False: ``release`` is a no-op, callers may skip it

    def release(
        self, peer: Peer, sel: Selection, header_time_s: float | None, response_time_s: float | None
    ) -> None:
        """An attempt on ``peer`` ended (under the zone lock, before ``peers.free``); the
        times are those of a completed response, None after a failure."""


class NoRelease:
    """The default for methods with nothing to do when an attempt ends."""

    __slots__ = ()
    releases: ClassVar[bool] = False

    def release(
        self, peer: Peer, sel: Selection, header_time_s: float | None, response_time_s: float | None
    ) -> None:
        return None


class NoServers(NoRelease):
    """The balancer of a group with no servers at all: nothing to pick (nginx's BUSY)."""

    __slots__ = ("group",)

    def __init__(self, group: PeerGroup) -> None:
        self.group = group

    def pick(self, sel: Selection, req: RequestKey | None, now_s: int) -> Peer | None:
        return None
