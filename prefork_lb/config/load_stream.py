"""The ``[stream]`` section: TCP and UDP servers and their upstreams (nginx's stream module).

Rules:
- Nothing is inherited into a stream server except ``access_log`` and ``log_format`` from
  ``[stream]`` (default: no access log; format "basic").
- ``proxy_pass`` names a stream upstream or an address (an implicit upstream); the two
  contexts have separate upstream namespaces, as in nginx.
- ``default_server`` is an http listen parameter and is refused here.
"""

from __future__ import annotations

from prefork_lb.config.load_health import health_check, mark_checked, stream_matches
from prefork_lb.config.load_shared import SectionLoader, implicit_upstream, log_formats, resolve
from prefork_lb.config.model import (
    AccessLogConfig,
    StreamConfig,
    StreamServerConfig,
    StreamUpstreamSsl,
    UpstreamConfig,
)
from prefork_lb.config.source import Table, boolean, duration, non_negative_int, positive_int, size, string
from prefork_lb.health.model import HealthCheck, StreamMatch


class StreamLoader(SectionLoader):
    def stream(self, t: Table) -> StreamConfig:
        from prefork_lb.stream.variables import BUILTIN_FORMATS, compile_stream_log_format

        formats = log_formats(t, BUILTIN_FORMATS, compile_stream_log_format)
        matches = stream_matches(t.table("matches"))
        checks: list[HealthCheck] = []
        ups = t.table("upstreams")
        upstreams: dict[str, UpstreamConfig] = {}
        for name in list(ups.data):
            ut = ups.table(name, default_empty=False)
            hc = ut.table("health_check") if ut.has("health_check") else None
            upstreams[name] = self.upstream(name, ut, "stream")
            if hc is not None:
                checks.append(health_check(hc, "stream", name, {}, matches))
        ups.finish()
        default_log = t.take("access_log", string, "off")
        default_format = t.take("log_format", string, "basic")
        servers = tuple(
            self.stream_server(i, st, upstreams, formats, default_log, default_format, matches, checks)
            for i, st in enumerate(t.table_list("servers"))
        )
        t.finish()
        mark_checked(upstreams, checks)
        return StreamConfig(
            upstreams=upstreams, servers=servers, log_formats=formats, health_checks=tuple(checks)
        )

    def stream_server(
        self,
        index: int,
        t: Table,
        upstreams: dict[str, UpstreamConfig],
        log_formats: dict[str, str],
        default_log: str,
        default_format: str,
        matches: dict[str, StreamMatch] | None = None,
        checks: list[HealthCheck] | None = None,
    ) -> StreamServerConfig:
        listen = self.listen(t)
        for i, lc in enumerate(listen):
            if lc.default_server:
                raise self.source.error(f"{t.key_path('listen')}[{i}]", "default_server is for http servers")
            if lc.http2:
                raise self.source.error(f"{t.key_path('listen')}[{i}]", "http2 is for http servers")
        ssl = self.ssl(t, listen)
        target = t.take("proxy_pass", string)
        if target not in upstreams:
            try:
                addrs = resolve(target)
            except ValueError as e:
                raise t.error(
                    "proxy_pass", f'"{target}" is neither a stream upstream nor an address: {e}'
                ) from None
            upstreams[target] = implicit_upstream(target, addrs, "stream")
        log_key = t.key_path("access_log") if t.has("access_log") else "stream.access_log"
        log_path = self.log_path(t.take("access_log", string, default_log))
        fmt = t.take("log_format", string, default_format)
        if fmt not in log_formats:
            raise t.error(
                "log_format", f'unknown stream log format "{fmt}" (define it in [stream.log_formats])'
            )
        server = StreamServerConfig(
            listen=tuple(listen),
            proxy_pass=target,
            proxy_connect_timeout_s=t.take("proxy_connect_timeout", duration, 60.0),
            proxy_timeout_s=t.take("proxy_timeout", duration, 600.0),
            proxy_buffer_size_bytes=t.take("proxy_buffer_size", size, 16 * 1024),
            proxy_next_upstream=t.take("proxy_next_upstream", boolean, True),
            proxy_next_upstream_tries=t.take("proxy_next_upstream_tries", non_negative_int, 0),
            proxy_next_upstream_timeout_s=t.take("proxy_next_upstream_timeout", duration, 0.0),
            proxy_responses=t.take("proxy_responses", non_negative_int, 0),
            proxy_requests=t.take("proxy_requests", non_negative_int, 0),
            udp_sessions=t.take("udp_sessions", positive_int, 4096),
            access_logs=()
            if log_path == "off"
            else (AccessLogConfig(log_path, fmt, log_formats[fmt], key=log_key),),
            index=index,
            ssl=ssl,
            ssl_handshake_timeout_s=t.take("ssl_handshake_timeout", duration, 60.0),
            ssl_preread=t.take("ssl_preread", boolean, False),
            preread_timeout_s=t.take("preread_timeout", duration, 30.0),
            upstream_ssl=self.upstream_ssl(t, target),
        )
        hc_timeout = t.take("health_check_timeout", duration, 5.0)
        if t.has("health_check"):
            check = health_check(
                t.table("health_check"),
                "stream",
                target,
                {},
                matches or {},
                connect_timeout_s=hc_timeout,
                read_timeout_s=hc_timeout,
            )
            if checks is not None:
                checks.append(check)
        t.finish()
        if server.ssl_preread and server.ssl is not None:
            raise t.error("ssl_preread", 'reads the ClientHello that "ssl" would terminate: use one of them')
        if server.ssl_preread and any(lc.udp for lc in listen):
            raise t.error("ssl_preread", "is for TCP listeners")
        if server.upstream_ssl is not None and any(lc.udp for lc in listen):
            raise t.error("proxy_ssl", "is for TCP listeners (no DTLS)")
        if server.proxy_buffer_size_bytes < 1:
            raise t.error("proxy_buffer_size", "must be at least 1 byte")
        return server

    def upstream_ssl(self, t: Table, target: str) -> StreamUpstreamSsl | None:
        """``proxy_ssl = true`` and its ``proxy_ssl_*`` keys (nginx's stream proxy module);
        the same errors as an http location's (load_http.check_upstream_ssl)."""
        from prefork_lb.config.load_http import check_upstream_ssl, ssl_ciphers, ssl_protocols

        keys = (
            "proxy_ssl_verify",
            "proxy_ssl_trusted_certificate",
            "proxy_ssl_server_name",
            "proxy_ssl_name",
            "proxy_ssl_protocols",
            "proxy_ssl_ciphers",
            "proxy_ssl_session_reuse",
        )
        if not t.take("proxy_ssl", boolean, False):
            for key in keys:
                if t.has(key):
                    raise t.error(key, 'needs "proxy_ssl = true"')
            return None
        trusted = t.take("proxy_ssl_trusted_certificate", string, "")
        verify = t.take("proxy_ssl_verify", boolean, False)
        trusted_path = self.path(trusted) if trusted else ""
        settings = {"proxy_ssl_verify": verify, "proxy_ssl_trusted_certificate": trusted_path}
        check_upstream_ssl(t, settings)
        default_name = target.rsplit(":", 1)[0] if target.count(":") == 1 else target
        name = t.take("proxy_ssl_name", string, default_name)
        if "$" in name:
            raise t.error("proxy_ssl_name", "variables are not supported in stream proxy_ssl_name")
        return StreamUpstreamSsl(
            verify=verify,
            trusted_certificate=trusted_path,
            server_name=t.take("proxy_ssl_server_name", boolean, False),
            name=name,
            protocols=t.take("proxy_ssl_protocols", ssl_protocols, ("TLSv1.2", "TLSv1.3")),
            ciphers=t.take("proxy_ssl_ciphers", ssl_ciphers, "DEFAULT"),
            session_reuse=t.take("proxy_ssl_session_reuse", boolean, True),
        )
