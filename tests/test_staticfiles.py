"""StaticFilesWrapper: STATIC_URL paths from the finders, everything else to the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.staticfiles import StaticFilesWrapper
from tidings.testing import HttpCommunicator, WebsocketCommunicator

STATIC_DIR = Path(__file__).resolve().parent / "django_project" / "static"


async def get(app: Any, path: str) -> dict[str, Any]:
    """GET ``path``, then let the application finish (Django closes the file after)."""
    communicator = HttpCommunicator(app, "GET", path)
    response = await communicator.get_response(5)
    await communicator.wait(5)
    return response


async def inner(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Answers every HTTP request with 200 "app"; accepts every WebSocket."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app " + scope["path"].encode()})


@pytest.fixture
def wrapper() -> StaticFilesWrapper:
    return StaticFilesWrapper(inner)  # the suite's STATIC_URL is "/static/"


@override_settings(STATICFILES_DIRS=[str(STATIC_DIR)])
async def test_static_path_is_served_from_the_finders(wrapper: StaticFilesWrapper) -> None:
    response = await get(wrapper, "/static/probe.txt")
    assert response["status"] == 200
    assert response["body"] == b"tidings static probe\n"


@override_settings(STATICFILES_DIRS=[str(STATIC_DIR)])
async def test_missing_static_file_is_404(wrapper: StaticFilesWrapper) -> None:
    response = await get(wrapper, "/static/missing.txt")
    assert response["status"] == 404


@pytest.mark.parametrize("path", ["/", "/staticx/probe.txt", "/app/static/probe.txt"])
async def test_other_paths_go_to_the_application(wrapper: StaticFilesWrapper, path: str) -> None:
    response = await get(wrapper, path)
    assert response["status"] == 200
    assert response["body"] == b"app " + path.encode()


async def test_websocket_under_static_url_goes_to_the_application(
    wrapper: StaticFilesWrapper,
) -> None:
    communicator = WebsocketCommunicator(wrapper, "/static/probe.txt")
    connected, _ = await communicator.connect(5)
    assert connected
    await communicator.disconnect()


def test_absolute_static_url_serves_nothing() -> None:
    with override_settings(STATIC_URL="https://cdn.example.org/static/"):
        wrapper = StaticFilesWrapper(inner)
    assert not wrapper.is_static_path("/static/probe.txt")


def test_static_url_is_required() -> None:
    with override_settings(STATIC_URL=None), pytest.raises(ImproperlyConfigured):
        StaticFilesWrapper(inner)
