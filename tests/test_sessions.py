"""Tests for tidings.sessions: cookie parsing and Set-Cookie, Django sessions over ASGI."""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Awaitable, Callable
from http.cookies import Morsel, SimpleCookie
from typing import Any

import pytest
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.exceptions import SessionInterrupted
from django.core.exceptions import SuspiciousOperation
from django.test import override_settings

import tidings.sessions
from tidings._types import ASGIReceive, ASGISend, Message, Scope
from tidings.db import database_sync_to_async
from tidings.sessions import CookieMiddleware, SessionMiddleware, SessionMiddlewareStack
from tidings.testing import ApplicationCommunicator

TIMEOUT = 5


def test_public_names() -> None:
    assert sorted(tidings.sessions.__all__) == [
        "CookieMiddleware",
        "SessionMiddleware",
        "SessionMiddlewareStack",
    ]


# -- helpers -----------------------------------------------------------------


def http_scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": list(headers)}


def ws_scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "websocket", "path": "/ws/", "headers": list(headers)}


def cookie_header(value: str) -> tuple[bytes, bytes]:
    return (b"cookie", value.encode("latin1"))


class ScopeRecorder:
    """An ASGI app that records its scope and answers HTTP with a plain 200."""

    def __init__(self) -> None:
        self.scope: Scope | None = None

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self.scope = scope
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})


async def cookies_seen(*headers: tuple[bytes, bytes]) -> dict[str, str]:
    recorder = ScopeRecorder()
    communicator = ApplicationCommunicator(CookieMiddleware(recorder), ws_scope(*headers))
    await communicator.wait(timeout=TIMEOUT)
    assert recorder.scope is not None
    cookies: dict[str, str] = recorder.scope["cookies"]
    return cookies


SessionWork = Callable[[Any], None]


def session_app(
    work: SessionWork, *, status: int = 200, seen: list[Scope] | None = None
) -> Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]]:
    """An HTTP app that runs ``work(session)`` in the DB thread, then responds."""

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if seen is not None:
            seen.append(scope)
        await receive()
        await database_sync_to_async(work)(scope["session"])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def http_get(
    app: Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]], cookie: str | None = None
) -> Message:
    """Run one GET through ``SessionMiddlewareStack(app)``; return the response start."""
    headers = [cookie_header(cookie)] if cookie is not None else []
    communicator = ApplicationCommunicator(SessionMiddlewareStack(app), http_scope(*headers))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start: Message = await communicator.receive_output(timeout=TIMEOUT)
    body = await communicator.receive_output(timeout=TIMEOUT)
    assert body["type"] == "http.response.body"
    await communicator.wait(timeout=TIMEOUT)
    assert start["type"] == "http.response.start"
    return start


def header_values(message: Message, name: bytes) -> list[str]:
    return [v.decode("latin1") for k, v in message.get("headers", ()) if k.lower() == name]


def set_cookies(message: Message) -> dict[str, Morsel[str]]:
    jar: SimpleCookie = SimpleCookie()
    for value in header_values(message, b"set-cookie"):
        jar.load(value)
    return dict(jar)


def stored_session(key: str) -> dict[str, Any]:
    return dict(SessionStore(key).load())


def new_session(**data: Any) -> str:
    session = SessionStore()
    for name, value in data.items():
        session[name] = value
    session.create()
    assert session.session_key is not None
    return session.session_key


# -- cookie parsing ----------------------------------------------------------


async def test_parses_a_cookie_header() -> None:
    assert await cookies_seen(cookie_header("a=1; b=two")) == {"a": "1", "b": "two"}


async def test_no_cookie_header_gives_empty_dict() -> None:
    assert await cookies_seen((b"host", b"example.com")) == {}


async def test_joins_several_cookie_headers() -> None:
    cookies = await cookies_seen(cookie_header("a=1"), (b"x", b"y"), cookie_header("b=2; c=3"))
    assert cookies == {"a": "1", "b": "2", "c": "3"}


async def test_last_duplicate_wins() -> None:
    assert await cookies_seen(cookie_header("a=1"), cookie_header("a=2")) == {"a": "2"}


