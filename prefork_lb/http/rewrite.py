"""nginx's rewrite module: ``rewrite``, ``return``, ``set``, ``if`` and ``break`` (sans-IO).

Rules:
1. Statements are written in nginx syntax, one per ``rewrite_rules`` item (a trailing ";"
   is optional), and compiled once at config load by ``compile_rules``: regexes, templates
   and variable getters are resolved there; running a block never parses anything.
   Errors raise ``RuleError`` carrying the statement index.
2. ``run(block, ex)`` executes one block (the server's or the location's) against the
   exchange and returns ``CONTINUE`` (end of block, URI unchanged), ``SEARCH`` (the URI
   changed: a ``last`` rewrite, or a flag-less rewrite that matched; the caller re-runs the
   location search at the end of the block, as nginx's POST_REWRITE phase), ``BREAK`` (a
   ``break`` statement or a ``rewrite ... break``: stay in this location) or a ``Respond``
   (``return``, ``redirect``/``permanent``, an absolute replacement).
3. ``rewrite`` matches ``$uri`` (``Exchange.path``, decoded, no args); ``.`` never matches a
   newline (nginx's PCRE does the same). Args: kept unless the replacement ends with "?";
   a replacement with ``?new`` gives ``new&old``. Captures copied into the args part, or into
   a redirect, are percent-escaped (nginx's NGX_ESCAPE_ARGS) when the request URI held "%"
   or "+", as nginx does. A replacement starting ``http://``, ``https://`` or ``$scheme`` is
   a 302 at once (``permanent``: 301).
4. ``$1``..``$9`` are the captures of the last regex that matched (``rewrite`` or ``if``);
   ``set`` variables live in ``Exchange.vars`` (None until the first ``set``), so a request
   that never runs ``set`` allocates nothing.
5. ``if`` conditions: a variable (false when "" or "0"), ``=``/``!=`` (whole strings),
   ``~ ~* !~ !~*`` (regex, which sets the captures), ``-f -d -e -x`` and their ``!`` forms
   (a stat of the rendered path, the only I/O here). The body runs when the condition holds;
   ``if`` nests no further (nginx: no ``else``, no ``&&``).
6. ``return`` forms: ``return CODE``, ``return CODE TEXT`` (a URL for 301/302/303/307/308),
   ``return URL`` (302; URL starts with http://, https:// or $scheme). 444 closes the
   connection without a response. ``Respond.location`` is made absolute by ``absolute_url``
   when it starts with "/" (nginx's ``absolute_redirect on``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from prefork_lb.http.exchange import Exchange
from prefork_lb.http.template import config_text, parse_template
from prefork_lb.http.variables import Getter, VariableError, lookup_variable

__all__ = [
    "BREAK",
    "CONTINUE",
    "MAX_URI_CHANGES",
    "SEARCH",
    "Block",
    "Respond",
    "RuleError",
    "absolute_url",
    "compile_rules",
    "declared_sets",
    "run",
]

log = logging.getLogger("prefork_lb.error")

CONTINUE: Final = 0
SEARCH: Final = 1
BREAK: Final = 2
# nginx's r->uri_changes starts at 11: ten URI changes succeed, the eleventh is a 500
MAX_URI_CHANGES: Final = 10
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_FLAGS: Final = ("last", "break", "redirect", "permanent")
# NGX_ESCAPE_ARGS: " ", "#", "%", "&", "+", "?" plus controls and bytes >= 0x7f ('"' too,
# so a capture can never close a quoted header value)
_ARG_SAFE: Final = frozenset(range(0x21, 0x7F)) - {ord(c) for c in ' #%&+?"'}
_HEX: Final = tuple(f"%{i:02X}" for i in range(256))


class RuleError(ValueError):
    """A statement that does not compile; ``index`` is its position in ``rewrite_rules``."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True, slots=True)
class Respond:
    """Finish the request in the rewrite phase (``return`` or a redirecting ``rewrite``)."""

    status: int
    text: str | None = None  # body text (non-redirect codes)
    location: str | None = None  # redirect target, maybe relative


# ---- compiled pieces ------------------------------------------------------------------------

# A rendered part: a literal (str), a variable getter, or a capture number (int).
Part = str | Getter | int


def _escape_arg(value: str) -> str:
    if all(ord(c) in _ARG_SAFE for c in value):
        return value
    out = []
    for b in value.encode("latin-1", "replace"):
        out.append(chr(b) if b in _ARG_SAFE else _HEX[b])
    return "".join(out)


def _capture(ex: Exchange, n: int) -> str:
    caps = ex.captures
    return caps[n] if n < len(caps) else ""


