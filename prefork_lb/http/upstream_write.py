"""``/api/<v>/{http,stream}/upstreams/<name>/servers[/<id>]``: the write API run (issue 19).

Validation and documents are ``http/upstream_conf.py`` (sans-IO); this module applies a
change to the shared server table (``zone/servers.py``) and does what follows it.

Rules:
1. A change is one critical section under the zone lock: sweep deleted servers whose last
   request ended, look the server up, check, write, bump the version. Concurrent writers
   (several clients, several workers) are serialised by that lock: none is lost, and a
   PATCH never rebuilds a server from a stale copy.
2. What is slow happens outside the lock, after the change: resolving a hostname (before
   it), writing the ``state`` file (``config/state_file.py`` rule 3) and the log line.
3. Every change is logged at ``notice`` with the client address, e.g.
   ``upstream "backend": server 127.0.0.1:9003 (id 3) added by 127.0.0.1``.
4. Any server can be deleted, the last one too (NGINX Plus allows an upstream without
   servers, and nginx-plus-go-client's ``UpdateHTTPServers`` with an empty list relies on
   it): its requests then get 502 "no live upstreams" (``balance/members.py`` rule 5)
   until a server is added. A full zone or table is 409 ``UpstreamZoneFull`` and nothing
   is written. A duplicate address (same address and backup flag) is 409 ``EntryExists``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prefork_lb.balance.members import Member, server_ids
from prefork_lb.config.model import UpstreamServer
from prefork_lb.http.api import ApiError
from prefork_lb.http.upstream_conf import (
    apply_fields,
    parse_body,
    parse_id,
    server_document,
    server_text,
)
from prefork_lb.log import NOTICE
from prefork_lb.zone.servers import Record, TableFull

if TYPE_CHECKING:
    from prefork_lb.http.runtime import HttpRuntime

log = logging.getLogger("prefork_lb.error")
WRITES = (b"POST", b"PATCH", b"DELETE")


def is_servers_path(parts: list[str]) -> bool:
    """``[<context>, "upstreams", <name>, "servers", (<id>)]`` after the version."""
    return (
        len(parts) in (4, 5)
        and parts[0] in ("http", "stream")
        and parts[1] == "upstreams"
        and parts[3] == "servers"
    )


def _owner(runtime: HttpRuntime, context: str, name: str) -> Member:
    if context == "http":
        up = runtime.upstreams.get(name)
        if up is not None and not up.config.implicit:
            return up
    else:
        for rt in runtime.streams.values():
            if rt.upstream.config.name == name and not rt.upstream.config.implicit:
                return rt.upstream  # type: ignore[no-any-return]
    raise ApiError(404, "UpstreamNotFound", f'upstream "{name}" not found')


def _records(owner: Member) -> list[Record]:
    """The current list (the table's, else the configured one)."""
    if owner.members is None:
        ids = server_ids(owner)
        return [Record(ids[p.slot], p.slot, p.server) for p in owner.group.all_peers()]
    zone = owner.group.zone
    with zone:
        _, records = owner.members.table.read(owner.members.entry)
    return records


def handle(
    runtime: HttpRuntime,
    method: bytes,
    parts: list[str],
    body: bytes,
    content_type: bytes | None,
    write_allowed: bool,
    client: str,
) -> tuple[int, Any]:
    """(status, document) for one request on a servers path (upstream_conf.py rule 1)."""
    context, name = parts[0], parts[2]
    id_ = parse_id(parts[4]) if len(parts) == 5 else None
    allowed = (b"GET", b"HEAD", b"POST") if id_ is None else (b"GET", b"HEAD", b"PATCH", b"DELETE")
    if method not in allowed:
        raise ApiError(405, "MethodNotAllowed", "method not allowed")
    owner = _owner(runtime, context, name)
    if method in (b"GET", b"HEAD"):
        records = _records(owner)
        if id_ is None:
            return 200, [server_document(r.id, r.server, context) for r in records]
        for r in records:
            if r.id == id_:
                return 200, server_document(r.id, r.server, context)
        raise ApiError(404, "UpstreamServerNotFound", f"server {id_} not found")
    if not write_allowed or owner.members is None:
        raise ApiError(405, "MethodDisabled", "method disabled")
    if method == b"POST":
        return 201, _post(runtime, owner, parse_body(body, content_type), client)
    if method == b"PATCH":
        assert id_ is not None
        return 200, _patch(owner, id_, parse_body(body, content_type), client)
    assert id_ is not None
    return 200, _delete(owner, id_, client)


def _post(runtime: HttpRuntime, owner: Member, doc: dict[str, Any], client: str) -> dict[str, Any]:
    import gevent.socket

    from prefork_lb.config.load_shared import resolve

    up = owner.config
    text = server_text(doc)
    try:  # rule 2: before the lock; gevent's resolver (a thread) never blocks the worker
        addrs = resolve(text, gevent.socket.getaddrinfo)
    except ValueError as e:
        raise ApiError(400, "UpstreamBadAddress", f'invalid "server" value: {e}') from None
    first = UpstreamServer(address=addrs[0], name=text)
    settings = apply_fields(first, doc, up)
    servers = [replace(settings, address=a) for a in addrs]
    mandatory = any(
        c.mandatory and c.context == up.context and c.upstream == up.name
        for c in runtime.config.health_checks()
    )
    m = owner.members
    assert m is not None
    zone = owner.group.zone
    with zone:  # rule 1
        m.table.sweep(zone)
        _check_entry(owner)
        _, existing = m.table.read(m.entry)
        taken = {(r.server.address.text, r.server.backup) for r in existing}
        for s in servers:
            if (s.address.text, s.backup) in taken:
                raise ApiError(409, "EntryExists", f'server "{s.address.text}" already exists')
        try:
            records = m.table.add(
                m.entry, servers, up.context, up.name, zone, int(time.time() * 1000) if mandatory else 0
            )
        except TableFull as e:
            raise ApiError(409, "UpstreamZoneFull", str(e)) from None
        except ValueError as e:
            raise ApiError(400, "UpstreamConfFormatError", str(e)) from None
    _after(owner)
    for r in records:
        log.log(
            NOTICE,
            'upstream "%s": server %s (id %d) added by %s',
            up.name,
            r.server.address.text,
            r.id,
            client,
        )
    return server_document(records[0].id, records[0].server, up.context)


def _check_entry(owner: Member) -> None:
    m = owner.members
    assert m is not None
    if m.table.key_of(m.entry) != m.key:  # a reload dropped this upstream (members.py rule 4)
        raise ApiError(404, "UpstreamNotFound", f'upstream "{owner.config.name}" not found')


def _patch(owner: Member, id_: int, doc: dict[str, Any], client: str) -> dict[str, Any]:
    m = owner.members
    assert m is not None
    zone = owner.group.zone
    with zone:  # rule 1: read, change and write in one critical section (no lost update)
        m.table.sweep(zone)
        _check_entry(owner)
        rec = m.table.get(m.entry, id_)
        if rec is None:
            raise ApiError(404, "UpstreamServerNotFound", f"server {id_} not found")
        server = apply_fields(rec.server, doc, owner.config, id_)
        try:
            m.table.patch(m.entry, id_, server, zone)
        except ValueError as e:
            raise ApiError(400, "UpstreamConfFormatError", str(e)) from None
    _after(owner)
    changed = ", ".join(f"{k}={doc[k]}" for k in doc if k not in ("id", "server"))
    log.log(
        NOTICE,
        'upstream "%s": server %s (id %d) changed by %s: %s',
        owner.config.name,
        server.address.text,
        id_,
        client,
        changed or "nothing",
    )
    return server_document(id_, server, owner.config.context)


def _delete(owner: Member, id_: int, client: str) -> list[dict[str, Any]]:
    m = owner.members
    assert m is not None
    zone = owner.group.zone
    with zone:
        m.table.sweep(zone)
        _check_entry(owner)
        rec = m.table.get(m.entry, id_)
        if rec is None:
            raise ApiError(404, "UpstreamServerNotFound", f"server {id_} not found")
        m.table.delete(m.entry, id_, zone)
        _, remaining = m.table.read(m.entry)
    _after(owner)
    log.log(
        NOTICE,
        'upstream "%s": server %s (id %d) removed by %s',
        owner.config.name,
        rec.server.address.text,
        id_,
        client,
    )
    return [server_document(r.id, r.server, owner.config.context) for r in remaining]


def _after(owner: Member) -> None:
    """Rule 2: the state file, outside the lock."""
    path = owner.config.state_path
    if not path:
        return
    from prefork_lb.config.state_file import write_state

    def current() -> list[UpstreamServer]:
        return [r.server for r in _records(owner)]

    try:
        write_state(path, current)
    except OSError as e:
        log.error('upstream "%s": cannot write the state file "%s" (%s)', owner.config.name, path, e.strerror)
