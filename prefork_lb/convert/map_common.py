"""What every context's mapping shares (sans-IO): the report, the recorder, generic handlers.

Rules:
- Every directive ends in exactly one of three ways: mapped to a key (its comment and its
  ``file:line`` recorded under the key path: ``Mapper.put``/``mark``), mapped with a
  difference (``Mapper.differ``: mapped, plus a ``Note`` saying what differs), or skipped
  (``Mapper.skip``: a ``Note`` with ``unsupported=True`` saying what to do,
  ``convert/unsupported.py``). Nothing is dropped silently: ``Mapper.each`` skips a
  directive its context's table has no handler for.
- Values are copied as nginx wrote them (``"60s"``, ``"16k"``; bare digits become
  integers: ``simple``); the loader validates them, and an error there is reported at the
  nginx line the key came from (``origins``).
- A skipped block takes its key paths with it (``Mapper.forget``), so comments and origins
  never point at the wrong entry.
- A handler is ``(mapper, directive, table, key path) -> None``; it writes into ``table``
  (the TOML table of its context) and records under ``path``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefork_lb.convert.read import Directive
from prefork_lb.convert.toml_writer import Inline, scalar
from prefork_lb.convert.unsupported import reason


@dataclass(frozen=True, slots=True)
class Note:
    where: str  # "nginx.conf:42"
    text: str  # '"gzip on" has no prefork-lb equivalent (...); skipped'
    unsupported: bool  # False: mapped, with a difference the text explains

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass(slots=True)
class Mapped:
    doc: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # key path -> "file:line"
    notes: list[Note] = field(default_factory=list)


Handler = Callable[["Mapper", Directive, dict[str, Any], str], None]


class Mapper:
    def __init__(self) -> None:
        self.out = Mapped()

    # ---- recording ----

    def skip(self, d: Directive, why: str | None = None) -> None:
        self.out.notes.append(Note(d.where, f'"{d.text()}" {why or reason(d.name)}; skipped', True))

    def differ(self, d: Directive, text: str) -> None:
        self.out.notes.append(Note(d.where, f'"{d.text()}": {text}', False))

    def put(self, table: dict[str, Any], path: str, key: str, value: Any, d: Directive) -> None:
        kp = f"{path}.{key}" if path else key
        if key in table and table[key] != value:
            self.differ(d, f"{key} was already set at this level; the last one is used")
        table[key] = value
        self.out.origins[kp] = d.where
        if d.comment:
            self.out.comments[kp] = d.comment

    def mark(self, path: str, d: Directive) -> None:
        """Record a table (a server, a location) that came from ``d``."""
        self.out.origins[path] = d.where
        if d.comment:
            self.out.comments[path] = d.comment

    def forget(self, path: str) -> None:
        for store in (self.out.origins, self.out.comments):
            for kp in [k for k in store if k == path or k.startswith((path + ".", path + "["))]:
                del store[kp]

    def each(
        self, block: list[Directive] | None, table: dict[str, Any], path: str, handlers: dict[str, Handler]
    ) -> None:
        for d in block or []:
            handler = handlers.get(d.name)
            if handler is None:
                self.skip(d)
            else:
                handler(self, d, table, path)


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def error_log(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if path:
        m.skip(d, "is not supported here: prefork-lb has one error log, set at the top level")
        return
    target = d.args[0]
    if target.startswith(("syslog:", "memory:")):
        m.skip(d, "is not supported: the error log is a file or stderr")
        return
    if "error_log" in t:
        m.differ(d, "prefork-lb writes one error log; this one is ignored")
        return
    m.put(t, path, "error_log", target, d)
    m.put(t, path, "error_log_level", d.args[1] if len(d.args) > 1 else "error", d)  # nginx's default


def simple(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, d.name, scalar(d.args[0]), d)


def origin(m: Mapper, d: Directive, path: str, key: str) -> None:
    """A key several directives build: the first one's line, every comment."""
    kp = join_path(path, key)
    m.out.origins.setdefault(kp, d.where)
    if d.comment:
        m.out.comments[kp] = "\n".join(filter(None, (m.out.comments.get(kp), d.comment)))


def put_text(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, d.name, d.args[0], d)


def put_flag(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``on``/``off``; anything else is copied for the loader to refuse at this line (nginx does)."""
    word = d.args[0]
    m.put(t, path, d.name, {"on": True, "off": False}.get(word, word), d)


def log_format(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    args = list(d.args)
    name = args.pop(0)
    if args and args[0].startswith("escape="):
        escape = args.pop(0)
        if escape != "escape=default":
            m.differ(d, f'"{escape}" is not supported; variables are escaped as nginx\'s default does')
    formats = t.setdefault("log_formats", {})
    m.put(formats, join_path(path, "log_formats"), name, "".join(args), d)


def append(m: Mapper, d: Directive, t: dict[str, Any], path: str, key: str, item: Inline) -> None:
    items = t.setdefault(key, [])
    items.append(item)
    kp = join_path(path, key)
    m.out.origins.setdefault(kp, d.where)
    if d.comment:
        m.out.comments[kp] = "\n".join(filter(None, (m.out.comments.get(kp), d.comment)))


def status_code(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    m.put(t, path, d.name, scalar(d.args[0]), d)


def append_text(m: Mapper, d: Directive, t: dict[str, Any], path: str, key: str, value: str) -> None:
    t.setdefault(key, []).append(value)
    m.out.origins.setdefault(join_path(path, key), d.where)


def pcre(regex: str) -> str:
    """PCRE named groups ``(?<name>`` are Python's ``(?P<name>``."""
    return re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", regex)
