"""Fixtures of the browser tests (headless Chromium, see :mod:`tests.browser.harness`).

``browser_factory`` is the one to use elsewhere (e.g. a two-user chat test)::

    def test_two_users(browser_factory: BrowserFactory) -> None:
        alice, bob = browser_factory(), browser_factory()  # separate cookie jars
        alice.get(url)
        ...

Each call starts a new, independent headless Chromium (a Selenium ``WebDriver``) with
a fresh profile; all of them are quit at the end of the test. Chromium and
chromedriver come from Debian's packages (``./scripts/test`` installs them when run as
root); a missing one fails the test with the package to install, never skips it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.harness import BrowserFactory


@pytest.fixture
def browser_factory() -> Iterator[BrowserFactory]:
    """A callable that starts a new independent headless Chromium per call."""
    factory = BrowserFactory()
    try:
        yield factory
    finally:
        factory.close()
