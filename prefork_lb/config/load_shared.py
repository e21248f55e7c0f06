"""What the ``[http]`` and ``[stream]`` loaders share: paths, ``listen`` lists, upstream blocks.

Rules:
- Relative paths resolve against the prefix (``-p``, else the main file's directory); the
  log paths "stderr", "stdout" and "off" are names, never files, and ``/dev/stdout`` and
  ``/dev/stderr`` are read as those names (never opened through the symlink).
- An upstream block reads the same keys in both contexts; only the methods differ (nginx's
  stream module has no ``ip_hash``: ``hash $remote_addr``). A method option written for
  another method is an error, never ignored.
- A hostname resolves once, here, to one peer per address (nginx makes one peer per
  address of a hostname); a ``proxy_pass`` naming an address instead of an upstream gets
  an implicit round-robin upstream of its own (``implicit_upstream``).
- Variables in a hash key or a log format are compiled here, with the context's variable
  set, so an unknown variable is a config error naming the key.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from prefork_lb.config.addresses import parse_address, parse_listen
from prefork_lb.config.model import (
    SSL_PROTOCOLS,
    Address,
    ListenConfig,
    Method,
    SslConfig,
    SslVerifyClient,
    StickyConfig,
    UpstreamConfig,
    UpstreamServer,
)
from prefork_lb.config.source import (
    Source,
    Table,
    boolean,
    choice,
    duration,
    non_negative_int,
    positive_int,
    string,
    string_list,
    whole_seconds,
)
from prefork_lb.units import parse_duration_s

METHODS = ("round_robin", "least_conn", "ip_hash", "hash", "random", "least_time")
STREAM_METHODS = ("round_robin", "least_conn", "hash", "random")  # nginx: no ip_hash (hash $remote_addr)
Context = Literal["http", "stream"]


class SectionLoader:
    """Reads one section (``[http]`` or ``[stream]``) of one source against one prefix."""

    def __init__(self, source: Source, prefix: str) -> None:
        self.source = source
        self.prefix = prefix

    def path(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.prefix, p)

    def log_path(self, p: str) -> str:
        p = {"/dev/stdout": "stdout", "/dev/stderr": "stderr"}.get(p, p)  # symlinks: never opened
        return p if p in ("stderr", "stdout", "off") else self.path(p)

    def listen(self, t: Table) -> list[ListenConfig]:
        """A server's ``listen`` list (http and stream): at least one, each parsed, errors
        naming the entry's index."""
        texts = t.take("listen", string_list)
        if not texts:
            raise t.error("listen", "must name at least one address")
        out = []
        for i, text in enumerate(texts):
            try:
                out.append(parse_listen(text))
            except ValueError as e:
                raise self.source.error(f"{t.key_path('listen')}[{i}]", str(e)) from None
        return out

    def ssl(self, t: Table, listen: list[ListenConfig]) -> SslConfig | None:
        """A server's ``ssl_*`` keys (the same in http and stream servers). None when the
        server has no ``ssl`` listen; the keys are then refused, never silently ignored."""
        present = [k for k in SSL_KEYS if t.has(k)]
        if not any(lc.ssl for lc in listen):
            if present:
                raise t.error(present[0], 'needs a listen address with the "ssl" flag')
            for k in SSL_KEYS:
                t.raw(k, None)
            return None
        if not t.has("ssl_certificate"):
            raise t.error("ssl_certificate", 'is required for a listen address with the "ssl" flag')
        certs = t.take("ssl_certificate", string_list)
        keys = t.take("ssl_certificate_key", string_list)
        if not certs:
            raise t.error("ssl_certificate", "must name at least one certificate file")
        if len(keys) != len(certs):
            raise t.error(
                "ssl_certificate_key",
                f"must name one key per certificate ({len(certs)} certificates, {len(keys)} keys)",
            )
        for key, paths in (("ssl_certificate", certs), ("ssl_certificate_key", keys)):
            for i, p in enumerate(paths):
                self._readable(t, f"{key}[{i}]" if t.has(key) else key, self.path(p))
        protocols = tuple(t.take("ssl_protocols", _ssl_protocols, list(SSL_PROTOCOLS)))
        ciphers = t.take("ssl_ciphers", string, "HIGH:!aNULL:!MD5")
        cache = t.take("ssl_session_cache", _session_cache, "none")
        timeout_s = t.take("ssl_session_timeout", whole_seconds, 300.0)
        tickets = t.take("ssl_session_tickets", boolean, True)
        verify = cast(SslVerifyClient, t.take("ssl_verify_client", choice(("off", "on", "optional")), "off"))
        ca = t.take("ssl_client_certificate", string, None)
        if ca is not None:
            ca = self.path(ca)
            self._readable(t, "ssl_client_certificate", ca)
        if verify != "off" and ca is None:
            raise t.error(
                "ssl_verify_client", 'needs "ssl_client_certificate" (the CA that signs client certificates)'
            )
        return SslConfig(
            certificates=tuple(self.path(p) for p in certs),
            keys=tuple(self.path(p) for p in keys),
            protocols=protocols,
            ciphers=ciphers,
            session_cache=cache,
            session_timeout_s=timeout_s,
            session_tickets=tickets,
            client_certificate=ca,
            verify_client=verify,
            key_path=t.path,
        )

    def _readable(self, t: Table, key: str, path: str) -> None:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise self.source.error(
                f"{t.path}.{key}", f'cannot read "{path}" ({e.errno}: {e.strerror})'
            ) from None

    def upstream(self, name: str, t: Table, context: Context = "http") -> UpstreamConfig:
        methods = METHODS if context == "http" else STREAM_METHODS
        method = cast(Method, t.take("method", choice(methods), "round_robin"))
        keepalive = t.take("keepalive", non_negative_int, 0)
        keepalive_requests = t.take("keepalive_requests", positive_int, 1000)
        keepalive_timeout = t.take("keepalive_timeout", duration, 60.0)
        keepalive_time = t.take("keepalive_time", duration, 3600.0)
        hash_key = t.take("hash", string, "")
        consistent = t.take("consistent", boolean, False)
        random_two = t.take("random", _random_options, False)
        least_time, inflight = t.take("least_time", _least_time, ("header", False))
        queue_size, queue_timeout = t.take("queue", _queue, (0, 60.0))
        sticky_cfg, sticky_strict = _sticky(t, context)
        state = self.path(t.take("state", string)) if t.has("state") else ""
        if state and not os.path.isdir(os.path.dirname(state)):
            raise t.error("state", f'the directory of "{state}" does not exist')
        servers: list[UpstreamServer] = []
        server_tables = t.table_list("servers")
        if state:  # issue 19: a group with a state file takes its servers from it (Plus)
            from prefork_lb.config.state_file import read_state

            saved = read_state(self, state)
            if saved is not None:
                server_tables = saved
        if not server_tables and not state:
            # with a state file (NGINX Plus: an upstream with `state` has no server directives)
            # the group may start empty, or the API deleted every server: 502 until one is added
            raise t.error(
                "servers", 'must list at least one server (or name a "state" file for the write API)'
            )
        entries = [self.upstream_server(st) for st in server_tables]  # a hostname: several
        for entry in entries:
            servers.extend(entry)
        t.finish()
        _check_method_options(t, method, [entry[0] for entry in entries])
        if method == "hash":
            if not hash_key:
                raise t.error("hash", 'method "hash" needs a key, e.g. hash = "$request_uri"')
            _check_key(t, hash_key, context)
        return UpstreamConfig(
            name=name,
            method=method,
            servers=tuple(servers),
            keepalive=keepalive,
            keepalive_requests=keepalive_requests,
            keepalive_timeout_s=keepalive_timeout,
            keepalive_time_s=keepalive_time,
            hash_key=hash_key,
            consistent=consistent,
            random_two=random_two,
            least_time=least_time,
            least_time_inflight=inflight,
            queue_size=queue_size,
            queue_timeout_s=queue_timeout,
            context=context,
            sticky=sticky_cfg,
            sticky_strict=sticky_strict,
            state_path=state,
        )

    def upstream_server(self, t: Table) -> list[UpstreamServer]:
        text = t.take("address", string)
        weight = t.take("weight", positive_int, 1)
        max_fails = t.take("max_fails", non_negative_int, 1)
        fail_timeout = t.take("fail_timeout", whole_seconds, 10.0)
        max_conns = t.take("max_conns", non_negative_int, 0)
        backup = t.take("backup", boolean, False)
        down = t.take("down", boolean, False)
        slow_start = t.take("slow_start", whole_seconds, 0.0)
        route = t.take("route", _route, "")
        drain = t.take("drain", boolean, False)
        t.finish()
        try:
            addrs = resolve(text)
        except ValueError as e:
            raise t.error("address", str(e)) from None
        return [
            UpstreamServer(
                address=a,
                name=text,
                weight=weight,
                max_fails=max_fails,
                fail_timeout_s=fail_timeout,
                max_conns=max_conns,
                backup=backup,
                down=down,
                slow_start_s=slow_start,
                route=route,
                drain=drain,
            )
            for a in addrs
        ]


