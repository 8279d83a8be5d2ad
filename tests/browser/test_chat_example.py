"""The chat example (examples/chat) in headless Chromium, served as ./scripts/demo serves it.

A migrated copy of the example runs under ``manage.py runserver`` (Tidings' server)
on a free port, with the Redis layer so that a management command, a process of
its own, reaches the server's sockets. Two browsers (two cookie jars) log in as
alice and bob through the login form and open the same room:

- a message alice types appears on bob's page, and is in the database;
- an anonymous page's notifications socket is refused (the server answers 403),
  opened with ``tidings.js`` as the pages do and with a bare ``WebSocket``;
- ``manage.py notify bob ...`` shows up on bob's page.

The pages talk to the consumers through ``tidings.js`` (the access log shows its
``?tidings=ws`` session requests).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.harness import BrowserFactory, wait_js
from tests.examples._chat import PASSWORD, ChatSite, Server

pytestmark = pytest.mark.browser

# The page's state, for failure messages.
DESCRIBE = """return {
    url: location.href,
    chat: document.getElementById("chat-status")?.textContent,
    notifications: document.getElementById("notifications-status")?.textContent,
    log: [...document.querySelectorAll("#chat-log li")].map((li) => li.textContent),
    notes: [...document.querySelectorAll("#notifications li")].map((li) => li.textContent),
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> ChatSite:
    return ChatSite(tmp_path_factory.mktemp("chat-browser") / "site")


@pytest.fixture(scope="module")
def server(site: ChatSite, redis_url: str) -> Iterator[Server]:
    with site.serve(redis_url=redis_url, runserver=True) as running:
        yield running


def log_in_to_room(driver: WebDriver, server: Server, username: str, room: str) -> None:
    """Log in through the form, land in ``room``, wait for both sockets to be open."""
    driver.get(f"{server.url}/accounts/login/?next=/chat/{room}/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD + Keys.ENTER)
    wait_js(
        driver,
        "return location.pathname === arguments[0]"
        ' && document.getElementById("chat-status").textContent === "connected"'
        ' && document.getElementById("notifications-status").textContent === "connected"',
        f"/chat/{room}/",
        message=f"{username} in {room} with both sockets open",
        describe=DESCRIBE,
    )


def test_two_users_chat_and_get_notified(
    browser_factory: BrowserFactory, site: ChatSite, server: Server, redis_url: str
) -> None:
    room = "browsers-" + secrets.token_hex(3)
    alice, bob = browser_factory(), browser_factory()
    log_in_to_room(alice, server, "alice", room)
    log_in_to_room(bob, server, "bob", room)

    text = "hello bob, from Chromium " + secrets.token_hex(3)
    alice.find_element(By.ID, "chat-message-input").send_keys(text + Keys.ENTER)
    for driver in (bob, alice):
        wait_js(
            driver,
            "return [...document.querySelectorAll('#chat-log li')]"
            ".some((li) => li.textContent === arguments[0])",
            f"alice: {text}",
            message="alice's message on the page",
            describe=DESCRIBE,
        )
    assert site.messages(room) == [("alice", text)]
    assert f'"WebSocket /ws/chat/{room}/?tidings=ws" 101' in server.output()

    news = "sent from manage.py " + secrets.token_hex(3)
    completed = site.manage("notify", "bob", news, redis_url=redis_url)
    assert completed.stdout.strip() == "Sent to bob."
    wait_js(
        bob,
        "return [...document.querySelectorAll('#notifications li')]"
        ".some((li) => li.textContent === arguments[0])",
        news,
        message="the command's notification on bob's page",
        describe=DESCRIBE,
    )
    assert alice.find_elements(By.CSS_SELECTOR, "#notifications li") == []


def test_an_anonymous_notifications_socket_is_refused(
    browser_factory: BrowserFactory, server: Server
) -> None:
    anonymous = browser_factory()
    anonymous.get(f"{server.url}/accounts/login/")  # a page of the site: its Origin
    with_client = anonymous.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import("/static/tidings/tidings.js").then(({ connect }) => {
            let opened = false;
            const session = connect("/ws/notifications/");
            session.onopen = () => { opened = true; };
            session.onclose = (event) => done({opened, code: event.code});
        });
        """
    )
    assert with_client == {"opened": False, "code": 403}  # the HTTP status of the refusal
    bare = anonymous.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        let opened = false;
        const socket = new WebSocket("ws://" + location.host + "/ws/notifications/");
        socket.onopen = () => { opened = true; };
        socket.onclose = (event) => done({opened, code: event.code});
        """
    )
    assert bare == {"opened": False, "code": 1006}  # all a browser tells of a refusal
    access = server.output()
    refused = re.findall(r'"WebSocket /ws/notifications/(?:\?tidings=ws)?" (\d{3})', access)
    assert refused[-2:] == ["403", "403"], access


def severe_console_entries(driver: WebDriver) -> list[str]:
    """Console entries at level SEVERE (``console.error``, uncaught exceptions, failed
    loads, invalid ``pattern`` attributes) logged since the last call."""
    return [
        f"{entry.get('source')}: {entry.get('message')}"
        for entry in driver.get_log("browser")
        if entry.get("level") == "SEVERE"
    ]


def test_the_example_pages_log_no_console_error(
    browser_factory: BrowserFactory, server: Server
) -> None:
    """The login, room and home pages load, connect and validate without a console error.

    Chromium reports an invalid ``pattern`` attribute (compiled with the ``v`` flag)
    as a SEVERE console entry when the field is validated, and then skips the check.
    """
    driver = browser_factory()
    driver.get(f"{server.url}/accounts/login/")
    assert severe_console_entries(driver) == [], "login page"
    log_in_to_room(driver, server, "carol", "console-" + secrets.token_hex(3))
    assert severe_console_entries(driver) == [], "room page"
    driver.get(f"{server.url}/")
    wait_js(
        driver,
        'return document.getElementById("notifications-status").textContent === "connected"',
        message="the home page's notifications socket open",
        describe=DESCRIBE,
    )
    driver.find_element(By.NAME, "room").send_keys("kitchen")  # the field validates as typed
    assert driver.execute_script('return document.querySelector("[name=room]").checkValidity()')
    assert severe_console_entries(driver) == [], "home page"


def test_the_room_name_field_checks_its_pattern(
    browser_factory: BrowserFactory, server: Server
) -> None:
    """The home page's room field refuses names the room URL would not match."""
    driver = browser_factory()
    log_in_to_room(driver, server, "carol", "pattern-" + secrets.token_hex(3))
    driver.get(f"{server.url}/")
    field = driver.find_element(By.NAME, "room")
    checks = {}
    for value in ("lobby", "a-b_C9", "x" * 50, "two words", "caf\u00e9", "x" * 51, "a/b"):
        field.clear()
        field.send_keys(value)
        checks[value] = driver.execute_script(
            "return !arguments[0].validity.patternMismatch", field
        )
    assert checks == {
        "lobby": True,
        "a-b_C9": True,
        "x" * 50: True,
        "two words": False,
        "caf\u00e9": False,
        "x" * 51: False,
        "a/b": False,
    }
    assert severe_console_entries(driver) == []
