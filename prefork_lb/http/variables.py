"""nginx variables (``$remote_addr``, ``$upstream_status`` ...): the table of getters (sans-IO).

Templates that embed these variables are compiled by ``http.template``.

Rules:
- Everything by name happens once, at config load: ``lookup_variable`` / ``compile_variable``
  map a name to a getter (a plain callable on ``Exchange``). A getter never looks anything
  up by name.
- Names are case-insensitive, as in nginx (they are lowercased at compile time), and are
  ``[A-Za-z0-9_]+``. ``http_NAME``, ``arg_NAME`` and ``cookie_NAME`` need a non-empty NAME.
  Unknown names raise ``VariableError`` naming the variable.
- Values are ``str`` in which every char is one byte (U+0000..U+00FF): bytes from the request
  are decoded latin-1, the representation ``http.uri`` uses for patterns. So
  ``value.encode("latin-1")`` yields exactly the bytes nginx would send or log.
- A getter returns "" for an unset value. ``Variable.lookup`` (when present) tells unset
  (``None``) from present-but-empty, and ``Variable.empty_is_unset`` says whether "" means
  unset; the access log uses both to print ``ENTRY_DASH`` exactly where nginx prints "-".
- Upstream variables render ``Exchange.attempts`` as nginx renders its per-try state records
  (spec section 9): entries joined by ", "; a ``None`` entry is a phase separator rendered as
  " : " that contributes no value of its own. No attempts at all: "" (unset).
- Times print as seconds with three decimals, negatives clamped to 0. ``$request_time``,
  ``$msec``, ``$time_local`` and ``$time_iso8601`` use ``Exchange.end_time``, or the current
  time while the request is still running (end_time == 0), nginx's "now". Formatted local
  times are cached per whole second (one ``localtime`` call per second, not per request).
- ``$pid`` is refreshed after fork; ``$hostname`` is read once at import (lowercased, as nginx).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prefork_lb.http.exchange import Attempt, Exchange

if TYPE_CHECKING:
    from prefork_lb.tls.info import TlsInfo

__all__ = [
    "ENTRY_DASH",
    "Getter",
    "OptGetter",
    "Variable",
    "VariableError",
    "builtin_variable",
    "compile_variable",
    "install_user_variables",
    "lookup_variable",
    "set_variable",
]

Getter = Callable[[Exchange], str]
OptGetter = Callable[[Exchange], str | None]

ENTRY_DASH: Final = "-"  # what the access log prints for an unset value
_STATUS_TEXT: Final = tuple(f"{i:03d}" for i in range(1000))  # "$status" is "%03d"
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class VariableError(ValueError):
    """An unknown variable or a malformed ``$``/``${...}`` reference."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A compiled variable: the getter plus what the access log needs to render it like nginx."""

    name: str  # lowercased, without "$"
    get: Getter  # the raw value, "" when unset
    lookup: OptGetter | None = None  # None when unset (for values that can be set but empty)
    empty_is_unset: bool = False  # without ``lookup``: does "" mean unset ("-" in the log)?
    plain: bool = False  # the value never needs log escaping (digits, times, "HTTP/1.1" ...)
    constant: str | None = None  # the value never changes (folded into literal text)


# --- getters that need more than one expression ----------------------------------------------


def _port_text(port: int) -> str:
    return str(port) if 0 < port < 65536 else ""  # nginx prints nothing for a unix socket


def _args_lookup(ex: Exchange) -> str | None:
    # nginx: unset without "?", set but empty for "/path?"
    args = ex.args
    return args if args or b"?" in ex.target else None


def _server_name(ex: Exchange) -> str:
    server = ex.server
    return server.server_names[0] if server is not None and server.server_names else ""


def _server_protocol(ex: Exchange) -> str:
    version = ex.version
    return "HTTP/1.1" if version == (1, 1) else f"HTTP/{version[0]}.{version[1]}"


def _request(ex: Exchange) -> str:
    # Exchange.request_line, with one decode instead of two (the hot path of "combined")
    line = (ex.method + b" " + ex.target).decode("latin-1")
    version = ex.version
    return line + " HTTP/1.1" if version == (1, 1) else f"{line} HTTP/{version[0]}.{version[1]}"


def _status(ex: Exchange) -> str:
    status = ex.status
    return _STATUS_TEXT[status] if 0 <= status < 1000 else str(status)


def _proxy_host(ex: Exchange) -> str:
    location = ex.location
    if location is None or location.proxy_pass is None:
        return ""
    return location.proxy_pass.host_header


def _request_time(ex: Exchange) -> str:
    elapsed = (ex.end_time or time.time()) - ex.start_time
    return f"{elapsed:.3f}" if elapsed > 0.0 else "0.000"


