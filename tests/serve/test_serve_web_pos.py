"""The browser POS example (examples/web-pos) in a real headless Chromium, end to end through ``offterm serve``.

Deployed as a real one is: the page is served by the POS's own web server (here Python's http.server
on another loopback port) and calls the service cross-origin, allowed by ``[serve] cors_origins``.
Debian's ``chromium`` and ``chromium-driver`` (.ci/apt-packages.txt), driven by Selenium with the
driver given by path: nothing is downloaded at test time.  The test clicks through an online payment
and an offline one (the processor cut at the fault proxy), watches the offline status change live
from the event stream, then the upload, and checks the simulator's ledger.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_kit import terminal_config

from offterm.serve.testing import ServiceProcess
from offterm.sim.netproxy import FaultProxy
from offterm.sim.processor import SimHandle

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web-pos"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = os.environ.get("OFFTERM_WEB_POS_SCREENSHOT")  # a path: save what the page looked like


@pytest.fixture
def pos_origin() -> Iterator[str]:
    """The POS's own web server: the example folder as static files, on its own loopback port."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(EXAMPLE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (bash .ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_web_pos_takes_online_and_offline_payments_and_shows_the_status_live(
    tmp_path: Path, sim: SimHandle, proxy: FaultProxy, pos_origin: str, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
        try:
            return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _: check())
        except Exception as exc:
            logs = "\n".join(str(e) for e in browser.get_log("browser"))
            raise AssertionError(f"timed out waiting for {what}\nbrowser console:\n{logs}") from exc

    def text(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    def attr(element_id: str, name: str) -> str | None:
        return browser.find_element(By.ID, element_id).get_attribute(name)

    def row_status(intent_id: str) -> str | None:
        rows = browser.find_elements(By.CSS_SELECTOR, f'#payments tr[data-id="{intent_id}"]')
        return rows[0].get_attribute("data-status") if rows else None

    def take(amount: str, card: str | None = None) -> str:
        field = browser.find_element(By.ID, "amount")
        field.clear()
        field.send_keys(amount)
        browser.find_element(By.ID, "charge").click()
        until("the card prompt", lambda: browser.find_element(By.ID, "prompt").is_displayed())
        intent_id = str(browser.execute_script("return state.current"))
        if card:
            browser.find_element(By.CSS_SELECTOR, f'#test-card option[value="{card}"]').click()
        browser.find_element(By.ID, "present").click()
        until("the end of the reader action", lambda: not browser.find_element(By.ID, "prompt").is_displayed())
        return intent_id

    cfg = terminal_config(proxy, tmp_path / "data", cors_origins=[pos_origin])
    with ServiceProcess.start(cfg, tmp_path) as svc:
        browser.get(f"{pos_origin}/index.html")
        assert browser.title == "offterm web POS example"
        browser.find_element(By.ID, "service-url").clear()
        browser.find_element(By.ID, "service-url").send_keys(svc.url)
        browser.find_element(By.ID, "service-key").send_keys(svc.key)
        browser.find_element(By.ID, "connect").click()
        until("the event stream", lambda: text("stream-state") == "connected")
        until("the live status", lambda: attr("network", "data-status") == "online")
        assert "simulated_wisepad3" in text("reader")

        # online
        online = take("15.00")
        until("the online payment", lambda: row_status(online) == "paid")
        assert online.startswith("pi_") and "Approved" in text("result")

        # offline: the processor is cut; the badge turns from the stream, not from a poll
        proxy.set_mode("down")
        stored = take("25.00")
        until("the stored payment", lambda: row_status(stored) == "stored")
        assert stored.startswith("offpi_") and "not yet authorised" in text("result")
        until("the offline status", lambda: attr("network", "data-status") == "offline")
        until("one payment waiting", lambda: attr("network", "data-waiting") == "1")
        assert "1 payment waiting to upload ($25.00)" in text("waiting")
        if SCREENSHOT:
            browser.save_screenshot(SCREENSHOT)

        # back online: the forwarder uploads it; the stream says so
        proxy.set_mode("pass")
        until("the upload", lambda: row_status(stored) == "forwarded", timeout=60)
        until("nothing waiting", lambda: attr("network", "data-waiting") == "0")
        assert attr("network", "data-status") == "online" and text("waiting") == ""
        events = [e.get_attribute("data-type") for e in browser.find_elements(By.CSS_SELECTOR, "#events li")]
        assert events.count("payment_intent.succeeded") == 2 and "error" not in events
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe

    # exactly once, on the processor's own books: the online payment and the uploaded one
    charges = {c["amount"]: c for entries in sim.ledger().values() for c in entries}
    assert sorted(charges) == [1500, 2500]
    assert charges[2500]["offline"]["type"] == "deferred" and charges[2500]["status"] == "succeeded"
    assert sorted(sim.successful_charges().values()) == [1, 1]