def render_parts(parts: tuple[Part, ...], ex: Exchange) -> str:
    out = []
    for p in parts:
        if type(p) is str:
            out.append(p)
        elif type(p) is int:
            out.append(_capture(ex, p))
        else:
            out.append(p(ex))  # type: ignore[operator]
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Rewrite:
    search: Callable[[str], re.Match[str] | None]
    path: tuple[Part, ...]  # before the first "?"
    args: tuple[Part, ...] | None  # after "?", None without one
    keep_args: bool  # False when the replacement ends with "?"
    flag: str  # "", "last", "break", "redirect", "permanent"
    absolute: bool  # http://, https://, $scheme: a redirect at once
    redirect: bool  # absolute, or the flag redirect/permanent
    pattern: str  # the regex as written, for rewrite_log


@dataclass(frozen=True, slots=True)
class _Return:
    status: int
    text: tuple[Part, ...] | None


@dataclass(frozen=True, slots=True)
class _Set:
    name: str
    value: tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class _Break:
    pass


@dataclass(frozen=True, slots=True)
class _If:
    test: Callable[[Exchange], bool]
    body: tuple[_Statement, ...]


_Statement = _Rewrite | _Return | _Set | _Break | _If


@dataclass(frozen=True, slots=True)
class Block:
    statements: tuple[_Statement, ...]
    log_matches: bool = False  # rewrite_log: each matching rewrite logged at notice


# ---- running ----------------------------------------------------------------------------------


def run(block: Block, ex: Exchange) -> int | Respond:
    """Rule 2: run one block; the caller re-searches the location on ``SEARCH``."""
    ex.uri_changed_here = False
    result = _run(block.statements, ex, block.log_matches)
    if result is None:
        return SEARCH if ex.uri_changed_here else CONTINUE
    return result


def _run(statements: Sequence[_Statement], ex: Exchange, log_matches: bool) -> int | Respond | None:
    for st in statements:
        kind = type(st)
        if kind is _Rewrite:
            assert isinstance(st, _Rewrite)
            result = _rewrite(st, ex, log_matches)
            if result is not None:
                return result
        elif kind is _Set:
            assert isinstance(st, _Set)
            value = render_parts(st.value, ex)
            if ex.vars is None:
                ex.vars = {st.name: value}
            else:
                ex.vars[st.name] = value
        elif kind is _If:
            assert isinstance(st, _If)
            if st.test(ex):
                result = _run(st.body, ex, log_matches)
                if result is not None:
                    return result
        elif kind is _Return:
            assert isinstance(st, _Return)
            text = render_parts(st.text, ex) if st.text is not None else None
            if st.status in _REDIRECTS:
                return Respond(st.status, None, text)
            return Respond(st.status, text)
        else:
            return BREAK
    return None


def _rewrite(st: _Rewrite, ex: Exchange, log_matches: bool) -> int | Respond | None:
    m = st.search(ex.path)
    if m is None:
        return None
    if log_matches:
        log.log(25, '"%s" matches "%s", client: %s', st.pattern, ex.path, ex.conn.remote_addr)
    ex.captures = (m.group(0), *m.groups(""))
    redirect = st.redirect
    path = _render_escaped(st.path, ex, redirect and _quoted(ex))
    if st.args is not None:
        new_args = _render_escaped(st.args, ex, _quoted(ex))
        args = f"{new_args}&{ex.args}" if st.keep_args and ex.args else new_args
    else:
        args = ex.args if st.keep_args else ""
    if redirect:
        status = 301 if st.flag == "permanent" else 302
        return Respond(status, None, f"{path}?{args}" if args else path)
    ex.path = path
    ex.args = args
    ex.uri_rewritten = True
    if st.flag == "break":
        ex.rewrite_break = True
        return BREAK
    ex.uri_changed_here = True
    if st.flag == "last":
        return SEARCH
    return None


def _quoted(ex: Exchange) -> bool:
    """nginx escapes captures only when the request URI was quoted (held "%") or had "+"."""
    raw = ex.target.partition(b"?")[0]
    return b"%" in raw or b"+" in raw


def _render_escaped(parts: tuple[Part, ...], ex: Exchange, escape: bool) -> str:
    if not escape:
        return render_parts(parts, ex)
    out = []
    for p in parts:
        if type(p) is str:
            out.append(p)
        elif type(p) is int:
            out.append(_escape_arg(_capture(ex, p)))
        else:
            out.append(p(ex))  # type: ignore[operator]
    return "".join(out)