def _format_time_local(tm: time.struct_time) -> str:
    off = tm.tm_gmtoff // 60
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return (
        f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"
    )


def _format_time_iso8601(tm: time.struct_time) -> str:
    off = tm.tm_gmtoff // 60
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return (
        f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}{sign}{off // 60:02d}:{off % 60:02d}"
    )


def _second_cached(fmt: Callable[[time.struct_time], str]) -> Getter:
    """A getter formatting the exchange's end time, formatted at most once per whole second."""
    cached_second = -1
    cached_text = ""

    def get(ex: Exchange) -> str:
        nonlocal cached_second, cached_text
        second = int(ex.end_time or time.time())
        if second != cached_second:
            cached_text = fmt(time.localtime(second))
            cached_second = second
        return cached_text

    return get


_time_local: Final = _second_cached(_format_time_local)
_time_iso8601: Final = _second_cached(_format_time_iso8601)

_pid_text = str(os.getpid())


def _refresh_pid() -> None:
    global _pid_text
    _pid_text = str(os.getpid())


os.register_at_fork(after_in_child=_refresh_pid)


_HOSTNAME: Final = socket.gethostname().lower()


def _constant(value: str) -> Getter:
    def get(ex: Exchange) -> str:
        return value

    return get


def _tls(get: Callable[[TlsInfo], str]) -> Getter:
    """A TLS variable: "" on a plain connection (nginx: not found)."""

    def getter(ex: Exchange) -> str:
        tls = ex.conn.tls
        return "" if tls is None else get(tls)

    return getter


def _binary_addr(addr: str) -> str:
    """``$binary_remote_addr``: 4 bytes (IPv4) or 16 (IPv6), one char per byte; a unix
    socket peer has no address (nginx: empty, so a limit keyed by it does not apply)."""
    try:
        return socket.inet_pton(socket.AF_INET, addr).decode("latin-1")
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, addr).decode("latin-1")
    except OSError:
        return ""


def _proxy_add_x_forwarded_for(ex: Exchange) -> str:
    forwarded = ex.header_index.get(b"x-forwarded-for")
    if forwarded is None:
        return ex.conn.remote_addr
    return f"{forwarded.decode('latin-1')}, {ex.conn.remote_addr}"


# --- upstream attempts -------------------------------------------------------------------------


def _time3(t: float) -> str:
    return f"{t:.3f}" if t > 0.0 else "0.000"


def _upstream(fmt: Callable[[Attempt], str]) -> Getter:
    def get(ex: Exchange) -> str:
        attempts = ex.attempts
        if len(attempts) == 1:
            first = attempts[0]
            return " : " if first is None else fmt(first)
        if not attempts:
            return ""
        out: list[str] = []
        comma = False
        for a in attempts:
            if a is None:
                out.append(" : ")
                comma = False
            else:
                if comma:
                    out.append(", ")
                out.append(fmt(a))
                comma = True
        return "".join(out)

    return get


# --- prefix families -----------------------------------------------------------------------------


def _header_getters(name: str) -> tuple[Getter, OptGetter]:
    key = name.replace("_", "-").encode("latin-1")
    if key == b"cookie":
        return _or_empty(_http_cookie), _http_cookie

    def get(ex: Exchange) -> str:
        value = ex.header_index.get(key)
        return "" if value is None else value.decode("latin-1")

    def lookup(ex: Exchange) -> str | None:
        value = ex.header_index.get(key)
        return None if value is None else value.decode("latin-1")

    return get, lookup


def _cookie_lines(ex: Exchange) -> list[bytes]:
    """The Cookie field lines, one by one (``header_index`` has them joined by ", ")."""
    lines = [value for hname, value in ex.headers if len(hname) == 6 and hname.lower() == b"cookie"]
    return lines or [ex.header_index[b"cookie"]]


def _http_cookie(ex: Exchange) -> str | None:
    # nginx joins repeated Cookie lines with "; " (other fields with ", ", as header_index does)
    if b"cookie" not in ex.header_index:
        return None
    return b"; ".join(_cookie_lines(ex)).decode("latin-1")


def _find_cookie(line: bytes, name: bytes) -> bytes | None:
    """nginx ``ngx_http_parse_multi_header_lines``: one Cookie line, ASCII-caseless name."""
    n = len(name)
    end = len(line)
    if n > end:
        return None
    start = 0
    while start < end:
        if line[start : start + n].lower() == name:
            start += n
            while start < end and line[start] == 0x20:
                start += 1
            if start < end:
                ch = line[start]
                start += 1  # consumed even when it is not "=", as nginx does
                if ch == 0x3D:
                    while start < end and line[start] == 0x20:
                        start += 1
                    last = line.find(b";", start)
                    return line[start:] if last < 0 else line[start:last]
        while start < end:  # skip to the next ";" or ","
            ch = line[start]
            start += 1
            if ch == 0x3B or ch == 0x2C:
                break
        while start < end and line[start] == 0x20:
            start += 1
    return None


