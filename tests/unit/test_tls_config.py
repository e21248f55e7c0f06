"""TLS keys in the config: ``ssl`` listen flag, ssl_* keys, contexts built at load (so
``-t`` checks them), and errors that name the file and the key path."""

from __future__ import annotations

import os
import ssl
import textwrap
from pathlib import Path

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.config.model import Config
from tests.tls_certs import TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    ca = TestCA(tmp_path_factory.mktemp("tls-unit") / "certs")
    ca.issue("a.test")
    ca.issue("a.test", "ec")
    ca.issue("b.test")
    return ca


def config_text(ca: TestCA, server: str = "", stream: str = "", listen: str = "127.0.0.1:8443 ssl") -> str:
    d = ca.dir
    return textwrap.dedent(
        f"""
        [[http.servers]]
        listen = ["{listen}"]
        server_name = ["a.test"]
        ssl_certificate = ["{d}/a.test-rsa.crt", "{d}/a.test-ec.crt"]
        ssl_certificate_key = ["{d}/a.test-rsa.key", "{d}/a.test-ec.key"]
        {server}
          [[http.servers.locations]]
          match = "/"
          return = "200 ok"
        {stream}
        """
    )


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "lb.toml"
    path.write_text(text)
    return load_config(str(path))


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_ssl_listen_and_defaults(tmp_path: Path, ca: TestCA) -> None:
    """The flag and the keys reach the model; the context is built in the loader (master)."""
    config = load(tmp_path, config_text(ca))
    server = config.http.servers[0]
    assert server.listen[0].ssl and server.ssl is not None
    assert server.ssl.protocols == ("TLSv1.2", "TLSv1.3")  # ours: both (nginx 1.22: no 1.3)
    assert server.ssl.session_tickets and server.ssl.session_cache == "none"
    lt = config.tls[("inet", "127.0.0.1", 8443)]
    assert lt.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert lt.context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert not lt.context.options & ssl.OP_NO_TICKET


def test_protocols_tickets_and_session_cache(tmp_path: Path, ca: TestCA) -> None:
    server = (
        'ssl_protocols = ["TLSv1.2"]\nssl_session_tickets = false\n'
        'ssl_session_cache = "shared:SSL:1m"\nssl_session_timeout = "10m"'
    )
    config = load(tmp_path, config_text(ca, server))
    assert config.http.servers[0].ssl is not None
    assert config.http.servers[0].ssl.session_timeout_s == 600.0
    ctx = config.tls[("inet", "127.0.0.1", 8443)].context
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_TICKET


def test_plain_config_builds_no_context(tmp_path: Path, ca: TestCA) -> None:
    config = load(tmp_path, config_text(ca, listen="127.0.0.1:8080").replace("ssl_", "# ssl_"))
    assert config.tls == {}


