"""Fixtures of the transport tests: the real server in the test's loop, a real HTTP client."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.server._helpers import Running, serve
from tidings.transports import TransportRouter

from . import _client, apps
from ._client import Endpoint

#: What tidings.js sends on every HTTP request (see ``request.CLIENT_HEADER``).
CLIENT_HEADERS = {"X-Tidings": "1"}


@dataclass
class Harness:
    """A running server with a ``TransportRouter``, and an HTTP client for it."""

    router: TransportRouter
    running: Running
    client: httpx.AsyncClient
    endpoint: Endpoint

    @property
    def origin(self) -> str:
        return self.endpoint.origin

    def url(self, path: str, **params: Any) -> str:
        return self.endpoint.url(path, **params)

    def ws_url(self, path: str, **params: Any) -> str:
        return self.endpoint.ws_url(path, **params)

    def seq(self, sid: str) -> int:
        """The last ``seq`` the consumer of session ``sid`` (of this process) sent."""
        assert self.router._managers is not None
        return self.router._managers.sessions[sid.partition(".")[0]].seq

    @property
    def sessions(self) -> int:
        manager = self.router._managers
        return 0 if manager is None else len(manager.sessions)


@contextlib.asynccontextmanager
async def harness(**settings: Any) -> AsyncIterator[Harness]:
    """Serve ``apps.make_router(**settings)`` on a free port; close every session after."""
    apps.EVENTS.clear()
    router = apps.make_router(**settings)
    async with (
        serve(router) as running,
        httpx.AsyncClient(timeout=10, headers=CLIENT_HEADERS) as client,
    ):
        _client.JAR = client.cookies
        try:
            yield Harness(router, running, client, Endpoint(running.port))
        finally:
            _client.JAR = None
            await router.aclose()


@pytest.fixture
async def h(django_db: None) -> AsyncIterator[Harness]:
    """A harness with the default settings."""
    async with harness() as running:
        yield running


@dataclass
class User:
    """A user with a logged-in Django session."""

    pk: int
    session_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"sessionid={self.session_key}"}


LoggedIn = Callable[[], Awaitable[User]]


@pytest.fixture
def logged_in(django_db: None) -> LoggedIn:
    """``await logged_in()``: a new user and the key of a session logged in as them."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User as DjangoUser
    from django.contrib.sessions.backends.db import SessionStore

    from tidings.db import database_sync_to_async

    def make() -> User:
        user = DjangoUser.objects.create_user(username=f"u-{uuid.uuid4().hex[:10]}")
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.save()
        assert store.session_key is not None
        return User(user.pk, store.session_key)

    return database_sync_to_async(make)