def implicit_upstream(name: str, addrs: list[Address], context: Context) -> UpstreamConfig:
    """The upstream a ``proxy_pass`` to an address gets: round robin over its addresses."""
    return UpstreamConfig(
        name=name,
        method="round_robin",
        servers=tuple(UpstreamServer(address=a, name=name) for a in addrs),
        implicit=True,
        context=context,
    )


def resolve(text: str, getaddrinfo: Callable[..., Any] | None = None) -> list[Address]:
    """One Address per resolved IP (nginx makes one peer per address of a hostname).
    ``getaddrinfo``: gevent's in a worker (the write API), so a lookup never blocks it; None:
    ``socket.getaddrinfo`` looked up at call time (tests patch it)."""
    addr = parse_address(text)
    if addr.family != "inet" or _is_ip(addr.host):
        return [addr]
    try:
        infos = (getaddrinfo or socket.getaddrinfo)(addr.host, addr.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f'host "{addr.host}" not found: {e.strerror}') from None
    out: list[Address] = []
    for family, _, _, _, sa in infos:
        a = Address("inet6" if family == socket.AF_INET6 else "inet", str(sa[0]), addr.port)
        if a not in out:
            out.append(a)
    return out


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except OSError:
        return False


def log_formats(
    t: Table, builtin: Mapping[str, str], compile_format: Callable[[str], object]
) -> dict[str, str]:
    """``[<context>.log_formats]``: the built-in formats plus the table, each compiled once
    here so an unknown variable is a config error naming the format."""
    from prefork_lb.http.variables import VariableError

    formats = t.table("log_formats")
    out = dict(builtin)
    for name in formats.data:
        text = formats.take(name, string)
        try:
            compile_format(text)
        except VariableError as e:
            raise formats.error(name, str(e)) from None
        out[name] = text
    formats.finish()
    return out