async def test_quoted_values_are_unquoted() -> None:
    cookies = await cookies_seen(cookie_header(r'q="hello world"; e="a\"b"; o="\054"'))
    assert cookies == {"q": "hello world", "e": 'a"b', "o": ","}


async def test_malformed_pairs_follow_django() -> None:
    # No "=": Django keeps the value under the empty name; empty chunks vanish;
    # whitespace around names and values is dropped; "=" in a value is kept.
    cookies = await cookies_seen(cookie_header(" lonely ;; k = v ; eq=a=b ;="))
    assert cookies == {"": "lonely", "k": "v", "eq": "a=b"}


async def test_latin1_bytes_decode() -> None:
    cookies = await cookies_seen((b"cookie", "name=caf\xe9".encode("latin1")))
    assert cookies == {"name": "caf\xe9"}


async def test_header_name_case_is_ignored() -> None:
    assert await cookies_seen((b"Cookie", b"a=1")) == {"a": "1"}


async def test_cookie_middleware_copies_scope() -> None:
    recorder = ScopeRecorder()
    scope = ws_scope(cookie_header("a=1"))
    await ApplicationCommunicator(CookieMiddleware(recorder), scope).wait(timeout=TIMEOUT)
    assert "cookies" not in scope
    assert recorder.scope is not None
    assert recorder.scope["cookies"] == {"a": "1"}


async def test_cookie_middleware_requires_headers() -> None:
    with pytest.raises(ValueError, match="headers"):
        await CookieMiddleware(ScopeRecorder())({"type": "websocket"}, _no_receive, _no_send)


@pytest.mark.parametrize(
    "middleware", [CookieMiddleware, SessionMiddleware, SessionMiddlewareStack]
)
async def test_lifespan_passes_through(middleware: Any) -> None:
    recorder = ScopeRecorder()
    scope = {"type": "lifespan"}
    await middleware(recorder)(scope, _no_receive, _no_send)
    assert recorder.scope is scope


async def _no_receive() -> Message:
    raise AssertionError("unexpected receive")


async def _no_send(message: Message) -> None:
    raise AssertionError("unexpected send")


# -- set_cookie / delete_cookie ----------------------------------------------


def start_message() -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200}


def test_set_cookie_defaults() -> None:
    message = start_message()
    CookieMiddleware.set_cookie(message, "k", "v")
    # The very tuple Channels appends, name capitalised as it writes it.
    assert message["headers"] == [(b"Set-Cookie", b"k=v; Path=/; SameSite=lax")]


def test_set_cookie_all_attributes() -> None:
    message = start_message()
    CookieMiddleware.set_cookie(
        message,
        "k",
        "v",
        path="/app",
        domain=".example.com",
        secure=True,
        httponly=True,
        samesite="Strict",
    )
    morsel = set_cookies(message)["k"]
    assert morsel.value == "v"
    assert morsel["path"] == "/app"
    assert morsel["domain"] == ".example.com"
    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"


def test_set_cookie_keeps_existing_headers() -> None:
    message = start_message()
    message["headers"] = ((b"content-type", b"text/plain"),)
    CookieMiddleware.set_cookie(message, "a", "1")
    CookieMiddleware.set_cookie(message, "b", "2")
    names = [name for name, _ in message["headers"]]
    assert names == [b"content-type", b"Set-Cookie", b"Set-Cookie"]
    assert set(set_cookies(message)) == {"a", "b"}


def test_set_cookie_quotes_special_values() -> None:
    message = start_message()
    CookieMiddleware.set_cookie(message, "k", "a b;c")
    raw = header_values(message, b"set-cookie")[0]
    assert raw.startswith('k="a b\\073c";')
    assert set_cookies(message)["k"].value == "a b;c"


def _expires_epoch(morsel: Morsel[str]) -> float:
    parsed = email.utils.parsedate_to_datetime(morsel["expires"])
    return parsed.timestamp()


@pytest.mark.parametrize("max_age", [3600, 3600.7, datetime.timedelta(hours=1)])
def test_set_cookie_max_age_sets_expires(max_age: Any) -> None:
    message = start_message()
    CookieMiddleware.set_cookie(message, "k", "v", max_age=max_age)
    morsel = set_cookies(message)["k"]
    assert morsel["max-age"] == "3600"
    assert abs(_expires_epoch(morsel) - (time.time() + 3600)) < 5


