"""nginx's proxy_cache directives -> the prefork-lb cache keys (sans-IO; called from mapping.py).

The keys are issue 18's config contract (docs/cache.md, docs/config.md):
``[http.proxy_cache_paths.NAME]`` for ``proxy_cache_path`` and, at http, server or location
level, ``proxy_cache``, ``proxy_cache_key``, ``proxy_cache_valid``, ``proxy_cache_methods``,
``proxy_cache_min_uses``, ``proxy_cache_bypass``, ``proxy_no_cache``, ``proxy_cache_lock``,
``proxy_cache_lock_timeout``, ``proxy_cache_lock_age``, ``proxy_cache_use_stale``,
``proxy_cache_background_update``, ``proxy_cache_revalidate``, ``proxy_cache_convert_head``,
``proxy_ignore_headers`` and ``proxy_force_ranges``.

Rules:
- Location-level directives stay at the level they are written at (the loader inherits http ->
  server -> location with nginx's rule: a level that sets a key replaces the outer value whole).
- Directives nginx accumulates within one level are accumulated the same way here:
  ``proxy_cache_valid`` (one item per directive, its words joined: ``"200 302 10m"``, first match
  in config order wins), ``proxy_cache_bypass`` / ``proxy_no_cache`` (one item per argument) and
  the bitmask directives ``proxy_cache_methods``, ``proxy_cache_use_stale``,
  ``proxy_ignore_headers`` (a set: a repeated word is noted once and kept once, as nginx warns
  "duplicate value"). ``proxy_cache_use_stale off`` is the empty list, and it wins over the
  other words of its level, as in nginx.
- ``proxy_cache_path`` becomes a table named after its ``keys_zone``; values are copied as
  written (bare digits become integers), the loader validates them and names this line.
  ``use_temp_path`` is copied (prefork-lb always writes an entry to a temp file under the
  cache directory and renames it). The knobs prefork-lb's cache manager has no equivalent for
  (``manager_*``, ``loader_*``, ``purger*``) are reported as differences, never dropped silently.
- A zone named by a variable (``proxy_cache $zone``) is skipped: prefork-lb needs the zone at
  load time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import scalar

if TYPE_CHECKING:
    from prefork_lb.convert.mapping import Mapper

# on/off directives (mapping's ``_flag``) and single values copied as written (``_simple``)
FLAGS = (
    "proxy_cache_lock",
    "proxy_cache_background_update",
    "proxy_cache_revalidate",
    "proxy_cache_convert_head",
    "proxy_force_ranges",
)
SIMPLE = ("proxy_cache_key", "proxy_cache_min_uses", "proxy_cache_lock_timeout", "proxy_cache_lock_age")

_PATH_KEYS = ("levels", "inactive", "max_size", "min_free")
_PATH_NOT_MAPPED = (
    "manager_files",
    "manager_sleep",
    "manager_threshold",
    "loader_files",
    "loader_sleep",
    "loader_threshold",
    "purger",
    "purger_files",
    "purger_sleep",
    "purger_threshold",
)


def cache_path(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``proxy_cache_path PATH [levels=] keys_zone=NAME:SIZE [inactive=] [max_size=] ...``."""
    table: dict[str, Any] = {"path": d.args[0]}
    name = ""
    for word in d.args[1:]:
        key, eq, value = word.partition("=")
        if key == "keys_zone" and eq:
            name, colon, zone_size = value.partition(":")
            if not name or not colon:
                m.skip(d, 'needs "keys_zone=NAME:SIZE"')
                return
            table["keys_zone"] = scalar(zone_size)
        elif key in _PATH_KEYS and eq:
            table[key] = scalar(value)
        elif key == "use_temp_path" and eq:
            table[key] = {"on": True, "off": False}.get(value, value)
        elif key in _PATH_NOT_MAPPED and eq:
            m.differ(
                d,
                f'"{word}": prefork-lb\'s cache manager and loader pace themselves; ignored (docs/cache.md)',
            )
        else:
            m.skip(d, f'has the unknown parameter "{word}"')
            return
    if not name:
        m.skip(d, 'needs "keys_zone=NAME:SIZE"')
        return
    zones = t.setdefault("proxy_cache_paths", {})
    kp = f"{path}.proxy_cache_paths.{name}"
    if name in zones:
        m.differ(d, f'the zone "{name}" is already defined (nginx refuses to start); this one is used')
        m.forget(kp)
    zones[name] = table
    m.mark(kp, d)


def cache(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``proxy_cache NAME | off``."""
    if "$" in d.args[0]:
        m.skip(d, "names its zone with a variable, which prefork-lb does not take: name the zone")
        return
    m.put(t, path, "proxy_cache", d.args[0], d)


def cache_valid(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """One ``proxy_cache_valid`` line -> one item, in config order (the first match wins)."""
    _extend(m, d, t, path, d.name, [" ".join(d.args)])


def variables(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``proxy_cache_bypass`` / ``proxy_no_cache``: true when any item is non-empty and not "0"."""
    _extend(m, d, t, path, d.name, list(d.args))


def word_set(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``proxy_cache_methods``, ``proxy_cache_use_stale``, ``proxy_ignore_headers`` (bitmasks)."""
    have = t.get(d.name)
    if d.name == "proxy_cache_use_stale" and ("off" in d.args or have == []):
        if len(d.args) > 1 or have is not None:
            m.differ(d, '"off" wins over the other conditions of this level, as in nginx')
        if have is None:
            _extend(m, d, t, path, d.name, [])
        else:
            have.clear()
        return
    fresh: list[str] = []
    for word in d.args:
        if word in (have or ()) or word in fresh:
            m.differ(d, f'"{word}" is given twice; nginx warns "duplicate value", it counts once')
        else:
            fresh.append(word)
    _extend(m, d, t, path, d.name, fresh)


def _extend(m: Mapper, d: Directive, t: dict[str, Any], path: str, key: str, items: list[str]) -> None:
    """Append to the level's list ``key``: the key's origin is its first directive, each item's
    its own line; comments are joined."""
    kp = f"{path}.{key}" if path else key
    values = t.setdefault(key, [])
    if kp not in m.out.origins:
        m.mark(kp, d)
    elif d.comment:
        m.out.comments[kp] = "\n".join(filter(None, (m.out.comments.get(kp), d.comment)))
    for item in items:
        m.out.origins[f"{kp}[{len(values)}]"] = d.where
        values.append(item)
