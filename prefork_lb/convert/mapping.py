"""nginx directives -> the prefork-lb TOML document (sans-IO: a Directive tree in, a dict out).

The entry point (``map_config``) and the main context; each other context has its module:

- ``map_common``: the report (``Note``), the recorder (``Mapper``), generic handlers; its
  header states the rules every handler keeps (nothing is dropped silently).
- ``map_http``: the ``http`` block, its servers, the inheritance nginx does where the TOML
  contract lacks a level; ``map_location``: the location keys (also at http and server
  level), the location block, the rewrite module; ``map_tls``: TLS termination;
  ``map_upstream``: ``upstream`` blocks; ``map_stream``: the ``stream`` block;
  ``map_health``: active health checks (``health_check``, ``match``); ``cache``: the content
  cache.

To add a directive: a handler in its context's table (``map_http._HTTP_LEVEL``,
``map_http._SERVER``, ``map_location._LOCATION`` (``map_location.INHERITED`` for what http,
server and location share), ``map_upstream._UPSTREAM``, ``map_stream._STREAM``,
``map_stream._STREAM_SERVER``, ``_MAIN`` here), remove it from ``unsupported.NOT_YET``, and
add its row to docs/convert.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefork_lb.convert.map_common import Handler, Mapped, Mapper, Note, error_log
from prefork_lb.convert.map_http import http_block
from prefork_lb.convert.map_stream import stream_block
from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import scalar


def _workers(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "workers", scalar(d.args[0]), d)


def _events(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.each(d.block, t, path, _EVENTS)


def _top_key(key: str, convert: Callable[[str], Any] = scalar) -> Handler:
    def handle(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
        m.put(t, path, key, convert(d.args[0]), d)

    return handle


def _user(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "user", d.args[0], d)
    if len(d.args) > 1:
        m.put(t, path, "group", d.args[1], d)


def _daemon(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, "daemon", d.args[0] == "on", d)


_MAIN: dict[str, Handler] = {
    "worker_processes": _workers,
    "events": _events,
    "pid": _top_key("pid", str),
    "user": _user,
    "error_log": error_log,
    "daemon": _daemon,
    "worker_rlimit_nofile": _top_key("worker_rlimit_nofile"),
    "worker_shutdown_timeout": _top_key("worker_shutdown_timeout"),
    "http": http_block,
    "stream": stream_block,
}
_EVENTS: dict[str, Handler] = {"worker_connections": _top_key("worker_connections")}


def map_config(root: list[Directive]) -> Mapped:
    """The TOML document, its comments and origins, and the report for ``root``."""
    m = Mapper()
    m.each(root, m.out.doc, "", _MAIN)
    m.out.doc.setdefault("worker_connections", 512)  # nginx's default (prefork-lb's: 1024)
    return m.out


__all__ = ["Mapped", "Mapper", "Note", "map_config"]