@pytest.mark.parametrize(
    "make_expires",
    [
        lambda: datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(hours=2),
        # Naive datetimes are read as UTC.
        lambda: (
            datetime.datetime.now(tz=datetime.UTC).replace(tzinfo=None)
            + datetime.timedelta(hours=2)
        ),
        # Aware datetimes in other zones are converted.
        lambda: (
            datetime.datetime.now(tz=datetime.timezone(datetime.timedelta(hours=-5)))
            + datetime.timedelta(hours=2)
        ),
    ],
    ids=["utc", "naive", "other-zone"],
)
def test_set_cookie_datetime_expires_becomes_max_age(
    make_expires: Callable[[], datetime.datetime],
) -> None:
    # Built inside the test: a value made at collection time would age with the suite.
    expires = make_expires()
    message = start_message()
    CookieMiddleware.set_cookie(message, "k", "v", expires=expires)
    morsel = set_cookies(message)["k"]
    assert abs(int(morsel["max-age"]) - 7200) <= 2
    assert abs(_expires_epoch(morsel) - (time.time() + 7200)) < 5


def test_set_cookie_past_datetime_gives_zero_max_age() -> None:
    message = start_message()
    past = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(days=3)
    CookieMiddleware.set_cookie(message, "k", "v", expires=past)
    assert set_cookies(message)["k"]["max-age"] == "0"


def test_set_cookie_string_expires_is_kept() -> None:
    message = start_message()
    when = "Wed, 21 Oct 2065 07:28:00 GMT"
    CookieMiddleware.set_cookie(message, "k", "v", expires=when)
    morsel = set_cookies(message)["k"]
    assert morsel["expires"] == when
    assert morsel["max-age"] == ""


def test_set_cookie_rejects_datetime_expires_with_max_age() -> None:
    with pytest.raises(ValueError, match="can't be used together"):
        CookieMiddleware.set_cookie(
            start_message(), "k", max_age=10, expires=datetime.datetime.now(tz=datetime.UTC)
        )


@pytest.mark.parametrize("error", [ValueError, AssertionError])
def test_set_cookie_rejects_bad_samesite(error: type[Exception]) -> None:
    # ValueError as Django's set_cookie raises, AssertionError as Channels' does.
    with pytest.raises(error, match="samesite"):
        CookieMiddleware.set_cookie(start_message(), "k", samesite="sometimes")


def test_set_cookie_without_samesite_or_path() -> None:
    message = start_message()
    CookieMiddleware.set_cookie(message, "k", "v", path=None, samesite=None)
    assert header_values(message, b"set-cookie") == ["k=v"]


