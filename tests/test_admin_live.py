"""The live admin page (tidings.admin) on the in-memory layer: who may see it, what it shows.

The page is fetched with Django's test client under settings that install the admin;
its socket is opened with ``WebsocketCommunicator`` through the routing a project
uses (``AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(...)))``), with the
session cookie of a user logged in with the test client. The Redis layer's figures
are in ``test_admin_live_redis.py``, the page in Chromium in
``tests/browser/test_admin_live.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import include, path

import tidings._admin_consumer
from tidings import _metrics, presence
from tidings._admin_figures import sampler_for
from tidings._admin_groups import TOP_GROUPS
from tidings.admin import websocket_urlpatterns
from tidings.auth import AuthMiddlewareStack
from tidings.layers import InMemoryChannelLayer, get_channel_layer
from tidings.routing import URLRouter
from tidings.security.websocket import AllowedHostsOriginValidator
from tidings.testing import WebsocketCommunicator

PAGE = "/admin/tidings/"
ORIGIN = b"http://testserver"
#: The largest reading the page may get, whatever the number of groups and topics.
MAX_MESSAGE = 8192


ADMIN_SETTINGS: dict[str, Any] = {
    "INSTALLED_APPS": [
        "tidings",
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
    ],
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
    "TEMPLATES": [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ],
    "CHANNEL_LAYERS": {"default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"}},
}


@pytest.fixture
def admin_site(django_db: None) -> Iterator[None]:
    """The admin installed, with the page's URL before it; the admin's tables migrated."""
    with override_settings(**ADMIN_SETTINGS):

        class URLs:
            """The project's URLconf (ROOT_URLCONF may be any object with urlpatterns)."""

            urlpatterns = [
                path("admin/tidings/", include("tidings.admin_urls")),
                path("admin/", admin.site.urls),
            ]

        with override_settings(ROOT_URLCONF=URLs):
            call_command("migrate", "admin", verbosity=0, interactive=False)
            yield


def make_user(*, staff: bool, active: bool = True) -> Any:
    name = ("staff-" if staff else "user-") + secrets.token_hex(4)
    return get_user_model().objects.create_user(
        name, password="x", is_staff=staff, is_active=active
    )


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# -- the page -----------------------------------------------------------------------------


def test_the_page_is_for_active_staff_only(admin_site: None) -> None:
    assert Client().get(PAGE).status_code == 403  # anonymous: 403, not a login redirect
    assert logged_in(make_user(staff=False)).get(PAGE).status_code == 403
    inactive = make_user(staff=True, active=False)
    assert logged_in(inactive).get(PAGE).status_code == 403
    response = logged_in(make_user(staff=True)).get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="tidings-live"' in page
    assert "tidings/admin/live.js" in page and "tidings/admin/live.css" in page
    assert "no-cache" in response["Cache-Control"]
    # Read only: no form, no button, nothing to post (the admin's header has its own).
    content = page.split('id="tidings-live"')[1]
    assert "<form" not in content and "<button" not in content and "<input" not in content


def test_the_admin_index_lists_the_page_for_staff(admin_site: None) -> None:
    staff = logged_in(make_user(staff=True))
    index = staff.get("/admin/")
    assert index.status_code == 200
    assert f'href="{PAGE}"' in index.content.decode()
    assert "Tidings" in index.content.decode()
    # The sidebar of another admin page lists it too.
    superuser = logged_in(get_user_model().objects.create_superuser("su-" + secrets.token_hex(4)))
    other = superuser.get("/admin/auth/user/").content.decode()
    assert f'href="{PAGE}"' in other
    # Not for anyone else (the admin sends them to its login page).
    assert logged_in(make_user(staff=False)).get("/admin/").status_code == 302


def test_the_page_names_the_middleware_it_needs(admin_site: None) -> None:
    sessions_only = ["django.contrib.sessions.middleware.SessionMiddleware"]
    with (
        override_settings(MIDDLEWARE=sessions_only),
        pytest.raises(ImproperlyConfigured, match="AuthenticationMiddleware"),
    ):
        Client(raise_request_exception=True).get(PAGE)


# -- the socket ---------------------------------------------------------------------------


def application() -> Any:
    """The socket routed as the docs say: origin check, then the session's user."""
    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


def socket_for(client: Client | None, *, origin: bytes = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"origin", origin)]
    if client is not None:
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application(), PAGE, headers=headers)


