"""tidings.js ``presence()`` in headless Chromium, over WebSocket, SSE and long-polling.

One page opens three connections to the same presence consumer, one per transport,
served by a real ``tidings serve`` process (the app is :func:`make_application`,
given with ``--factory``). Each connection's ``Presence`` must list all three users,
then see the one whose connection closes leave.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.harness import BrowserFactory, ServerProcess, serving, wait_js
from tidings import presence
from tidings.generic.websocket import AsyncWebsocketConsumer

pytestmark = pytest.mark.browser

SETTINGS = "tests.browser.project.settings"
TRANSPORTS = {"ann": "websocket", "bob": "sse", "cy": "longpoll"}
DESCRIBE = "return JSON.stringify(window.seen)"


class Lobby(presence.AsyncPresenceMixin, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        name = self.scope["url_route"]["kwargs"]["name"]
        await self.presence_subscribe("lobby")
        await self.presence_track("lobby", key=name, meta={"name": name})


def make_application() -> Any:
    """The server's app: the lobby over every transport, and /static/ for the client."""
    from django.core.asgi import get_asgi_application

    django_application = get_asgi_application()
    from django.urls import path

    from tidings.routing import URLRouter
    from tidings.staticfiles import StaticFilesWrapper
    from tidings.transports import TransportRouter

    routes = URLRouter([path("ws/lobby/<str:name>/", Lobby.as_asgi())])  # type: ignore[arg-type]
    return StaticFilesWrapper(TransportRouter({"http": django_application, "websocket": routes}))


@pytest.fixture
def browser_factory() -> Iterator[BrowserFactory]:
    factory = BrowserFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def server(tmp_path: Any) -> Iterator[ServerProcess]:
    app = f"{__name__}:make_application"
    with serving(app, settings=SETTINGS, log=tmp_path / "server.log", args=["--factory"]) as up:
        yield up


OPEN = """
const done = arguments[arguments.length - 1];
import("/static/tidings/tidings.js").then(({ connect, presence }) => {
    window.seen = {};
    window.conns = {};
    for (const [name, transport] of Object.entries(arguments[0])) {
        const conn = connect(`/ws/lobby/${name}/`, { transports: [transport] });
        const lobby = presence(conn, "lobby");
        window.conns[name] = conn;
        window.seen[name] = { transport, events: [], keys: [] };
        for (const type of ["join", "leave"]) {
            lobby.addEventListener(type, (event) => {
                window.seen[name].events.push(`${type}:${event.detail.key}`);
            });
        }
        lobby.addEventListener("sync", (event) => {
            window.seen[name].keys = Object.keys(event.detail.state).sort();
            window.seen[name].via = conn.transport;
        });
    }
    done(true);
});
"""


def keys_everywhere(driver: WebDriver, names: list[str], expected: list[str]) -> None:
    wait_js(
        driver,
        "return arguments[0].every((name) =>"
        " JSON.stringify(window.seen[name].keys) === JSON.stringify(arguments[1]))",
        names,
        expected,
        message=f"every Presence lists {expected}",
        describe=DESCRIBE,
    )


def test_presence_events_over_each_transport(
    browser_factory: BrowserFactory, server: ServerProcess
) -> None:
    page = browser_factory()
    page.get(f"http://127.0.0.1:{server.port}/static/tidings/tidings.d.ts")  # same origin
    assert page.execute_async_script(OPEN, TRANSPORTS) is True
    keys_everywhere(page, list(TRANSPORTS), ["ann", "bob", "cy"])
    seen: dict[str, Any] = page.execute_script("return window.seen")
    for name, transport in TRANSPORTS.items():
        assert seen[name]["via"] == transport
        assert sorted(seen[name]["events"]) == ["join:ann", "join:bob", "join:cy"]

    page.execute_script("window.conns.bob.close()")
    keys_everywhere(page, ["ann", "cy"], ["ann", "cy"])
    seen = page.execute_script("return window.seen")
    assert seen["ann"]["events"][-1] == "leave:bob"
    assert seen["cy"]["events"][-1] == "leave:bob"
