"""Tests for tidings.auth: the user in the scope, login, logout, session-hash checks."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    user_logged_in,
    user_logged_out,
)
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore
from django.test import override_settings

import tidings.auth
from tidings._types import ASGIReceive, ASGISend, Message, Scope
from tidings.auth import (
    AuthMiddleware,
    AuthMiddlewareStack,
    UserLazyObject,
    get_user,
    login,
    logout,
)
from tidings.db import database_sync_to_async
from tidings.sessions import CookieMiddleware, SessionMiddleware
from tidings.testing import ApplicationCommunicator

pytestmark = pytest.mark.usefixtures("django_db")

TIMEOUT = 5
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"

OnConnect = Callable[[Scope], Awaitable[None]]


def test_public_names() -> None:
    assert sorted(tidings.auth.__all__) == [
        "AuthMiddleware",
        "AuthMiddlewareStack",
        "UserLazyObject",
        "get_user",
        "login",
        "logout",
    ]


# -- helpers -----------------------------------------------------------------


@database_sync_to_async
def make_user(password: str = "secret-1") -> User:
    return User.objects.create_user(username=f"user-{uuid.uuid4().hex[:12]}", password=password)


@database_sync_to_async
def change_password(user: Any, password: str) -> None:
    user.set_password(password)
    user.save()


@database_sync_to_async
def session_data(key: str) -> dict[str, Any]:
    return dict(SessionStore(key).load())


@database_sync_to_async
def session_exists(key: str) -> bool:
    return bool(SessionStore().exists(key))


@database_sync_to_async
def save(session: Any) -> None:
    session.save()


class WebsocketApp:
    """Runs ``on_connect(scope)`` on connect, accepts, and waits for disconnect."""

    def __init__(self, on_connect: OnConnect | None = None) -> None:
        self.on_connect = on_connect
        self.scope: Scope | None = None

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self.scope = scope
        assert (await receive())["type"] == "websocket.connect"
        if self.on_connect is not None:
            await self.on_connect(scope)
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"


async def ws_visit(on_connect: OnConnect | None = None, session_key: str | None = None) -> Scope:
    """Open and close one WebSocket through AuthMiddlewareStack; return the app's scope."""
    app = WebsocketApp(on_connect)
    headers = [(b"cookie", f"sessionid={session_key}".encode())] if session_key else []
    scope = {"type": "websocket", "path": "/ws/", "headers": headers}
    communicator = ApplicationCommunicator(AuthMiddlewareStack(app), scope)
    await communicator.send_input({"type": "websocket.connect"})
    assert await communicator.receive_output(timeout=TIMEOUT) == {"type": "websocket.accept"}
    await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
    await communicator.wait(timeout=TIMEOUT)
    assert app.scope is not None
    return app.scope


async def logged_in_session(user: Any) -> str:
    """Log ``user`` in over a WebSocket, save, and return the session key."""

    async def do_login(scope: Scope) -> None:
        await login(scope, user)
        await save(scope["session"])

    scope = await ws_visit(do_login)
    key: str = scope["session"].session_key
    return key


@pytest.fixture
def signals() -> Iterator[list[tuple[str, Any, Any]]]:
    """Record user_logged_in / user_logged_out as (name, request, user)."""
    received: list[tuple[str, Any, Any]] = []

    def on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
        received.append(("in", request, user))

    def on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
        received.append(("out", request, user))

    user_logged_in.connect(on_login)
    user_logged_out.connect(on_logout)
    yield received
    user_logged_in.disconnect(on_login)
    user_logged_out.disconnect(on_logout)


# -- the middleware ----------------------------------------------------------


async def test_anonymous_without_cookie() -> None:
    scope = await ws_visit()
    user = scope["user"]
    assert isinstance(user, UserLazyObject)
    assert user.is_authenticated is False
    assert user.is_anonymous is True


async def test_unresolved_user_raises() -> None:
    with pytest.raises(ValueError, match="before it is ready"):
        _ = UserLazyObject().is_authenticated


async def test_auth_middleware_requires_session() -> None:
    app = CookieMiddleware(AuthMiddleware(WebsocketApp()))
    communicator = ApplicationCommunicator(app, {"type": "websocket", "headers": []})
    with pytest.raises(ValueError, match="SessionMiddleware must be above it"):
        await communicator.wait(timeout=TIMEOUT)


