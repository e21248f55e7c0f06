"""Session persistence (``sticky cookie | route | learn``): the choice, sans-IO.

Spec: shared/reference/nginx-semantics.md sections 10.2 and 10.4 (nginx Plus and OSS >=
1.29.6, Angie's ``sticky_strict`` and ``$upstream_sticky_status``). The proxy holds one
``Sticky`` per upstream that has ``sticky`` (None otherwise: no cost) and one ``Binding``
per request; every call here runs under the zone lock (the proxy's pick and release
critical sections), so the learn table and the peers' words are read and written alike.

Rules:
1. The hint: ``cookie`` reads ``$cookie_NAME``; ``route`` the first non-empty of its
   variables; ``learn`` the first non-empty ``lookup`` value, looked up in the learn table
   (balance/learn.py). The hint names a peer through its server identifier ``Peer.sid``
   (peers.py rule 12; the first peer wins when several share a route) or, for learn, its
   ``sid_key``. The hint is resolved once per request, at the first pick.
2. The bound peer is taken when it is in the list the request is on (primary, or backup
   once switched), not tried by this request, and usable with draining allowed
   (``Peer.usable_bound``). Round robin then still runs its weight update with the bound
   peer in the winner's place (``account``): every usable peer's
   current_weight grows by its effective weight and the bound peer pays the total, so
   bound traffic is accounted; nginx skips the update once the bound peer's current_weight
   is at or below -(total_weight - weight), and so do we; a draining bound peer is taken
   without the update (it takes no part in the weights). Every other method takes the
   bound peer directly (nginx: least_conn, hash, ip_hash; here also random, least_time).
3. No usable bound peer: the method balances as without sticky (a draining peer is out of
   its filter: peers.py rule 11), or, with ``sticky_strict``, the attempt finds no peer
   (502, "no live upstreams"), on a retry too: a strict session never moves.
4. ``$upstream_sticky_status``: NEW (no hint), HIT (the bound peer was used), MISS (a hint
   was given but could not be honoured); it describes the last attempt.
5. ``cookie``: every proxied response gets ``Set-Cookie: NAME=SID`` naming the peer that
   answered (a failed-over client is re-bound), then nginx's attributes in its order:
   ``; expires=DATE; max-age=N`` (expires=max: nginx's fixed date and 315360000), ``;
   domain=``, ``; httponly``, ``; secure``, ``; samesite=``, ``; path=``. DATE is nginx's
   cookie time (``Thu, 31-Dec-37 23:55:55 GMT``: two-digit years up to 2037).
6. ``learn``: the first non-empty ``create`` value of the upstream response head
   (``$upstream_cookie_NAME``: the value of the first Set-Cookie NAME=...; ``
   $upstream_http_NAME``: the field, ``-`` read as ``_``) binds that session to the peer
   that answered; learned at the end of a response that completed (one cut short binds
   nothing), or right after its head with ``header = true``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from prefork_lb.balance import learn
from prefork_lb.balance.peers import Peer, PeerGroup, Selection, take
from prefork_lb.balance.table import PeerTable
from prefork_lb.config.model import StickyConfig, UpstreamConfig
from prefork_lb.zone import layout as L

if TYPE_CHECKING:
    from prefork_lb.balance.base import Balancer, KeyTemplate

NEW: Final = "NEW"
HIT: Final = "HIT"
MISS: Final = "MISS"
EXPIRES_MAX: Final = b"; expires=Thu, 31-Dec-37 23:55:55 GMT; max-age=315360000"
_WEEK: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # time.gmtime's tm_wday order
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def cookie_time(t: int) -> str:
    """nginx's ``ngx_http_cookie_time``: ``Thu, 31-Dec-37 23:55:55 GMT`` (rule 5)."""
    tm = time.gmtime(t)
    year = tm.tm_year if tm.tm_year > 2037 else tm.tm_year % 100
    return (
        f"{_WEEK[tm.tm_wday]}, {tm.tm_mday:02d}-{_MONTHS[tm.tm_mon - 1]}-{year:02d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} GMT"
    )


class Binding:
    """One request's sticky state (rule 1: resolved at the first pick)."""

    __slots__ = ("bound", "hint", "learned", "resolved", "status")

    def __init__(self) -> None:
        self.resolved = False
        self.hint = ""
        self.bound: Peer | None = None
        self.status = ""
        self.learned = ""  # learn: the create value of the response, stored at its end