async def reading(socket: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    text = await socket.receive_from(timeout)
    assert len(text.encode()) <= MAX_MESSAGE, len(text)
    data: dict[str, Any] = json.loads(text)
    return data


async def reading_where(
    socket: WebsocketCommunicator, check: Any, *, timeout: float = 10
) -> dict[str, Any]:
    """The first reading for which ``check(reading)`` is true."""
    async with asyncio.timeout(timeout):
        while True:
            data = await reading(socket)
            if check(data):
                return data


@pytest.fixture
async def closing() -> AsyncIterator[None]:
    yield
    await presence.aclose()  # the trackers the page's presence panel started


@pytest.mark.usefixtures("closing")
async def test_the_socket_refuses_anyone_but_staff(admin_site: None) -> None:
    non_staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=False)))
    staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=True)))
    for client in (None, non_staff):
        socket = socket_for(client)
        connected, _ = await socket.connect()
        assert not connected  # a close before accept: the server answers 403
        await socket.disconnect()
    # Staff from a foreign page: the origin check refuses it first.
    socket = socket_for(staff, origin=b"http://evil.example")
    assert (await socket.connect())[0] is False
    await socket.disconnect()


@pytest.mark.usefixtures("closing")
async def test_staff_get_a_reading_a_second_and_can_change_nothing(admin_site: None) -> None:
    staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=True)))
    layer = get_channel_layer()
    assert layer is not None
    room = "room-" + secrets.token_hex(3)
    for _ in range(3):
        await layer.group_add(room, await layer.new_channel())
    await presence.track("lobby", "ann", await layer.new_channel())
    await presence.track("lobby", "bob", await layer.new_channel())

    socket = socket_for(staff)
    assert (await socket.connect())[0] is True
    first = await reading(socket)
    assert first["type"] == "figures" and first["history"] == []
    assert first["metrics"] is False and first["connections"] is None  # metrics are off
    assert first["workers"][0]["pid"] == os.getpid()
    assert first["workers"][0]["uptime"] >= 0
    assert [room, 3] in first["groups"]["top"]
    assert first["presence"]["top"] == [["lobby", 2]]
    assert first["layer"]["backend"] == "InMemoryChannelLayer"
    # Frames from the page change nothing and get no answer but the next reading.
    await socket.send_to(text_data=json.dumps({"type": "group_discard", "group": room}))
    after = await reading(socket)
    assert after["at"] > first["at"] and "history" not in after
    assert [room, 3] in after["groups"]["top"]
    await socket.disconnect()


@pytest.mark.usefixtures("closing")
async def test_rates_and_connections_come_from_the_metrics(admin_site: None) -> None:
    staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=True)))
    metrics = _metrics.enable()
    try:
        # Totals with nothing in them (no worker has answered the supervisor yet) are
        # ignored: the page reads this process's own figures, every one of them.
        _metrics.set_totals({})
        socket = socket_for(staff)
        assert (await socket.connect())[0] is True
        empty = await reading(socket)
        assert empty["connections"] == dict.fromkeys(_metrics.KINDS, 0)
        assert [w["pid"] for w in empty["workers"]] == [os.getpid()]
        assert empty["layer"]["outages"] is None  # no Redis: no Redis figures
        await socket.disconnect()
        _metrics.disable()
        metrics = _metrics.enable()  # this process's own figures, as with one process
        metrics.open_websocket, metrics.open_sse = 4, 1
        socket = socket_for(staff)
        assert (await socket.connect())[0] is True
        first = await reading(socket)
        assert first["connections"] == {
            "http": 0,
            "websocket": 4,
            "sse": 1,
            "longpoll": 0,
            "http2": 0,
        }
        assert first["workers"][0]["connections"]["websocket"] == 4
        metrics.ws_in_sizes += [32] * 500  # as the server counts them
        for _ in range(300):
            metrics.http_duration[2].observe(0.01)
        busy = await reading_where(socket, lambda r: r["rates"] and r["rates"]["ws_in"] > 0)
        # 500 messages and 300 responses in about a second (between two readings).
        assert 100 < busy["rates"]["ws_in"] <= 1000
        assert 60 < busy["rates"]["http"] <= 600
        assert busy["rates"]["ws_out"] == busy["rates"]["group_send"] == 0
        # A page opened meanwhile gets the history for its chart.
        again = socket_for(staff)
        assert (await again.connect())[0] is True
        history = (await reading(again))["history"]
        assert any(point["ws_in"] > 0 for point in history)
        await again.disconnect()
        await socket.disconnect()
    finally:
        _metrics.disable()


