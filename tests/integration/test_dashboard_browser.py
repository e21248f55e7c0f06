"""The live dashboard in a real browser: headless Chromium polls the real status API.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium`` package
(test extra); without them the test is skipped with the reason. The final screenshot goes
to ``test-artifacts/dashboard.png`` (git-ignored), also when an assertion fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend, free_port
from tests.harness import LB, REPO, accepts, request, status_config, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"
PAGE_TIMEOUT_S = 20.0

if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(
        f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian: chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium; it is a test extra)"
)
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Without the background-networking flags Chromium keeps trying to reach Google services.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--hide-scrollbars",
)

# Every peer row as the page shows it, read in one go (rows are updated in place each second).
PEER_ROWS_JS = """
return [...document.querySelectorAll('tr.peer')].map((tr) => {
  const badge = tr.querySelector('.badge');
  return {upstream: tr.dataset.upstream, server: tr.dataset.server, state: tr.dataset.state,
          requests: tr.cells[3] ? tr.cells[3].textContent : '',
          badge: badge ? badge.className : '', colour: badge ? getComputedStyle(badge).backgroundColor : ''};
});
"""


def config(port: int, api_port: int, servers: list[str]) -> str:
    return status_config(
        port,
        api_port,
        servers,
        proxy_extra='proxy_connect_timeout = "2s"\n  proxy_read_timeout = "5s"',
        allow=True,
        status=("api", "metrics", "dashboard"),
    )


def rgb(css_colour: str) -> tuple[int, int, int]:
    m = re.match(r"rgba?\((\d+),\s*(\d+),\s*(\d+)", css_colour)
    assert m, f"not an rgb() colour: {css_colour!r}"
    r, g, b = (int(x) for x in m.groups())
    return r, g, b


def reddish(css_colour: str) -> bool:
    r, g, b = rgb(css_colour)
    return r > g and r > b


def greenish(css_colour: str) -> bool:
    r, g, b = rgb(css_colour)
    return g > r and g > b


def api_peers(api_port: int) -> dict[str, dict[str, Any]]:
    status, _, body = request(api_port, "GET", "/api/9/http/upstreams/backend")
    assert status == 200, body
    return {p["server"]: p for p in json.loads(body)["peers"]}


def api_peer_states(api_port: int) -> dict[str, str]:
    return {server: p["state"] for server, p in api_peers(api_port).items()}


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # An explicit driver path: Selenium Manager (which would go online) is never needed.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def polls(driver: Any) -> int:
    """How many polls the page has completed (it counts them in <body data-polls>)."""
    return int(driver.execute_script("return Number(document.body.dataset.polls || 0)"))


def wait_page(driver: Any, condition: Callable[[Any], Any], what: str, seen: Callable[[], Any] = str) -> Any:
    """WebDriverWait, bounded; on timeout say what was awaited and what the page showed last."""
    try:
        return WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; the page shows: {seen()}") from None


def save_screenshot(driver: Any, name: str = "dashboard.png") -> Path | None:
    """The whole page as a PNG in test-artifacts/; None when the browser cannot take one (the
    test fails on that separately, without hiding an earlier failure)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    try:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(int(height) + 80, 600), 4000))
        return path if driver.save_screenshot(str(path)) else None
    except WebDriverException:
        return None