@pytest.mark.parametrize(
    ("server", "key", "message"),
    [
        ('ssl_protocols = ["TLSv1.1"]', "ssl_protocols", 'unknown protocol "TLSv1.1" (TLS 1.0 and 1.1'),
        ('ssl_protocols = ["TLS9"]', "ssl_protocols", 'unknown protocol "TLS9"'),
        ('ssl_ciphers = "NOPE-CIPHER"', "ssl_ciphers", '"NOPE-CIPHER": '),
        ('ssl_session_cache = "builtin"', "ssl_session_cache", 'must be "off", "none" or "shared:NAME:SIZE"'),
        ('ssl_verify_client = "on"', "ssl_verify_client", 'needs "ssl_client_certificate"'),
        ('ssl_verify_client = "maybe"', "ssl_verify_client", "must be one of"),
        ('ssl_client_certificate = "/none/ca.crt"', "ssl_client_certificate", 'cannot read "/none'),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, ca: TestCA, server: str, key: str, message: str) -> None:
    text = error(tmp_path, config_text(ca, server))
    assert f"http.servers[0].{key}" in text and message in text, text


def test_key_not_matching_its_certificate_names_both_files(tmp_path: Path, ca: TestCA) -> None:
    """What ``-t`` reports for a renewed certificate deployed with the old key."""
    text = config_text(ca).replace("a.test-rsa.key", "b.test-rsa.key")
    msg = error(tmp_path, text)
    assert "http.servers[0].ssl_certificate_key[0]" in msg
    assert f'"{ca.dir}/b.test-rsa.key" does not match the certificate "{ca.dir}/a.test-rsa.crt"' in msg


def test_unreadable_and_invalid_files(tmp_path: Path, ca: TestCA) -> None:
    msg = error(tmp_path, config_text(ca).replace("a.test-ec.key", "missing.key"))
    assert "http.servers[0].ssl_certificate_key[1]" in msg and f'cannot read "{ca.dir}/missing.key"' in msg
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    msg = error(tmp_path, config_text(ca).replace(f"{ca.dir}/a.test-rsa.crt", str(garbage)))
    assert "http.servers[0].ssl_certificate" in msg and str(garbage) in msg
    if os.getuid() != 0:  # root reads anything
        unreadable = tmp_path / "secret.key"
        unreadable.write_bytes((ca.dir / "a.test-rsa.key").read_bytes())
        unreadable.chmod(0)
        msg = error(tmp_path, config_text(ca).replace(f"{ca.dir}/a.test-rsa.key", str(unreadable)))
        assert "Permission denied" in msg


def test_structure_errors(tmp_path: Path, ca: TestCA) -> None:
    msg = error(tmp_path, config_text(ca, listen="127.0.0.1:8080"))
    assert 'http.servers[0].ssl_certificate: needs a listen address with the "ssl" flag' in msg
    no_cert = config_text(ca).replace("ssl_certificate_key", "#").replace("ssl_certificate", "#")
    assert 'http.servers[0].ssl_certificate: is required for a listen address with the "ssl" flag' in error(
        tmp_path, no_cert
    )
    one_key = config_text(ca).replace(f', "{ca.dir}/a.test-ec.key"', "")
    assert "must name one key per certificate (2 certificates, 1 keys)" in error(tmp_path, one_key)
    udp = config_text(ca, listen="127.0.0.1:8443 ssl udp")
    assert "ssl is for TCP listeners" in error(tmp_path, udp)


def test_default_server_of_a_tls_address_needs_a_certificate(tmp_path: Path, ca: TestCA) -> None:
    """nginx: "ssl" on any listen of an address makes the address TLS for every server."""
    plain_first = textwrap.dedent(
        """
        [[http.servers]]
        listen = ["127.0.0.1:8443"]
          [[http.servers.locations]]
          match = "/"
          return = "200 ok"
        """
    )
    msg = error(tmp_path, plain_first + config_text(ca))
    assert "http.servers[0].ssl_certificate: the default server of the TLS address 127.0.0.1:8443" in msg


def test_verify_client_must_agree_on_an_address(tmp_path: Path, ca: TestCA) -> None:
    second = textwrap.dedent(
        f"""
        [[http.servers]]
        listen = ["127.0.0.1:8443 ssl"]
        server_name = ["b.test"]
        ssl_certificate = ["{ca.dir}/b.test-rsa.crt"]
        ssl_certificate_key = ["{ca.dir}/b.test-rsa.key"]
        ssl_client_certificate = "{ca.cert}"
        ssl_verify_client = "optional"
          [[http.servers.locations]]
          match = "/"
          return = "200 ok"
        """
    )
    msg = error(tmp_path, config_text(ca) + second)
    assert 'http.servers[1].ssl_verify_client: must be "off" as on the default server' in msg


def test_stream_server_ssl(tmp_path: Path, ca: TestCA) -> None:
    stream = textwrap.dedent(
        f"""
        [[stream.servers]]
        listen = ["127.0.0.1:6443 ssl"]
        proxy_pass = "127.0.0.1:9000"
        ssl_certificate = ["{ca.dir}/b.test-rsa.crt"]
        ssl_certificate_key = ["{ca.dir}/b.test-rsa.key"]
        ssl_protocols = ["TLSv1.3"]
        """
    )
    config = load(tmp_path, config_text(ca) + stream)
    ctx = config.tls[("inet", "127.0.0.1", 6443)].context
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    msg = error(tmp_path, config_text(ca) + stream.replace("6443 ssl", "6443"))
    assert 'stream.servers[0].ssl_certificate: needs a listen address with the "ssl" flag' in msg


def test_stream_ssl_preread(tmp_path: Path, ca: TestCA) -> None:
    """ssl_preread is a TCP stream key that excludes terminating TLS on the same server,
    and its variables compile in a stream hash key."""
    stream = textwrap.dedent(
        """
        [stream.upstreams.by_sni]
        method = "hash"
        hash = "$ssl_preread_server_name"
        servers = [{ address = "127.0.0.1:9001" }]
        [[stream.servers]]
        listen = ["127.0.0.1:6443"]
        proxy_pass = "by_sni"
        ssl_preread = true
        preread_timeout = "5s"
        """
    )
    server = load(tmp_path, config_text(ca) + stream).stream.servers[0]
    assert server.ssl_preread and server.preread_timeout_s == 5.0
    both = stream.replace('"127.0.0.1:6443"', '"127.0.0.1:6443 ssl"') + (
        f'ssl_certificate = ["{ca.dir}/b.test-rsa.crt"]\nssl_certificate_key = ["{ca.dir}/b.test-rsa.key"]\n'
    )
    assert 'stream.servers[0].ssl_preread: reads the ClientHello that "ssl" would terminate' in error(
        tmp_path, config_text(ca) + both
    )
    udp = stream.replace('"127.0.0.1:6443"', '"127.0.0.1:6443 udp"')
    assert "stream.servers[0].ssl_preread: is for TCP listeners" in error(tmp_path, config_text(ca) + udp)
