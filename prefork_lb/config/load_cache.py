"""``[http.proxy_cache_paths.NAME]``: nginx's ``proxy_cache_path`` (issue 18).

    [http.proxy_cache_paths.mycache]   # proxy_cache_path cache/mycache levels=1:2 keys_zone=mycache:10m
    path = "cache/mycache"             # relative to the prefix (-p), as nginx
    levels = "1:2"                     # 1 to 3 levels of 1 or 2 hex characters; default: none
    keys_zone = "10m"                  # the shared index (required): ~8000 keys per MB
    inactive = "10m"                   # default 10m, as nginx
    max_size = "1g"                    # default: no limit
    min_free = "100m"                  # default: no limit
    use_temp_path = false              # accepted; temp files always go to <path>/tmp

Rules:
- The table name is the zone name (nginx's ``keys_zone=NAME:size``); locations name it in
  ``proxy_cache``. Loaded before any server, so a ``proxy_cache`` naming an unknown zone is
  an error where it is written (the location loader looks in ``HttpLoader.cache_paths``).
- Two zones on one directory is an error (nginx: "duplicate cache path").
- ``keys_zone`` must hold the index header and a few dozen keys (``MIN_KEYS_ZONE_BYTES``).
- The directory itself is created and checked for writing by the startup checks
  (``preflight.check_cache_paths``: ``-t``, startup and reload), not here: loading has no
  side effects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from prefork_lb.config.model import CachePathConfig
from prefork_lb.config.source import Table, boolean, duration, size, string

MIN_KEYS_ZONE_BYTES = 8192
_LEVELS = re.compile(r"[12](:[12]){0,2}")


def levels(value: object) -> tuple[int, ...]:
    if not isinstance(value, str) or not _LEVELS.fullmatch(value):
        raise ValueError('must be 1 to 3 levels of 1 or 2 characters, such as "1:2"')
    return tuple(int(part) for part in value.split(":"))


def _keys_zone(value: object) -> int:
    if isinstance(value, str) and ":" in value:
        raise ValueError('is the size only (the zone name is the table name), such as "10m"')
    n = size(value)
    if n < MIN_KEYS_ZONE_BYTES:
        raise ValueError(f"is too small (at least {MIN_KEYS_ZONE_BYTES} bytes)")
    return n


def cache_paths(t: Table, resolve: Callable[[str], str]) -> dict[str, CachePathConfig]:
    """``t`` is the ``[http]`` table; ``resolve(path) -> absolute path`` (the loader's ``path``)."""
    out: dict[str, CachePathConfig] = {}
    paths = t.table("proxy_cache_paths")
    seen: dict[str, str] = {}
    for name in list(paths.data):
        z = paths.table(name, default_empty=False)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise paths.error(name, "a cache zone name is letters, digits, '_', '.' and '-'")
        path = os.path.normpath(resolve(z.take("path", _non_empty)))
        if path in seen:
            raise z.error("path", f'duplicate cache path "{path}" (also used by "{seen[path]}")')
        seen[path] = name
        out[name] = CachePathConfig(
            name=name,
            path=path,
            levels=z.take("levels", levels, ()),
            keys_zone_bytes=z.take("keys_zone", _keys_zone),
            inactive_s=z.take("inactive", duration, 600.0),
            max_size_bytes=z.take("max_size", size, 0),
            min_free_bytes=z.take("min_free", size, 0),
            use_temp_path=z.take("use_temp_path", boolean, False),
        )
        z.finish()
    paths.finish()
    return out


def _non_empty(value: object) -> str:
    text = string(value)
    if not text:
        raise ValueError("must not be empty")
    return text
