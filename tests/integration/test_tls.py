"""TLS termination through the real master and workers: SNI and default server, Host
picking the server, ALPN, plain HTTP on the TLS port, variables, session resumption
across workers, client certificates, bad handshakes, certificate renewal by reload, TLS
stream servers, and nginx 1.22 as the oracle for SNI selection and the plain-HTTP 400.

Certificates come from a test CA made with the openssl CLI for this session
(tests/tls_certs.py); clients are Python ssl, curl and openssl s_client."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, accepts, run_cli, wait_for
from tests.stream_servers import TcpEcho
from tests.tls_certs import TestCA

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
LOG = "$scheme|$host|$server_name|$ssl_protocol|$ssl_server_name|$ssl_session_reused|$pid|$status"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    ca = TestCA(tmp_path_factory.mktemp("tls") / "certs")
    for name in ("default.test", "a.test", "b.test"):
        ca.issue(name)
    ca.issue("a.test", "ec")
    ca.issue("client-user", client=True)
    return ca


def tls_server(ca: TestCA, name: str, listen: str, body: str, extra: str = "", ec: bool = False) -> str:
    certs = [f"{ca.dir}/{name}-rsa.crt"] + ([f"{ca.dir}/{name}-ec.crt"] if ec else [])
    keys = [c[: -len(".crt")] + ".key" for c in certs]
    return textwrap.dedent(
        f"""
        [[http.servers]]
        listen = [{listen}]
        server_name = ["{name}"]
        ssl_certificate = {certs!r}
        ssl_certificate_key = {keys!r}
        log_format = "t"
        {extra}
          [[http.servers.locations]]
          match = "/"
          {body}
        """
    ).replace("'", '"')


def three_servers(ca: TestCA, port: int, workers: int = 1, default_extra: str = "", more: str = "") -> str:
    listen = f'"127.0.0.1:{port} ssl"'
    return (
        f"""
workers = {workers}
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "access.log"
[http.log_formats]
t = '{LOG}'
"""
        + tls_server(
            ca,
            "default.test",
            f'"127.0.0.1:{port} ssl default_server"',
            'return = "200 default"',
            default_extra,
        )
        + tls_server(ca, "a.test", listen, 'return = "200 a"', ec=True)
        + tls_server(ca, "b.test", listen, 'return = "200 b"')
        + more
    )


def client_context(ca: TestCA, **kw: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.check_hostname = False  # the test reads which certificate came instead
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


class Tls:
    """One TLS connection to 127.0.0.1:port with an optional SNI name."""

    def __init__(self, port: int, ctx: ssl.SSLContext, sni: str | None, session: Any = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni, session=session)
        cert = self.sock.getpeercert()
        self.cn = dict(x[0] for x in cert["subject"])["commonName"] if cert else ""

    def get(self, host: str, path: str = "/", close: bool = False) -> tuple[int, dict[str, str], bytes]:
        extra = "Connection: close\r\n" if close else ""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        resp = http.client.HTTPResponse(self.sock)  # type: ignore[arg-type]
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def close(self) -> None:
        self.sock.close()


def tls_get(port: int, ctx: ssl.SSLContext, sni: str | None, host: str) -> tuple[str, int, bytes]:
    conn = Tls(port, ctx, sni)
    try:
        status, _, body = conn.get(host, close=True)
        return conn.cn, status, body
    finally:
        conn.close()


def test_sni_picks_the_certificate_and_host_the_server(tmp_path: Path, ca: TestCA) -> None:
    """Catches: no TLS at all on an ``ssl`` listen; SNI not selecting the certificate; the
    default server's certificate not used for unknown or absent SNI; SNI choosing the
    server block (nginx trap: Host does); $scheme and the $ssl_* variables."""
    port = free_port()
    ctx = client_context(ca)
    with LB(tmp_path, three_servers(ca, port), port) as lb:
        assert tls_get(port, ctx, "a.test", "a.test") == ("a.test", 200, b"a")
        assert tls_get(port, ctx, "b.test", "b.test") == ("b.test", 200, b"b")
        assert tls_get(port, ctx, "unknown.test", "unknown.test") == ("default.test", 200, b"default")
        assert tls_get(port, ctx, None, "a.test") == ("default.test", 200, b"a")
        assert tls_get(port, ctx, "b.test", "a.test") == ("b.test", 200, b"a")  # Host picks
        lines = lb.access_log(5)
    fields = [line.split("|") for line in lines]
    assert [f[0] for f in fields] == ["https"] * 5
    assert [f[2] for f in fields] == ["a.test", "b.test", "default.test", "a.test", "a.test"]
    assert [f[4] for f in fields] == ["a.test", "b.test", "unknown.test", "", "b.test"]
    assert {f[3] for f in fields} == {"TLSv1.3"}
    assert {f[5] for f in fields} == {"."}


def test_curl_rsa_ecdsa_and_alpn(tmp_path: Path, ca: TestCA) -> None:
    """Catches: a second (ECDSA) certificate replacing the RSA one instead of joining it;
    no ALPN; TLS 1.3 off by default (nginx 1.22's default, not ours)."""
    port = free_port()
    with LB(tmp_path, three_servers(ca, port), port):
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(ca.cert), "--resolve", f"a.test:{port}:127.0.0.1",
             "-w", "|%{http_version}", f"https://a.test:{port}/"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.stdout == "a|1.1", out.stderr
        for sigalgs, kind in (("ECDSA+SHA256", "ECDSA"), ("RSA-PSS+SHA256", "RSA-PSS")):
            s = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.test",
                 "-sigalgs", sigalgs, "-alpn", "http/1.1", "-tls1_2"],
                input="", capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            assert f"Peer signature type: {kind}" in s.stdout, s.stdout + s.stderr
            assert "ALPN protocol: http/1.1" in s.stdout


