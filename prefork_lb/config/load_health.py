"""Active health checks in the config: ``[http.matches.*]``, ``[stream.matches.*]`` and
``health_check`` tables (on a location, a stream server, or an upstream itself).

Rules:
1. Match blocks are read first (a check names one); an unknown name, a regex that does not
   compile, ``fails``/``passes`` below 1, an interval below 100 ms, a UDP check whose
   match sends without expecting a reply: config errors naming the file and key.
2. An HTTP check takes the location's proxy settings: Host (``proxy_pass``'s host, or a
   ``proxy_set_header Host`` without variables), other literal ``proxy_set_header``
   entries, and ``proxy_connect_timeout``/``proxy_read_timeout`` (``timeout`` in the
   table overrides both; checks on an upstream table default to 5 s).
3. Parsing only: which groups are checked is marked on the upstreams by ``mark_checked``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from prefork_lb.config.errors import did_you_mean
from prefork_lb.config.model import LocationConfig, UpstreamConfig
from prefork_lb.config.source import (
    Table,
    boolean,
    duration,
    non_negative_int,
    positive_int,
    string,
    string_list,
)
from prefork_lb.health.model import HeaderTest, HealthCheck, HttpMatch, StatusTest, StreamMatch

MIN_INTERVAL_S = 0.1
HeaderOp = Literal["=", "!=", "~", "!~"]
_HEADER_OPS: tuple[HeaderOp, ...] = ("!~", "!=", "~", "=")  # longest first


def _quoted(text: str) -> str:
    """A value as nginx writes it: "quoted" (with backslash escapes kept for regexes) or bare."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _status(v: object) -> StatusTest:
    text = string(v).strip()
    negate = text.startswith("!")
    if negate:
        text = text[1:].strip()
    ranges = []
    for item in text.split():
        lo, _, hi = item.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f'"{item}" is not a status code or a range such as "200-399"')
        a, b = int(lo), int(hi or lo)
        if not 100 <= a <= b <= 999:
            raise ValueError(f'"{item}" is not a status range between 100 and 999')
        ranges.append((a, b))
    if not ranges:
        raise ValueError('must list status codes, e.g. "200-399" or "! 500"')
    return StatusTest(negate, tuple(ranges))


def _header(text: str) -> HeaderTest:
    text = text.strip()
    if text.startswith("!") and not text.startswith(("!=", "!~")):
        name = text[1:].strip()
        if not name or " " in name:
            raise ValueError(f'"{text}": "! Name" tests that a header is absent')
        return HeaderTest(name.lower(), "absent")
    for op in _HEADER_OPS:
        i = text.find(f" {op} ")
        if i > 0:
            name, value = text[:i].strip(), _quoted(text[i + len(op) + 2 :])
            if op in ("~", "!~"):
                try:
                    regex = re.compile(value)
                except re.error as e:
                    raise ValueError(f'"{text}": invalid regex: {e}') from None
                return HeaderTest(name.lower(), op, value, regex)
            return HeaderTest(name.lower(), op, value)
    if not text or " " in text:
        raise ValueError(
            f'"{text}": use "Name", "! Name", "Name = v", "Name != v", "Name ~ re" or "Name !~ re"'
        )
    return HeaderTest(text.lower(), "present")


def _regex_test(text: str, what: str) -> tuple[bool, re.Pattern[bytes]]:
    text = text.strip()
    for op, negated in (("!~", True), ("~", False)):
        if text.startswith(op + " ") or text.startswith(op + '"'):
            pattern = _quoted(text[len(op) :])
            try:
                return negated, re.compile(pattern.encode())
            except re.error as e:
                raise ValueError(f"invalid regex: {e}") from None
    raise ValueError(f'{what} must be "~ \\"regex\\"" or "!~ \\"regex\\""')


def http_matches(t: Table) -> dict[str, HttpMatch]:
    out = {}
    for name in list(t.data):
        m = t.table(name, default_empty=False)
        status = m.take("status", _status, None)
        headers: list[HeaderTest] = []
        for i, text in enumerate(m.take("header", string_list, [])):
            try:
                headers.append(_header(text))
            except ValueError as e:
                raise t.source.error(f"{m.key_path('header')}[{i}]", str(e)) from None
        body = m.take("body", lambda v: _regex_test(string(v), "body"), None)
        m.finish()
        out[name] = HttpMatch(name, status, tuple(headers), body)
    t.finish()
    return out


def _expect(v: object) -> tuple[bool, bytes, re.Pattern[bytes] | None]:
    text = string(v).strip()
    if text.startswith("~"):
        pattern = _quoted(text[1:])
        try:
            return True, b"", re.compile(pattern.encode("latin-1"))
        except re.error as e:
            raise ValueError(f"invalid regex: {e}") from None
    return False, _quoted(text).encode("latin-1"), None