@pytest.mark.usefixtures("closing")
async def test_the_workers_panel_shows_every_worker_the_supervisor_reports(
    admin_site: None,
) -> None:
    staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=True)))
    _metrics.enable()
    try:
        # What the supervisor sends a worker: the totals, and each worker's figures
        # (this process plays one of three; one has not answered yet).
        now = time.time()
        idle = dict.fromkeys(_metrics.KINDS, 0)
        totals = _metrics.Metrics().snapshot() | {"open_websocket": 7, "open_sse": 2}
        _metrics.set_totals(
            totals,
            {
                os.getpid(): {"started": now - 30, "connections": idle | {"websocket": 4}},
                1: {"started": now - 7200, "connections": idle | {"websocket": 3, "sse": 2}},
                99999999: {"started": now - 1, "connections": None},
            },
        )
        socket = socket_for(staff)
        assert (await socket.connect())[0] is True
        first = await reading(socket)
        workers = {w["pid"]: w for w in first["workers"]}
        assert list(workers) == [1, os.getpid(), 99999999]  # by pid
        assert workers[os.getpid()]["this"] and not workers[1]["this"]
        assert 30 <= workers[os.getpid()]["uptime"] < 30 + 60
        assert 7200 <= workers[1]["uptime"] < 7200 + 60
        assert workers[1]["connections"] == idle | {"websocket": 3, "sse": 2}
        assert workers[99999999]["connections"] is None
        assert first["connections"] == idle | {"websocket": 7, "sse": 2}  # the totals
        await socket.disconnect()
    finally:
        _metrics.disable()


@pytest.mark.usefixtures("closing")
async def test_a_user_who_loses_staff_status_is_disconnected(
    admin_site: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tidings._admin_consumer, "RECHECK_INTERVAL", 0.0)
    user = await asyncio.to_thread(make_user, staff=True)
    staff = await asyncio.to_thread(logged_in, user)
    socket = socket_for(staff)
    assert (await socket.connect())[0] is True
    await reading(socket)
    user.is_staff = False
    await asyncio.to_thread(user.save)
    output = await socket.receive_output(5)
    while output["type"] == "websocket.send":
        output = await socket.receive_output(5)
    assert output == {"type": "websocket.close", "code": 4003}


# -- limits -------------------------------------------------------------------------------


@pytest.mark.usefixtures("closing")
async def test_many_groups_topics_and_pages_cost_one_bounded_reading(admin_site: None) -> None:
    """An attacker's app state: 20,000 groups and 300 presence topics, 20 admin pages.

    Every reading stays under ``MAX_MESSAGE`` bytes with the top ``TOP_GROUPS`` only,
    and the process reads once per interval however many pages watch.
    """
    staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=True)))
    layer = get_channel_layer()
    assert layer is not None
    member = await layer.new_channel()
    for i in range(20_000):
        await layer.group_add(f"g{i:05d}-" + "x" * 80, member)
    for _ in range(50):
        await layer.group_add("the-busiest", await layer.new_channel())
    for i in range(300):
        await presence.track(f"topic-{i:03d}", f"user-{i}", member)

    assert isinstance(layer, InMemoryChannelLayer)
    expected = len(layer.groups)  # 20,001 and the presence tracker's own
    sockets = [socket_for(staff) for _ in range(20)]
    for socket in sockets:
        assert (await socket.connect())[0] is True
    first = [await reading(socket) for socket in sockets]
    groups = first[0]["groups"]
    assert groups["total"] == expected > 20_000 and not groups["partial"]
    assert len(groups["top"]) == TOP_GROUPS
    assert groups["top"][0] == ["the-busiest", 50]
    assert first[0]["presence"]["total"] == 300 and len(first[0]["presence"]["top"]) == 10

    sampler = sampler_for("default")
    assert sampler.watchers == 20
    start = sampler.seq
    for _ in range(2):
        texts = {json.dumps(await reading(socket), sort_keys=True) for socket in sockets}
        assert len(texts) <= 2  # the same reading (or the next), encoded once for all
    assert sampler.seq - start <= 3  # one reading per interval, not one per page
    for socket in sockets:
        await socket.disconnect()
    assert sampler.watchers == 0
