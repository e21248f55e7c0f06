"""The dashboard in a real browser over HTTP/2 (issue 20): headless Chromium loads it from a
TLS listener with ``http2 = true`` and polls the status API on the same connection.

Chromium is driven as in test_dashboard_browser.py (Debian chromium + chromium-driver,
selenium; skipped with the reason when missing). The certificate comes from a test CA the
browser does not know, so Chromium runs with ``--ignore-certificate-errors`` (HTTP/2 itself
needs TLS in browsers; nothing else about the connection is relaxed).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, wait_for
from tests.integration.test_dashboard_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    CHROMIUM_FLAGS,
    PAGE_TIMEOUT_S,
    PEER_ROWS_JS,
    polls,
    save_screenshot,
    wait_page,
    webdriver,
)
from tests.tls_certs import TestCA

LOG = "$server_protocol|$status|$request"
NAV_PROTOCOL_JS = "return performance.getEntriesByType('navigation')[0].nextHopProtocol"
API_PROTOCOLS_JS = """
return performance.getEntriesByType('resource')
  .filter((e) => new URL(e.name).pathname.startsWith('/api/'))
  .map((e) => e.nextHopProtocol);
"""


@pytest.fixture
def h2_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """test_dashboard_browser's Chromium, trusting the test CA's certificate."""
    from selenium.webdriver.chrome.service import Service  # importable: the module above checked

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, "--ignore-certificate-errors"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-h2')}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def config(port: int, ca: TestCA, backend: str) -> str:
    return textwrap.dedent(
        f"""
        workers = 1
        error_log = "error.log"
        error_log_level = "info"
        [http]
        access_log = "access.log"
        [http.log_formats]
        t = '{LOG}'
        [http.upstreams.backend]
        servers = [{{ address = "{backend}" }}]
        [[http.servers]]
        listen = ["127.0.0.1:{port} ssl"]
        http2 = true
        log_format = "t"
        ssl_certificate = ["{ca.dir}/localhost-ec.crt"]
        ssl_certificate_key = ["{ca.dir}/localhost-ec.key"]
          [[http.servers.locations]]
          match = "/api/"
          api = true
          [[http.servers.locations]]
          match = "/dashboard"
          dashboard = true
          [[http.servers.locations]]
          match = "/"
          proxy_pass = "http://backend"
        """
    )


def test_dashboard_over_h2_in_chromium(tmp_path: Path, h2_browser: Any) -> None:
    """Chromium negotiates h2 by ALPN for the page and for every API poll it makes, and the
    page works (peer rows filled from the API). Catches: ALPN not offering h2 (the browser
    silently falls back to HTTP/1.1: nextHopProtocol "http/1.1"), the status pages broken
    when served from an h2 stream (no rows, no polls), or a log line not saying HTTP/2.0."""
    browser = h2_browser
    ca = TestCA(tmp_path / "ca")
    ca.issue("localhost", "ec")
    with Backend(1) as be:
        port = free_port()
        (tmp_path / "lb").mkdir()
        with LB(tmp_path / "lb", config(port, ca, be.addrs[0]), port) as lb:
            try:
                browser.get(f"https://localhost:{port}/dashboard")
                wait_page(browser, lambda d: polls(d) >= 2, "two API polls", lambda: polls(browser))
                rows = browser.execute_script(PEER_ROWS_JS)
                assert [r["server"] for r in rows] == [be.addrs[0]], rows
                assert browser.execute_script(NAV_PROTOCOL_JS) == "h2"
                api = browser.execute_script(API_PROTOCOLS_JS)
                assert api and set(api) == {"h2"}, api
            finally:
                save_screenshot(browser, "dashboard-h2.png")
            lines = wait_for(lambda: len(lb.access_log()) >= 3 and lb.access_log(), what="access log")
            dashboard = [line for line in lines if "/dashboard" in line]
            assert dashboard and all(line.startswith("HTTP/2.0|200|GET /dashboard") for line in dashboard), (
                lines
            )
            assert all(line.startswith("HTTP/2.0|") for line in lines), lines
