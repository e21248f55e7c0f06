"""What the api, metrics and dashboard locations answer (built on ``http/api.py``)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Final

from prefork_lb.http import upstream_write
from prefork_lb.http.api import VERSIONS, ApiError, StatusReader, dumps

if TYPE_CHECKING:
    from prefork_lb.http.exchange import Exchange
    from prefork_lb.http.runtime import HttpRuntime, LocationRuntime

JSON: Final = b"application/json"
PROMETHEUS: Final = b"text/plain; version=0.0.4; charset=utf-8"
_ASSETS: Final = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.js": b"application/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}
_cache: dict[str, bytes] = {}


def _rest(ex: Exchange, lr: LocationRuntime) -> str:
    pattern = lr.config.pattern
    return ex.path[len(pattern) :] if lr.config.modifier in ("", "^~") and ex.path.startswith(pattern) else ""


def answer(
    ex: Exchange, lr: LocationRuntime, runtime: HttpRuntime, request_body: bytes = b""
) -> tuple[int, bytes, bytes]:
    """(status, content type, body)."""
    kind = lr.config.status
    if kind == "api":  # issue 19: upstream servers, read and (api = { write = true }) written
        parts = [p for p in _rest(ex, lr).split("/") if p]
        if len(parts) > 1 and parts[0].isdigit() and upstream_write.is_servers_path(parts[1:]):
            return _servers(ex, lr, runtime, parts[1:], request_body)
    if ex.method not in (b"GET", b"HEAD"):
        if ex.method == b"DELETE" and kind == "api" and runtime.limit_tables:
            reset = _limits_reset(ex, lr, runtime)  # limit_req / limit_conn counters (limits/status.py)
            if reset is not None:
                return reset
        if ex.method == b"DELETE" and kind == "api" and runtime.caches:
            purged = _purge(ex, lr, runtime)  # issue 18: cache purge (cache/status.py)
            if purged is not None:
                return purged
        error = ApiError(405, "MethodNotAllowed", "method not allowed")
        return 405, JSON, dumps(error.document())
    if kind == "dashboard":
        return _dashboard(_rest(ex, lr))
    reader = StatusReader(runtime, runtime.streams)
    if kind == "metrics":
        from prefork_lb.metrics import render

        return 200, PROMETHEUS, render(reader.all_documents(ex.conn.server_addr))
    try:
        return 200, JSON, dumps(reader.route(_rest(ex, lr), ex.conn.server_addr))
    except ApiError as e:
        return e.status, JSON, dumps(e.document())


def _servers(
    ex: Exchange, lr: LocationRuntime, runtime: HttpRuntime, parts: list[str], body: bytes
) -> tuple[int, bytes, bytes]:
    """The servers of one upstream (http/upstream_write.py); writes only where the location
    says ``write = true``, and from a client its allow list admits or on loopback."""
    version = _rest(ex, lr).strip("/").split("/", 1)[0]
    try:
        if int(version) not in VERSIONS:
            raise ApiError(404, "UnsupportedVersion", "unsupported API version")
        write = lr.config.api_write and (bool(lr.access) or _loopback(ex.conn.remote_addr))
        status, doc = upstream_write.handle(
            runtime, ex.method, parts, body, ex.header(b"content-type"), write, ex.conn.remote_addr
        )
    except ApiError as e:
        return e.status, JSON, dumps(e.document())
    return status, JSON, dumps(doc)


def _loopback(addr: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr.startswith("unix:") or addr == ""


def _dashboard(rest: str) -> tuple[int, bytes, bytes]:
    name = rest.strip("/") or "index.html"
    ctype = _ASSETS.get(name)
    if ctype is None:
        return 404, b"text/plain", b"not found\n"
    body = _cache.get(name)
    if body is None:
        body = _cache[name] = resources.files("prefork_lb.dashboard").joinpath(name).read_bytes()
    return 200, ctype, body


def _purge(ex: Exchange, lr: LocationRuntime, runtime: HttpRuntime) -> tuple[int, bytes, bytes] | None:
    import gevent

    from prefork_lb.cache.status import PurgeError, purge

    write = lr.config.api_write and (bool(lr.access) or _is_loopback(ex.conn.remote_addr))
    try:
        done = purge(_rest(ex, lr), ex.args, write, runtime.caches, ex.remote_addr, lambda: gevent.sleep(0))
    except PurgeError as e:
        return e.status, JSON, dumps(ApiError(e.status, e.code, e.text).document())
    return (204, JSON, b"") if done else None


def _limits_reset(ex: Exchange, lr: LocationRuntime, runtime: HttpRuntime) -> tuple[int, bytes, bytes] | None:
    from prefork_lb.limits.status import LimitsError, is_reset_path, reset

    parts = [p for p in _rest(ex, lr).split("/") if p]
    if len(parts) < 2 or not parts[0].isdigit() or not is_reset_path(parts[1:]):
        return None
    write = lr.config.api_write and (bool(lr.access) or _is_loopback(ex.conn.remote_addr))
    zone = runtime.zone
    try:
        if int(parts[0]) not in VERSIONS:
            raise ApiError(404, "UnsupportedVersion", "unsupported API version")
        reset(parts[1:], write, runtime.limit_tables, zone.lock, zone.unlock, ex.remote_addr)
    except LimitsError as e:
        return e.status, JSON, dumps(ApiError(e.status, e.code, e.text).document())
    except ApiError as e:
        return e.status, JSON, dumps(e.document())
    return 204, JSON, b""


def _is_loopback(addr: str) -> bool:
    """Writes without an ``allow`` list only from loopback clients (as the write API)."""
    import ipaddress

    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr.startswith("unix:") or addr == ""