async def test_outer_user_is_left_alone() -> None:
    marker = object()
    app = WebsocketApp()

    async def outer(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await AuthMiddleware(app)(dict(scope, user=marker), receive, send)

    scope = {"type": "websocket", "headers": [], "cookies": {}, "session": SessionStore()}
    communicator = ApplicationCommunicator(outer, scope)
    await communicator.send_input({"type": "websocket.connect"})
    await communicator.receive_output(timeout=TIMEOUT)
    await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
    await communicator.wait(timeout=TIMEOUT)
    assert app.scope is not None
    assert app.scope["user"] is marker


async def test_lifespan_passes_through() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        seen.append(scope)

    scope = {"type": "lifespan"}
    await AuthMiddlewareStack(app)(scope, _no_receive, _no_send)
    assert seen == [scope]


async def _no_receive() -> Message:
    raise AssertionError("unexpected receive")


async def _no_send(message: Message) -> None:
    raise AssertionError("unexpected send")


# -- login -------------------------------------------------------------------


async def test_login_then_new_connection_gets_the_user(signals: list[Any]) -> None:
    user = await make_user()
    assert user.last_login is None
    seen: dict[str, Any] = {}

    async def do_login(scope: Scope) -> None:
        seen["key_before"] = scope["session"].session_key
        await login(scope, user)
        seen["user_after"] = scope["user"]
        await save(scope["session"])

    scope = await ws_visit(do_login)
    key = scope["session"].session_key
    assert key
    assert key != seen["key_before"]
    assert seen["user_after"] is user
    data = await session_data(key)
    assert data[SESSION_KEY] == str(user.pk)
    assert data[BACKEND_SESSION_KEY] == MODEL_BACKEND
    assert data[HASH_SESSION_KEY] == user.get_session_auth_hash()
    assert signals == [("in", None, user)]

    again = await ws_visit(session_key=key)
    assert again["user"].pk == user.pk
    assert again["user"].is_authenticated is True
    # Django's update_last_login receiver ran too.
    refreshed = await database_sync_to_async(get_user_model().objects.get)(pk=user.pk)
    assert refreshed.last_login is not None


async def test_anonymous_http_response_varies_on_cookie() -> None:
    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    for headers in ([], [(b"cookie", b"sessionid=garbage")]):
        communicator = ApplicationCommunicator(
            AuthMiddlewareStack(app), {"type": "http", "path": "/", "headers": headers}
        )
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(timeout=TIMEOUT)
        await communicator.receive_output(timeout=TIMEOUT)
        await communicator.wait(timeout=TIMEOUT)
        # The response depends on who is logged in, so caches must key on the cookie.
        assert (b"vary", b"Cookie") in start["headers"]


async def test_login_is_not_saved_by_itself() -> None:
    user = await make_user()

    async def do_login(scope: Scope) -> None:
        await login(scope, user)

    scope = await ws_visit(do_login)
    key = scope["session"].session_key
    # cycle_key() stored the (empty) session under its new key; the login is not in it.
    assert SESSION_KEY not in await session_data(key)
    assert (await ws_visit(session_key=key))["user"].is_authenticated is False


async def test_login_over_http_sets_the_cookie() -> None:
    user = await make_user()

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await login(scope, user)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"welcome"})

    communicator = ApplicationCommunicator(
        AuthMiddlewareStack(app), {"type": "http", "path": "/login", "headers": []}
    )
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=TIMEOUT)
    await communicator.receive_output(timeout=TIMEOUT)
    await communicator.wait(timeout=TIMEOUT)
    jar: SimpleCookie = SimpleCookie()
    for name, value in start["headers"]:
        if name.lower() == b"set-cookie":
            jar.load(value.decode())
    key = jar["sessionid"].value
    assert (await ws_visit(session_key=key))["user"].pk == user.pk


async def test_login_cycles_key_and_keeps_anonymous_data() -> None:
    user = await make_user()
    anon = SessionStore()
    anon["cart"] = [1, 2]
    await save(anon)
    old_key = anon.session_key
    assert old_key is not None

    async def do_login(scope: Scope) -> None:
        await login(scope, user)
        await save(scope["session"])

    scope = await ws_visit(do_login, session_key=old_key)
    new_key = scope["session"].session_key
    assert new_key != old_key
    assert not await session_exists(old_key)
    assert (await session_data(new_key))["cart"] == [1, 2]


async def test_login_as_another_user_flushes_data() -> None:
    first, second = await make_user(), await make_user()
    key = await logged_in_session(first)

    async def switch(scope: Scope) -> None:
        assert scope["user"].pk == first.pk
        session: SessionBase = scope["session"]
        await database_sync_to_async(session.__setitem__)("private", "first's")
        await login(scope, second)
        await save(scope["session"])

    switched = await ws_visit(switch, session_key=key)
    new_key = switched["session"].session_key
    assert new_key != key
    data = await session_data(new_key)
    assert "private" not in data
    assert data[SESSION_KEY] == str(second.pk)
    assert not await session_exists(key)


