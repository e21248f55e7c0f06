"""HTTP/2 config (config/http2.py): ``http2 = true`` and the listen flag, the ``http2_*``
keys with their nginx defaults and inheritance, which addresses speak h2 (trap 9), the
ALPN list of TLS addresses, and errors naming the key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.http2 import http2_keys
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config, Http2Config
from tests.tls_certs import TestCA


def server(listen: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [[http.servers]]
        listen = ["{listen}"]
        {extra}
          [[http.servers.locations]]
          match = "/"
          return = "200 ok"
        """
    )


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "lb.toml"
    path.write_text(text)
    return load_config(str(path))


def test_defaults_follow_nginx(tmp_path: Path) -> None:
    config = load(tmp_path, server("127.0.0.1:8080", 'keepalive_timeout = "30s"'))
    s = config.http.servers[0]
    assert not s.http2 and not s.listen[0].http2
    assert s.http2_settings == Http2Config(idle_timeout_s=30.0)  # http2_idle_timeout = keepalive_timeout
    assert (s.http2_settings.max_concurrent_streams, s.http2_settings.max_field_size_bytes) == (128, 8192)
    assert s.http2_settings.max_header_size_bytes == 32768
    assert http2_keys(config.http.servers) == frozenset()


def test_listen_flag_and_server_switch_turn_the_address_on(tmp_path: Path) -> None:
    """The flag on one server's listen turns h2 on for the address, not for the server's
    other addresses; ``http2 = true`` turns it on for all of the server's addresses."""
    text = (
        server("127.0.0.1:8080 http2")
        + server("127.0.0.1:8080")  # shares the socket: h2 too (trap 9)
        + server("127.0.0.1:8081")
        + textwrap.dedent(
            """
            [[http.servers]]
            listen = ["127.0.0.1:8082", "127.0.0.1:8083"]
            http2 = true
              [[http.servers.locations]]
              match = "/"
              return = "200 ok"
            """
        )
    )
    keys = http2_keys(load(tmp_path, text).http.servers)
    assert keys == {("inet", "127.0.0.1", 8080), ("inet", "127.0.0.1", 8082), ("inet", "127.0.0.1", 8083)}


def test_keys_inherited_from_http_and_overridden(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        [http]
        http2 = true
        http2_max_concurrent_streams = 64
        large_client_header_buffers = [2, "4k"]
        http2_chunk_size = "16k"
        """
    ) + server(
        "127.0.0.1:8080",
        'http2_max_concurrent_streams = 10\nhttp2_idle_timeout = "5s"\nhttp2_max_field_size = "1k"',
    )
    s = load(tmp_path, text).http.servers[0]
    assert s.http2
    assert s.http2_settings == Http2Config(
        max_concurrent_streams=10,
        max_field_size_bytes=1024,
        max_header_size_bytes=8192,
        idle_timeout_s=5.0,
        chunk_size_bytes=16384,
    )


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("http2_max_concurrent_streams = 0", "http.servers[0].http2_max_concurrent_streams"),
        ('large_client_header_buffers = "8k"', "http.servers[0].large_client_header_buffers"),
        ('http2_body_preread_size = "4g"', "http.servers[0].http2_body_preread_size"),
        ("http2 = 1", "http.servers[0].http2"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, server("127.0.0.1:8080", extra))
    assert where in str(info.value)


def test_http2_flag_refused_on_stream_and_udp(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        [stream.upstreams.u]
        servers = [{ address = "127.0.0.1:9" }]
        [[stream.servers]]
        listen = ["127.0.0.1:9000 http2"]
        proxy_pass = "u"
        """
    )
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert "stream.servers[0].listen[0]" in str(info.value) and "http2" in str(info.value)


def test_tls_address_with_h2_offers_alpn_h2(tmp_path: Path) -> None:
    """ALPN h2,http/1.1 on the h2 address's contexts, SNI-switched ones included; the
    same certificate on an HTTP/1-only address offers http/1.1 alone."""
    ca = TestCA(tmp_path / "certs")
    ca.issue("a.test")
    ca.issue("b.test")
    d = ca.dir
    text = ""
    for name, listen in (("a.test", "127.0.0.1:8443 ssl http2"), ("b.test", "127.0.0.1:8443 ssl")):
        text += server(
            listen,
            f'server_name = ["{name}"]\nssl_certificate = "{d}/{name}-rsa.crt"\n'
            f'ssl_certificate_key = "{d}/{name}-rsa.key"',
        )
    text += server(
        "127.0.0.1:9443 ssl",
        f'ssl_certificate = "{d}/a.test-rsa.crt"\nssl_certificate_key = "{d}/a.test-rsa.key"',
    )
    config = load(tmp_path, text)
    import socket
    import ssl
    import threading

    def negotiated(port: int, name: str) -> str | None:
        lt = config.tls[("inet", "127.0.0.1", port)]
        a, b = socket.socketpair()
        out: list[str | None] = []

        def serve() -> None:
            s = lt.context.wrap_socket(a, server_side=True)
            out.append(s.selected_alpn_protocol())
            s.close()

        t = threading.Thread(target=serve)
        t.start()
        ctx = ssl.create_default_context(cafile=f"{d}/ca.crt")
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        c = ctx.wrap_socket(b, server_hostname=name)
        t.join()
        c.close()
        return out[0]

    assert negotiated(8443, "a.test") == "h2"
    assert negotiated(8443, "b.test") == "h2"  # SNI switched to b.test's context: ALPN kept
    assert negotiated(9443, "a.test") == "http/1.1"
