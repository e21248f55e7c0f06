"""The cache's API: ``GET /api/N/http/caches`` documents and ``DELETE`` purges (issue 18).

Documents are NGINX Plus's ``http/caches`` shape, per zone:

    {"size": bytes on disk, "max_size": (when set), "cold": loader not done yet,
     "hit"|"stale"|"updating"|"revalidated": {"responses", "bytes"},
     "miss"|"expired"|"bypass": {"responses", "bytes", "responses_written", "bytes_written"}}

plus two of ours: "entries" (keys in the index) and "max_entries" (its capacity).

Purge (NGINX Plus has ``DELETE /api/N/http/caches/NAME``, which empties the cache; the
per-key forms are ours, in the spirit of Plus's ``proxy_cache_purge``):

    DELETE /api/9/http/caches/NAME              empty it: 204
    DELETE /api/9/http/caches/NAME?key=K        remove the entry of cache key K: 204
    DELETE /api/9/http/caches/NAME?key=PREFIX*  remove every entry whose key starts with PREFIX

``K`` is percent-decoded (``key=http%3A%2F%2Fbe%2Fa``); it is the key as ``proxy_cache_key``
renders it. Rules:
1. Writes only where the API location has ``api = { write = true }``, and from a client the
   location's ``allow`` list admits, or from loopback when it has none (the write API's
   rule); elsewhere 405 "MethodDisabled", as NGINX Plus's read-only API. ``allow``/``deny``
   apply first, as for GET.
2. An unknown zone is 404 "CacheNotFound"; an empty ``key=`` is 400 "CacheKeyInvalid".
3. Every purge is logged at notice with the client address and what it removed.
4. A purge answers when it is done; its file walk yields to the worker's other connections
   (store.py rule 7) and never holds the index lock across I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from prefork_lb.cache.index import STATUSES

log = logging.getLogger("prefork_lb.error")

_WRITTEN = ("miss", "expired", "bypass")
NOTICE = 25


def cache_document(zone: Any) -> dict[str, Any]:
    index = zone.index
    counters = index.counters()
    doc: dict[str, Any] = {"size": index.size_on_disk}
    if zone.config.max_size_bytes:
        doc["max_size"] = zone.config.max_size_bytes
    doc["cold"] = index.cold
    for status in STATUSES:
        responses, nbytes, written, bytes_written = counters[status]
        doc[status] = {"responses": responses, "bytes": nbytes}
        if status in _WRITTEN:
            doc[status]["responses_written"] = written
            doc[status]["bytes_written"] = bytes_written
    doc["entries"] = index.entries
    doc["max_entries"] = index.max_entries
    return doc


def caches_document(caches: Mapping[str, Any]) -> dict[str, Any]:
    return {name: cache_document(zone) for name, zone in caches.items()}


class PurgeError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text


def purge(
    rest: str,
    args: str,
    write: bool,
    caches: Mapping[str, Any],
    client: str,
    pause: Callable[[], None] = lambda: None,
) -> bool:
    """``DELETE`` on ``rest`` (the path after the API location, e.g. "9/http/caches/x").
    False when the path is not a cache's (the caller answers as for any other path); True
    when purged; raises PurgeError (rules 1 and 2)."""
    parts = [p for p in rest.split("/") if p]
    if len(parts) != 4 or parts[1:3] != ["http", "caches"] or not parts[0].isdigit():
        return False
    if not write:
        raise PurgeError(405, "MethodDisabled", "method disabled")
    name = parts[3]
    zone = caches.get(name)
    if zone is None:
        raise PurgeError(404, "CacheNotFound", "cache not found")
    keys = [unquote_to_bytes(v) for k, v in parse_qsl(args, keep_blank_values=True) if k == "key"]
    if not keys:
        removed = zone.purge_all(pause)
        log.log(NOTICE, 'cache "%s" purged: %d file(s) removed, client: %s', name, removed, client)
        return True
    for key in keys:
        if not key:
            raise PurgeError(400, "CacheKeyInvalid", "invalid cache key")
    for key in keys:
        if key.endswith(b"*"):
            removed = zone.purge_prefix(key[:-1], pause) if key != b"*" else zone.purge_all(pause)
        else:
            removed = int(zone.purge_key(key))
        log.log(
            NOTICE,
            'cache "%s" purged key "%s": %d entr%s removed, client: %s',
            name,
            key.decode("latin-1").encode("unicode_escape").decode(),
            removed,
            "y" if removed == 1 else "ies",
            client,
        )
    return True