class Sticky:
    """An upstream's persistence (one per worker per upstream with ``sticky``)."""

    __slots__ = (
        "_compile",
        "_cookie_tail",
        "_expires_at",
        "_expires_text",
        "_samesite",
        "balancer",
        "by_key",
        "by_sid",
        "cfg",
        "cookie_prefix",
        "create",
        "group",
        "hints",
        "key_of",
        "rr",
        "strict",
        "table",
        "table_buckets",
        "timeout_ms",
    )

    def __init__(
        self,
        upstream: UpstreamConfig,
        group: PeerGroup,
        balancer: Balancer,
        compile_template: Callable[[str], KeyTemplate],
        table: Any = None,
    ) -> None:
        """``table``: the learn mode's ``limits.table.LimitTable`` (the master's, inherited)."""
        cfg = upstream.sticky
        assert cfg is not None
        self.cfg = cfg
        self.group = group
        self.balancer = balancer
        self.strict = upstream.sticky_strict
        self._compile = compile_template
        self.rr = upstream.method == "round_robin"
        self.by_sid: dict[str, Peer] = {}
        self.by_key: dict[int, Peer] = {}
        self.key_of: dict[Peer, int] = {}
        for peer in group.all_peers():
            self.by_sid.setdefault(peer.sid, peer)
            key = learn.md5_key(peer.sid.encode())
            self.by_key.setdefault(key, peer)
            self.key_of[peer] = key
        if cfg.mode == "cookie":
            names: Sequence[str] = ("$cookie_" + cfg.cookie,)
        else:
            names = cfg.route if cfg.mode == "route" else cfg.lookup
        self.hints = tuple(compile_template(n) for n in names)
        self.create = tuple(create_parts(c) for c in cfg.create)
        self.table = table
        self.table_buckets = table.buckets if table is not None else 0
        self.timeout_ms = int(cfg.timeout_s * 1000)
        self.cookie_prefix = cfg.cookie.encode() + b"="
        self._cookie_tail, self._samesite = cookie_tail(cfg, compile_template)
        self._expires_at = -1
        self._expires_text = b""

    def rebuilt(self, upstream: UpstreamConfig, group: PeerGroup, balancer: Balancer) -> Sticky:
        """The same persistence over a rebuilt group (the write API changed the server list,
        balance/members.py): the learn table and the templates carry over; bindings made from
        the old group are resolved again (http/proxy.py)."""
        return Sticky(upstream, group, balancer, self._compile, self.table)

    # ---- the choice (rules 1-4) ----

    def new_binding(self) -> Binding:
        """A request's state (the proxy knows no balancing module: it asks its upstream's)."""
        return Binding()

    def pick(self, b: Binding, sel: Selection, req: Any, now_s: int, now_ms: int) -> Peer | None:
        if not b.resolved:
            self._resolve(b, req, now_ms)
        bound = b.bound
        if bound is not None:
            current = sel.current
            on_list = current is self.group.backup if bound.backup else current is self.group.primary
            if on_list and not sel.tried & (1 << bound.index) and bound.usable_bound(now_s):
                b.status = HIT
                if (
                    self.rr
                    and not bound.drain
                    and not self.group.single
                    and bound.current_weight > bound.weight - current.total_weight
                ):
                    account(current.table, bound.index, sel.tried, now_s, now_ms, self.group.slow_start)
                return take(sel, bound, now_s)
            b.status = MISS
            if self.strict:
                return None
        elif b.hint:
            b.status = MISS
        else:
            b.status = NEW
        return self.balancer.pick(sel, req, now_s)

    def _resolve(self, b: Binding, req: Any, now_ms: int) -> None:
        b.resolved = True
        for template in self.hints:
            value = template.render(req)
            if value:
                b.hint = value
                break
        else:
            return
        if self.table is None:
            b.bound = self.by_sid.get(b.hint)
            return
        sid = learn.lookup(
            self.table.mv, self.table_buckets, learn.session_key(b.hint), now_ms, self.timeout_ms
        )
        if sid:
            b.bound = self.by_key.get(sid)

    # ---- the response (rules 5 and 6) ----

    def set_cookie(self, peer: Peer, now_s: int, req: Any) -> bytes:
        """The Set-Cookie value naming ``peer`` (rule 5)."""
        cfg = self.cfg
        parts = [self.cookie_prefix, peer.sid.encode()]
        if cfg.expires_max:
            parts.append(EXPIRES_MAX)
        elif cfg.expires_s:
            if now_s != self._expires_at:  # formatted once per second
                seconds = int(cfg.expires_s)
                self._expires_at = now_s
                self._expires_text = f"; expires={cookie_time(now_s + seconds)}; max-age={seconds}".encode()
            parts.append(self._expires_text)
        parts.append(self._cookie_tail[0])
        if self._samesite is not None:
            value = self._samesite.render(req)
            if value and value.isprintable() and ";" not in value:
                parts += (b"; samesite=", value.encode("latin-1"))
        parts.append(self._cookie_tail[1])
        return b"".join(parts)

    def created(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The first non-empty ``create`` value of a response head (rule 6), or ""."""
        for kind, name in self.create:
            value = upstream_cookie(headers, name) if kind == "cookie" else upstream_header(headers, name)
            if value:
                return value
        return ""

    def learn(self, value: str, peer: Peer, now_ms: int) -> None:
        """Bind session ``value`` to ``peer`` (under the zone lock)."""
        table = self.table
        learn.store(
            table.mv, self.table_buckets, learn.session_key(value), self.key_of[peer], now_ms, self.timeout_ms
        )

    # ---- the API ----

    def report(self, now_ms: int) -> dict[str, Any] | None:
        """The learn table's figures for the API's upstream object, None for other modes."""
        if self.table is None:
            return None
        mv = self.table.mv
        return {
            "zone": self.cfg.zone,
            "capacity": learn.capacity(self.cfg.zone_size_bytes),
            "sessions": learn.live(mv, self.table_buckets, now_ms, self.timeout_ms),
            "evictions": learn.evictions(mv),
        }


def account(table: PeerTable, target: int, tried: int, now_s: int, now_ms: int, scaled: bool) -> None:
    """Rule 2's weight update with ``target`` (usable, not tried) paying the total. With the
    compiled loops (and no slow_start ramp) nginx's pass runs in C and the total is moved from
    its winner to ``target`` afterwards: the winner paid ``cw_before + ew_before - cw_after``.
    Both paths leave the same words as ``PeerTable.smooth(target=)``."""
    loops = table.native
    if loops is None or scaled:
        table.smooth(table.unusable(tried, now_s), now_ms, scaled, target)
        return
    cws = table.read(L.P_CW)
    ews = table.weights if table.at_weight() else table.read(L.P_EW)
    winner = loops.smooth(table.mv, table.cfg, tried, now_s, 0, False)
    if winner >= 0 and winner != target:
        mv, bases = table.mv, table.bases
        w = bases[winner] + L.P_CW
        total = cws[winner] + ews[winner] - mv[w]
        mv[w] += total
        mv[bases[target] + L.P_CW] -= total


def create_parts(item: str) -> tuple[str, str]:
    """("cookie" | "http", lowercased NAME) of a ``create`` value the loader checked
    (``$upstream_cookie_NAME`` / ``$upstream_http_NAME``: config/load_sticky.py rule 3)."""
    name = item[1:].lower()
    if name.startswith("upstream_cookie_"):
        return "cookie", name[len("upstream_cookie_") :]
    return "http", name[len("upstream_http_") :]


def cookie_tail(
    cfg: StickyConfig, compile_template: Callable[[str], KeyTemplate]
) -> tuple[tuple[bytes, bytes], KeyTemplate | None]:
    """The constant attributes before and after samesite, and samesite's template (rule 5)."""
    before = b""
    if cfg.domain:
        before += b"; domain=" + cfg.domain.encode()
    if cfg.httponly:
        before += b"; httponly"
    if cfg.secure:
        before += b"; secure"
    after = b"; path=" + cfg.path.encode() if cfg.path else b""
    samesite = None
    if cfg.samesite.startswith("$"):
        samesite = compile_template(cfg.samesite)
    elif cfg.samesite:
        before += b"; samesite=" + cfg.samesite.encode()
    return (before, after), samesite


def upstream_cookie(headers: list[tuple[bytes, bytes]], name: str) -> str:
    """nginx's ``$upstream_cookie_NAME``: the value of the first Set-Cookie ``NAME=``."""
    want = name.encode("latin-1")
    for hname, value in headers:
        if len(hname) == 10 and hname.lower() == b"set-cookie":
            eq = value.find(b"=")
            if eq > 0 and value[:eq].strip().lower() == want:
                end = value.find(b";", eq)
                return value[eq + 1 : end if end >= 0 else len(value)].strip().decode("latin-1")
    return ""


def upstream_header(headers: list[tuple[bytes, bytes]], name: str) -> str:
    """nginx's ``$upstream_http_NAME``: the first field whose lowercased name, with ``-``
    read as ``_``, is NAME."""
    for hname, value in headers:
        if hname.lower().replace(b"-", b"_").decode("latin-1") == name:
            return value.decode("latin-1")
    return ""
