"""What the api, metrics and dashboard locations answer (built on ``http/api.py``)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Final

from prefork_lb.http.api import ApiError, StatusReader, dumps

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


def answer(ex: Exchange, lr: LocationRuntime, runtime: HttpRuntime) -> tuple[int, bytes, bytes]:
    """(status, content type, body)."""
    kind = lr.config.status
    if ex.method not in (b"GET", b"HEAD"):
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


def _is_loopback(addr: str) -> bool:
    """Writes without an ``allow`` list only from loopback clients (as the write API)."""
    import ipaddress

    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr.startswith("unix:") or addr == ""
