"""The cache in the dashboard (headless Chromium), against the real master.

Skipped like test_dashboard_browser.py (whose browser fixture it uses) when Chromium or
selenium is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.backends import free_port
from tests.harness import LB, wait_for
from tests.integration.test_cache_store import caches, fill, zone_toml
from tests.integration.test_dashboard_browser import By, browser, wait_page  # noqa: F401 (fixture)


def config(port: int, api_port: int, zones: str) -> str:
    return f"""
workers = 2
error_log = "error.log"
[http]
access_log = "off"
{zones}
[[http.servers]]
listen = ["127.0.0.1:{port}"]
  [[http.servers.locations]]
  match = "/"
  return = "200 ok"
[[http.servers]]
listen = ["127.0.0.1:{api_port}"]
  [[http.servers.locations]]
  match = "/api/"
  api = true
  [[http.servers.locations]]
  match = "/dashboard"
  dashboard = true
"""


def test_dashboard_shows_the_caches(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    """The HTTP caches table: one row per zone with its state, size and entries."""
    cache = tmp_path / "c"
    fill(cache, [b"a", b"b"])
    port, api_port = free_port(), free_port()
    with LB(tmp_path, config(port, api_port, zone_toml("c", cache)), port):
        wait_for(lambda: not caches(api_port)["c"]["cold"], what="the loader")
        browser.get(f"http://127.0.0.1:{api_port}/dashboard/")
        rows_js = (
            "return [...document.querySelectorAll('tr.cache')].map((tr) => "
            "[tr.dataset.cache, ...[...tr.cells].map((c) => c.textContent)]);"
        )
        rows = wait_page(browser, lambda d: d.execute_script(rows_js) or None, "the caches table")
        assert len(rows) == 1
        name, _, state, size, max_size, entries = rows[0][:6]
        assert (name, state, size, max_size) == ("c", "warm", "16.0 KiB", "\u2013"), rows
        assert entries.startswith("2 / ")
        assert not browser.find_elements(By.CSS_SELECTOR, "#caches-table .empty-row")
