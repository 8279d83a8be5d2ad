"""Tests for the sends that wait for the transaction (tidings.db ``*_on_commit``).

A real SQLite database (tests/django_settings.py), real layers: each test writes a
row inside ``transaction.atomic`` and looks at the layer before and after the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import override_settings

from tests.test_presence_redis import private_redis_url
from tidings.db import (
    agroup_send_on_commit,
    asend_on_commit,
    database_sync_to_async,
    group_send_on_commit,
    send_on_commit,
)
from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from tidings.layers.base import BaseChannelLayer, Message

pytestmark = pytest.mark.usefixtures("django_db")

__all__ = ["private_redis_url"]  # a fixture of this module too

MESSAGE: Message = {"type": "note.saved", "id": 1}


def _new_user(name: str) -> None:
    get_user_model().objects.create(username=name)


def _user_exists(name: str) -> bool:
    return get_user_model().objects.filter(username=name).exists()


@pytest.fixture
def layer() -> Iterator[BaseChannelLayer]:
    """A fresh in-memory layer as the default alias."""
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"}}
    ):
        layer = get_channel_layer()
        assert layer is not None
        yield layer


async def member(layer: BaseChannelLayer, group: str = "notes") -> str:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return channel


async def pending(layer: BaseChannelLayer, channel: str) -> list[Message]:
    """Every message waiting on ``channel`` right now (waits a moment for tasks to run)."""
    for _ in range(5):
        await asyncio.sleep(0)
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(layer.receive(channel), 0.05))
        except TimeoutError:
            return got


def seen_now(layer: BaseChannelLayer, channel: str) -> list[Message]:
    """``pending`` from a worker thread: the event loop is free while the thread runs."""
    return async_to_sync(pending)(layer, channel)


# -- sync code in a thread: database_sync_to_async, and a sync view's thread ------------


async def test_commit_sends_after_the_commit_not_before(layer: BaseChannelLayer) -> None:
    channel = await member(layer)

    @database_sync_to_async
    def save() -> list[Message]:
        with transaction.atomic():
            _new_user("committed")
            group_send_on_commit("notes", MESSAGE)
            before = seen_now(layer, channel)
        return before

    assert await save() == []
    assert await pending(layer, channel) == [MESSAGE]
    assert await database_sync_to_async(_user_exists)("committed")


async def test_rollback_sends_nothing(layer: BaseChannelLayer) -> None:
    channel = await member(layer)

    @database_sync_to_async
    def save() -> None:
        with transaction.atomic():
            _new_user("rolled-back")
            group_send_on_commit("notes", MESSAGE)
            send_on_commit(channel, {"type": "direct"})
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError):
        await save()
    assert await pending(layer, channel) == []
    assert not await database_sync_to_async(_user_exists)("rolled-back")


async def test_a_rolled_back_savepoint_drops_only_its_own_sends(layer: BaseChannelLayer) -> None:
    channel = await member(layer)

    @database_sync_to_async
    def save() -> None:
        with transaction.atomic():
            group_send_on_commit("notes", {"type": "outer"})
            try:
                with transaction.atomic():
                    group_send_on_commit("notes", {"type": "inner"})
                    raise ValueError
            except ValueError:
                pass

    await save()
    assert await pending(layer, channel) == [{"type": "outer"}]


async def test_autocommit_sends_at_once_from_a_sync_view_thread(layer: BaseChannelLayer) -> None:
    channel = await member(layer)

    def view() -> list[Message]:
        _new_user("autocommit")
        send_on_commit(channel, MESSAGE)
        return seen_now(layer, channel)

    # How Django's ASGI handler runs a sync view: the thread-sensitive thread.
    assert await sync_to_async(view)() == [MESSAGE]


async def test_the_message_is_copied_when_the_call_is_made(layer: BaseChannelLayer) -> None:
    channel = await member(layer)

    @database_sync_to_async
    def save() -> None:
        message = {"type": "note.saved", "id": 1}
        with transaction.atomic():
            group_send_on_commit("notes", message)
            message["id"] = 2

    await save()
    assert await pending(layer, channel) == [MESSAGE]


# -- async code ---------------------------------------------------------------------------


async def test_async_twins_outside_a_transaction_send_at_once(layer: BaseChannelLayer) -> None:
    channel = await member(layer)
    await agroup_send_on_commit("notes", MESSAGE)
    await asend_on_commit(channel, {"type": "direct"})
    assert await pending(layer, channel) == [MESSAGE, {"type": "direct"}]


@pytest.fixture
def async_unsafe_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``transaction.atomic`` on the loop's thread: Django requires this opt-in for it."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.mark.usefixtures("async_unsafe_allowed")
async def test_atomic_in_async_code_sends_on_this_loop_after_commit(
    layer: BaseChannelLayer,
) -> None:
    channel = await member(layer)
    with transaction.atomic():
        _new_user("async-atomic")
        await agroup_send_on_commit("notes", MESSAGE)
        # The sync spelling works on the loop's thread too (a task after the commit).
        group_send_on_commit("notes", {"type": "sync spelling"})
        assert await pending(layer, channel) == []
    assert await pending(layer, channel) == [MESSAGE, {"type": "sync spelling"}]
    try:
        with transaction.atomic():
            await asend_on_commit(channel, MESSAGE)
            raise KeyError
    except KeyError:
        pass
    assert await pending(layer, channel) == []


# -- bad input and failures ---------------------------------------------------------------


async def test_bad_names_and_messages_raise_at_the_call(layer: BaseChannelLayer) -> None:
    with pytest.raises(TypeError, match="Group name"):
        group_send_on_commit("bad name!", MESSAGE)
    with pytest.raises(TypeError, match="Channel name"):
        await asend_on_commit("", MESSAGE)
    with pytest.raises(TypeError, match="message must be a dict"):
        await agroup_send_on_commit("notes", ["not", "a", "dict"])  # type: ignore[arg-type]
    with override_settings(CHANNEL_LAYERS={}), pytest.raises(InvalidChannelLayerError):
        group_send_on_commit("notes", MESSAGE)


class FailingLayer(InMemoryChannelLayer):
    async def group_send(self, group: str, message: Message) -> None:
        raise ConnectionError("redis went away")


@pytest.fixture
def failing_alias() -> Iterator[str]:
    settings = {
        "default": {"BACKEND": "tidings.layers.InMemoryChannelLayer"},
        "failing": {"BACKEND": "tidings.layers.InMemoryChannelLayer"},
    }
    with override_settings(CHANNEL_LAYERS=settings):
        channel_layers.set("failing", FailingLayer())
        yield "failing"


async def test_a_failed_send_is_logged_with_the_group_and_other_hooks_still_run(
    failing_alias: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    @database_sync_to_async
    def save() -> None:
        with transaction.atomic():
            group_send_on_commit("doomed-group", MESSAGE, alias=failing_alias)
            transaction.on_commit(lambda: ran.append("next hook"))

    with caplog.at_level(logging.ERROR, logger="tidings.db"):
        await save()
    assert ran == ["next hook"]
    [record] = caplog.records
    assert "'doomed-group'" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ConnectionError)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tidings.db"):
        await agroup_send_on_commit("doomed-group", MESSAGE, alias=failing_alias)
    assert "'doomed-group'" in caplog.records[0].getMessage()


# -- the Redis layer ----------------------------------------------------------------------


@pytest.fixture
async def redis_layers(
    private_redis_url: str,
) -> AsyncIterator[tuple[BaseChannelLayer, BaseChannelLayer]]:
    """Two Redis layers (two nodes); the first is the default alias."""
    from tidings.layers.redis import RedisChannelLayer

    sender, receiver = (
        RedisChannelLayer([private_redis_url]),
        RedisChannelLayer([private_redis_url]),
    )
    settings: dict[str, Any] = {"BACKEND": "tidings.layers.redis.RedisChannelLayer"}
    try:
        with override_settings(CHANNEL_LAYERS={"default": settings}):
            channel_layers.set("default", sender)
            yield sender, receiver
    finally:
        await sender.close()
        await receiver.close()


async def test_redis_layer_sends_after_commit_to_another_node(
    redis_layers: tuple[BaseChannelLayer, BaseChannelLayer],
) -> None:
    _, receiver = redis_layers
    channel = await member(receiver)

    @database_sync_to_async
    def save(fail: bool) -> list[Message]:
        with transaction.atomic():
            group_send_on_commit("notes", {"type": "note.saved", "fail": fail})
            before = seen_now(receiver, channel)
            if fail:
                raise RuntimeError
        return before

    with pytest.raises(RuntimeError):
        await save(True)
    assert await save(False) == []
    assert await pending(receiver, channel) == [{"type": "note.saved", "fail": False}]
