"""The live admin page in headless Chromium, on the chat example served by ``tidings serve``.

A migrated copy of examples/chat, with the page wired in as docs/operations.md says
(:func:`wire_the_page`: its URL before the admin's, its socket in the routing), runs
under ``tidings serve --metrics-bind`` (so the supervisor sends its worker the totals
the page reads). A staff user logs in through the admin's login form and opens
``/admin/tidings/``; then a scripted client, alice, opens three sockets in one chat
room and sends messages. The page must show the figures moving: more WebSocket
connections, the room's group with three members, a message rate above zero; and,
once alice is gone, the connections back where they were. The page is saved as a
screenshot in the test's folder; with ``TIDINGS_UPDATE_SCREENSHOTS=1`` it replaces
docs/admin-live.png, which docs/operations.md shows (a run of the suite leaves the
checkout as it was).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from websockets.asyncio.client import ClientConnection

from tests.browser.harness import ROOT, BrowserFactory, free_port, wait_js
from tests.examples._chat import ChatSite, Process, login, websocket

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "admin-live.png"
STAFF, STAFF_PASSWORD = "admin", "tidings-admin-test"
DESCRIBE = "return JSON.stringify({status: document.getElementById('tl-status')?.textContent,"
DESCRIBE += " last: window.tidingsLive && window.tidingsLive.last})"


class LiveServer(Process):
    """The example under ``tidings serve --metrics-bind`` on a socket bound here."""

    def __init__(self, site: ChatSite) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        fd = self.sock.fileno()
        command = ["-m", "tidings", "serve", "mysite.asgi:application", "--fd", str(fd)]
        command += ["--metrics-bind", f"127.0.0.1:{free_port()}"]
        super().__init__(
            [sys.executable, *command],
            cwd=site.root,
            env=site.env(None),
            log=site.root / "live-server.log",
            pass_fds=[fd],
        )
        for _ in range(200):
            try:
                httpx.get(self.url + "/accounts/login/", timeout=5).raise_for_status()
                return
            except httpx.HTTPError:
                if self.popen.poll() is not None:
                    break
                threading.Event().wait(0.05)
        self.stop()
        raise AssertionError(f"the server did not start:\n{self.output()}")

    def stop(self, sig: int = 15) -> int:
        code = super().stop(sig)
        self.sock.close()
        return code


def wire_the_page(root: Path) -> None:
    """Add the page to the copy's ``mysite/urls.py`` and ``chat/routing.py``."""
    urls = root / "mysite" / "urls.py"
    before = '    path("admin/", admin.site.urls),\n'
    text = urls.read_text()
    assert before in text, text
    urls.write_text(
        text.replace(
            before, '    path("admin/tidings/", include("tidings.admin_urls")),\n' + before
        )
    )
    routing = root / "chat" / "routing.py"
    text = routing.read_text()
    assert text.rstrip().endswith("]"), text
    routing.write_text(
        "from tidings.admin import websocket_urlpatterns as live_admin_urlpatterns\n"
        + text.rstrip().removesuffix("]")
        + "    *live_admin_urlpatterns,\n]\n"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    site = ChatSite(tmp_path_factory.mktemp("admin-live") / "site")
    wire_the_page(site.root)
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", STAFF],
        cwd=site.root,
        env={
            **site.env(None),
            "DJANGO_SUPERUSER_PASSWORD": STAFF_PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        },
        check=True,
        capture_output=True,
        timeout=60,
    )
    running = LiveServer(site)
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"the server exited with {code}:\n{running.output()}"
        assert "Traceback" not in running.output(), running.output()


async def drain(ws: ClientConnection) -> None:
    async for _ in ws:
        pass


class ScriptedClient(threading.Thread):
    """alice in ``room`` with three sockets, sending until :meth:`finish`."""

    def __init__(self, server: LiveServer, room: str) -> None:
        super().__init__(name="scripted-client", daemon=True)
        self.server, self.room = server, room
        self.done = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.chat())
        except BaseException as exc:  # reported by finish(), in the test's thread
            self.error = exc

    async def chat(self) -> None:
        async with login(self.server, "alice") as client:  # type: ignore[arg-type]
            path = f"/ws/chat/{self.room}/"
            async with (
                websocket(self.server, path, client) as first,  # type: ignore[arg-type]
                websocket(self.server, path, client) as second,  # type: ignore[arg-type]
                websocket(self.server, path, client) as third,  # type: ignore[arg-type]
            ):
                # Read what the room sends back, as pages do, so that closing is quick.
                readers = [asyncio.create_task(drain(ws)) for ws in (first, second, third)]
                while not self.done.is_set() and self.sent < 400:
                    text = f"hello {self.sent}"
                    await first.send(json.dumps({"type": "message", "text": text}))
                    self.sent += 1
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(self.done.wait)
                for reader in readers:
                    reader.cancel()

    def finish(self) -> None:
        self.done.set()
        self.join(15)
        assert not self.is_alive() and self.error is None, self.error


def test_staff_watch_the_figures_move(
    browser_factory: BrowserFactory, server: LiveServer, tmp_path: Path
) -> None:
    driver = browser_factory()
    driver.get(f"{server.url}/admin/login/?next=/admin/tidings/")
    driver.find_element(By.ID, "id_username").send_keys(STAFF)
    driver.find_element(By.ID, "id_password").send_keys(STAFF_PASSWORD + Keys.ENTER)
    wait_js(
        driver,
        "return location.pathname === '/admin/tidings/' && window.tidingsLive?.received >= 1"
        " && document.getElementById('tl-status').textContent === 'live'",
        message="the live page open and reading",
        describe=DESCRIBE,
    )
    # The page's own socket, once the supervisor's next round has counted it.
    before = wait_js(
        driver,
        "return window.tidingsLive.last.connections?.websocket",
        message="the page's own socket counted",
        describe=DESCRIBE,
    )
    assert before >= 1

    room = "live-" + secrets.token_hex(3)
    client = ScriptedClient(server, room)
    client.start()
    try:
        wait_js(
            driver,
            "const l = window.tidingsLive.last; return l.connections.websocket >= arguments[0]"
            " && l.groups.top.some(([g, n]) => g === arguments[1] && n === 3)"
            " && l.rates && l.rates.ws_in > 0 && l.rates.ws_out > 0",
            before + 3,
            f"chat_{room}",
            message="alice's three sockets, her room's group and her messages on the page",
            describe=DESCRIBE,
        )
        # What the page draws, not only what it received.
        rows = driver.find_elements(By.CSS_SELECTOR, "#tl-groups-rows tr")
        assert any(r.text.split() == [f"chat_{room}", "3"] for r in rows), [r.text for r in rows]
        websocket_row = driver.find_element(
            By.CSS_SELECTOR, '#tl-connections-rows [data-key="websocket"]'
        )
        assert int(websocket_row.text.split()[-1]) >= before + 3
        driver.set_window_size(1280, 1200)
        wait_js(driver, "return window.tidingsLive.history.length >= 3", describe=DESCRIBE)
        update = os.environ.get("TIDINGS_UPDATE_SCREENSHOTS") == "1"
        shot = SCREENSHOT if update else tmp_path / SCREENSHOT.name
        driver.save_screenshot(os.fspath(shot))
        assert shot.stat().st_size > 10_000
    finally:
        client.finish()
    assert client.sent > 0
    wait_js(
        driver,
        "return window.tidingsLive.last.connections.websocket === arguments[0]",
        before,
        message="alice's sockets gone from the figures",
        describe=DESCRIBE,
    )
    assert Path(SCREENSHOT).stat().st_size > 10_000