def _cookie_getters(name: str) -> tuple[Getter, OptGetter]:
    key = name.encode("latin-1")  # lowercase already; matching lowercases the field bytes

    def lookup(ex: Exchange) -> str | None:
        if b"cookie" not in ex.header_index:
            return None
        for line in _cookie_lines(ex):
            value = _find_cookie(line, key)
            if value is not None:
                return value.decode("latin-1")
        return None

    return _or_empty(lookup), lookup


_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _find_arg(args: str, name: str) -> str | None:
    """nginx ``ngx_http_arg``: first ``NAME=`` at the start or after "&", ASCII-caseless, raw."""
    end = len(args)
    if not end:
        return None
    low = args.lower() if args.isascii() else args.translate(_ASCII_LOWER)
    n = len(name)
    pos = 0
    while True:
        i = low.find(name, pos, end - 1)  # leave room for the "="
        if i < 0:
            return None
        if (i == 0 or low[i - 1] == "&") and low[i + n] == "=":
            start = i + n + 1
            stop = args.find("&", start)
            return args[start:] if stop < 0 else args[start:stop]
        pos = i + 1


def _arg_getters(name: str) -> tuple[Getter, OptGetter]:
    def get(ex: Exchange) -> str:
        return _find_arg(ex.args, name) or ""

    def lookup(ex: Exchange) -> str | None:
        return _find_arg(ex.args, name)

    return get, lookup


def _or_empty(lookup: OptGetter) -> Getter:
    def get(ex: Exchange) -> str:
        value = lookup(ex)
        return "" if value is None else value

    return get


# --- the table -------------------------------------------------------------------------------------


def _v(
    name: str,
    get: Getter,
    *,
    empty_is_unset: bool = False,
    plain: bool = False,
    lookup: OptGetter | None = None,
    constant: str | None = None,
) -> Variable:
    return Variable(name, get, lookup, empty_is_unset, plain, constant)


_VARIABLES: Final[dict[str, Variable]] = {
    v.name: v
    for v in (
        _v("remote_addr", lambda ex: ex.conn.remote_addr, plain=True),
        _v("binary_remote_addr", lambda ex: _binary_addr(ex.conn.remote_addr)),
        _v("realip_remote_addr", lambda ex: ex.conn.realip_remote_addr or ex.conn.remote_addr, plain=True),
        _v("limit_req_status", lambda ex: ex.limit_req_status, empty_is_unset=True, plain=True),
        _v("limit_conn_status", lambda ex: ex.limit_conn_status, empty_is_unset=True, plain=True),
        _v("upstream_cache_status", lambda ex: ex.cache_status, empty_is_unset=True, plain=True),  # issue 18
        _v("remote_port", lambda ex: _port_text(ex.conn.remote_port), plain=True),
        _v("server_addr", lambda ex: ex.conn.server_addr, plain=True),
        _v("server_port", lambda ex: _port_text(ex.conn.server_port), plain=True),
        _v("connection", lambda ex: str(ex.conn.connection_id), plain=True),
        _v("connection_requests", lambda ex: str(ex.conn.requests), plain=True),
        _v("request", _request),
        _v("request_method", lambda ex: ex.method.decode("latin-1")),
        _v("request_uri", lambda ex: ex.target.decode("latin-1")),
        _v("uri", lambda ex: ex.path),
        _v("document_uri", lambda ex: ex.path),
        _v("args", lambda ex: ex.args, lookup=_args_lookup),
        _v("query_string", lambda ex: ex.args, lookup=_args_lookup),
        _v("is_args", lambda ex: "?" if ex.args else "", plain=True),
        _v("host", lambda ex: ex.host or _server_name(ex)),
        _v("scheme", lambda ex: "http" if ex.conn.tls is None else "https", plain=True),
        _v("https", lambda ex: "" if ex.conn.tls is None else "on", plain=True),
        _v("ssl_protocol", _tls(lambda t: t.protocol), plain=True),
        _v("ssl_cipher", _tls(lambda t: t.cipher), plain=True),
        _v("ssl_server_name", _tls(lambda t: t.server_name)),
        _v("ssl_session_reused", _tls(lambda t: "r" if t.session_reused else "."), plain=True),
        _v("ssl_client_verify", _tls(lambda t: t.client_verify), plain=True),
        _v("ssl_client_s_dn", _tls(lambda t: t.client_s_dn)),
        _v("server_protocol", _server_protocol),
        _v("server_name", _server_name),
        _v("proxy_host", _proxy_host),
        _v("status", _status, plain=True),
        _v("body_bytes_sent", lambda ex: str(ex.body_bytes_sent), plain=True),
        _v("bytes_sent", lambda ex: str(ex.bytes_sent), plain=True),
        _v("request_length", lambda ex: str(ex.request_length), plain=True),
        _v("request_time", _request_time, plain=True),
        _v("msec", lambda ex: f"{ex.end_time or time.time():.3f}", plain=True),
        _v("time_local", _time_local, plain=True),
        _v("time_iso8601", _time_iso8601, plain=True),
        _v("pid", lambda ex: _pid_text, plain=True),
        _v("hostname", lambda ex: _HOSTNAME),
        _v("remote_user", _constant(""), empty_is_unset=True, constant=""),
        _v("proxy_add_x_forwarded_for", _proxy_add_x_forwarded_for),
        # nginx's documented ``map $http_upgrade $connection_upgrade`` built in (there is no
        # ``map``): nginx's canonical WebSocket config copies over verbatim (issue 14)
        _v("connection_upgrade", lambda ex: "upgrade" if ex.header_index.get(b"upgrade") else "close"),
        # per attempt: status 0/None "-"; connect/header/response None "-" (response is None
        # only while the attempt is relayed: add_header renders it then, nginx sends "-")
        _v("upstream_addr", _upstream(lambda a: a.addr), empty_is_unset=True),
        _v(
            "upstream_status",
            _upstream(lambda a: str(a.status) if a.status else "-"),
            empty_is_unset=True,
            plain=True,
        ),
        _v(
            "upstream_connect_time",
            _upstream(lambda a: "-" if a.connect_time_s is None else _time3(a.connect_time_s)),
            empty_is_unset=True,
            plain=True,
        ),
        _v(
            "upstream_header_time",
            _upstream(lambda a: "-" if a.header_time_s is None else _time3(a.header_time_s)),
            empty_is_unset=True,
            plain=True,
        ),
        _v(
            "upstream_response_time",
            _upstream(lambda a: "-" if a.response_time_s is None else _time3(a.response_time_s)),
            empty_is_unset=True,
            plain=True,
        ),
        _v("upstream_bytes_sent", _upstream(lambda a: str(a.bytes_sent)), empty_is_unset=True, plain=True),
        _v(
            "upstream_bytes_received",
            _upstream(lambda a: str(a.bytes_received)),
            empty_is_unset=True,
            plain=True,
        ),
    )
}