def test_plain_http_to_the_tls_port_is_400(tmp_path: Path, ca: TestCA) -> None:
    """Catches: plain HTTP on a TLS port hanging, resetting, or being served in clear."""
    port = free_port()
    with LB(tmp_path, three_servers(ca, port), port) as lb:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"\r\nConnection: close" in head
        assert b"<center>The plain HTTP request was sent to HTTPS port</center>" in body
        assert b"<title>400 The plain HTTP request was sent to HTTPS port</title>" in body
        assert lb.access_log(1)[-1].split("|")[0] == "http"
        assert lb.access_log(1)[-1].endswith("|400")
        assert tls_get(port, client_context(ca), "a.test", "a.test")[1:] == (200, b"a")  # still serving


def test_tickets_resume_on_any_worker(tmp_path: Path, ca: TestCA) -> None:
    """Catches: contexts made in each worker (after fork), whose ticket keys differ, so a
    session from one worker never resumes on the other. TLS 1.2 and 1.3, 2 workers."""
    port = free_port()
    with LB(tmp_path, three_servers(ca, port, workers=2), port) as lb:
        logged = 0
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(ca, maximum_version=version)
            first = Tls(port, ctx, "a.test")
            first.get("a.test")  # TLS 1.3 tickets arrive after the handshake: read a response
            session = first.sock.session
            first.close()
            logged += 1
            pids: set[str] = set()  # workers that served a resumption of this version
            for _ in range(60):  # until resumptions were served by both workers
                conn = Tls(port, ctx, "a.test", session)
                assert conn.get("a.test", close=True)[0] == 200
                assert conn.sock.session_reused
                conn.close()
                logged += 1
                name = version.name.replace("_", ".")
                rows = [line.split("|") for line in lb.access_log(logged)]
                pids = {r[6] for r in rows if r[5] == "r" and r[3] == name}
                if len(pids) == 2:
                    break
            assert len(pids) == 2, f"{version.name}: 60 resumptions, all on one worker"


def test_openssl_reconnect_resumes_across_workers(tmp_path: Path, ca: TestCA) -> None:
    """The brief's measurement: ``openssl s_client -reconnect`` (TLS 1.2: s_client does not
    read TLS 1.3 tickets without an exchange) against 2 workers, tickets and a cache off."""
    port = free_port()
    cfg = three_servers(ca, port, workers=2, default_extra='ssl_session_cache = "off"')
    with LB(tmp_path, cfg, port):
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.test",
             "-tls1_2", "-reconnect"],
            input="", capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    assert out.count("Reused, TLSv1.2") == 5, out