def absolute_url(ex: Exchange, location: str) -> str:
    """nginx's ``absolute_redirect on``: "/x" -> scheme://host[:port]/x (rule 6).

    host: the request's host without port, else the local address; port: the local port of
    the connection, left out for 80 (443 over TLS)."""
    if not location.startswith("/"):
        return location
    conn = ex.conn
    tls = conn.tls is not None
    host = ex.host or conn.server_addr
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = conn.server_port
    default = 443 if tls else 80
    netloc = host if port in (default, 0) else f"{host}:{port}"
    return f"{'https' if tls else 'http'}://{netloc}{location}"


# ---- parsing -----------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """nginx's argument syntax: whitespace separates, "..." and '...' quote (a backslash
    escapes the quote char or a backslash, and is kept before anything else), ";" ends."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace() or c == ";":
            i += 1
            continue
        if c in "\"'":
            quote = c
            i += 1
            buf = []
            while i < n and text[i] != quote:
                if text[i] == "\\" and i + 1 < n and text[i + 1] in (quote, "\\"):
                    i += 1
                buf.append(text[i])
                i += 1
            if i >= n:
                raise ValueError(f"unbalanced {quote} quote")
            i += 1
            tokens.append("".join(buf))
            continue
        j = i
        while j < n and not text[j].isspace() and text[j] != ";":
            j += 1
        tokens.append(text[i:j])
        i = j
    return tokens


_Lookup = Callable[[str], Getter]
_IF: Final = re.compile(r"\s*if\s*\((.*)\)\s*\{(.*)\}\s*;?\s*", re.DOTALL)


def declared_sets(rules: Sequence[str]) -> set[str]:
    """The variable names ``set`` declares in these statements (nginx declares them at
    config load, for every context: a ``set`` anywhere makes ``$name`` known everywhere)."""
    names = set()
    for rule in rules:
        for m in re.finditer(r"(?:^|[;{\s])set\s+\$(\w+)", rule):
            names.add(m.group(1).lower())
    return names


def compile_rules(rules: Sequence[str], lookup: _Lookup | None = None, log_matches: bool = False) -> Block:
    """Compile ``rewrite_rules`` (rule 1); ``lookup`` resolves a variable name to a getter."""
    get = lookup or (lambda name: lookup_variable(name).get)
    out: list[_Statement] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, str):
            raise RuleError(i, "must be a string such as 'rewrite ^/old/(.*)$ /new/$1 last'")
        try:
            out.append(_statement(rule, get, nested=False))
        except (ValueError, VariableError) as e:
            raise RuleError(i, f"{e} in '{rule.strip()}'") from None
    return Block(tuple(out), log_matches)


def _statement(text: str, get: _Lookup, nested: bool) -> _Statement:
    m = _IF.fullmatch(text)
    if m is not None:
        if nested or re.search(r"[{;]\s*if\s*\(", text):
            raise ValueError('"if" cannot be nested')
        body_text = m.group(2)
        body = tuple(_statement(s, get, nested=True) for s in _split_body(body_text))
        return _If(_condition(m.group(1), get), body)
    if text.lstrip().startswith("if"):
        raise ValueError('"if" must be written "if (CONDITION) { STATEMENTS }"')
    tokens = tokenize(text)
    if not tokens:
        raise ValueError("empty statement")
    name, args = tokens[0], tokens[1:]
    if name == "rewrite":
        return _compile_rewrite(args, get)
    if name == "return":
        return _compile_return(args, get)
    if name == "set":
        if len(args) != 2 or not args[0].startswith("$") or len(args[0]) < 2:
            raise ValueError('"set" needs "$name VALUE"')
        var = args[0][1:]
        if not re.fullmatch(r"\w+", var):
            raise ValueError(f'invalid variable name "${var}"')
        return _Set(var.lower(), compile_parts(args[1], get))
    if name == "break":
        if args:
            raise ValueError('"break" takes no arguments')
        return _Break()
    raise ValueError(f'unknown statement "{name}" (rewrite, return, set, if or break)')


def _split_body(text: str) -> list[str]:
    """Statements inside an ``if`` body: split at ";" outside quotes."""
    out, buf, quote = [], [], ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and i + 1 < len(text):
                buf.append(c + text[i + 1])
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == ";":
            out.append("".join(buf))
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    out.append("".join(buf))
    return [s for s in out if s.strip()]


def compile_parts(text: str, get: _Lookup) -> tuple[Part, ...]:
    parts: list[Part] = []
    for is_var, value in parse_template(text):
        if not is_var:
            parts.append(config_text(value))
        elif value.isdigit():
            if len(value) != 1:
                raise ValueError(f'invalid capture "${value}" ($1..$9)')
            parts.append(int(value))
        else:
            parts.append(get(value))
    return tuple(parts)