def test_delete_cookie() -> None:
    message = start_message()
    CookieMiddleware.delete_cookie(message, "gone", path="/p", domain="example.com")
    morsel = set_cookies(message)["gone"]
    assert morsel.value == ""
    assert morsel["max-age"] == "0"
    assert morsel["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert morsel["path"] == "/p"
    assert morsel["domain"] == "example.com"
    assert morsel["secure"] == ""


@pytest.mark.parametrize(
    ("key", "samesite"), [("__Secure-k", None), ("__Host-k", None), ("k", "None")]
)
def test_delete_cookie_marks_secure_when_browsers_need_it(key: str, samesite: str | None) -> None:
    message = start_message()
    CookieMiddleware.delete_cookie(message, key, samesite=samesite)
    assert set_cookies(message)[key]["secure"] is True


# -- SessionMiddleware -------------------------------------------------------


pytestmark_db = pytest.mark.usefixtures("django_db")


async def test_session_middleware_requires_cookies() -> None:
    with pytest.raises(ValueError, match="CookieMiddleware"):
        await SessionMiddleware(ScopeRecorder())(ws_scope(), _no_receive, _no_send)


@pytestmark_db
async def test_existing_session_is_passed_through() -> None:
    recorder = ScopeRecorder()
    marker = SessionStore()
    scope = ws_scope()
    scope["cookies"] = {}
    scope["session"] = marker
    await SessionMiddleware(recorder)(scope, _no_receive, _no_send)
    assert recorder.scope is scope


@pytestmark_db
async def test_new_session_is_saved_and_cookie_set() -> None:
    def work(session: Any) -> None:
        session["colour"] = "blue"

    start = await http_get(session_app(work))
    morsel = set_cookies(start)["sessionid"]
    key = morsel.value
    assert await database_sync_to_async(stored_session)(key) == {"colour": "blue"}
    # Django's defaults: two weeks, HttpOnly, SameSite=Lax, path /, not Secure.
    assert morsel["max-age"] == str(14 * 24 * 3600)
    assert abs(_expires_epoch(morsel) - (time.time() + 14 * 24 * 3600)) < 5
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert morsel["secure"] == ""
    # Only the cookie is added, as Channels does: no Vary.
    assert [name for name, _ in start["headers"]] == [b"content-type", b"Set-Cookie"]


@pytestmark_db
async def test_existing_session_is_loaded_and_not_resent_when_unchanged() -> None:
    key = await database_sync_to_async(new_session)(count=1)
    read: list[Any] = []
    start = await http_get(
        session_app(lambda s: read.append(s["count"])), cookie=f"sessionid={key}"
    )
    assert read == [1]
    assert set_cookies(start) == {}
    assert header_values(start, b"vary") == ["Cookie"]


@pytestmark_db
async def test_untouched_session_adds_nothing() -> None:
    key = await database_sync_to_async(new_session)(count=1)
    start = await http_get(session_app(lambda s: None), cookie=f"sessionid={key}")
    assert set_cookies(start) == {}
    assert header_values(start, b"vary") == []


@pytestmark_db
async def test_modified_session_updates_store() -> None:
    key = await database_sync_to_async(new_session)(count=1)

    def bump(session: Any) -> None:
        session["count"] += 1

    start = await http_get(session_app(bump), cookie=f"sessionid={key}")
    assert set_cookies(start)["sessionid"].value == key
    assert await database_sync_to_async(stored_session)(key) == {"count": 2}


@pytestmark_db
async def test_vary_is_not_duplicated() -> None:
    key = await database_sync_to_async(new_session)(a=1)

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        await receive()
        await database_sync_to_async(lambda: scope["session"]["a"])()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"vary", b"Accept, cookie")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    start = await http_get(app, cookie=f"sessionid={key}")
    assert header_values(start, b"vary") == ["Accept, cookie"]
    assert set_cookies(start) == {}


@pytestmark_db
async def test_server_error_does_not_save() -> None:
    def work(session: Any) -> None:
        session["lost"] = True

    seen: list[Scope] = []
    start = await http_get(session_app(work, status=500, seen=seen))
    assert set_cookies(start) == {}
    session = seen[0]["session"]
    assert session.session_key is None


@pytestmark_db
async def test_emptied_session_deletes_cookie() -> None:
    key = await database_sync_to_async(new_session)(count=1)
    start = await http_get(session_app(lambda s: s.flush()), cookie=f"sessionid={key}")
    morsel = set_cookies(start)["sessionid"]
    assert morsel.value == ""
    assert morsel["max-age"] == "0"
    assert header_values(start, b"vary") == ["Cookie"]
    assert not await database_sync_to_async(SessionStore().exists)(key)


@pytestmark_db
async def test_garbage_cookie_is_deleted() -> None:
    start = await http_get(session_app(lambda s: None), cookie="sessionid=x")
    assert set_cookies(start)["sessionid"]["max-age"] == "0"


@pytestmark_db
async def test_unknown_key_gets_a_fresh_session() -> None:
    def work(session: Any) -> None:
        session["fresh"] = True

    unknown = "a" * 32
    start = await http_get(session_app(work), cookie=f"sessionid={unknown}")
    new_key = set_cookies(start)["sessionid"].value
    assert new_key != unknown
    assert await database_sync_to_async(stored_session)(new_key) == {"fresh": True}


@pytestmark_db
async def test_save_every_request() -> None:
    key = await database_sync_to_async(new_session)(count=1)
    with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
        start = await http_get(session_app(lambda s: None), cookie=f"sessionid={key}")
    assert set_cookies(start)["sessionid"].value == key
    assert header_values(start, b"vary") == []