def test_client_certificates(tmp_path: Path, ca: TestCA) -> None:
    """Catches: ssl_verify_client ignored; "on" without a certificate served (nginx: 400
    "No required SSL certificate was sent"); $ssl_client_verify / $ssl_client_s_dn wrong."""
    port, port2 = free_port(), free_port()
    verify = f'ssl_client_certificate = "{ca.cert}"\nssl_verify_client = "%s"'
    body = 'return = "200 $ssl_client_verify [$ssl_client_s_dn]"'
    cfg = (
        f"""
error_log = "error.log"
[http]
access_log = "off"
[http.log_formats]
t = '{LOG}'
"""
        + tls_server(ca, "default.test", f'"127.0.0.1:{port} ssl"', body, verify % "optional")
        + tls_server(ca, "b.test", f'"127.0.0.1:{port2} ssl"', body, verify % "on")
    )
    client = ca.dir / "client-user-rsa"
    with_cert = client_context(ca)
    with_cert.load_cert_chain(f"{client}.crt", f"{client}.key")
    without = client_context(ca)
    with LB(tmp_path, cfg, port):
        assert tls_get(port, without, "x.test", "x.test")[1:] == (200, b"NONE []")
        assert tls_get(port, with_cert, "x.test", "x.test")[1:] == (
            200,
            b"SUCCESS [CN=client-user,O=prefork-lb tests]",
        )
        _, status, page = tls_get(port2, without, "b.test", "b.test")
        assert status == 400 and b"No required SSL certificate was sent" in page
        assert tls_get(port2, with_cert, "b.test", "b.test")[1:] == (
            200,
            b"SUCCESS [CN=client-user,O=prefork-lb tests]",
        )


def test_bad_handshakes_cost_no_worker(tmp_path: Path, ca: TestCA) -> None:
    """Catches: a garbage handshake or a stalled one blocking or killing the worker; no
    client_header_timeout on the handshake; failures not logged at info."""
    port = free_port()
    cfg = three_servers(ca, port, default_extra='client_header_timeout = "1s"')
    with LB(tmp_path, cfg, port) as lb:
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled.sendall(b"\x16\x03\x01\x00\x50")  # a ClientHello header, then nothing
        with socket.create_connection(("127.0.0.1", port), timeout=10) as garbage:
            garbage.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
            assert garbage.recv(4096) is not None  # an alert or EOF, never a hang
        assert tls_get(port, client_context(ca), "a.test", "a.test")[1:] == (200, b"a")
        stalled.settimeout(15)
        assert stalled.recv(10) == b""  # closed by client_header_timeout
        stalled.close()
        wait_for(lambda: "client timed out while SSL handshaking" in lb.output(), what="timeout log")
        log = lb.output()
        assert "[info]" in log and "SSL_do_handshake() failed" in log
        assert len(lb.workers()) == 1