_PREFIXES: Final[tuple[tuple[str, Callable[[str], tuple[Getter, OptGetter]]], ...]] = (
    ("http_", _header_getters),
    ("arg_", _arg_getters),
    ("cookie_", _cookie_getters),
)


# Variables the config defines (``set $name``, ``[http.maps.NAME]``): installed by the config
# loader before it compiles any template (``install_user_variables``), so every template
# knows them, as nginx declares them at load. Workers inherit the table with the fork.
_USER: dict[str, Variable] = {}


def install_user_variables(table: dict[str, Variable]) -> dict[str, Variable]:
    """Replace the config-defined variables; returns the previous table (to restore it
    when the config that installed this one fails to load)."""
    global _USER
    old, _USER = _USER, table
    return old


def builtin_variable(name: str) -> bool:
    """Is ``$name`` one of the built-in variables (or a ``http_``/``arg_``/``cookie_`` one)?
    ``$connection_upgrade`` is not: nginx has it only as the documented map."""
    key = name.lower()
    if key == "connection_upgrade":
        return False
    return key in _VARIABLES or any(key.startswith(prefix) for prefix, _ in _PREFIXES)


def set_variable(name: str) -> Variable:
    """``$name`` declared by ``set``: the value set for this request, "" until then."""

    def get(ex: Exchange) -> str:
        values = ex.vars
        return values.get(name, "") if values is not None else ""

    return Variable(name, get, empty_is_unset=True)


def lookup_variable(name: str) -> Variable:
    """The compiled variable for ``name`` (without "$"); raises ``VariableError`` if unknown."""
    key = name.lower()
    var = _USER.get(key) if _USER else None  # a map may replace $connection_upgrade only
    if var is not None:
        return var
    var = _VARIABLES.get(key)
    if var is not None:
        return var
    for prefix, factory in _PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if not rest:
                raise VariableError(f'unknown variable "${name}" (a name must follow "{prefix}")')
            get, lookup = factory(rest)
            return Variable(key, get, lookup)
    raise VariableError(f'unknown variable "${name}"')


def compile_variable(name: str) -> Getter:
    """The getter for ``$name``: the raw value, "" when unset."""
    return lookup_variable(name).get