async def test_login_same_user_again_keeps_the_session() -> None:
    user = await make_user()
    key = await logged_in_session(user)

    async def relogin(scope: Scope) -> None:
        await login(scope, user)
        await save(scope["session"])

    scope = await ws_visit(relogin, session_key=key)
    assert scope["session"].session_key == key


async def test_login_uses_scope_user_and_user_backend() -> None:
    user = await make_user()
    user.backend = MODEL_BACKEND

    async def do_login(scope: Scope) -> None:
        scope["user"] = user
        await login(scope, None)
        await save(scope["session"])

    scope = await ws_visit(do_login)
    assert (await session_data(scope["session"].session_key))[BACKEND_SESSION_KEY] == (
        MODEL_BACKEND
    )


async def test_login_errors() -> None:
    user = await make_user()
    with pytest.raises(ValueError, match="SessionMiddleware"):
        await login({"type": "websocket"}, user)
    with pytest.raises(ValueError, match="User must be passed"):
        await login({"session": SessionStore()}, None)
    with pytest.raises(ValueError, match="User must be passed"):
        await login({"session": SessionStore(), "user": AnonymousUser()}, None)
    with pytest.raises(TypeError, match="dotted import path"):
        await login({"session": SessionStore()}, user, backend=object())  # type: ignore[arg-type]
    with (
        override_settings(AUTHENTICATION_BACKENDS=[MODEL_BACKEND, "tests.test_auth.Other"]),
        pytest.raises(ValueError, match="multiple authentication backends"),
    ):
        await login({"session": SessionStore()}, user)


async def test_login_with_named_backend_among_several() -> None:
    user = await make_user()
    backends = ["django.contrib.auth.backends.AllowAllUsersModelBackend", MODEL_BACKEND]
    with override_settings(AUTHENTICATION_BACKENDS=backends):

        async def do_login(scope: Scope) -> None:
            await login(scope, user, backend=backends[0])
            await save(scope["session"])

        scope = await ws_visit(do_login)
        again = await ws_visit(session_key=scope["session"].session_key)
    assert again["user"].pk == user.pk
    # The backend must still be configured for the session to count.
    assert (await ws_visit(session_key=scope["session"].session_key))["user"].is_anonymous


async def test_login_rotates_session_csrf_secret() -> None:
    user = await make_user()
    with override_settings(CSRF_USE_SESSIONS=True):

        async def do_login(scope: Scope) -> None:
            scope["session"]["_csrftoken"] = "x" * 32
            await login(scope, user)

        scope = await ws_visit(do_login)
    session: SessionBase = scope["session"]
    token = await database_sync_to_async(session.get)("_csrftoken")
    assert isinstance(token, str)
    assert len(token) == 32
    assert token != "x" * 32


async def test_login_leaves_cookie_csrf_alone() -> None:
    user = await make_user()

    async def do_login(scope: Scope) -> None:
        await login(scope, user)

    scope = await ws_visit(do_login)
    session: SessionBase = scope["session"]
    assert await database_sync_to_async(session.get)("_csrftoken") is None


# -- get_user ----------------------------------------------------------------


async def test_get_user_requires_session() -> None:
    with pytest.raises(ValueError, match="SessionMiddleware"):
        await get_user({"type": "websocket"})


async def test_password_change_logs_other_sessions_out() -> None:
    user = await make_user()
    key = await logged_in_session(user)
    assert (await ws_visit(session_key=key))["user"].pk == user.pk
    await change_password(user, "secret-2")
    scope = await ws_visit(session_key=key)
    assert scope["user"].is_anonymous
    # The mismatching session was flushed.
    assert not await session_exists(key)


async def test_session_without_hash_is_rejected() -> None:
    user = await make_user()
    key = await logged_in_session(user)

    @database_sync_to_async
    def drop_hash() -> None:
        session = SessionStore(key)
        del session[HASH_SESSION_KEY]
        session.save()

    await drop_hash()
    assert (await ws_visit(session_key=key))["user"].is_anonymous


async def test_deleted_user_is_anonymous() -> None:
    user = await make_user()
    key = await logged_in_session(user)
    await database_sync_to_async(user.delete)()
    assert (await ws_visit(session_key=key))["user"].is_anonymous


async def test_malformed_user_id_is_anonymous() -> None:
    @database_sync_to_async
    def forged() -> str:
        session = SessionStore()
        session[SESSION_KEY] = "not-a-number"
        session[BACKEND_SESSION_KEY] = MODEL_BACKEND
        session[HASH_SESSION_KEY] = "x"
        session.create()
        assert session.session_key is not None
        return session.session_key

    assert (await ws_visit(session_key=await forged()))["user"].is_anonymous


