"""Turn a TOML file (plus includes) into a validated, frozen ``Config``.

The same function serves ``prefork-lb -t``, startup and reload, so a config that passes
``-t`` is exactly a config the master will run. Every failure is a ``ConfigError`` naming
the file and the key path.

This module reads the top-level keys and runs the checks that span sections; the sections
are read by ``load_http`` (``[http]``) and ``load_stream`` (``[stream]``), on what
``load_shared`` gives both (paths, ``listen``, upstream blocks). Converters live in
``source``.

Rules:
- A listen address belongs to one server context: an http listener is never a stream one,
  and two stream servers never share an address (http servers may: ``server_name``).
- The zone must hold a slot for every upstream peer and every server status zone, checked
  here so a config that would not fit is refused by ``-t`` too.
- A status location (api, metrics, dashboard) on a non-loopback address needs an allow list.
- TLS contexts are built last, here, so ``-t`` checks certificates and keys as startup does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load_http import HttpLoader
from prefork_lb.config.load_stream import StreamLoader
from prefork_lb.config.model import Config, HttpConfig, StreamConfig
from prefork_lb.config.source import Source, Table, boolean, choice, duration, positive_int, size, string

DEFAULT_CONFIG_PATH = "/etc/prefork-lb/prefork-lb.toml"
ERROR_LOG_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


def load_config(path: str, prefix: str | None = None) -> Config:
    """Parse and validate ``path``; raise ConfigError on the first problem. A file ending in
    ``.conf`` is nginx syntax: converted in memory first (prefork_lb/convert), and an error
    in the result names the nginx line the key came from."""
    main = os.path.abspath(path)
    from prefork_lb.convert import is_nginx_conf

    if not is_nginx_conf(main):
        return _load(main, prefix, Source(main))
    from prefork_lb.convert import ConvertError, convert_file

    try:
        conversion = convert_file(main)
    except ConvertError as e:
        raise ConfigError("", "", str(e) + _toml_hint(main)) from None  # names file:line
    try:
        config = _load(main, prefix, Source(main, conversion.toml))
    except ConfigError as e:
        where = conversion.origin(e.key_path) if e.key_path else None
        raise ConfigError(where or main, e.key_path, e.message) from None
    return dataclasses.replace(
        config,
        files=conversion.files,
        converted=conversion.toml,
        notes=tuple(str(n) for n in conversion.notes),
        origins=conversion.origins,
    )


def _toml_hint(path: str) -> str:
    """A TOML config named ``*.conf`` fails as nginx syntax: say what happened."""
    import tomllib

    try:
        with open(path, "rb") as f:
            tomllib.load(f)
    except (OSError, ValueError):
        return ""
    name = os.path.basename(path)
    return f" ({name} is valid TOML: a config ending in .conf is read as nginx syntax; rename it .toml)"


def _load(main: str, prefix: str | None, source: Source) -> Config:
    prefix = os.path.abspath(prefix) if prefix else os.path.dirname(main)
    top = Table(source, source.data, "")
    loader = HttpLoader(source, prefix)
    workers = top.take("workers", _workers, 1)
    pid_path = loader.path(top.take("pid", string, "prefork-lb.pid"))
    error_log = loader.log_path(top.take("error_log", string, "error.log"))
    level = top.take("error_log_level", choice(ERROR_LOG_LEVELS), "notice")
    daemon = top.take("daemon", boolean, False)
    worker_connections = top.take("worker_connections", positive_int, 1024)
    shutdown_s = top.take("worker_shutdown_timeout", duration, 0.0)
    zone_size = top.take("zone_size", size, 8 * 1024 * 1024)
    user = top.take("user", string, None)
    group = top.take("group", string, None)
    if group is not None and user is None:
        raise top.error("group", 'needs "user"')
    if user is not None:
        from prefork_lb.worker.privileges import resolve

        try:
            resolve(user, group)
        except ValueError as e:
            raise top.error("group" if group and "group" in str(e) else "user", str(e)) from None
    rlimit_nofile = top.take("worker_rlimit_nofile", positive_int, 0)
    heartbeat_s = top.take("worker_heartbeat_timeout", duration, 30.0)
    http = loader.http(top.table("http"))
    stream = StreamLoader(source, prefix).stream(top.table("stream"))
    top.finish()
    _check_zone_size(source, zone_size, http, stream)
    _check_listen_conflicts(source, http, stream)
    _check_status_exposure(source, http)
    tls = _build_tls(source, http, stream)
    return Config(
        path=main,
        prefix=prefix,
        workers=workers,
        pid_path=pid_path,
        error_log_path=error_log,
        error_log_level=level,
        daemon=daemon,
        worker_connections=worker_connections,
        worker_shutdown_timeout_s=shutdown_s,
        http=http,
        stream=stream,
        zone_size_bytes=zone_size,
        files=tuple(source.files),
        user=user,
        group=group,
        worker_rlimit_nofile=rlimit_nofile,
        worker_heartbeat_timeout_s=heartbeat_s,
        tls=tls,
    )


def _build_tls(source: Source, http: HttpConfig, stream: StreamConfig) -> dict[tuple[str, str, int], Any]:
    """TLS contexts, built here in the master (before fork) and by ``-t`` alike
    (tls/contexts.py rule 1). Nothing is imported without a TLS listener."""
    if not any(
        lc.ssl
        for lc in [
            *(lc for s in http.servers for lc in s.listen),
            *(lc for s in stream.servers for lc in s.listen),
        ]
    ):
        return {}
    from prefork_lb.tls.contexts import TlsError, build_listen_tls

    try:
        return build_listen_tls(http.servers, stream.servers)
    except TlsError as e:
        raise source.error(e.key, str(e)) from None


def _workers(v: object) -> int:
    if v == "auto":
        return os.cpu_count() or 1
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError('must be a positive integer or "auto"')
    return v


def _check_status_exposure(source: Source, http: HttpConfig) -> None:
    """A status location (api, metrics, dashboard) on a non-loopback address needs an allow
    list (security checklist): each shows the whole upstream state, the api can change it."""
    import ipaddress

    what = {"api": "the status API", "metrics": "the metrics page", "dashboard": "the dashboard"}
    for s in http.servers:
        for i, loc in enumerate(s.locations):
            if not loc.status or any(allow for allow, _ in loc.access):
                continue
            for lc in s.listen:
                if lc.address.family == "unix":
                    continue
                if not ipaddress.ip_address(lc.address.host).is_loopback:
                    raise source.error(
                        f"http.servers[{s.index}].locations[{i}].{loc.status}",
                        f"{what[loc.status]} listens on {lc.address.text}, which is not loopback: "
                        "add an allow list",
                    )


def _check_listen_conflicts(source: Source, http: HttpConfig, stream: StreamConfig) -> None:
    http_keys = {lc.key: s.index for s in http.servers for lc in s.listen}
    for s in stream.servers:
        for lc in s.listen:
            if lc.key in http_keys:
                raise source.error(
                    f"stream.servers[{s.index}].listen",
                    f"{lc.address.text} is already an http listener (http.servers[{http_keys[lc.key]}])",
                )
    seen: dict[tuple[str, str, int], int] = {}
    for s in stream.servers:
        for lc in s.listen:
            if lc.key in seen:
                raise source.error(
                    f"stream.servers[{s.index}].listen",
                    f"duplicate listen {lc.address.text} (already stream.servers[{seen[lc.key]}])",
                )
            seen[lc.key] = s.index
    for hs in http.servers:
        for lc in hs.listen:
            if lc.udp or lc.so_keepalive:
                raise source.error(
                    f"http.servers[{hs.index}].listen", "udp and so_keepalive are stream parameters"
                )


def _check_zone_size(source: Source, size: int, http: HttpConfig, stream: StreamConfig) -> None:
    from prefork_lb.zone.layout import DEFAULT_ROWS, peer_capacity

    peers = sum(len(u.servers) for u in [*http.upstreams.values(), *stream.upstreams.values()])
    zones = len(http.servers) + len(stream.servers)  # each server's status zone takes a slot too
    capacity = peer_capacity(size, DEFAULT_ROWS)
    if peers + zones > capacity:
        raise ConfigError(
            source.main_path,
            "zone_size",
            f"{size} bytes hold {capacity} slots, the configuration needs {peers + zones}: "
            f"{peers} upstream peers + {zones} server status zones",
        )


__all__ = ["DEFAULT_CONFIG_PATH", "ConfigError", "load_config"]
