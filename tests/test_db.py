"""Tests for tidings.db: database_sync_to_async and aclose_old_connections."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection, connections

import tidings.db
from tidings.db import DatabaseSyncToAsync, aclose_old_connections, database_sync_to_async

pytestmark = pytest.mark.usefixtures("django_db")


def _open_connection() -> None:
    """Run a query so this thread's default connection is open."""
    get_user_model().objects.exists()


def _is_open() -> bool:
    return connection.connection is not None


# Plain, thread-sensitive sync_to_async runs in the same thread as
# database_sync_to_async but does no clean-up: it lets the tests look at the
# connection that database_sync_to_async left behind.
open_plainly = sync_to_async(_open_connection)
is_open = sync_to_async(_is_open)


def _close() -> None:
    connection.close()


close_plainly = sync_to_async(_close)


@pytest.fixture
async def conn_max_age() -> AsyncIterator[None]:
    """Restore CONN_MAX_AGE and close the connection after a test that changes them."""
    original = connections.settings["default"]["CONN_MAX_AGE"]
    yield
    connections.settings["default"]["CONN_MAX_AGE"] = original
    await close_plainly()


def test_public_names() -> None:
    assert sorted(tidings.db.__all__) == [
        "DatabaseSyncToAsync",
        "aclose_old_connections",
        "agroup_send_on_commit",
        "asend_on_commit",
        "database_sync_to_async",
        "group_send_on_commit",
        "keeping_connections",
        "send_on_commit",
    ]


async def test_function_wrapper_runs_in_another_thread_and_returns() -> None:
    def work(a: int, *, b: int) -> tuple[int, int]:
        return a + b, threading.get_ident()

    total, thread_id = await database_sync_to_async(work)(2, b=3)
    assert total == 5
    assert thread_id != threading.get_ident()


async def test_decorator_forms() -> None:
    @database_sync_to_async
    def plain() -> str:
        return "plain"

    @database_sync_to_async(thread_sensitive=False)
    def pooled() -> int:
        return threading.get_ident()

    assert isinstance(plain, DatabaseSyncToAsync)
    assert vars(plain)["__name__"] == "plain"
    assert await plain() == "plain"
    assert await pooled() != threading.get_ident()


async def test_thread_sensitive_calls_share_one_thread() -> None:
    get_ident = database_sync_to_async(threading.get_ident)
    assert await get_ident() == await get_ident()


async def test_decorates_methods_and_binds_self() -> None:
    class Repo:
        def __init__(self) -> None:
            self.prefix = "user-"

        @database_sync_to_async
        def name(self, n: int) -> str:
            return f"{self.prefix}{n}"

    assert await Repo().name(7) == "user-7"


async def test_wrapping_a_bound_method_keeps_self() -> None:
    class Box:
        value = 3

        def get(self) -> int:
            return self.value

    box = Box()
    wrapped = database_sync_to_async(box.get)
    assert vars(wrapped)["__self__"] is box
    assert await wrapped() == 3


def test_refuses_coroutine_functions() -> None:
    async def coro() -> None:
        return None

    class AsyncCallable:
        async def __call__(self) -> None:
            return None

    with pytest.raises(TypeError, match="sync functions"):
        database_sync_to_async(coro)
    with pytest.raises(TypeError, match="sync functions"):
        database_sync_to_async(AsyncCallable())


def test_executor_requires_thread_insensitive() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(TypeError):
        database_sync_to_async(_is_open, executor=pool)


async def test_closes_obsolete_connection_after_the_call() -> None:
    # CONN_MAX_AGE is 0 in the test settings: a connection is obsolete at once.
    assert connections.settings["default"]["CONN_MAX_AGE"] == 0
    await database_sync_to_async(_open_connection)()
    assert not await is_open()


async def test_closes_obsolete_connection_before_the_call() -> None:
    await open_plainly()
    assert await is_open()
    # The wrapped function already finds the stale connection closed.
    assert await database_sync_to_async(_is_open)() is False


async def test_keeps_persistent_connections(conn_max_age: None) -> None:
    connections.settings["default"]["CONN_MAX_AGE"] = None
    await close_plainly()
    await database_sync_to_async(_open_connection)()
    # Not obsolete under CONN_MAX_AGE=None, so Django's rule keeps it.
    assert await is_open()
    first = await sync_to_async(lambda: connection.connection)()
    await database_sync_to_async(_open_connection)()
    assert await sync_to_async(lambda: connection.connection)() is first


async def test_propagates_exceptions_and_still_closes() -> None:
    class Boom(Exception):
        pass

    def fail() -> None:
        _open_connection()
        raise Boom("no")

    with pytest.raises(Boom, match="no"):
        await database_sync_to_async(fail)()
    assert not await is_open()


async def test_aclose_old_connections() -> None:
    await open_plainly()
    assert await is_open()
    await aclose_old_connections()
    assert not await is_open()


async def test_communicators_keep_connections_open_while_they_wait() -> None:
    # Django's TestCase keeps one connection in a transaction; closing it would
    # break the test, so communicators suspend the clean-ups, as Channels' do.
    from tidings.testing import ApplicationCommunicator

    async def app(scope: dict[str, object], receive: object, send: Any) -> None:
        await database_sync_to_async(_open_connection)()
        await aclose_old_connections()
        await send({"type": "open", "value": await is_open()})

    communicator = ApplicationCommunicator(app, {"type": "test"})
    assert await communicator.receive_output() == {"type": "open", "value": True}
    await communicator.wait()
    # Outside a communicator call, the clean-ups are back.
    await database_sync_to_async(_open_connection)()
    assert not await is_open()
