"""Hostile HTTP/2 clients (issue 20) against nginx 1.22 and prefork-lb, in the same run.

Every case of ``tests/h2_hostile.py`` runs against both servers, each listening twice on one
server block (``listen P http2`` prior knowledge, ``listen Q ssl http2`` ALPN), in front of
the same real backend (scripts/demo_backend.py). nginx's answer is asserted exactly as it
was recorded (docs/http2.md's table), so the table cannot silently go stale; prefork-lb's
answer is asserted against the rule we chose, which is nginx's wherever nginx follows the
RFC and the RFC's where nginx 1.22 is lax (it serves ``connection:``/``te: gzip`` and a
pseudo-header after a regular one; RFC 9113 8.2.2/8.3 call those requests malformed).
What each assertion catches is said in the ``EXPECT`` row.

The flood cases also bound the cost (CPU seconds and peak RSS growth of the worker, and
requests that reached the backend), which is where a server without the mitigations fails:
a rapid reset then sends thousands of requests upstream, a header list is buffered whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
import pytest

from tests import h2_hostile as hh
from tests.backends import Backend, free_port
from tests.harness import LB, wait_for
from tests.nginx_conf import NGINX, Nginx, scenario
from tests.tls_certs import TestCA

SEND_TIMEOUT_S = 3


@dataclass
class Target:
    name: str
    plain: int
    tls: int
    pids: list[int]
    backend: Backend


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    ca = TestCA(tmp_path_factory.mktemp("h2ca"))
    ca.issue("localhost", "ec")
    return ca


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend(1) as be:
        yield be


def nginx_conf(plain: int, tls: int, ca: TestCA, upstream: str) -> str:
    return scenario(
        f"""
    access_log access.log;
    send_timeout {SEND_TIMEOUT_S}s;
    client_body_timeout {SEND_TIMEOUT_S}s;
    upstream be {{ server {upstream}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{plain} http2;
        listen 127.0.0.1:{tls} ssl http2;
        ssl_certificate {ca.dir}/localhost-ec.crt;
        ssl_certificate_key {ca.dir}/localhost-ec.key;
        location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
"""
    )


def lb_conf(plain: int, tls: int, ca: TestCA, upstream: str) -> str:
    return f"""
workers = 1
error_log = "error.log"
error_log_level = "info"
[http]
access_log = "access.log"
send_timeout = "{SEND_TIMEOUT_S}s"
client_body_timeout = "{SEND_TIMEOUT_S}s"
[http.upstreams.be]
keepalive = 8
servers = [{{ address = "{upstream}" }}]

[[http.servers]]
listen = ["127.0.0.1:{plain}", "127.0.0.1:{tls} ssl"]
http2 = true
ssl_certificate = ["{ca.dir}/localhost-ec.crt"]
ssl_certificate_key = ["{ca.dir}/localhost-ec.key"]
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://be"
"""


@pytest.fixture(scope="module", params=["nginx", "prefork-lb"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ca: TestCA, backend: Backend
) -> Iterator[Target]:
    plain, tls = free_port(), free_port()
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "nginx":
        if NGINX is None:
            pytest.skip("nginx is not installed (/usr/sbin/nginx)")
        with Nginx(directory, plain, nginx_conf(plain, tls, ca, backend.addrs[0])) as ngx:
            assert ngx.proc is not None
            yield Target(
                "nginx", plain, tls, [c.pid for c in psutil.Process(ngx.proc.pid).children()], backend
            )
    else:
        with LB(directory, lb_conf(plain, tls, ca, backend.addrs[0]), plain) as lb:
            yield Target("prefork-lb", plain, tls, [w.pid for w in lb.workers()], backend)


def requests_at(be: Backend) -> int:
    return int(be.stats()["requests"])


# ------------------------------------------------------------------------ expectations


def goaway(code: int) -> Callable[[hh.Outcome], bool]:
    return lambda o: o.answer.goaway == code and o.answer.closed


def stream_refused(o: hh.Outcome) -> bool:
    """The malformed stream gets 400 or RST_STREAM PROTOCOL_ERROR; the connection lives on."""
    sid = o.extra["stream"]
    refused = o.answer.statuses.get(sid) == 400 or o.answer.resets.get(sid) == hh.PROTOCOL_ERROR
    return refused and o.extra["next_ok"] == 1 and o.answer.goaway is None


def stream_reset(o: hh.Outcome) -> bool:
    return o.answer.resets.get(o.extra["stream"]) == hh.PROTOCOL_ERROR and o.extra["next_ok"] == 1


def served(o: hh.Outcome) -> bool:
    return o.answer.statuses.get(o.extra["stream"]) == 200 and o.extra["next_ok"] == 1


def flood_cut(o: hh.Outcome) -> bool:
    """A control flood ends with the connection closed (nginx: "http2 flood detected", its GOAWAY
    usually lost in the reset of a connection with unread input) or at least unread by the server."""
    return o.answer.closed and (o.answer.goaway in (None, hh.ENHANCE_YOUR_CALM))


def zero_window_ended(o: hh.Outcome) -> bool:
    """Head sent, no DATA (the window is 0), the stream or connection ended at send_timeout."""
    ended_ms = o.extra["closed_after_ms"]
    return (
        o.extra["data"] == 0
        and (o.answer.resets.get(1) is not None or o.answer.closed)
        and SEND_TIMEOUT_S * 1000 - 200 <= ended_ms <= SEND_TIMEOUT_S * 1000 + 3000
    )


# case -> (nginx 1.22 as recorded, prefork-lb's rule, what the prefork-lb rule catches)
EXPECT: dict[str, tuple[Callable[[hh.Outcome], bool], Callable[[hh.Outcome], bool], str]] = {
    "rapid_reset": (
        lambda o: o.answer.goaway == hh.NO_ERROR and o.answer.reset_counts().get(hh.REFUSED_STREAM, 0) > 100,
        goaway(hh.ENHANCE_YOUR_CALM),
        "resets not counted: the flood runs to its end, each stream a request upstream",
    ),
    "continuation_flood": (
        goaway(hh.ENHANCE_YOUR_CALM),
        lambda o: o.answer.goaway in (hh.PROTOCOL_ERROR, hh.ENHANCE_YOUR_CALM) and o.answer.closed,
        "a header block buffered without end",
    ),
    "hpack_bomb": (
        goaway(hh.ENHANCE_YOUR_CALM),
        goaway(hh.ENHANCE_YOUR_CALM),
        "an HPACK bomb decoded (16 MB from 4 KB) instead of stopped at the list bound",
    ),
    "settings_flood": (flood_cut, flood_cut, "SETTINGS ACKs queued without bound"),
    "ping_flood": (flood_cut, flood_cut, "PING ACKs queued without bound"),
    "zero_window": (zero_window_ended, zero_window_ended, "a stalled stream kept (and its upstream) forever"),
    "invalid_pseudo": (stream_refused, stream_refused, "an unknown pseudo-header accepted"),
    "pseudo_after_regular": (served, stream_refused, "a pseudo-header after a regular one accepted"),
    "missing_path": (stream_refused, stream_refused, "a request without :path accepted"),
    "uppercase_name": (stream_reset, stream_refused, "an uppercase header name accepted"),
    "connection_header": (served, stream_refused, "a connection-specific header accepted"),
    "te_gzip": (served, stream_refused, "te other than trailers accepted"),
    "content_length_mismatch": (
        stream_refused,
        # checked per stream (h2/connection.py rule 10): 400 on that stream, as nginx, not
        # h2's connection error (GOAWAY PROTOCOL_ERROR), which would end the other streams too
        stream_refused,
        "a body shorter than content-length accepted, or the connection ended for it",
    ),
    "connect": (
        stream_refused,
        lambda o: o.answer.statuses.get(1) == 405 and o.extra["next_ok"] == 1,  # as HTTP/1.1 CONNECT
        "CONNECT proxied",
    ),
    "oversized_header": (
        goaway(hh.ENHANCE_YOUR_CALM),
        goaway(hh.ENHANCE_YOUR_CALM),
        "a 20 KB field accepted",
    ),
    "oversized_list": (goaway(hh.ENHANCE_YOUR_CALM), goaway(hh.ENHANCE_YOUR_CALM), "a 40 KB list accepted"),
    "hpack_table_growth": (
        lambda o: o.extra["ok"] == 300 and o.extra["table_bytes"] <= 4096,
        # encoder.py indexes no response field at all, as nginx 1.22
        lambda o: o.extra["ok"] == 300 and o.extra["table_bytes"] == 0,
        "the response encoder's table sized by the client's SETTINGS (97 KB after 300 responses)",
    ),
    "tiny_windows": (
        lambda o: o.answer.statuses.get(1) == 200 and o.extra["data"] > 0,  # nginx serves byte by byte
        goaway(hh.ENHANCE_YOUR_CALM),
        "WINDOW_UPDATEs of 1 byte at line rate (~6 us of work each here) not counted as a flood",
    ),
    "oversized_frame": (
        lambda o: o.answer.goaway is None,  # nginx advertises MAX_FRAME_SIZE 16777215: legal there
        lambda o: o.answer.goaway == hh.FRAME_SIZE_ERROR,
        "a frame over the advertised 16 KiB buffered whole (up to 16 MiB per connection)",
    ),
    "window_overflow": (
        lambda o: o.answer.goaway == hh.FLOW_CONTROL_ERROR,
        lambda o: o.answer.goaway == hh.FLOW_CONTROL_ERROR,
        "a window over 2^31-1 accepted",
    ),
}

# cost bounds for prefork-lb (nginx's own figures are in docs/http2.md): CPU seconds, RSS KiB
COST_BOUNDS = {"cpu_s": 3.0, "rss_kib": 32 * 1024}


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
@pytest.mark.parametrize("case", list(EXPECT))
def test_hostile(target: Target, case: str, tls: bool) -> None:
    """See EXPECT: nginx's recorded answer, prefork-lb's rule and what that rule catches."""
    before = requests_at(target.backend)
    open_before = int(target.backend.stats()["open"])
    out = hh.run(case, target.tls if tls else target.plain, tls, target.pids)
    reached = requests_at(target.backend) - before
    nginx_rule, lb_rule, catches = EXPECT[case]
    rule = nginx_rule if target.name == "nginx" else lb_rule
    assert rule(out), f"{target.name} {case}: {out.line()} (the rule catches: {catches})"
    if case == "rapid_reset":
        # nginx: none reached the upstream. prefork-lb before stream.py checked for a reset
        # before starting: ~100 upstream requests (and connections) per flood
        assert reached <= 10, f"{reached} of {out.extra['opened']} reset streams reached the backend"
    if case == "zero_window" and target.name == "prefork-lb":
        # the stalled response's upstream connection is closed, not kept (nor pooled half-read).
        # nginx is not held to it: it spools the whole body to a temp file first, and when that
        # finishes before send_timeout its (fully read) connection rightly stays in the
        # keepalive pool: closed or pooled depends on the machine's speed
        wait_for(
            lambda: int(target.backend.stats()["open"]) <= open_before, what="the upstream connection closed"
        )
    if target.name == "prefork-lb":
        assert out.cpu_s <= COST_BOUNDS["cpu_s"], out.line()
        assert out.rss_growth_kib <= COST_BOUNDS["rss_kib"], out.line()
    # the worker survived and serves the next client
    assert all(psutil.pid_exists(p) for p in target.pids), f"{target.name} worker died on {case}"


def test_zero_window_on_128_streams_is_bounded(target: Target) -> None:
    """128 streams of 10 MiB each on one connection whose windows never open: prefork-lb holds
    one upstream read per stream (not the bodies: 1.3 GB), ends every stream at send_timeout
    and closes their upstream connections. Catches: a relay that keeps reading upstream into
    memory while the client's window is shut (the RSS bound), or stalled streams kept.
    nginx is not run here: it spools the 1.3 GB to temp files (~15 s, 4 s CPU; docs/http2.md)."""
    if target.name == "nginx":
        pytest.skip("nginx spools every body to disk here (~15 s); its figures are in docs/http2.md")
    open_before = int(target.backend.stats()["open"])
    out = hh.run("zero_window_streams", target.plain, False, target.pids)
    assert out.answer.reset_counts() == {hh.INTERNAL_ERROR: 128}, out.line()
    assert out.extra["data"] == 0, out.line()
    assert SEND_TIMEOUT_S * 1000 - 200 <= out.extra["closed_after_ms"] <= SEND_TIMEOUT_S * 1000 + 5000, (
        out.line()
    )
    assert out.rss_growth_kib <= 64 * 1024, out.line()  # measured: ~25 MiB (~200 KiB per stream)
    wait_for(
        lambda: int(target.backend.stats()["open"]) <= open_before, what="the 128 upstream connections closed"
    )


def test_slow_body_on_128_streams(target: Target) -> None:
    """128 POSTs on one connection announcing a body that never comes. Both end every stream
    at client_body_timeout (3 s here). nginx buffers request bodies before it connects
    upstream, so nothing reaches the backend; prefork-lb streams bodies (as HTTP/1.1 here:
    docs/config.md client_body_buffer_size), so each waiting stream holds an upstream
    connection until then; the assertion is that they are all released, and the figure
    (``held``) goes to docs/http2.md. Catches: stalled streams kept past the timeout, or
    their upstream connections leaked."""
    open_before = int(target.backend.stats()["open"])
    out = hh.slow_body(target.plain, during=lambda: int(target.backend.stats()["open"]))
    ended = len(out.answer.resets) + len(out.answer.ended - set(out.answer.resets))
    assert ended == 128 or out.answer.closed, out.line()
    assert out.extra["ended_ms"] <= (SEND_TIMEOUT_S + 5) * 1000, out.line()
    if target.name == "nginx":
        assert out.extra["held"] == open_before, out.line()  # nothing upstream yet
    else:
        assert out.extra["held"] <= open_before + 128, out.line()
    wait_for(lambda: int(target.backend.stats()["open"]) <= open_before, what="upstream connections released")
