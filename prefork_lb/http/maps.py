"""nginx's ``map``: ``[http.maps.NAME]`` defines ``$NAME`` from a source template (sans-IO).

Rules:
1. Compiled once at config load (``compile_map``); evaluating renders the source, then
   tries, as nginx: the exact strings (one dict lookup), then (``hostnames``) the wildcard
   names, longest first (``*.example.com`` / ``.example.com``, then ``www.example.*``), then
   the regexes in config order (``~`` case-sensitive, ``~*`` caseless), then ``default``
   ("" when absent).
2. A regex match sets ``$1``..``$9`` (as nginx's ``map`` does) for use in the value.
3. A value is a template: variables are rendered when ``$NAME`` is read; a literal value
   costs a dict lookup only. The map is evaluated each time ``$NAME`` is read.
4. With ``hostnames``, the source is matched lowercased with one trailing dot removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from prefork_lb.http.exchange import Exchange
from prefork_lb.http.rewrite import Part, compile_parts, render_parts
from prefork_lb.http.variables import Getter, Variable

__all__ = ["compile_map"]

_Value = tuple[Part, ...]


def _value_getter(parts: _Value) -> Getter:
    if len(parts) == 1 and type(parts[0]) is str:
        literal = parts[0]
        return lambda ex: literal
    return lambda ex: render_parts(parts, ex)


def compile_map(
    name: str,
    source: Getter,
    values: Mapping[str, str],
    hostnames: bool,
    lookup: Callable[[str], Getter],
) -> Variable:
    """Rule 1; raises ``ValueError`` naming the key for a bad regex or template."""
    exact: dict[str, Getter] = {}
    heads: list[tuple[str, Getter]] = []  # ".example.com" matches "example.com" and "*.example.com"
    tails: list[tuple[str, Getter]] = []  # "www.example." for "www.example.*"
    regexes: list[tuple[Callable[[str], re.Match[str] | None], Getter]] = []
    default: Getter = lambda ex: ""  # noqa: E731
    for key, value in values.items():
        if not isinstance(value, str):
            raise ValueError(f'value of "{key}" must be a string')
        try:
            get = _value_getter(compile_parts(value, lookup))
        except ValueError as e:
            raise ValueError(f'value of "{key}": {e}') from None
        if key == "default":
            default = get
        elif key.startswith("~"):
            caseless = key.startswith("~*")
            pattern = key[2:] if caseless else key[1:]
            try:
                regexes.append((re.compile(pattern, re.IGNORECASE if caseless else 0).search, get))
            except re.error as e:
                raise ValueError(f'invalid regex "{pattern}": {e}') from None
        elif hostnames and key.startswith("*."):
            heads.append((key[1:].lower(), get))
        elif hostnames and key.startswith("."):
            heads.append((key.lower(), get))
            exact.setdefault(key[1:].lower(), get)
        elif hostnames and key.endswith(".*"):
            tails.append((key[:-1].lower(), get))
        else:
            exact.setdefault(key.lower() if hostnames else (key[1:] if key.startswith("\\") else key), get)
    heads.sort(key=lambda h: len(h[0]), reverse=True)
    tails.sort(key=lambda t: len(t[0]), reverse=True)
    head_table = tuple(heads)
    tail_table = tuple(tails)
    regex_table = tuple(regexes)

    def evaluate(ex: Exchange) -> str:
        value = source(ex)
        if hostnames:
            value = value.lower()
            if value.endswith("."):
                value = value[:-1]
        found = exact.get(value)
        if found is not None:
            return found(ex)
        for suffix, got in head_table:
            if value.endswith(suffix):
                return got(ex)
        for prefix, got in tail_table:
            if value.startswith(prefix):
                return got(ex)
        for search, got in regex_table:
            m = search(value)
            if m is not None:
                ex.captures = (m.group(0), *m.groups(""))
                return got(ex)
        return default(ex)

    return Variable(name, evaluate, empty_is_unset=True)