async def test_secret_key_fallbacks_keep_sessions_valid() -> None:
    old, new = "old-secret-key-for-tests", "new-secret-key-for-tests"
    user = await make_user()
    with override_settings(SECRET_KEY=old):
        key = await logged_in_session(user)
    with override_settings(SECRET_KEY=new, SECRET_KEY_FALLBACKS=[]):
        # Without the fallback, the old hash is a mismatch...
        probe = SessionStore(key)
        assert (await get_user({"session": probe})).is_anonymous
    with override_settings(SECRET_KEY=old):
        key = await logged_in_session(user)
    with override_settings(SECRET_KEY=new, SECRET_KEY_FALLBACKS=[old]):
        # ...with it, the session stays valid and is upgraded to the new key.
        session = SessionStore(key)
        resolved = await get_user({"session": session})
        assert resolved.pk == user.pk
        fresh_hash = user.get_session_auth_hash()
    assert session.session_key != key
    assert await database_sync_to_async(session.get)(HASH_SESSION_KEY) == fresh_hash


async def test_get_user_can_recheck_a_long_lived_scope() -> None:
    user = await make_user()
    key = await logged_in_session(user)
    scope = {"session": SessionStore(key)}
    assert (await get_user(scope)).pk == user.pk
    await change_password(user, "changed")
    assert (await get_user({"session": SessionStore(key)})).is_anonymous


# -- logout ------------------------------------------------------------------


async def test_logout(signals: list[Any]) -> None:
    user = await make_user()
    key = await logged_in_session(user)
    signals.clear()

    async def do_logout(scope: Scope) -> None:
        assert scope["user"].pk == user.pk
        await logout(scope)

    scope = await ws_visit(do_logout, session_key=key)
    assert isinstance(scope["user"], AnonymousUser)
    assert not await session_exists(key)
    assert scope["session"].session_key is None
    ((name, request, who),) = signals
    assert (name, request, who.pk) == ("out", None, user.pk)
    assert (await ws_visit(session_key=key))["user"].is_anonymous


async def test_logout_when_anonymous(signals: list[Any]) -> None:
    async def do_logout(scope: Scope) -> None:
        await logout(scope)

    scope = await ws_visit(do_logout)
    assert isinstance(scope["user"], AnonymousUser)
    # As Channels (Django would send it with user=None): nobody logged out.
    assert signals == []


async def test_logout_without_user_in_scope(signals: list[Any]) -> None:
    user = await make_user()
    key = await logged_in_session(user)
    signals.clear()
    scope: dict[str, Any] = {"session": SessionStore(key)}
    await logout(scope)
    # No user in the scope: no signal, and no "user" key added (as Channels).
    assert "user" not in scope
    assert signals == []
    assert scope["session"].session_key is None
    assert not await session_exists(key)


async def test_logout_requires_session() -> None:
    with pytest.raises(ValueError, match="SessionMiddleware"):
        await logout({"type": "websocket"})


def test_sync_code_can_use_async_to_sync() -> None:
    user = async_to_sync(make_user)()
    scope: dict[str, Any] = {"session": SessionStore()}
    async_to_sync(login)(scope, user)
    assert scope.get("user") is user
    async_to_sync(logout)(scope)
    assert isinstance(scope["user"], AnonymousUser)


async def test_stack_composition() -> None:
    stack = AuthMiddlewareStack(WebsocketApp())
    assert isinstance(stack, CookieMiddleware)
    assert isinstance(stack.inner, SessionMiddleware)
    assert isinstance(stack.inner.inner, AuthMiddleware)


async def test_the_stack_copies_the_scope_once_and_never_touches_the_callers() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        seen.append(scope)

    scope: Scope = {"type": "websocket", "path": "/ws/", "headers": []}
    original = dict(scope)
    stack = AuthMiddlewareStack(app)
    await stack(scope, _no_receive, _no_send)
    (inner,) = seen
    assert inner is not scope
    assert scope == original, "the caller's scope is left as it was"
    assert {"cookies", "session", "user"} <= set(inner)
    # Only the outermost middleware copies: the ones inside add to that copy.
    assert isinstance(stack, CookieMiddleware) and stack.copy_scope
    session_layer = stack.inner
    assert isinstance(session_layer, SessionMiddleware) and not session_layer.copy_scope
    assert isinstance(session_layer.inner, AuthMiddleware) and not session_layer.inner.copy_scope
    # Used on their own, each still copies.
    assert SessionMiddleware(app).copy_scope and AuthMiddleware(app).copy_scope
