"""The IoT dashboard in headless Chromium: charts fill in, a click reaches a device.

Same processes as ``test_iot.py`` (its ``site`` fixture); the page's own script
does the WebSocket, the charts and the command button.
"""

from __future__ import annotations

import pytest

from tests.browser.conftest import browser_factory  # noqa: F401  (a fixture)
from tests.browser.harness import BrowserFactory, wait_js
from tests.examples.test_iot import site  # noqa: F401  (a fixture)

pytestmark = pytest.mark.browser

# The card of the device named by the script's first argument.
CARD = (
    "[...document.querySelectorAll('.dev')]"
    ".find((el) => el.querySelector('b').textContent === arguments[0])"
)


def test_the_dashboard_draws_devices_and_shows_an_acknowledgement(
    site: int,  # noqa: F811
    browser_factory: BrowserFactory,  # noqa: F811
) -> None:
    driver = browser_factory()
    driver.get(f"http://127.0.0.1:{site}/")
    wait_js(driver, "return document.querySelectorAll('.dev').length === 100",
            timeout=20, message="a card per device",
            describe="return document.querySelectorAll('.dev').length")  # fmt: skip
    wait_js(driver, f"const c = {CARD}; return c && c.querySelector('.value').textContent",
            "s42", message="a reading on s42's card")  # fmt: skip
    driver.execute_script(f"{CARD}.querySelector('button').click()", "s42")
    ack = wait_js(
        driver,
        f"const t = {CARD}.querySelector('.ack').textContent; return t.startsWith('ack:') && t",
        "s42",
        timeout=20,
        message="s42's acknowledgement on the page",
    )
    assert ack.startswith("ack: blink")
    other = driver.execute_script(f"return {CARD}.querySelector('.ack').textContent", "s41")
    assert other == ""  # the command went to one device only
