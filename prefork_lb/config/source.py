"""Reading TOML files, merging includes, and typed access that remembers key paths.

Rules:
- ``include`` globs are resolved against the directory of the file that names them and
  merged in order: tables merge key by key, the server lists (``[[http.servers]]``)
  concatenate, and any other key set by two files is an error naming both files (an
  upstream defined twice is an error, as in nginx).
- Each table knows its file by identity, so an error deep inside a server that came from
  a nested include still names the innermost file.
- Every value is read through a ``Table``: each ``take`` records the key as known, and
  ``finish`` rejects whatever was not taken, with a "did you mean" hint. So unknown keys
  are errors by construction, never silently ignored.
- Every error carries the file the offending key came from and its full key path.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from collections.abc import Callable
from typing import Any, TypeVar

from prefork_lb.config.errors import ConfigError, did_you_mean
from prefork_lb.units import UnitError, parse_duration_s, parse_size_bytes

T = TypeVar("T")
CONCATENATED = frozenset({"http.servers"})  # arrays that several files may extend
_MISSING: Any = object()


class Source:
    """The merged document plus where each part came from."""

    def __init__(self, main_path: str, text: str | None = None) -> None:
        """``text``: the main file's TOML, already in memory (a converted nginx.conf)."""
        self.main_path = main_path
        self.files: list[str] = []
        self._origins: dict[str, str] = {}  # dotted key path -> file, for plain tables
        self._tables: dict[int, str] = {}  # id(table inside an array of tables) -> file
        self.data = self._read(main_path, "", text)

    def origin(self, key_path: str) -> str:
        """The file that defined ``key_path``: the deepest table on the path that knows it."""
        found = self.main_path
        node: Any = self.data
        prefix = ""
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", key_path):
            if part.startswith("["):
                index = int(part[1:-1])
                prefix += part
                node = node[index] if isinstance(node, list) and index < len(node) else None
            else:
                prefix = f"{prefix}.{part}" if prefix else part
                node = node.get(part) if isinstance(node, dict) else None
            found = self._origins.get(prefix, found)
            if isinstance(node, dict):
                found = self._tables.get(id(node), found)
        return found

    def error(self, key_path: str, message: str) -> ConfigError:
        return ConfigError(self.origin(key_path), key_path, message)

    def _read(self, path: str, via: str, text: str | None = None) -> dict[str, Any]:
        try:
            if text is not None:
                data = tomllib.loads(text)
            else:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(via or path, "include" if via else "", f"cannot open {path}") from None
        except OSError as e:
            raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(path, "", f"invalid TOML: {e}") from None
        self.files.append(path)
        self._record(data, "", path)
        includes = data.pop("include", [])
        if isinstance(includes, str):
            includes = [includes]
        if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
            raise ConfigError(path, "include", "must be a list of file paths or globs")
        base = os.path.dirname(path)
        for pattern in includes:
            full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
            matches = sorted(glob.glob(full))
            if not matches and not glob.has_magic(full):
                raise ConfigError(path, "include", f"cannot open {full}")
            for inc in matches:
                inc = os.path.abspath(inc)
                if inc in self.files:
                    raise ConfigError(path, "include", f"{inc} is included more than once")
                self._merge(data, self._read(inc, path), "", inc)
        return data

    def _record(self, data: dict[str, Any], prefix: str, file: str) -> None:
        for key, value in data.items():
            kp = f"{prefix}.{key}" if prefix else key
            self._origins.setdefault(kp, file)
            if isinstance(value, dict):
                self._record(value, kp, file)
            elif _is_table_array(value):
                for item in value:
                    self._tables[id(item)] = file
                    self._record_tables(item, file)

    def _record_tables(self, data: dict[str, Any], file: str) -> None:
        for value in data.values():
            if isinstance(value, dict):
                self._tables[id(value)] = file
                self._record_tables(value, file)
            elif _is_table_array(value):
                for item in value:
                    self._tables[id(item)] = file
                    self._record_tables(item, file)

    def _merge(self, into: dict[str, Any], extra: dict[str, Any], prefix: str, file: str) -> None:
        for key, value in extra.items():
            kp = f"{prefix}.{key}" if prefix else key
            if key not in into:
                into[key] = value
                continue
            have = into[key]
            if isinstance(have, dict) and isinstance(value, dict):
                self._merge(have, value, kp, file)
            elif kp in CONCATENATED and _is_table_array(have) and _is_table_array(value):
                have.extend(value)
            else:
                first = self._origins.get(kp, self.main_path)
                raise ConfigError(file, kp, f"already set in {first}; includes may not override keys")
            self._origins.setdefault(kp, file)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


class Table:
    """A TOML table read key by key; ``finish`` rejects keys nobody took."""

    def __init__(self, source: Source, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise source.error(path, "must be a table")
        self.source = source
        self.data: dict[str, Any] = data
        self.path = path
        self._known: list[str] = []

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return self.source.error(self.key_path(key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._known.append(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "is required")
        return default

    def take(self, key: str, convert: Callable[[Any], T], default: Any = _MISSING) -> T:
        """The converted value; ``convert`` raises ValueError/UnitError with the reason."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING and key not in self.data:
            return default  # type: ignore[no-any-return]
        try:
            return convert(value)
        except (ValueError, UnitError) as e:
            raise self.error(key, str(e)) from None

    def table(self, key: str, default_empty: bool = True) -> Table:
        value = self.raw(key, {} if default_empty else _MISSING)
        return Table(self.source, value, self.key_path(key))

    def table_list(self, key: str) -> list[Table]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            raise self.error(key, "must be an array of tables")
        return [Table(self.source, item, f"{self.key_path(key)}[{i}]") for i, item in enumerate(value)]

    def finish(self) -> None:
        for key in self.data:
            if key not in self._known:
                hint = did_you_mean(key, self._known)
                raise self.error(key, f"unknown key{hint}")


# ---- converters: raise ValueError with a message fit to follow "<key path>: " ----


def positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a positive integer")
    return value


def non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a non-negative integer")
    return value


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def string_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a string or a list of strings")
    return list(value)


def duration(value: object) -> float:
    return parse_duration_s(value)


def whole_seconds(value: object) -> float:
    seconds = parse_duration_s(value)
    if seconds != int(seconds):
        raise ValueError('must be whole seconds, as in nginx (e.g. "10s")')
    return seconds


def size(value: object) -> int:
    return parse_size_bytes(value)


def choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if value not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return str(value)

    return convert
