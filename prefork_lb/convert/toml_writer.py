"""A small TOML emitter for the value types the config contract uses (sans-IO).

Rules:
- Values: ``str`` (basic strings, escaped), ``int``, ``bool``, lists of those, ``Inline``
  (an inline table, one line), lists of ``Inline`` (a multi-line array, one table per line)
  and plain ``dict`` (a ``[table]``). A list of plain dicts is an array of tables
  (``[[a.b]]``). Nothing else is accepted: a float or None raises TypeError, so a mapping bug
  cannot write a file the loader reads differently.
- Within a table, plain keys come first, then sub-tables, then arrays of tables, each in
  insertion order, so the output reads top-down like the nginx.conf it came from.
- ``Comments`` (a dict key path -> comment text) puts ``# text`` on the line above a key,
  or above an inline table inside an array; key paths are those of the loader's errors
  (``http.servers[0].locations[1].proxy_pass``).
- Keys that are not bare (``A-Za-z0-9_-``) are quoted.
"""

from __future__ import annotations

import re
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def scalar(text: str) -> int | str:
    """nginx's "60" is a bare number of seconds or bytes: an integer in TOML."""
    return int(text) if text.isdigit() and len(text) < 19 else text


class Inline(dict[str, Any]):
    """A table written inline: ``{ a = 1, b = "x" }``."""


def key(k: str) -> str:
    return k if _BARE.fullmatch(k) else string(k)


def string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, Inline):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list) and not any(isinstance(x, dict) and not isinstance(x, Inline) for x in v):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as a TOML value: {v!r}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(type(x) is dict for x in v)


def dumps(doc: dict[str, Any], comments: dict[str, str] | None = None) -> str:
    lines: list[str] = []
    _table(lines, doc, "", "", comments or {}, "")
    return "\n".join(lines).strip("\n") + "\n"


def _comment(lines: list[str], comments: dict[str, str], path: str, indent: str) -> None:
    text = comments.get(path)
    if text:
        lines.extend(f"{indent}# {_visible(c.strip())}".rstrip() for c in text.splitlines())


def _visible(text: str) -> str:
    """TOML comments may not hold control characters (but tab)."""
    return "".join(c if (c >= " " and c != "\x7f") or c == "\t" else f"\\x{ord(c):02x}" for c in text)


def _table(
    lines: list[str], t: dict[str, Any], header: str, path: str, comments: dict[str, str], indent: str
) -> None:
    plain = {k: v for k, v in t.items() if type(v) is not dict and not _is_table_array(v)}
    for k, v in plain.items():
        kp = f"{path}.{k}" if path else k
        if isinstance(v, list) and any(isinstance(x, Inline) for x in v):
            _comment(lines, comments, kp, indent)
            lines.append(f"{indent}{key(k)} = [")
            for i, item in enumerate(v):
                _comment(lines, comments, f"{kp}[{i}]", indent + "  ")
                lines.append(f"{indent}  {value(item)},")
            lines.append(f"{indent}]")
            continue
        _comment(lines, comments, kp, indent)
        lines.append(f"{indent}{key(k)} = {value(v)}")
    for k, v in t.items():
        if type(v) is dict:
            h = f"{header}.{key(k)}" if header else key(k)
            kp = f"{path}.{k}" if path else k
            if any(type(x) is not dict for x in v.values()) or not v:  # else implicit
                lines.append("")
                _comment(lines, comments, kp, indent)
                lines.append(f"{indent}[{h}]")
            _table(lines, v, h, kp, comments, indent)
    for k, v in t.items():
        if _is_table_array(v):
            h = f"{header}.{key(k)}" if header else key(k)
            kp = f"{path}.{k}" if path else k
            inner = indent + "  " if "[" in path else indent
            for i, item in enumerate(v):
                lines.append("")
                _comment(lines, comments, f"{kp}[{i}]", inner)
                lines.append(f"{inner}[[{h}]]")
                _table(lines, item, h, f"{kp}[{i}]", comments, inner)