@pytestmark_db
async def test_expire_at_browser_close() -> None:
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True):
        start = await http_get(session_app(lambda s: s.__setitem__("a", 1)))
    morsel = set_cookies(start)["sessionid"]
    assert morsel.value
    assert morsel["max-age"] == ""
    assert morsel["expires"] == ""


@pytestmark_db
async def test_cookie_settings_are_honoured() -> None:
    with override_settings(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_AGE=60,
        SESSION_COOKIE_DOMAIN=".example.org",
        SESSION_COOKIE_PATH="/app",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=False,
        SESSION_COOKIE_SAMESITE="Strict",
    ):
        start = await http_get(session_app(lambda s: s.__setitem__("a", 1)))
        key = set_cookies(start)["sid"].value
        # The custom cookie name is also the one read back.
        read: list[Any] = []
        again = await http_get(session_app(lambda s: read.append(s["a"])), cookie=f"sid={key}")
    morsel = set_cookies(start)["sid"]
    assert morsel["max-age"] == "60"
    assert morsel["domain"] == ".example.org"
    assert morsel["path"] == "/app"
    assert morsel["secure"] is True
    assert morsel["httponly"] == ""
    assert morsel["samesite"] == "Strict"
    assert read == [1]
    assert set_cookies(again) == {}


@pytestmark_db
async def test_session_engine_setting_is_used() -> None:
    seen: list[Scope] = []
    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"):
        start = await http_get(session_app(lambda s: s.__setitem__("a", 1), seen=seen))
    from django.contrib.sessions.backends.signed_cookies import SessionStore as SignedStore

    assert isinstance(seen[0]["session"], SignedStore)
    assert set_cookies(start)["sessionid"].value.count(":") >= 2  # a signed payload


@pytestmark_db
async def test_session_deleted_meanwhile_interrupts() -> None:
    key = await database_sync_to_async(new_session)(count=1)

    def work(session: Any) -> None:
        session["count"] += 1
        SessionStore().delete(key)  # a concurrent logout

    communicator = ApplicationCommunicator(
        SessionMiddlewareStack(session_app(work)), http_scope(cookie_header(f"sessionid={key}"))
    )
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    # Raised from the app's send() of the response start, as Django raises it;
    # also the SuspiciousOperation that Channels raises.
    with pytest.raises(SessionInterrupted) as raised:
        await communicator.wait(timeout=TIMEOUT)
    assert isinstance(raised.value, SuspiciousOperation)
    assert communicator.output_queue.empty()


@pytestmark_db
async def test_websocket_session_is_not_saved_automatically() -> None:
    key = await database_sync_to_async(new_session)(count=1)
    seen: list[Scope] = []

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        seen.append(scope)
        session: SessionBase = scope["session"]
        assert await receive() == {"type": "websocket.connect"}
        count = await database_sync_to_async(session.__getitem__)("count")
        await database_sync_to_async(session.__setitem__)("count", count + 1)
        await send({"type": "websocket.accept"})
        message = await receive()
        if message["type"] == "websocket.receive":  # "save please"
            await database_sync_to_async(session.save)()
            await send({"type": "websocket.send", "text": "saved"})
            await receive()

    async def run(save: bool) -> None:
        communicator = ApplicationCommunicator(
            SessionMiddlewareStack(app), ws_scope(cookie_header(f"sessionid={key}"))
        )
        await communicator.send_input({"type": "websocket.connect"})
        assert await communicator.receive_output(timeout=TIMEOUT) == {"type": "websocket.accept"}
        if save:
            await communicator.send_input({"type": "websocket.receive", "text": "save"})
            assert (await communicator.receive_output(timeout=TIMEOUT))["text"] == "saved"
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await communicator.wait(timeout=TIMEOUT)

    await run(save=False)
    assert await database_sync_to_async(stored_session)(key) == {"count": 1}
    await run(save=True)
    assert await database_sync_to_async(stored_session)(key) == {"count": 2}
    assert seen[0]["cookies"] == {"sessionid": key}
