"""Sticky sessions under the write API (issue 19): draining and adding servers at run time.

Real master with 2 workers, real backends (their body is their port), a real HTTP client.
Each request is a new connection, so both workers serve them (the access log's ``$pid``
is checked); what reached which server is read from the response body and ``$upstream_addr``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.backends import Backend, free_port
from tests.harness import LB, request, wait_for
from tests.integration.test_sticky import config, log_lines, sid


def patch(api_port: int, server_id: int, doc: dict[str, object]) -> int:
    body = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    path = f"/api/9/http/upstreams/backend/servers/{server_id}"
    return request(api_port, "PATCH", path, body=body, headers=headers)[0]


def test_patch_drain_keeps_bound_sessions_and_post_binds_new_servers(tmp_path: Path) -> None:
    """PATCH ``drain`` through the API: requests bound to the draining server keep reaching
    it (HIT) in both workers, unbound ones all go elsewhere, and the API says ``draining``.
    Then POST a third server: a cookie naming it (md5 of its ip:port) is a HIT in every
    worker with no reload.

    Catches: a runtime rebuild of the peer list that keeps the old sticky maps (the new
    server's cookie would be a MISS balanced over two servers: verified by dropping
    ``Sticky.rebuilt`` from balance/members.py), and a drain set through the API that the
    balancer ignores or that also turns bound sessions away."""
    with Backend(count=3) as be:
        a, b, c = be.addrs
        port, api_port = free_port(), free_port()
        up = (
            "[http.upstreams.backend]\n"
            'sticky = { cookie = "srv" }\n'
            f'servers = [{{ address = "{a}" }}, {{ address = "{b}" }}]\n'
        )
        cfg = config(port, api_port, up, workers=2).replace("api = true", "api = { write = true }")
        # the access log holds the proxied requests only
        api_listen = f'listen = ["127.0.0.1:{api_port}"]'
        cfg = cfg.replace(api_listen, api_listen + '\naccess_log = "off"')
        with LB(tmp_path, cfg, port) as lb:
            assert patch(api_port, 0, {"drain": True}) == 200
            peers = json.loads(request(api_port, "GET", "/api/9/http/upstreams/backend")[2])["peers"]
            assert [p["state"] for p in peers] == ["draining", "up"]

            bound = {"Cookie": f"srv={sid(a)}"}
            sent = 0

            def both_workers(headers: dict[str, str], expect: str) -> bool:
                nonlocal sent
                for _ in range(4):
                    status, _, body = request(port, "GET", "/", headers=headers)
                    assert (status, body.decode().strip()) == (200, expect.rsplit(":", 1)[1])
                    sent += 1
                return len({line[-1] for line in log_lines(lb, sent)[sent - 4 :]}) == 2

            wait_for(lambda: both_workers(bound, a), what="bound requests in both workers")
            wait_for(lambda: both_workers({}, b), what="unbound requests in both workers")

            status, _, body = request(
                api_port,
                "POST",
                "/api/9/http/upstreams/backend/servers",
                body=json.dumps({"server": c}).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert status == 201, body
            start = sent
            wait_for(lambda: both_workers({"Cookie": f"srv={sid(c)}"}, c), what="the new server's cookie")
            lines = log_lines(lb, sent)[start:]
            assert {line[3] for line in lines} == {"HIT"} and {line[2] for line in lines} == {c}