def test_reload_picks_up_renewed_certificates(tmp_path: Path, ca: TestCA) -> None:
    """Catches: certificates read once at startup (a reload keeps serving the old one),
    or a reload dropping an open keep-alive TLS connection."""
    port = free_port()
    certs = tmp_path / "live"
    certs.mkdir()
    renewal = TestCA(tmp_path / "ca2")  # a renewed chain: different issuer, same name
    old = ca.dir / "a.test-rsa"
    shutil.copy(f"{old}.crt", certs / "a.crt")
    shutil.copy(f"{old}.key", certs / "a.key")
    cfg = f"""
workers = 1
error_log = "error.log"
[http]
access_log = "off"
[[http.servers]]
listen = ["127.0.0.1:{port} ssl"]
ssl_certificate = ["{certs}/a.crt"]
ssl_certificate_key = ["{certs}/a.key"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
"""
    trusting_both = client_context(ca)
    trusting_both.load_verify_locations(str(renewal.cert))
    with LB(tmp_path, cfg, port) as lb:
        kept = Tls(port, trusting_both, "a.test")
        try:
            assert kept.get("a.test")[0] == 200
            issuer = dict(x[0] for x in kept.sock.getpeercert()["issuer"])["commonName"]
            assert issuer == "prefork-lb test CA"
            old_workers = {p.pid for p in lb.workers()}
            new = renewal.issue("a.test")
            shutil.copy(new.cert, certs / "a.crt")
            shutil.copy(new.key, certs / "a.key")
            # A request on its way across the reload: its head starts before and ends after
            # (an idle keep-alive connection may be closed by the draining worker after 1 s,
            # worker.py DRAIN_IDLE_CLOSE_S; one with a request started never is).
            kept.sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
            assert lb.signal("reload").returncode == 0
            wait_for(lambda: {p.pid for p in lb.workers()} - old_workers, what="new worker")

            def new_issuer() -> bool:
                conn = Tls(port, trusting_both, "a.test")
                try:
                    return bool(
                        conn.sock.getpeercert()["serialNumber"] != kept.sock.getpeercert()["serialNumber"]
                    )
                finally:
                    conn.close()

            wait_for(new_issuer, what="the renewed certificate")
            kept.sock.sendall(b"\r\n")  # the old worker still answers it
            resp = http.client.HTTPResponse(kept.sock)  # type: ignore[arg-type]
            resp.begin()
            assert (resp.status, resp.read()) == (200, b"ok")
            assert resp.getheader("connection") == "close"
        finally:
            kept.close()


def test_proxied_keepalive_bodies_over_tls(tmp_path: Path, ca: TestCA) -> None:
    """Catches: partial TLS writes or reads losing bytes on large bodies both ways, and
    keep-alive broken on TLS connections (several requests, one handshake)."""
    port = free_port()
    with Backend() as be:
        cfg = f"""
workers = 1
error_log = "error.log"
[http]
access_log = "off"
[http.upstreams.backend]
servers = [{{ address = "{be.addrs[0]}" }}]
"""
        location = 'proxy_pass = "http://backend"\nclient_max_body_size = "10m"'
        cfg += tls_server(ca, "a.test", f'"127.0.0.1:{port} ssl"', location).replace('log_format = "t"', "")
        with LB(tmp_path, cfg, port):
            conn = Tls(port, client_context(ca), "a.test")
            for size in (10, 3_000_000, 70_000):
                status, _, body = conn.get("a.test", f"/?size={size}")
                assert status == 200 and len(body) == size
                assert body[:32] == (b"0123456789abcdef" * 2)[: min(32, size)]
            payload = os.urandom(2_500_000)
            head = b"POST /?echo=1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(payload)
            conn.sock.sendall(head + payload)
            resp = http.client.HTTPResponse(conn.sock)  # type: ignore[arg-type]
            resp.begin()
            import hashlib
            import json

            echo = json.loads(resp.read())
            assert echo["body_len"] == len(payload)
            assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
            conn.close()


def test_stream_tls_termination(tmp_path: Path, ca: TestCA) -> None:
    """Catches: ``ssl`` on a stream listen ignored (bytes relayed still encrypted), and the
    TLS client's close not reaching the upstream."""
    port, http_port = free_port(), free_port()
    echo = TcpEcho()
    cfg = f"""
workers = 1
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
[[http.servers]]
listen = ["127.0.0.1:{http_port}"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
[stream]
access_log = "stream.log"
[[stream.servers]]
listen = ["127.0.0.1:{port} ssl"]
proxy_pass = "{echo.addr}"
ssl_certificate = ["{ca.dir}/b.test-rsa.crt"]
ssl_certificate_key = ["{ca.dir}/b.test-rsa.key"]
ssl_handshake_timeout = "1s"
"""
    try:
        with LB(tmp_path, cfg, http_port) as lb:
            wait_for(lambda: accepts(port), what="stream listener")
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s = client_context(ca).wrap_socket(raw, server_hostname="b.test")
            assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == "b.test"
            f = s.makefile("rb")
            assert f.readline() == f"{echo.port}\n".encode()
            s.sendall(b"x" * 100_000)
            assert f.read(100_000) == b"x" * 100_000
            socket.socket.shutdown(s, socket.SHUT_WR)  # a FIN, the TLS state kept for reading
            assert f.readline() == b"EOF 100000\n"
            assert f.read() == b""  # the upstream closed: close_notify, then EOF
            s.close()
            stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
            stalled.sendall(b"\x16\x03\x01")
            assert stalled.recv(10) == b""  # ssl_handshake_timeout
            stalled.close()
            wait_for(lambda: "client timed out while SSL handshaking" in lb.output(), what="timeout log")
    finally:
        echo.close()


