"""Templates: strings with ``$name`` / ``${name}`` references, compiled once (sans-IO).

Rules:
- Everything by name happens once, at config load: ``compile_template`` splits a string
  into literal parts and getter slots (``build_parts``, with the getters of
  ``http.variables`` or another variable set passed as ``lookup``). Rendering never parses,
  never uses a regex and never looks a variable up by name.
- ``$name`` takes the longest run of ``[A-Za-z0-9_]``; ``${name}`` is needed when a name
  char follows; a "$" followed by neither is a literal "$". Bad syntax raises
  ``VariableError`` naming the variable.
- Literal template text from the (UTF-8) config is stored as its UTF-8 bytes viewed as
  latin-1 (``config_text``), the representation variable values use, so
  ``render(...).encode("latin-1")`` yields exactly the bytes nginx would send or log.
- Constant variables (``$scheme``, ``$remote_user``) are folded into the literal text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prefork_lb.http.exchange import Exchange
from prefork_lb.http.variables import Getter, Variable, VariableError, lookup_variable

__all__ = ["Template", "build_parts", "compile_template", "config_text", "parse_template"]

_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def parse_template(text: str) -> list[tuple[bool, str]]:
    """Split ``text`` into ``(False, literal)`` and ``(True, variable_name)`` parts.

    ``$name`` takes the longest run of ``[A-Za-z0-9_]``; ``${name}`` is needed when a name char
    follows. A "$" not followed by a name char or "{" is a literal "$". Adjacent literals are
    merged; names are returned as written.
    """
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("$", i)
        if j < 0:
            literal.append(text[i:])
            break
        literal.append(text[i:j])
        k = j + 1
        if k < n and text[k] == "{":
            start = k = k + 1
            while k < n and text[k] in _NAME_CHARS:
                k += 1
            if k >= n or text[k] != "}":
                raise VariableError(f'the closing bracket in "${{{text[start:k]}" variable is missing')
            if k == start:
                raise VariableError(f'invalid variable name "${{}}" in "{text}"')
            name = text[start:k]
            k += 1
        else:
            start = k
            while k < n and text[k] in _NAME_CHARS:
                k += 1
            if k == start:
                literal.append("$")
                i = k
                continue
            name = text[start:k]
        if literal:
            joined = "".join(literal)
            if joined:
                parts.append((False, joined))
            literal = []
        parts.append((True, name))
        i = k
    joined = "".join(literal)
    if joined:
        parts.append((False, joined))
    return parts


def config_text(text: str) -> str:
    """Literal config text in the value representation: its UTF-8 bytes viewed as latin-1."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


class Template:
    """A string with embedded variables, compiled once; ``render`` returns raw values.

    Rendering fills the variable slots of a prebuilt parts list and joins it once. Constant
    variables (``$scheme``, ``$remote_user``) are folded into the literal text, so a template
    whose output never depends on the request has ``is_literal`` true.
    """

    __slots__ = ("_literal", "_parts", "_single", "_slots", "text", "variables")

    def __init__(
        self, text: str, parts: list[str], slots: tuple[tuple[int, Getter], ...], names: tuple[str, ...]
    ) -> None:
        self.text = text
        self.variables = names
        self._parts = parts
        self._slots = slots
        self._literal: str | None = "".join(parts) if not slots else None
        self._single: Getter | None = slots[0][1] if len(parts) == 1 and len(slots) == 1 else None

    @property
    def is_literal(self) -> bool:
        return self._literal is not None

    def render(self, ex: Exchange) -> str:
        if self._literal is not None:
            return self._literal
        if self._single is not None:
            return self._single(ex)
        buf = self._parts.copy()
        for i, get in self._slots:
            buf[i] = get(ex)
        return "".join(buf)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def build_parts(
    text: str,
    compile_one: Callable[[Variable], Getter | str],
    lookup: Callable[[str], Variable] | None = None,
) -> tuple[list[str], tuple[tuple[int, Getter], ...], tuple[str, ...]]:
    """Compile ``text`` into (parts, slots, names) with ``compile_one`` choosing each getter.

    ``compile_one`` returns either a getter or a constant string (folded into the literals).
    ``parts[i]`` is literal text, or a placeholder that ``slots`` fill at render time.
    """
    parts: list[str] = []
    slots: list[tuple[int, Getter]] = []
    names: list[str] = []
    pending = ""
    for is_var, value in parse_template(text):
        if not is_var:
            pending += config_text(value)
            continue
        var = (lookup or lookup_variable)(value)
        if var.name not in names:
            names.append(var.name)
        compiled = compile_one(var)
        if isinstance(compiled, str):
            pending += compiled
            continue
        if pending:
            parts.append(pending)
            pending = ""
        slots.append((len(parts), compiled))
        parts.append("")
    if pending or not parts:
        parts.append(pending)
    return parts, tuple(slots), tuple(names)


def _raw_value(var: Variable) -> Getter | str:
    return var.constant if var.constant is not None else var.get


def compile_template(text: str, lookup: Callable[[str], Variable] | None = None) -> Template:
    """Compile a proxy_set_header value or return text (``lookup``: another variable set,
    e.g. the stream module's); raises ``VariableError``."""
    parts, slots, names = build_parts(text, _raw_value, lookup)
    return Template(text, parts, slots, names)
