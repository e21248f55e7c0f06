"""The limits' API: ``/api/N/http/limit_reqs`` and ``/api/N/http/limit_conns`` (NGINX Plus).

Documents are NGINX Plus's shapes, one object per zone of the config (``[http.limit_req_zones]``
and ``[http.limit_conn_zones]``, whether or not a location uses it, as Plus lists every zone):

    limit_reqs   {"NAME": {"passed", "delayed", "rejected", "delayed_dry_run", "rejected_dry_run"}}
    limit_conns  {"NAME": {"passed", "rejected", "rejected_dry_run"}}

The figures are the zone table's header counters (table.py rule 7): server-wide, the same
whichever worker answers, kept across a reload as long as the zone keeps its size.

Reset (NGINX Plus's ``DELETE /api/N/http/limit_reqs/NAME`` and ``.../limit_conns/NAME``):

1. Writes only where the API location has ``api = { write = true }``, and from a client its
   ``allow`` list admits, or from loopback when it has none (the write API's rule); elsewhere
   405 "MethodDisabled", as NGINX Plus's read-only API.
2. An unknown zone is 404 "LimitReqNotFound" / "LimitConnNotFound"; the collection itself
   (no NAME) is 405 "MethodNotAllowed" (Plus resets one zone at a time).
3. A reset zeroes the counters under the shared zone's lock (the lock the increments take), so
   no decision made at the same time is half-lost; the limit state (buckets, counts) is kept.
   It answers 204 and is logged at notice with the client address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from prefork_lb.limits import table as T

log = logging.getLogger("prefork_lb.error")

NOTICE: Final = 25
COLLECTIONS: Final = {"limit_reqs": T.KIND_REQ, "limit_conns": T.KIND_CONN}
_NOT_FOUND: Final = {T.KIND_REQ: "LimitReqNotFound", T.KIND_CONN: "LimitConnNotFound"}

Tables = Mapping[tuple[int, str], T.LimitTable]


class LimitsError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text


def document(kind: int, names: list[str], tables: Tables) -> dict[str, Any]:
    """``limit_reqs`` (``KIND_REQ``) or ``limit_conns`` (``KIND_CONN``) for the zones ``names``."""
    out: dict[str, Any] = {}
    for name in names:
        table = tables.get((kind, name))
        if table is not None:
            out[name] = T.counters(table.mv, kind)
    return out


def is_reset_path(parts: list[str]) -> bool:
    """``parts``: the path after the version ("http", "limit_reqs", NAME)."""
    return len(parts) in (2, 3) and parts[0] == "http" and parts[1] in COLLECTIONS


def reset(
    parts: list[str],
    write: bool,
    tables: Tables,
    lock: Callable[[], None],
    unlock: Callable[[], None],
    client: str,
) -> None:
    """``DELETE`` on ``parts`` (``is_reset_path``): raises LimitsError (rules 1 and 2)."""
    kind = COLLECTIONS[parts[1]]
    if not write:
        raise LimitsError(405, "MethodDisabled", "method disabled")
    if len(parts) != 3:
        raise LimitsError(405, "MethodNotAllowed", "method not allowed")
    table = tables.get((kind, parts[2]))
    if table is None:
        raise LimitsError(404, _NOT_FOUND[kind], "limit zone not found")
    lock()
    try:
        T.reset_counters(table.mv)
    finally:
        unlock()
    log.log(NOTICE, 'http %s zone "%s" statistics reset by %s', parts[1], parts[2], client)