def stream_matches(t: Table) -> dict[str, StreamMatch]:
    out = {}
    for name in list(t.data):
        m = t.table(name, default_empty=False)
        send = m.take("send", string, "").encode("latin-1")
        expect = m.take("expect", _expect, None)
        m.finish()
        out[name] = StreamMatch(name, send, expect)
    t.finish()
    return out


def _interval(v: object) -> float:
    seconds = duration(v)
    if seconds < MIN_INTERVAL_S:
        raise ValueError("must be at least 100ms")
    return seconds


def _port(v: object) -> int:
    port = non_negative_int(v)
    if port > 65535:
        raise ValueError("must be a port number (0: the server's own port)")
    return port


def health_check(
    t: Table,
    context: Literal["http", "stream"],
    upstream: str,
    http_matches: dict[str, HttpMatch],
    stream_matches: dict[str, StreamMatch],
    *,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 5.0,
    host: str = "",
    set_headers: tuple[tuple[str, str], ...] = (),
    location: LocationConfig | None = None,
) -> HealthCheck:
    """One ``health_check`` table (rules 1-2)."""
    interval = t.take("interval", _interval, 5.0)
    jitter = t.take("jitter", duration, 0.0)
    fails = t.take("fails", positive_int, 1)
    passes = t.take("passes", positive_int, 1)
    port = t.take("port", _port, 0)
    mandatory = t.take("mandatory", boolean, False)
    persistent = t.take("persistent", boolean, False)
    keepalive_time = t.take("keepalive_time", duration, 0.0)
    if t.has("timeout"):
        connect_timeout_s = read_timeout_s = t.take("timeout", duration)
    else:
        t.raw("timeout", None)
    udp = t.take("udp", boolean, False) if context == "stream" else False
    uri = t.take("uri", string, "/") if context == "http" else "/"
    if context == "http" and not uri.startswith("/"):
        raise t.error("uri", 'must start with "/"')
    name = t.take("match", string, None)
    t.finish()
    http_match = stream_match = None
    if name is not None:
        known: dict[str, Any] = dict(http_matches if context == "http" else stream_matches)
        if name not in known:
            raise t.error(
                "match",
                f'unknown match "{name}" (define it in [{context}.matches]){did_you_mean(name, known)}',
            )
        if context == "http":
            http_match = http_matches[name]
        else:
            stream_match = stream_matches[name]
            if udp and stream_match.send and stream_match.expect is None:
                raise t.error("match", f'a UDP check needs "expect" in [stream.matches.{name}] when it sends')
    request = b""
    if context == "http":
        lines = [f"GET {uri} HTTP/1.0"]
        for hname, value in set_headers:
            if hname.lower() == "host":
                if "$" not in value:
                    host = value
            elif "$" not in value and value:
                lines.append(f"{hname}: {value}")
        lines += ["Connection: close", "User-Agent: prefork-lb health check"]
        request = "\r\n".join(lines).encode("latin-1")
    tls: dict[str, Any] = {}
    if location is not None and location.proxy_pass is not None and location.proxy_pass.ssl:
        tls = _tls_settings(location, host)
    return HealthCheck(
        key=t.path,
        context=context,
        upstream=upstream,
        interval_s=interval,
        jitter_s=jitter,
        fails=fails,
        passes=passes,
        uri=uri,
        port=port,
        http_match=http_match,
        stream_match=stream_match,
        mandatory=mandatory,
        persistent=persistent,
        keepalive_time_s=keepalive_time,
        udp=udp,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
        request=request,
        host=host,
        **tls,
    )


def _tls_settings(loc: LocationConfig, proxy_host: str) -> dict[str, Any]:
    """Rule 2 for an ``https://`` location: what ``http/upstream_tls.py`` uses, with the
    name rendered once (a ``proxy_ssl_name`` with other variables falls back to $proxy_host)."""
    import ipaddress

    name = ""
    if loc.proxy_ssl_verify or loc.proxy_ssl_server_name:
        value = loc.proxy_ssl_name
        name = proxy_host if "$" in value else value
        if name.startswith("["):
            name = name[1 : name.index("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        if not loc.proxy_ssl_verify:
            try:
                ipaddress.ip_address(name)
                name = ""  # nginx never sends an IP literal as SNI
            except ValueError:
                pass
    return {
        "tls": True,
        "tls_verify": loc.proxy_ssl_verify,
        "tls_cafile": loc.proxy_ssl_trusted_certificate,
        "tls_name": name,
        "tls_protocols": loc.proxy_ssl_protocols,
        "tls_ciphers": loc.proxy_ssl_ciphers,
    }


def mark_checked(upstreams: dict[str, UpstreamConfig], checks: list[HealthCheck]) -> None:
    """Rule 3: ``UpstreamConfig.checked`` for every group some check probes."""
    for name in {c.upstream for c in checks}:
        upstreams[name] = dataclasses.replace(upstreams[name], checked=True)


__all__ = ["health_check", "http_matches", "mark_checked", "stream_matches"]