def test_dashboard_shows_peers_and_marks_a_failed_one_unavailable(tmp_path: Path, browser: Any) -> None:
    """The page follows the API live: states, badge colours and the request counts.

    Catches: rows not updated in place after the first poll (``tr.dataset.state`` set
    once: the failed peer would stay "up"); cells not refreshed (``fillRow`` writing only
    empty cells: the requests column would stay at its first figure); polling that stops."""
    # Two Backend objects with one port each, so that one of them can be stopped on its own.
    with Backend(1, name="a") as a, Backend(1, name="b") as b:
        good, bad = a.addrs[0], b.addrs[0]
        port, api_port = free_port(), free_port()
        with LB(tmp_path, config(port, api_port, [good, bad]), port) as lb:
            wait_for(lambda: accepts(api_port), what="the API listener")
            for _ in range(10):
                assert request(port, "GET", "/")[0] == 200
            try:
                browser.get(f"http://127.0.0.1:{api_port}/dashboard")

                def rows() -> dict[str, dict[str, str]]:
                    return {r["server"]: r for r in browser.execute_script(PEER_ROWS_JS)}

                # 1. Both peers appear, up, with a green badge; the API answered every poll.
                wait_page(
                    browser,
                    lambda _: {s: r["state"] for s, r in rows().items()} == {good: "up", bad: "up"},
                    "both peers shown as up",
                    rows,
                )
                assert all(r["upstream"] == "backend" and "state-up" in r["badge"] for r in rows().values())
                assert all(greenish(r["colour"]) for r in rows().values()), rows()
                # the figures are the API's: round robin gave each peer 5 of the 10 requests
                assert {s: p["requests"] for s, p in api_peers(api_port).items()} == {good: 5, bad: 5}
                wait_page(
                    browser,
                    lambda _: {s: r["requests"] for s, r in rows().items()} == {good: "5", bad: "5"},
                    "the request counts",
                    rows,
                )
                wait_page(
                    browser,
                    lambda d: len(d.find_elements(By.CSS_SELECTOR, "#workers-table tr.worker")) == 2,
                    "both workers listed",
                )
                worker_rows = browser.find_elements(By.CSS_SELECTOR, "tr.worker")
                shown = {int(tr.get_attribute("data-pid")) for tr in worker_rows}
                assert shown == {w.pid for w in lb.workers()}
                assert browser.find_element(By.ID, "banner").is_displayed() is False

                # 2. One backend dies; with max_fails = 1 one failed attempt makes it "unavail"
                #    (the request itself is retried on the other peer and succeeds).
                b.stop()

                def failed_over() -> bool:
                    assert request(port, "GET", "/")[0] == 200
                    return api_peer_states(api_port)[bad] == "unavail"

                wait_for(failed_over, what=f"prefork-lb to mark {bad} unavailable")
                assert api_peer_states(api_port)[good] == "up"
                served = api_peers(api_port)[good]["requests"]
                assert served > 5

                # 3. The page follows: that row is unavail (or down) with a red badge.
                wait_page(
                    browser,
                    lambda _: rows()[bad]["state"] in ("unavail", "down"),
                    f"{bad} shown as unavailable",
                    rows,
                )
                row = browser.find_element(By.CSS_SELECTOR, f'tr.peer[data-server="{bad}"]')
                badge = row.find_element(By.CSS_SELECTOR, ".badge")
                state = row.get_attribute("data-state")
                assert f"state-{state}" in (badge.get_attribute("class") or "").split()
                assert badge.text == state
                colour = badge.value_of_css_property("background-color")
                assert reddish(colour), f"badge of an {state} peer should be red, is {colour}"
                good_badge = browser.find_element(By.CSS_SELECTOR, f'tr.peer[data-server="{good}"] .badge')
                assert greenish(good_badge.value_of_css_property("background-color"))
                assert browser.find_element(By.ID, "banner").is_displayed() is False
                # the live figures moved with the traffic since the first poll
                wait_page(
                    browser,
                    lambda _: rows()[good]["requests"] == str(served),
                    f"{good}'s request count to reach {served}",
                    rows,
                )

                errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
                assert not errors, f"browser console errors: {errors}"

                # A few more seconds of varied traffic, so the sparklines have something to show.
                target = polls(browser) + 5
                delays = iter(range(0, 10**6, 7))
                wait_page(
                    browser,
                    lambda d: (
                        request(port, "GET", f"/?delay={next(delays) % 40}")[0] == 200 and polls(d) >= target
                    ),
                    "the page to keep polling",
                )
            finally:
                shot = save_screenshot(browser)
            assert shot is not None and shot.stat().st_size > 10_000, "no screenshot"

            # 4. The API unreachable (a wrong base): the banner says so, and polling goes on.
            browser.get(f"http://127.0.0.1:{api_port}/dashboard?api=/no-such-api/")
            wait_page(browser, lambda d: d.find_element(By.ID, "banner").is_displayed(), "the error banner")
            assert "/no-such-api/9/http/upstreams" in browser.find_element(By.ID, "banner").text
            first = polls(browser)
            wait_page(browser, lambda d: polls(d) > first, "polling to go on after errors")


def test_dashboard_shows_active_health_check_states(tmp_path: Path, browser: Any) -> None:
    """Active health checks (issue 17): a peer whose /healthz fails is shown "unhealthy"
    (red badge), a mandatory peer not yet passed "checking" (amber badge), and the page
    follows it back to "up". Catches: the dashboard not knowing the states the API sends
    (no badge class, a green or unstyled badge), or the API never reporting them."""
    from tests.health_backend import FlipBackend

    with FlipBackend("a") as a, FlipBackend("b") as b, FlipBackend("c") as c:
        b.mode = "fail"
        c.mode = "hang"  # its first probe waits for the timeout: checking meanwhile
        port, api_port = free_port(), free_port()
        check = 'health_check = { interval = "300ms", uri = "/healthz", mandatory = true, timeout = "30s" }'
        cfg = status_config(
            port,
            api_port,
            [a.addr, b.addr, c.addr],
            proxy_extra=f'proxy_read_timeout = "5s"\n  {check}',
            allow=True,
            status=("api", "dashboard"),
        )
        with LB(tmp_path, cfg, port):
            wait_for(lambda: api_peer_states(api_port)[b.addr] == "unhealthy", what="b unhealthy")
            assert api_peer_states(api_port)[c.addr] == "checking"
            try:
                browser.get(f"http://127.0.0.1:{api_port}/dashboard")

                def rows() -> dict[str, dict[str, str]]:
                    return {r["server"]: r for r in browser.execute_script(PEER_ROWS_JS)}

                wait_page(
                    browser,
                    lambda _: (
                        {s: r["state"] for s, r in rows().items()}
                        == {a.addr: "up", b.addr: "unhealthy", c.addr: "checking"}
                    ),
                    "up, unhealthy and checking shown",
                    rows,
                )
                shown = rows()
                assert "state-unhealthy" in shown[b.addr]["badge"] and reddish(shown[b.addr]["colour"])
                r, g, bl = rgb(shown[c.addr]["colour"])
                assert "state-checking" in shown[c.addr]["badge"] and r > bl and g > bl  # amber
                assert greenish(shown[a.addr]["colour"])
                b.mode = "ok"
                wait_page(browser, lambda _: rows()[b.addr]["state"] == "up", "b back up", rows)
            finally:
                save_screenshot(browser, "dashboard-health.png")
