"""The NGINX Plus write API for upstream servers: request validation and documents (issue 19).

Sans-IO: JSON bodies in, ``UpstreamServer`` values and server documents out, every error an
``ApiError`` in NGINX Plus's shape. ``http/upstream_write.py`` runs it against the shared
server table (``zone/servers.py``).

Rules:
1. Paths: ``/api/<v>/{http,stream}/upstreams/<name>/servers`` (GET, POST) and
   ``.../servers/<id>`` (GET, PATCH, DELETE); any other method there is 405
   ``MethodNotAllowed``; a write where the location is read-only is 405 ``MethodDisabled``
   (NGINX Plus's code for ``api write=off``). GET and HEAD never change anything.
2. A body is one JSON object. Fields: ``server`` (string, required by POST), ``weight``
   (>= 1: 0 is invalid), ``max_conns``, ``max_fails`` (>= 0), ``fail_timeout``,
   ``slow_start`` (durations: "10s", "1m" or whole seconds), ``route`` (http only),
   ``backup``, ``down``, ``drain`` (booleans). ``id`` is accepted when it names the server
   itself. Anything else, a wrong type or a bad value is 400 ``UpstreamConfFormatError``
   whose text names the field.
3. ``server`` and ``backup`` cannot change by PATCH (400 ``UpstreamServerImmutable``):
   delete and add instead. The method's own limits hold as in the config: no ``backup``
   with hash, ip_hash and random; ``slow_start`` only with round robin.
4. A Content-Type other than JSON (and curl's default form type and text/plain, which
   NGINX's documented curl examples send) is 415 ``UnsupportedMediaType``; a body that is
   not JSON is 400 ``JsonParseError``. One leniency: NGINX's guide writes its POST body
   over several shell lines ending in a backslash inside single quotes, so the body pasted into
   a shell carries backslash-newline pairs; such a pair can occur in no valid JSON
   document (a raw newline is never inside a JSON string), so a body that fails to parse
   is read once more with those pairs taken as whitespace.
5. Server documents are NGINX Plus's: ``{"id", "server", "weight", "max_conns",
   "max_fails", "fail_timeout": "10s", "slow_start": "0s", "route", "backup", "down"}``,
   plus ``"drain": true`` while draining; stream servers have no ``route``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Final

from prefork_lb.config.model import UpstreamConfig, UpstreamServer
from prefork_lb.http.api import ApiError
from prefork_lb.units import UnitError, parse_duration_s

FIELDS: Final = (
    "id",
    "server",
    "weight",
    "max_conns",
    "max_fails",
    "fail_timeout",
    "slow_start",
    "route",
    "backup",
    "down",
    "drain",
)
JSON_TYPES: Final = (b"application/json", b"application/x-www-form-urlencoded", b"text/plain")
MAX_ROUTE: Final = 32  # nginx's route= limit


def _bad(field: str, why: str) -> ApiError:
    return ApiError(400, "UpstreamConfFormatError", f'invalid "{field}" value: {why}')


def parse_body(body: bytes, content_type: bytes | None) -> dict[str, Any]:
    """Rules 2 and 4: the JSON object of a POST or PATCH."""
    if content_type:
        mime = content_type.split(b";", 1)[0].strip().lower()
        if mime not in JSON_TYPES:
            raise ApiError(415, "UnsupportedMediaType", "the body must be JSON (application/json)")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = _continued_lines(body)
    if not isinstance(doc, dict):
        raise ApiError(400, "JsonParseError", "the body must be a JSON object")
    for key in doc:
        if key not in FIELDS:
            raise ApiError(400, "UpstreamConfFormatError", f'unknown parameter "{key}"')
    return doc


def _continued_lines(body: bytes) -> Any:
    """Rule 4's leniency: shell line continuations (backslash-newline) outside JSON strings
    read as whitespace; inside a string they stay (and the body stays invalid)."""
    if b"\\\n" in body:
        out = bytearray()
        in_string = escaped = False
        i, n = 0, len(body)
        while i < n:
            c = body[i]
            if in_string:  # a string ends at a quote no backslash escapes
                if escaped:
                    escaped = False
                elif c == 0x5C:
                    escaped = True
                elif c == 0x22:
                    in_string = False
            elif c == 0x22:
                in_string = True
            elif c == 0x5C and body[i + 1 : i + 2] == b"\n":
                out += b" "
                i += 2
                continue
            elif c == 0x5C and body[i + 1 : i + 3] == b"\r\n":
                out += b" "
                i += 3
                continue
            out.append(c)
            i += 1
        try:
            return json.loads(bytes(out))
        except (ValueError, UnicodeDecodeError):
            pass
    raise ApiError(400, "JsonParseError", "the body is not valid JSON")


def _int(doc: dict[str, Any], field: str, minimum: int) -> int:
    v = doc[field]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(field, "must be an integer")
    if v < minimum:
        raise _bad(field, f"must be at least {minimum}")
    if v > 2**31 - 1:
        raise _bad(field, "too large")
    return v


def _bool(doc: dict[str, Any], field: str) -> bool:
    v = doc[field]
    if not isinstance(v, bool):
        raise _bad(field, "must be true or false")
    return v


def _seconds(doc: dict[str, Any], field: str) -> float:
    v = doc[field]
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise _bad(field, 'must be a duration such as "10s"')
    try:
        s = parse_duration_s(v)
    except UnitError as e:
        raise _bad(field, str(e)) from None
    if s != int(s):
        raise _bad(field, "must be whole seconds")
    return float(s)


def _route(doc: dict[str, Any]) -> str:
    v = doc["route"]
    if not isinstance(v, str):
        raise _bad("route", "must be a string")
    if len(v) > MAX_ROUTE or any(ord(c) < 0x21 or ord(c) > 0x7E or c in ";," for c in v):
        raise _bad("route", f"at most {MAX_ROUTE} printable characters, no spaces, ';' or ','")
    return v


def server_text(doc: dict[str, Any]) -> str:
    v = doc.get("server")
    if not isinstance(v, str) or not v:
        raise _bad("server", 'must be an address such as "10.0.0.1:8080"')
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in v):
        raise _bad("server", "contains spaces or control characters")
    return v


def apply_fields(
    base: UpstreamServer, doc: dict[str, Any], upstream: UpstreamConfig, patch_id: int | None = None
) -> UpstreamServer:
    """``base`` with the body's settings (rules 2 and 3); ``patch_id``: the PATCHed id."""
    from prefork_lb.balance.registry import NO_BACKUP, SLOW_START

    changes: dict[str, Any] = {}
    if "id" in doc and patch_id is not None and doc["id"] != patch_id:
        raise ApiError(400, "UpstreamServerImmutable", 'the "id" of a server cannot change')
    if patch_id is not None:
        if "server" in doc and server_text(doc) not in (base.name, base.address.text):
            raise ApiError(400, "UpstreamServerImmutable", 'the "server" of a server cannot change')
        if "backup" in doc and _bool(doc, "backup") != base.backup:
            raise ApiError(400, "UpstreamServerImmutable", 'the "backup" of a server cannot change')
    elif "backup" in doc:
        changes["backup"] = _bool(doc, "backup")
    if "weight" in doc:
        changes["weight"] = _int(doc, "weight", 1)
    if "max_conns" in doc:
        changes["max_conns"] = _int(doc, "max_conns", 0)
    if "max_fails" in doc:
        changes["max_fails"] = _int(doc, "max_fails", 0)
    if "fail_timeout" in doc:
        changes["fail_timeout_s"] = _seconds(doc, "fail_timeout")
    if "slow_start" in doc:
        changes["slow_start_s"] = _seconds(doc, "slow_start")
    if "route" in doc:
        if upstream.context == "stream":
            raise ApiError(400, "UpstreamConfFormatError", 'unknown parameter "route"')
        changes["route"] = _route(doc)
    if "down" in doc:
        changes["down"] = _bool(doc, "down")
    if "drain" in doc:
        changes["drain"] = _bool(doc, "drain")
    out = replace(base, **changes)
    if out.backup and upstream.method in NO_BACKUP:
        raise _bad("backup", f'balancing method "{upstream.method}" does not support backup servers')
    if out.slow_start_s and upstream.method not in SLOW_START:
        raise _bad("slow_start", f'balancing method "{upstream.method}" does not support slow_start')
    return out


def server_document(id_: int, s: UpstreamServer, context: str) -> dict[str, Any]:
    """Rule 5."""
    doc: dict[str, Any] = {
        "id": id_,
        "server": s.address.text,
        "weight": s.weight,
        "max_conns": s.max_conns,
        "max_fails": s.max_fails,
        "fail_timeout": f"{int(s.fail_timeout_s)}s",
        "slow_start": f"{int(s.slow_start_s)}s",
    }
    if context == "http":
        doc["route"] = s.route
    doc["backup"] = s.backup
    doc["down"] = s.down
    if s.drain:
        doc["drain"] = True
    return doc


def parse_id(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise ApiError(400, "UpstreamBadServerId", f'invalid server id "{text[:32]}"')
    return int(text)
