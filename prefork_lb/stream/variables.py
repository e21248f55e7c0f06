"""Stream variables (nginx's stream module set), compiled like the HTTP ones (sans-IO).

Used in stream ``log_formats`` and in stream ``hash`` keys: ``$remote_addr $remote_port
$server_addr $server_port $protocol $status $bytes_sent $bytes_received $session_time
$connection $msec $time_local $time_iso8601 $pid $hostname $upstream_addr
$upstream_bytes_sent $upstream_bytes_received $upstream_connect_time
$upstream_first_byte_time $upstream_session_time``. Upstream variables join attempts with
", " and print "-" for an unset time. A predefined ``basic`` format is the one nginx's
documentation uses for stream logs.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any, Final, cast

from prefork_lb.http.accesslog import LogFormat, compile_log_format
from prefork_lb.http.template import Template, compile_template
from prefork_lb.http.variables import Variable, VariableError
from prefork_lb.stream.session import Session, StreamAttempt

BASIC: Final = "$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time"
BUILTIN_FORMATS: Final = {"basic": BASIC}
_HOSTNAME: Final = socket.gethostname().lower()
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _t3(t: float) -> str:
    return f"{max(t, 0.0):.3f}"


def _end(s: Session) -> float:
    return s.end_time or time.time()


def _time_local(s: Session) -> str:
    tm = time.localtime(_end(s))
    off = tm.tm_gmtoff or 0
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return (
        f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:{tm.tm_hour:02d}:{tm.tm_min:02d}:"
        f"{tm.tm_sec:02d} {sign}{off // 3600:02d}{off % 3600 // 60:02d}"
    )


def _time_iso8601(s: Session) -> str:
    tm = time.localtime(_end(s))
    off = tm.tm_gmtoff or 0
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f"{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"


def _upstream(fmt: Callable[[StreamAttempt], str]) -> Callable[[Session], str]:
    def get(s: Session) -> str:
        return ", ".join(fmt(a) for a in s.attempts)

    return get


def _opt_time(t: float | None) -> str:
    return "-" if t is None else _t3(t)


_GETTERS: Final[dict[str, tuple[Callable[[Session], str], bool]]] = {
    # name: (getter, plain: never needs log escaping)
    "remote_addr": (lambda s: s.remote_addr, False),
    "remote_port": (lambda s: str(s.remote_port) if s.remote_port else "", True),
    "server_addr": (lambda s: s.server_addr, False),
    "server_port": (lambda s: str(s.server_port) if s.server_port else "", True),
    "protocol": (lambda s: s.protocol, True),
    "status": (lambda s: f"{s.status:03d}", True),
    "bytes_sent": (lambda s: str(s.bytes_sent), True),
    "bytes_received": (lambda s: str(s.bytes_received), True),
    "session_time": (lambda s: _t3(_end(s) - s.start_time), True),
    "connection": (lambda s: str(s.connection_id), True),
    "msec": (lambda s: f"{_end(s):.3f}", True),
    "time_local": (_time_local, True),
    "time_iso8601": (_time_iso8601, True),
    "pid": (lambda s: str(os.getpid()), True),
    "hostname": (lambda s: _HOSTNAME, False),
    "upstream_addr": (_upstream(lambda a: a.addr), False),
    "upstream_bytes_sent": (_upstream(lambda a: str(a.bytes_sent)), True),
    "upstream_bytes_received": (_upstream(lambda a: str(a.bytes_received)), True),
    "upstream_connect_time": (_upstream(lambda a: _opt_time(a.connect_time_s)), True),
    "upstream_first_byte_time": (_upstream(lambda a: _opt_time(a.first_byte_time_s)), True),
    "upstream_session_time": (_upstream(lambda a: _t3(a.session_time_s)), True),
    "ssl_protocol": (lambda s: s.tls.protocol if s.tls else "", True),
    "ssl_cipher": (lambda s: s.tls.cipher if s.tls else "", True),
    "ssl_session_reused": (lambda s: ("r" if s.tls.session_reused else ".") if s.tls else "", True),
    "ssl_client_verify": (lambda s: s.tls.client_verify if s.tls else "", True),
    "ssl_client_s_dn": (lambda s: s.tls.client_s_dn if s.tls else "", False),
    "ssl_preread_server_name": (lambda s: s.preread.server_name, False),
    "ssl_preread_alpn_protocols": (lambda s: s.preread.alpn_protocols, False),
    "ssl_preread_protocol": (lambda s: s.preread.protocol, True),
}


def lookup_stream_variable(name: str) -> Variable:
    lower = name.lower()
    entry = _GETTERS.get(lower)
    if entry is None:
        raise VariableError(f'unknown variable "${name}" (not a stream variable)')
    get, plain = entry
    return Variable(lower, cast(Any, get), empty_is_unset=True, plain=plain)


def compile_stream_template(text: str) -> Template:
    """A stream hash key such as ``$remote_addr``."""
    return compile_template(text, lookup_stream_variable)


def compile_stream_log_format(text: str) -> LogFormat:
    return compile_log_format(text, lookup_stream_variable)
