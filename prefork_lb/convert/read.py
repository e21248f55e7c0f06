r"""Reading an nginx.conf (and its includes) into a tree of ``Directive`` with crossplane.

Rules:
- crossplane (NGINX's own parser) does the syntax and nginx's context and argument-count
  checks; its errors become one ``ConvertError`` naming ``file:line`` for each, never a
  traceback.
- ``include`` is resolved as nginx resolves it (and crossplane does): a relative pattern
  against the main file's directory, globs sorted, a non-glob that cannot be opened is an
  error. The tree has every include expanded in place (a file included from several places,
  such as ``proxy_params``, appears at each), so the mapping never sees ``include``.
- Before crossplane reads anything, a pre-pass lexes each file (crossplane's lexer) to find
  its includes, so hostile input fails fast and clearly: a file over ``MAX_FILE_BYTES``, more
  than ``MAX_FILES`` files, blocks nested deeper than ``MAX_DEPTH`` (the parser recurses),
  or an include loop (nginx would recurse until it runs out of descriptors) is an error
  naming ``file:line``, checked before any file is parsed.
- A comment directly above a directive (consecutive comment lines) or after it on the same
  line is kept on that directive, for the TOML key it maps to.
- Arguments carry nginx's escapes resolved as nginx's own reader does
  (ngx_conf_read_token): ``\\``, ``\t``, ``\r``, ``\n`` become one character; crossplane
  resolves only the escaped quotes. Any other backslash stays (``\.`` in a regex).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

MAX_FILE_BYTES = 4 * 1024 * 1024  # a real nginx.conf is a few kB; this is plenty with maps
MAX_FILES = 1000
MAX_DEPTH = 32  # nested blocks in one file (a real one: main > http > server > location > if)


class ConvertError(Exception):
    """The configuration cannot be converted; the message names ``file:line``."""


@dataclass(slots=True)
class Directive:
    name: str
    args: list[str]
    file: str
    line: int
    block: list[Directive] | None = None
    comment: str = ""
    where: str = field(default="", repr=False)  # "file:line", filled in by read()

    def text(self) -> str:
        """The directive as written, for messages: ``gzip on``."""
        return " ".join([visible(self.name), *(_quote(a) for a in self.args)])


def _quote(arg: str) -> str:
    arg = visible(arg)
    if arg == "" or any(c in arg for c in " \t;{}\"'"):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def visible(text: str) -> str:
    """Control characters as ``\\xNN``: a report line (and a TOML comment) stays one line."""
    return "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}" for c in text)


def read(path: str) -> tuple[list[Directive], list[str]]:
    """(the main context's directives, every file read); raises ConvertError."""
    import crossplane

    main = os.path.abspath(path)
    base = os.path.dirname(main)
    files = _prescan(main, base)
    try:
        payload = crossplane.parse(main, comments=True, catch_errors=True)
    except Exception as e:  # crossplane raises plain errors on unreadable input
        raise ConvertError(f"{display(main, base)}: cannot parse: {e}") from None
    if payload["errors"]:  # the first, as nginx stops at the first
        err = payload["errors"][0]
        where = display(err["file"], base) + (f":{err['line']}" if err.get("line") else "")
        message = str(err["error"]) or 'unexpected end of file, expecting ";" or "}"'  # StopIteration
        for suffix in (f" in {err['file']}:{err.get('line')}", f" in {err['file']}"):
            message = message.removesuffix(suffix)
        more = len(payload["errors"]) - 1
        raise ConvertError(f"{where}: {visible(message)}" + (f" (and {more} more errors)" if more else ""))
    configs: list[dict[str, Any]] = payload["config"]
    return _tree(configs, 0, base, ()), files


def display(file: str, base: str) -> str:
    """A file name for messages: relative to the main file's directory when inside it."""
    rel = os.path.relpath(file, base)
    return file if rel.startswith("..") else rel


def _tree(configs: list[dict[str, Any]], index: int, base: str, stack: tuple[int, ...]) -> list[Directive]:
    cfg = configs[index]
    return _block(configs, cfg["parsed"], cfg["file"], base, (*stack, index))


def _block(
    configs: list[dict[str, Any]], stmts: list[dict[str, Any]], file: str, base: str, stack: tuple[int, ...]
) -> list[Directive]:
    out: list[Directive] = []
    pending: list[tuple[int, str]] = []
    last: Directive | None = None
    for st in stmts:
        if st["directive"] == "#":
            text = str(st.get("comment", "")).strip()
            if last is not None and st["line"] == last.line and last.file == file:
                last.comment = f"{last.comment}\n{text}".strip()
            else:
                pending.append((st["line"], text))
            continue
        comment = _comment_above(pending, st["line"])
        pending = []
        if st["directive"] == "include":
            for i in st.get("includes", []):
                if i not in stack:  # loops were refused by the pre-scan
                    out.extend(_tree(configs, i, base, stack))
            last = None
            continue
        d = Directive(st["directive"], [unescape(a) for a in st["args"]], file, st["line"], comment=comment)
        d.where = f"{display(file, base)}:{d.line}"
        if "block" in st:
            d.block = _block(configs, st["block"], file, base, stack)
        out.append(d)
        last = d
    return out


_ESCAPE = re.compile(r"\\([\\tnr])")
_ESCAPED = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def unescape(arg: str) -> str:
    r"""nginx's reading of ``\\``, ``\t``, ``\n``, ``\r`` in an argument (left to right, as
    ngx_conf_read_token: ``\\n`` is a backslash and an ``n``)."""
    return _ESCAPE.sub(lambda m: _ESCAPED[m.group(1)], arg) if "\\" in arg else arg


def _comment_above(pending: list[tuple[int, str]], line: int) -> str:
    """The run of comment lines ending on the line just above ``line``."""
    run: list[str] = []
    expect = line - 1
    for cline, text in reversed(pending):
        if cline != expect:
            break
        run.append(text)
        expect -= 1
    return "\n".join(reversed(run))


def _prescan(main: str, base: str) -> list[str]:
    """Every file the config reads, checked for size, count and include loops before parsing."""
    from crossplane.errors import NgxParserBaseException
    from crossplane.lexer import lex

    files: list[str] = []

    def visit(path: str, chain: tuple[tuple[str, str], ...]) -> None:
        if path in (p for p, _ in chain):
            trail = " -> ".join(display(p, base) for p, _ in chain)
            raise ConvertError(f"{chain[-1][1]}: include loop: {trail} -> {display(path, base)}")
        if path not in files:
            files.append(path)
            if len(files) > MAX_FILES:
                raise ConvertError(f"{chain[-1][1]}: more than {MAX_FILES} files included")
        try:
            size = os.stat(path).st_size
        except OSError as e:
            if not chain:
                raise ConvertError(f'open() "{path}" failed ({e.errno}: {e.strerror})') from None
            raise ConvertError(f'{chain[-1][1]}: open() "{path}" failed ({e.errno}: {e.strerror})') from None
        if size > MAX_FILE_BYTES:
            raise ConvertError(
                f"{display(path, base)}: {size} bytes is more than {MAX_FILE_BYTES} for one file; "
                "is it really an nginx configuration?"
            )
        try:
            tokens = list(lex(path))
        except NgxParserBaseException as e:
            raise ConvertError(f"{display(path, base)}:{e.lineno}: {e.strerror}") from None
        except (OSError, UnicodeError) as e:
            raise ConvertError(f"{display(path, base)}: cannot read: {e}") from None
        starts = True
        depth = 0
        for i, (token, line, quoted) in enumerate(tokens):
            if token == "{" and not quoted:
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConvertError(f"{display(path, base)}:{line}: blocks nested deeper than {MAX_DEPTH}")
            elif token == "}" and not quoted:
                depth -= 1
            if starts and token == "include" and not quoted and i + 1 < len(tokens):
                pattern = tokens[i + 1][0]
                full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
                names = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
                where = f"{display(path, base)}:{line}"
                for name in names:
                    visit(os.path.abspath(name), (*chain, (path, where)))
            starts = not quoted and (token in (";", "{", "}") or token.startswith("#"))

    visit(main, ())
    return files