def _compile_regex(pattern: str, caseless: bool = False) -> re.Pattern[str]:
    if re.search(r"\$\{?[A-Za-z_]", pattern):
        raise ValueError(f'variables in a regex are not supported: "{pattern}"')
    try:
        return re.compile(pattern, re.IGNORECASE if caseless else 0)
    except re.error as e:
        raise ValueError(f'invalid regex "{pattern}": {e}') from None


def _compile_rewrite(args: list[str], get: _Lookup) -> _Rewrite:
    if len(args) not in (2, 3):
        raise ValueError('"rewrite" needs "REGEX REPLACEMENT [last|break|redirect|permanent]"')
    flag = args[2] if len(args) == 3 else ""
    if flag and flag not in _FLAGS:
        raise ValueError(f'unknown flag "{flag}" (last, break, redirect or permanent)')
    regex = _compile_regex(args[0])
    repl = args[1]
    absolute = repl.startswith(("http://", "https://", "$scheme"))
    keep_args = True
    if repl.endswith("?"):
        keep_args = False
        repl = repl[:-1]
    path_text, q, args_text = repl.partition("?")
    path = compile_parts(path_text, get)
    args_parts = compile_parts(args_text, get) if q else None
    for p in (*path, *(args_parts or ())):
        if type(p) is int and p > regex.groups:
            raise ValueError(f'"${p}" refers to a capture the regex does not have')
    redirect = absolute or flag in ("redirect", "permanent")
    return _Rewrite(regex.search, path, args_parts, keep_args, flag, absolute, redirect, args[0])


def _compile_return(args: list[str], get: _Lookup) -> _Return:
    if not args or len(args) > 2:
        raise ValueError('"return" needs "CODE [TEXT|URL]" or "URL"')
    head = args[0]
    if len(args) == 1 and not head.isdigit():
        if not head.startswith(("http://", "https://", "$scheme")):
            raise ValueError(f'invalid return code "{head}"')
        return _Return(302, compile_parts(head, get))
    if not head.isdigit() or not 0 <= int(head) <= 999:
        raise ValueError(f'invalid return code "{head}"')
    status = int(head)
    if status in _REDIRECTS and len(args) == 1:
        raise ValueError(f"a {status} redirect needs a URL")
    return _Return(status, compile_parts(args[1], get) if len(args) == 2 else None)


_OPS: Final = ("=", "!=", "~", "~*", "!~", "!~*")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


_FILE_TESTS: Final[dict[str, Callable[[str], bool]]] = {
    "-f": os.path.isfile,
    "-d": os.path.isdir,
    "-e": os.path.exists,
    "-x": _executable,
}


def _condition(text: str, get: _Lookup) -> Callable[[Exchange], bool]:
    tokens = tokenize(text)
    if not tokens:
        raise ValueError('"if" needs a condition')
    if tokens[0] in _FILE_TESTS or (tokens[0].startswith("!") and tokens[0][1:] in _FILE_TESTS):
        if len(tokens) != 2:
            raise ValueError(f'"{tokens[0]}" needs one path')
        negate = tokens[0].startswith("!")
        check = _FILE_TESTS[tokens[0].lstrip("!")]
        path = compile_parts(tokens[1], get)

        def file_test(ex: Exchange) -> bool:
            return bool(check(render_parts(path, ex))) != negate

        return file_test
    left = compile_parts(tokens[0], get)
    if not tokens[0].startswith("$"):
        raise ValueError(f'the left side of a condition must be a variable, not "{tokens[0]}"')
    if len(tokens) == 1:

        def truthy(ex: Exchange) -> bool:
            value = render_parts(left, ex)
            return value != "" and value != "0"

        return truthy
    if len(tokens) != 3 or tokens[1] not in _OPS:
        raise ValueError(f'invalid condition "{text.strip()}" (operators: {", ".join(_OPS)})')
    op, right = tokens[1], tokens[2]
    if op in ("=", "!="):
        value = compile_parts(right, get)
        equal = op == "="

        def compare(ex: Exchange) -> bool:
            return (render_parts(left, ex) == render_parts(value, ex)) == equal

        return compare
    search = _compile_regex(right, caseless=op.endswith("*")).search
    negate = op.startswith("!")

    def match(ex: Exchange) -> bool:
        m = search(render_parts(left, ex))
        if m is None:
            return negate
        if not negate:
            ex.captures = (m.group(0), *m.groups(""))
        return not negate

    return match