def _check_key(t: Table, key: str, context: Context) -> None:
    from prefork_lb.http.template import compile_template
    from prefork_lb.http.variables import VariableError
    from prefork_lb.stream.variables import compile_stream_template

    try:
        (compile_stream_template if context == "stream" else compile_template)(key)
    except VariableError as e:
        raise t.error("hash", str(e)) from None


SSL_KEYS = (
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_session_cache",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "ssl_client_certificate",
    "ssl_verify_client",
)


def _ssl_protocols(v: object) -> list[str]:
    items = string_list(v)
    if not items:
        raise ValueError("must name at least one protocol")
    for item in items:
        if item not in SSL_PROTOCOLS:
            hint = " (TLS 1.0 and 1.1 are not supported)" if item in ("TLSv1", "TLSv1.1", "SSLv3") else ""
            raise ValueError(f'unknown protocol "{item}"{hint}; allowed: {", ".join(SSL_PROTOCOLS)}')
    return items


def _session_cache(v: object) -> str:
    text = string(v)
    if text in ("off", "none"):
        return text
    parts = text.split(":")
    if len(parts) == 3 and parts[0] == "shared" and parts[1]:
        from prefork_lb.units import parse_size_bytes

        try:
            if parse_size_bytes(parts[2]) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f'"{text}": the size must be positive, e.g. "shared:SSL:10m"') from None
        return text
    raise ValueError('must be "off", "none" or "shared:NAME:SIZE" (e.g. "shared:SSL:10m")')


def _random_options(v: object) -> bool:
    if not isinstance(v, dict) or set(v) - {"two"} or not isinstance(v.get("two", False), bool):
        raise ValueError("must be a table such as { two = true }")
    return bool(v.get("two", False))


def _queue(v: object) -> tuple[int, float]:
    if not isinstance(v, dict) or set(v) - {"size", "timeout"} or "size" not in v:
        raise ValueError('must be a table such as { size = 100, timeout = "60s" }')
    size = positive_int(v["size"])
    return size, parse_duration_s(v.get("timeout", 60))


def _least_time(v: object) -> tuple[Any, bool]:
    words = v.split() if isinstance(v, str) else []
    if not words or words[0] not in ("header", "last_byte") or words[1:] not in ([], ["inflight"]):
        raise ValueError('must be "header", "last_byte", "header inflight" or "last_byte inflight"')
    return words[0], len(words) == 2


def _sticky(t: Table, context: Context) -> tuple[StickyConfig | None, bool]:
    """``sticky`` and ``sticky_strict`` (config/load_sticky.py); stream has neither."""
    from prefork_lb.config import load_sticky

    if context == "stream":
        load_sticky.reject_in_stream(t)
        return None, False
    cfg = load_sticky.sticky(t) if t.has("sticky") else None
    strict = t.take("sticky_strict", boolean, False)
    if strict and cfg is None:
        raise t.error("sticky_strict", "needs sticky in the same upstream")
    return cfg, strict


def _route(v: object) -> str:
    text = string(v)
    if not text or len(text) > 32 or not all(c.isalnum() or c in "-_." for c in text):
        raise ValueError("must be 1-32 characters of letters, digits, '-', '_' or '.'")
    return text


def _check_method_options(t: Table, method: str, servers: list[UpstreamServer]) -> None:
    """``servers``: one per TOML entry, so errors name ``servers[i]`` as written."""
    from prefork_lb.balance.registry import NO_BACKUP, SLOW_START

    for key, owner in (
        ("hash", "hash"),
        ("consistent", "hash"),
        ("random", "random"),
        ("least_time", "least_time"),
    ):
        if t.has(key) and method != owner:
            raise t.error(key, f'only applies to method = "{owner}" (method is "{method}")')
    for i, s in enumerate(servers):
        if s.backup and method in NO_BACKUP:
            raise t.source.error(
                f"{t.key_path('servers')}[{i}].backup",
                f'balancing method "{method}" does not support backup servers',
            )
        if s.slow_start_s and method not in SLOW_START:
            raise t.source.error(
                f"{t.key_path('servers')}[{i}].slow_start",
                f'slow_start is supported with method "round_robin", not "{method}"',
            )
