"""Tests for tidings.consumer: AsyncConsumer, SyncConsumer, as_asgi, dispatch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

import tidings.consumer
from tidings.consumer import AsyncConsumer, ConsumerApplication, SyncConsumer, get_handler_name
from tidings.exceptions import InvalidChannelLayerError, StopConsumer
from tidings.layers import InMemoryChannelLayer, get_channel_layer
from tidings.layers.base import BaseChannelLayer
from tidings.testing import ApplicationCommunicator

Message = dict[str, Any]


@pytest.fixture
async def layer() -> AsyncIterator[BaseChannelLayer]:
    channel_layer = get_channel_layer()
    assert channel_layer is not None
    await channel_layer.flush()
    yield channel_layer
    await channel_layer.flush()


class Echo(AsyncConsumer):
    """Reports what it sees as ASGI messages."""

    greeting = "hello"

    async def test_hello(self, message: Message) -> None:
        await self.send({"type": "reply", "greeting": self.greeting, "id": id(self)})

    async def test_whoami(self, message: Message) -> None:
        await self.send({"type": "reply", "channel_name": self.channel_name})

    async def test_stop(self, message: Message) -> None:
        raise StopConsumer()

    async def test_fail(self, message: Message) -> None:
        raise RuntimeError("handler failed")

    async def layer_ping(self, message: Message) -> None:
        await self.send({"type": "reply", "pong": message["n"]})


def test_public_names() -> None:
    assert sorted(tidings.consumer.__all__) == [
        "AsyncConsumer",
        "ConsumerApplication",
        "SyncConsumer",
        "get_handler_name",
    ]


# -- as_asgi ------------------------------------------------------------------


def test_as_asgi_returns_application_with_channels_attributes() -> None:
    app = Echo.as_asgi(greeting="hi")
    assert isinstance(app, ConsumerApplication)
    assert app.consumer_class is Echo
    assert app.consumer_initkwargs == {"greeting": "hi"}
    assert app.__name__ == "Echo"
    assert app.__doc__ == Echo.__doc__
    assert "Echo" in repr(app)


async def test_as_asgi_new_instance_per_scope_with_initkwargs() -> None:
    app = Echo.as_asgi(greeting="hi")
    ids = []
    for _ in range(2):
        communicator = ApplicationCommunicator(app, {"type": "test"})
        await communicator.send_input({"type": "test.hello"})
        reply = await communicator.receive_output()
        assert reply["greeting"] == "hi"
        ids.append(reply["id"])
        await communicator.send_input({"type": "test.stop"})
        await communicator.wait()
    assert ids[0] != ids[1]
    assert Echo.greeting == "hello"


async def test_unknown_initkwarg_is_a_type_error() -> None:
    communicator = ApplicationCommunicator(Echo.as_asgi(greting="typo"), {"type": "test"})
    with pytest.raises(TypeError, match="'greting'"):
        await communicator.wait()


async def test_custom_init_kwargs_work_like_channels() -> None:
    class WithInit(AsyncConsumer):
        def __init__(self, *args: Any, room: str = "", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.room = room

        async def test_hello(self, message: Message) -> None:
            await self.send({"type": "reply", "room": self.room})

    communicator = ApplicationCommunicator(WithInit.as_asgi(room="lobby"), {"type": "test"})
    await communicator.send_input({"type": "test.hello"})
    assert (await communicator.receive_output())["room"] == "lobby"
    communicator.stop()


# -- dispatch -----------------------------------------------------------------


def test_get_handler_name() -> None:
    assert get_handler_name({"type": "websocket.connect"}) == "websocket_connect"
    assert get_handler_name({"type": "chat.message.new"}) == "chat_message_new"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "no 'type'"),
        ({"type": 3}, "must be a str"),
        ({"type": None}, "must be a str"),
        # Channels' wording, matched by Channels' own tests.
        ({"type": "_private"}, r"^Malformed type in message \(leading underscore\): '_private'$"),
        ({"type": ".dunder"}, r"^Malformed type in message \(leading underscore\): '\.dunder'$"),
    ],
)
def test_get_handler_name_rejects(message: Message, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        get_handler_name(message)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"type": "test.unknown"}, "No handler for message type 'test.unknown'"),
        ({"type": "_private.thing"}, "leading underscore"),
        ({"type": 7}, "must be a str"),
        ({"type": "scope"}, "No handler for message type 'scope'"),  # not callable
    ],
)
async def test_dispatch_errors_propagate_out_of_the_app(message: Message, error: str) -> None:
    communicator = ApplicationCommunicator(Echo.as_asgi(), {"type": "test"})
    await communicator.send_input(message)
    with pytest.raises(ValueError, match=error):
        await communicator.wait()


async def test_handler_exception_propagates() -> None:
    communicator = ApplicationCommunicator(Echo.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.fail"})
    with pytest.raises(RuntimeError, match="handler failed"):
        await communicator.receive_output()


async def test_stop_consumer_ends_instance_cleanly() -> None:
    communicator = ApplicationCommunicator(Echo.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.stop"})
    await communicator.wait()
    assert communicator.future.done()
    assert not communicator.future.cancelled()
    assert communicator.future.result() is None


async def test_messages_are_handled_one_at_a_time_in_order() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    log: list[str] = []

    class Slow(AsyncConsumer):
        async def test_first(self, message: Message) -> None:
            log.append("first-start")
            entered.set()
            await release.wait()
            log.append("first-end")

        async def test_second(self, message: Message) -> None:
            log.append("second")
            await self.send({"type": "done"})

    communicator = ApplicationCommunicator(Slow.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.first"})
    await communicator.send_input({"type": "test.second"})
    await entered.wait()
    assert await communicator.receive_nothing()
    assert log == ["first-start"]
    release.set()
    assert await communicator.receive_output() == {"type": "done"}
    assert log == ["first-start", "first-end", "second"]
    communicator.stop()


# -- channel layer ------------------------------------------------------------


async def test_consumer_gets_a_channel_and_layer_messages(layer: BaseChannelLayer) -> None:
    communicator = ApplicationCommunicator(Echo.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.whoami"})
    channel_name = (await communicator.receive_output())["channel_name"]
    assert channel_name.startswith("specific.")
    await layer.send(channel_name, {"type": "layer.ping", "n": 1})
    assert await communicator.receive_output() == {"type": "reply", "pong": 1}
    # Both sources keep working.
    await communicator.send_input({"type": "test.hello"})
    assert (await communicator.receive_output())["greeting"] == "hello"
    await layer.send(channel_name, {"type": "layer.ping", "n": 2})
    assert (await communicator.receive_output())["pong"] == 2
    communicator.stop()


async def test_source_not_read_while_its_message_is_handled() -> None:
    """A message queued on ``receive`` during the handler that stops the consumer stays queued."""
    entered = asyncio.Event()
    release = asyncio.Event()

    class Stopper(AsyncConsumer):
        async def test_stop_later(self, message: Message) -> None:
            entered.set()
            await release.wait()
            raise StopConsumer()

    communicator = ApplicationCommunicator(Stopper.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.stop_later"})
    await entered.wait()
    await communicator.send_input({"type": "test.never_read"})
    release.set()
    await communicator.wait()
    assert not communicator.future.cancelled()
    assert communicator.input_queue.get_nowait() == {"type": "test.never_read"}


async def test_channel_layer_alias(layer: BaseChannelLayer) -> None:
    class OtherAlias(Echo):
        channel_layer_alias = "other"

    communicator = ApplicationCommunicator(OtherAlias.as_asgi(), {"type": "test"})
    with pytest.raises(InvalidChannelLayerError, match="other"):
        await communicator.wait()


async def test_no_channel_layer() -> None:
    class NoLayer(AsyncConsumer):
        async def test_check(self, message: Message) -> None:
            await self.send(
                {
                    "type": "reply",
                    "layer": self.channel_layer,
                    "has_name": hasattr(self, "channel_name"),
                }
            )

        async def test_join(self, message: Message) -> None:
            await self.join_group("room")

    with override_settings(CHANNEL_LAYERS={}):
        communicator = ApplicationCommunicator(NoLayer.as_asgi(), {"type": "test"})
        await communicator.send_input({"type": "test.check"})
        assert await communicator.receive_output() == {
            "type": "reply",
            "layer": None,
            "has_name": False,
        }
        await communicator.send_input({"type": "test.join"})
        with pytest.raises(InvalidChannelLayerError, match="CHANNEL_LAYERS"):
            await communicator.wait()


class Grouped(AsyncConsumer):
    async def test_join(self, message: Message) -> None:
        await self.join_group(message["group"])
        await self.send({"type": "joined", "channel": self.channel_name})

    async def test_leave(self, message: Message) -> None:
        await self.leave_group(message["group"])
        await self.send({"type": "left"})

    async def test_fail(self, message: Message) -> None:
        raise RuntimeError("boom")

    async def room_event(self, message: Message) -> None:
        await self.send({"type": "event", "n": message["n"]})


async def assert_not_member(layer: BaseChannelLayer, group: str, channel: str) -> None:
    """group_send to ``group`` must put nothing on ``channel`` (the layer queues synchronously)."""
    await layer.group_send(group, {"type": "room.event", "n": -1})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await layer.receive(channel)


async def test_join_and_leave_group(layer: BaseChannelLayer) -> None:
    communicator = ApplicationCommunicator(Grouped.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.join", "group": "room"})
    channel = (await communicator.receive_output())["channel"]
    await layer.group_send("room", {"type": "room.event", "n": 1})
    assert await communicator.receive_output() == {"type": "event", "n": 1}
    await communicator.send_input({"type": "test.leave", "group": "room"})
    assert await communicator.receive_output() == {"type": "left"}
    communicator.stop()
    await communicator.wait()
    await assert_not_member(layer, "room", channel)


@pytest.mark.parametrize("ending", ["error", "cancel", "stop"])
async def test_groups_left_however_the_instance_ends(layer: BaseChannelLayer, ending: str) -> None:
    communicator = ApplicationCommunicator(Grouped.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.join", "group": "a"})
    channel = (await communicator.receive_output())["channel"]
    await communicator.send_input({"type": "test.join", "group": "b"})
    await communicator.receive_output()
    if ending == "error":
        await communicator.send_input({"type": "test.fail"})
        with pytest.raises(RuntimeError, match="boom"):
            await communicator.wait()
    elif ending == "cancel":
        communicator.stop()
        await communicator.wait()
        assert communicator.future.cancelled()
    else:
        await communicator.send_input({"type": "test.unknown"})
        with pytest.raises(ValueError, match="No handler"):
            await communicator.wait()
    await assert_not_member(layer, "a", channel)
    await assert_not_member(layer, "b", channel)


# -- SyncConsumer -------------------------------------------------------------


class SyncEcho(SyncConsumer):
    def test_hello(self, message: Message) -> None:
        self.send({"type": "reply", "thread": threading.get_ident()})

    def test_join(self, message: Message) -> None:
        assert self.channel_layer is not None
        async_to_sync(self.channel_layer.group_add)("sync-room", self.channel_name)
        self.send({"type": "joined"})

    def room_event(self, message: Message) -> None:
        self.send({"type": "event", "n": message["n"], "thread": threading.get_ident()})

    def test_stop(self, message: Message) -> None:
        raise StopConsumer()

    def test_fail(self, message: Message) -> None:
        raise KeyError("sync failure")


async def test_sync_consumer_runs_handlers_in_a_thread(layer: BaseChannelLayer) -> None:
    communicator = ApplicationCommunicator(SyncEcho.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.hello"})
    reply = await communicator.receive_output()
    assert reply["thread"] != threading.get_ident()
    await communicator.send_input({"type": "test.join"})
    assert await communicator.receive_output() == {"type": "joined"}
    await layer.group_send("sync-room", {"type": "room.event", "n": 5})
    event = await communicator.receive_output()
    assert event["n"] == 5
    # thread_sensitive: every handler runs in the same worker thread.
    assert event["thread"] == reply["thread"]
    await communicator.send_input({"type": "test.stop"})
    await communicator.wait()
    assert not communicator.future.cancelled()


async def test_sync_consumer_errors() -> None:
    communicator = ApplicationCommunicator(SyncEcho.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.fail"})
    with pytest.raises(KeyError, match="sync failure"):
        await communicator.wait()
    communicator = ApplicationCommunicator(SyncEcho.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.missing"})
    with pytest.raises(ValueError, match=r"No handler for message type 'test\.missing'"):
        await communicator.wait()


async def test_sync_consumer_rejects_async_handlers() -> None:
    class Mixed(SyncConsumer):
        async def test_hello(self, message: Message) -> None:
            pass

    communicator = ApplicationCommunicator(Mixed.as_asgi(), {"type": "test"})
    await communicator.send_input({"type": "test.hello"})
    with pytest.raises(TypeError, match="is async, but Mixed is a SyncConsumer"):
        await communicator.wait()


async def test_sync_consumer_send_accepts_any_awaitable_send() -> None:
    """``send`` works when the server's send is not marked as a coroutine function."""
    sent: list[Message] = []

    class Sender:
        def __call__(self, message: Message) -> asyncio.Future[None]:
            sent.append(message)
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    queue: asyncio.Queue[Message] = asyncio.Queue()
    await queue.put({"type": "test.hello"})
    await queue.put({"type": "test.stop"})
    app = SyncEcho.as_asgi()
    async with asyncio.timeout(2):
        await app({"type": "test"}, queue.get, Sender())
    assert [m["type"] for m in sent] == ["reply"]


class FailingDiscardLayer(InMemoryChannelLayer):
    """An in-memory layer whose group_discard fails (a lost Redis connection, say)."""

    async def group_discard(self, group: str, channel: str) -> None:
        raise OSError("layer down")


async def test_group_cleanup_failure_does_not_hide_the_real_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = {"default": {"BACKEND": "tests.test_consumer.FailingDiscardLayer"}}
    with override_settings(CHANNEL_LAYERS=backend):
        communicator = ApplicationCommunicator(Grouped.as_asgi(), {"type": "test"})
        await communicator.send_input({"type": "test.join", "group": "room"})
        await communicator.receive_output()
        await communicator.send_input({"type": "test.fail"})
        with pytest.raises(RuntimeError, match="boom"):
            await communicator.wait()
    assert "Grouped could not leave groups ['room']" in caplog.text
    assert "layer down" in caplog.text
