"""The location-level ``proxy_cache*`` keys (nginx's proxy_cache directives, issue 18).

Rules:
- Every key here is inheritable from ``[http]`` and the server like the other
  ``LOCATION_KEYS`` (the nearest level wins, lists replaced whole), as nginx merges them.
- ``proxy_cache = "off"`` (or "") cancels an inherited cache; a named zone must be one of
  ``[http.proxy_cache_paths]`` (checked where it is written: ``check_cache_zone``).
- Templates (``proxy_cache_key``, ``proxy_cache_bypass``, ``proxy_no_cache``) are compiled
  where they are written, so an unknown variable is an error naming that level.
- ``proxy_cache_methods``: GET and HEAD are always added (nginx).
- Durations carry their unit (``proxy_cache_lock_timeout_s``); ``proxy_cache_valid`` is
  parsed into ``(codes | None, seconds)`` rules (cache/policy.py rule 2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prefork_lb.cache.policy import IGNORABLE_HEADERS, USE_STALE_CONDITIONS, ValidRule, parse_valid_rule
from prefork_lb.config.source import (
    Table,
    boolean,
    duration,
    positive_int,
    string,
    string_list,
)

DEFAULT_KEY = "$scheme$proxy_host$request_uri"
_METHOD = re.compile(r"[A-Z]+")


def _zone(value: object) -> str:
    name = string(value)
    if name == "off":
        return ""
    if name and not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f'"{name}" is not a cache zone name (a [http.proxy_cache_paths] key or "off")')
    return name


def _valid(value: object) -> tuple[ValidRule, ...]:
    out = []
    for i, text in enumerate(string_list(value)):
        try:
            out.append(parse_valid_rule(text))
        except ValueError as e:
            raise ValueError(f"[{i}]: {e}") from None
    return tuple(out)


def _methods(value: object) -> frozenset[bytes]:
    out = {b"GET", b"HEAD"}
    for m in string_list(value):
        if not _METHOD.fullmatch(m):
            raise ValueError(f'"{m}" is not a method name (upper case, e.g. "POST")')
        out.add(m.encode())
    return frozenset(out)


def _use_stale(value: object) -> frozenset[str]:
    items = string_list(value)
    if items == ["off"]:
        return frozenset()
    for item in items:
        if item not in USE_STALE_CONDITIONS:
            known = ", ".join(sorted(USE_STALE_CONDITIONS))
            raise ValueError(f'unknown condition "{item}" (one of: {known}, off)')
    return frozenset(items)


def _ignore(value: object) -> frozenset[str]:
    out = set()
    for item in string_list(value):
        if item.lower() not in IGNORABLE_HEADERS:
            raise ValueError(f'cannot ignore "{item}" (one of: {", ".join(IGNORABLE_HEADERS.values())})')
        out.add(item.lower())
    return frozenset(out)


def _templates(value: object) -> tuple[str, ...]:
    return tuple(string_list(value))


def _key(value: object) -> str:
    text = string(value)
    if not text:
        raise ValueError("must not be empty")
    return text


# key -> (LocationConfig field, converter); merged into load_http.LOCATION_KEYS
CACHE_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "proxy_cache": ("proxy_cache", _zone),
    "proxy_cache_key": ("proxy_cache_key", _key),
    "proxy_cache_valid": ("proxy_cache_valid", _valid),
    "proxy_cache_methods": ("proxy_cache_methods", _methods),
    "proxy_cache_min_uses": ("proxy_cache_min_uses", positive_int),
    "proxy_cache_bypass": ("proxy_cache_bypass", _templates),
    "proxy_no_cache": ("proxy_no_cache", _templates),
    "proxy_cache_lock": ("proxy_cache_lock", boolean),
    "proxy_cache_lock_timeout": ("proxy_cache_lock_timeout_s", duration),
    "proxy_cache_lock_age": ("proxy_cache_lock_age_s", duration),
    "proxy_cache_use_stale": ("proxy_cache_use_stale", _use_stale),
    "proxy_cache_background_update": ("proxy_cache_background_update", boolean),
    "proxy_cache_revalidate": ("proxy_cache_revalidate", boolean),
    "proxy_cache_convert_head": ("proxy_cache_convert_head", boolean),
    "proxy_ignore_headers": ("proxy_ignore_headers", _ignore),
    "proxy_force_ranges": ("proxy_force_ranges", boolean),
}
TEMPLATE_KEYS = ("proxy_cache_key", "proxy_cache_bypass", "proxy_no_cache")


def check_templates(t: Table, key: str, value: str | Iterable[str]) -> None:
    """A template key: compiled where written, so an error names that level (and file)."""
    from prefork_lb.http.template import compile_template
    from prefork_lb.http.variables import VariableError

    for i, text in enumerate([value] if isinstance(value, str) else value):
        try:
            compile_template(text)
        except VariableError as e:
            raise t.error(key, str(e) if isinstance(value, str) else f"[{i}]: {e}") from None


def check_cache_zone(t: Table, name: str, zones: Mapping[str, Any]) -> None:
    """``proxy_cache`` names a ``[http.proxy_cache_paths]`` entry: an error where it is written."""
    if name and name not in zones:
        raise t.error(
            "proxy_cache", f'unknown cache zone "{name}" (define it in [http.proxy_cache_paths.{name}])'
        )