def nginx_tls_conf(ca: TestCA, port: int) -> str:
    def server(name: str, extra: str = "", ec: bool = False) -> str:
        certs = "".join(
            f"ssl_certificate {ca.dir}/{name}-{k}.crt;\nssl_certificate_key {ca.dir}/{name}-{k}.key;\n"
            for k in (("rsa", "ec") if ec else ("rsa",))
        )
        return f"""
    server {{
        listen 127.0.0.1:{port} ssl{extra};
        server_name {name};
        ssl_protocols TLSv1.2 TLSv1.3;
{certs}
        location / {{ return 200 "{name.split(".")[0]}"; }}
    }}"""

    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path tmp-body;
    proxy_temp_path tmp-proxy;
{server("default.test", " default_server")}
{server("a.test", ec=True)}
{server("b.test")}
}}
"""


def tls_probes(port: int, ca: TestCA) -> list[object]:
    """What the differential compares: certificate and server per (SNI, Host), and the
    plain-HTTP answer's status line, Connection and explanation."""
    ctx = client_context(ca)
    out: list[object] = []
    for sni, host in (
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("unknown.test", "unknown.test"),
        (None, "a.test"),
        (None, "nothing.test"),
        ("b.test", "a.test"),
        ("a.test", "b.test"),
    ):
        out.append((sni, host, tls_get(port, ctx, sni, host)))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    out.append((lines[0], [h for h in lines if h.lower().startswith(b"connection:")]))
    out.append([line for line in body.split(b"\r\n") if b"center>" in line and b"<hr>" not in line])
    out.append(body.split(b"\r\n")[1])  # the <title>
    return out


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_nginx_differential_sni_default_server_and_plain_http(tmp_path: Path, ca: TestCA) -> None:
    """nginx 1.22 as the oracle: the certificate and the server block for each (SNI, Host)
    pair, including no SNI and unknown names, and the 400 for plain HTTP on the TLS port.
    Catches any divergence in SNI/default-server selection or in that answer."""
    assert NGINX is not None
    port = free_port()
    ndir = tmp_path / "nginx"
    ndir.mkdir()
    (ndir / "nginx.conf").write_text(nginx_tls_conf(ca, port))
    proc = subprocess.Popen(
        [NGINX, "-p", str(ndir), "-c", str(ndir / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: accepts(port), what="nginx to listen")
        expected = tls_probes(port, ca)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    port = free_port()
    (tmp_path / "lb").mkdir()
    with LB(tmp_path / "lb", three_servers(ca, port), port):
        got = tls_probes(port, ca)
    assert got == expected


def test_config_test_names_a_key_that_does_not_match(tmp_path: Path, ca: TestCA) -> None:
    """``prefork-lb -t`` (what a certbot deploy hook runs before reloading): a renewed
    certificate deployed with the old key fails, naming the config file, the key path and
    both PEM files. Catches contexts built only in the workers (``-t`` would pass)."""
    port = free_port()
    conf = tmp_path / "lb.toml"
    conf.write_text(three_servers(ca, port).replace("a.test-ec.key", "b.test-rsa.key"))
    out = run_cli("-t", "-c", str(conf))
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert f"{conf}: http.servers[1].ssl_certificate_key[1]" in text, text
    assert f'"{ca.dir}/b.test-rsa.key" does not match the certificate "{ca.dir}/a.test-ec.crt"' in text
    conf.write_text(three_servers(ca, port))
    assert run_cli("-t", "-c", str(conf)).returncode == 0


def test_make_run_demo_serves_https_config(tmp_path: Path) -> None:
    """``make run``'s HTTPS demo: run_demo.py makes the self-signed certificate in the
    prefix on first run (and keeps it after), and conf/demo-https.toml passes ``-t`` with
    it. Catches a demo config pointing at a committed or missing certificate."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "run_demo", Path(__file__).parents[2] / "scripts/run_demo.py"
    )
    assert spec is not None and spec.loader is not None
    run_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_demo)
    crt = Path(run_demo.ensure_demo_certificate(str(tmp_path)))
    first = crt.read_bytes()
    assert Path(run_demo.ensure_demo_certificate(str(tmp_path))).read_bytes() == first  # kept
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(crt)], capture_output=True, text=True
    )
    assert "DNS:localhost" in text.stdout and "IP Address:127.0.0.1" in text.stdout
    result = run_cli("-t", "-c", "conf/demo-https.toml", "-p", str(tmp_path))
    assert result.returncode == 0, result.stderr


def test_stream_ssl_preread_routes_by_sni_without_terminating(tmp_path: Path, ca: TestCA) -> None:
    """``ssl_preread = true`` + ``hash = "$ssl_preread_server_name"``: the stream server
    reads the ClientHello, picks the upstream by SNI, and relays the untouched TLS bytes to
    it (here the LB's own HTTPS listeners, so the client's handshake completes end to end).
    Catches: preread bytes lost or not forwarded (the handshake fails), the variables empty,
    the hash not seeing them (one name going to both upstreams), a plain client stuck."""
    port, h1, h2 = free_port(), free_port(), free_port()
    cfg = (
        f"""
workers = 1
error_log = "error.log"
[http]
access_log = "off"
[http.log_formats]
t = '{LOG}'
[stream.log_formats]
pre = '$ssl_preread_server_name|$ssl_preread_protocol|$ssl_preread_alpn_protocols|$upstream_addr|$status'
[stream.upstreams.by_sni]
method = "hash"
hash = "$ssl_preread_server_name"
servers = [{{ address = "127.0.0.1:{h1}" }}, {{ address = "127.0.0.1:{h2}" }}]
[[stream.servers]]
listen = ["127.0.0.1:{port}"]
proxy_pass = "by_sni"
ssl_preread = true
preread_timeout = "2s"
access_log = "stream.log"
log_format = "pre"
"""
        + tls_server(
            ca, "a.test", f'"127.0.0.1:{h1} ssl", "127.0.0.1:{h2} ssl"', 'return = "200 a $server_port"'
        )
        + tls_server(
            ca, "b.test", f'"127.0.0.1:{h1} ssl", "127.0.0.1:{h2} ssl"', 'return = "200 b $server_port"'
        )
    )
    ctx = client_context(ca)
    ctx.set_alpn_protocols(["http/1.1"])
    with LB(tmp_path, cfg, h1):
        wait_for(lambda: accepts(port), what="stream listener")
        answers = {name: {tls_get(port, ctx, name, name) for _ in range(4)} for name in ("a.test", "b.test")}
        for name, got in answers.items():
            assert len(got) == 1, got  # one name, one upstream
            cn, status, body = next(iter(got))
            assert (cn, status) == (name, 200) and body.startswith(name[0].encode() + b" ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS: relayed as is
            assert b"400" in plain.recv(4096).split(b"\r\n")[0]  # the TLS port's plain-HTTP answer
        log = tmp_path / "stream.log"

        def proxied() -> list[list[str]]:  # accepts()'s probes have no upstream: left out
            rows = [line.split("|") for line in log.read_text().splitlines()] if log.exists() else []
            rows = [r for r in rows if r[3] != "-"]
            return rows if len(rows) >= 9 else []

        rows = wait_for(proxied, what="9 proxied sessions logged")
    seen = sorted(tuple(r[:3]) for r in rows)
    assert (
        seen
        == [("-", "-", "-")]
        + [("a.test", "TLSv1.3", "http/1.1")] * 4
        + [("b.test", "TLSv1.3", "http/1.1")] * 4
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_root_only_key_works_after_the_privilege_drop(tmp_path: Path, ca: TestCA) -> None:
    """The key is 0600 root and the workers run as nobody: handshakes still work because
    the master loaded it before fork. Catches a context (or a reload's) built in the worker."""
    import pwd

    tmp_path.chmod(0o755)  # the worker user must reach its log files
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    for ext in ("crt", "key"):
        shutil.copy(ca.dir / f"a.test-rsa.{ext}", secret / f"a.{ext}")
    (secret / "a.key").chmod(0o600)
    port = free_port()
    cfg = f"""
workers = 1
user = "nobody"
error_log = "error.log"
[http]
access_log = "off"
[[http.servers]]
listen = ["127.0.0.1:{port} ssl"]
ssl_certificate = ["{secret}/a.crt"]
ssl_certificate_key = ["{secret}/a.key"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
"""
    with LB(tmp_path, cfg, port) as lb:
        assert lb.workers()[0].uids().effective == pwd.getpwnam("nobody").pw_uid
        assert tls_get(port, client_context(ca), "a.test", "a.test") == ("a.test", 200, b"ok")
        old = {p.pid for p in lb.workers()}
        assert lb.signal("reload").returncode == 0
        wait_for(lambda: {p.pid for p in lb.workers()} - old, what="new worker")
        assert tls_get(port, client_context(ca), "a.test", "a.test") == ("a.test", 200, b"ok")


def test_stream_tls_variables_and_required_client_certificate(tmp_path: Path, ca: TestCA) -> None:
    """A TLS stream server logs $ssl_protocol, $ssl_client_verify and $ssl_client_s_dn;
    with ``ssl_verify_client = "on"`` a client without a certificate never reaches the
    upstream (nginx: session status 400). Catches the verify mode "optional" (needed at the
    TLS level, tls/contexts.py rule 3) letting certificate-less clients through."""
    port, http_port = free_port(), free_port()
    echo = TcpEcho()
    client = ca.dir / "client-user-rsa"
    cfg = f"""
workers = 1
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "off"
[[http.servers]]
listen = ["127.0.0.1:{http_port}"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
[stream.log_formats]
v = '$status|$ssl_protocol|$ssl_client_verify|$ssl_client_s_dn|$upstream_addr'
[[stream.servers]]
listen = ["127.0.0.1:{port} ssl"]
proxy_pass = "{echo.addr}"
ssl_certificate = ["{ca.dir}/b.test-rsa.crt"]
ssl_certificate_key = ["{ca.dir}/b.test-rsa.key"]
ssl_client_certificate = "{ca.cert}"
ssl_verify_client = "on"
access_log = "stream.log"
log_format = "v"
"""
    with_cert = client_context(ca)
    with_cert.load_cert_chain(f"{client}.crt", f"{client}.key")
    try:
        with LB(tmp_path, cfg, http_port) as lb:
            wait_for(lambda: accepts(port), what="stream listener")
            s = with_cert.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert s.recv(100) == f"{echo.port}\n".encode()
            s.close()
            s = client_context(ca).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
            try:
                assert s.recv(100) == b""  # closed, nothing from the upstream
            except (ssl.SSLError, OSError):
                pass  # or the close comes as an error, depending on timing
            s.close()
            log = tmp_path / "stream.log"

            def sessions() -> list[str]:
                lines = log.read_text().splitlines() if log.exists() else []
                return sorted(line for line in lines if "|TLSv1.3|" in line)

            rows = wait_for(lambda: len(sessions()) >= 2 and sessions(), what="two TLS sessions logged")
            assert "client sent no required SSL certificate" in lb.output()
        assert rows == [
            f"200|TLSv1.3|SUCCESS|CN=client-user,O=prefork-lb tests|{echo.addr}",
            "400|TLSv1.3|NONE|-|-",
        ]
    finally:
        echo.close()


def test_421_when_client_certificates_and_host_disagree_with_sni(tmp_path: Path, ca: TestCA) -> None:
    """nginx 1.22 (nginx-semantics-2.md T5): with client certificates verified, a request
    whose Host selects another server than SNI did gets 421 Misdirected Request (a client
    could otherwise present a certificate checked for one vhost to another). Without SNI,
    or with Host and SNI agreeing, it is served. Catches the check missing."""
    port = free_port()
    verify = f'ssl_client_certificate = "{ca.cert}"\nssl_verify_client = "optional"'
    cfg = (
        f"""
error_log = "error.log"
[http]
access_log = "off"
[http.log_formats]
t = '{LOG}'
"""
        + tls_server(ca, "default.test", f'"127.0.0.1:{port} ssl"', 'return = "200 default"', verify)
        + tls_server(ca, "a.test", f'"127.0.0.1:{port} ssl"', 'return = "200 a"', verify)
    )
    ctx = client_context(ca)
    with LB(tmp_path, cfg, port):
        assert tls_get(port, ctx, "a.test", "a.test")[1:] == (200, b"a")
        _, status, _ = tls_get(port, ctx, "a.test", "default.test")
        assert status == 421
        assert tls_get(port, ctx, None, "a.test")[1:] == (200, b"a")
        assert tls_get(port, ctx, "default.test", "default.test")[1:] == (200, b"default")


def _curl_tls(port: int, ca: TestCA, name: str, *extra: str) -> tuple[int, str, list[str]]:
    """curl's exit status, body, and what it says of the handshake (protocol, cipher, subject)."""
    out = subprocess.run(
        ["curl", "-sSv", "--cacert", str(ca.cert), "--resolve", f"{name}:{port}:127.0.0.1", *extra,
         f"https://{name}:{port}/"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    seen = [
        line.strip("* ").strip()
        for line in out.stderr.splitlines()
        if "SSL connection using" in line or line.lstrip("* ").startswith(("subject:", "issuer:"))
    ]
    return out.returncode, out.stdout, seen


@pytest.mark.nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_nginx_conf_https_servers_converted_as_nginx_serves_them(tmp_path: Path, ca: TestCA) -> None:
    """One nginx.conf, run by nginx and by prefork-lb (``-c nginx.conf``, converted): two
    https servers on one address picked by SNI, with an http-level ssl_protocols and
    ssl_ciphers. curl sees the same certificate subject, protocol, cipher and answer per
    name, and a TLS 1.3-only client fails on both. Catches: ``listen ... ssl`` or ssl_*
    skipped by the converter (the old one: no server left), or the http-level protocols and
    ciphers not reaching the servers (prefork-lb's defaults would negotiate TLS 1.3)."""
    from tests.nginx_conf import Nginx, lb_from_conf, scenario

    def conf(port: int) -> str:
        def server(name: str, extra: str = "") -> str:
            return f"""
    server {{
        listen 127.0.0.1:{port} ssl{extra};
        server_name {name};
        ssl_certificate {ca.dir}/{name}-rsa.crt;
        ssl_certificate_key {ca.dir}/{name}-rsa.key;
        location / {{ return 200 "{name.split(".")[0]}"; }}
    }}"""

        return scenario(f"""
    access_log off;
    ssl_protocols TLSv1.2;
    ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256;
{server("a.test", " default_server")}
{server("b.test")}
""")

    def probes(port: int) -> list[tuple[int, str, list[str]]]:
        out = [_curl_tls(port, ca, name) for name in ("a.test", "b.test")]
        code, _, _ = _curl_tls(port, ca, "b.test", "--tlsv1.3")
        out.append((code, "", []))
        return out

    port = free_port()
    with Nginx(tmp_path / "nginx", port, conf(port)):
        expected = probes(port)
    port = free_port()
    with lb_from_conf(tmp_path / "lb", conf(port), port):
        got = probes(port)
    assert expected[0][:2] == (0, "a") and expected[1][:2] == (0, "b") and expected[2][0] != 0, expected
    assert "SSL connection using TLSv1.2 / ECDHE-RSA-AES128-GCM-SHA256" in expected[1][2], expected
    assert [line for line in expected[1][2] if "CN=b.test" in line], expected
    assert got == expected
