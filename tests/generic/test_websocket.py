"""Tests for tidings.generic.websocket, driven through WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import override_settings
from django.urls import path

import tidings.generic.websocket
from tidings.exceptions import AcceptConnection, DenyConnection, InvalidChannelLayerError
from tidings.generic.websocket import (
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    WebsocketConsumer,
)
from tidings.layers import get_channel_layer
from tidings.layers.base import BaseChannelLayer
from tidings.routing import URLRouter
from tidings.testing import ApplicationCommunicator, WebsocketCommunicator

Message = dict[str, Any]


@pytest.fixture
async def layer() -> AsyncIterator[BaseChannelLayer]:
    channel_layer = get_channel_layer()
    assert channel_layer is not None
    await channel_layer.flush()
    yield channel_layer
    await channel_layer.flush()


async def assert_not_member(layer: BaseChannelLayer, group: str, channel: str) -> None:
    """group_send to ``group`` must put nothing on ``channel`` (the layer queues synchronously)."""
    await layer.group_send(group, {"type": "probe"})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await layer.receive(channel)


def test_public_names() -> None:
    assert sorted(tidings.generic.websocket.__all__) == [
        "AsyncJsonWebsocketConsumer",
        "AsyncWebsocketConsumer",
        "JsonWebsocketConsumer",
        "WebsocketConsumer",
    ]


# -- async consumers ----------------------------------------------------------


class AsyncEcho(AsyncWebsocketConsumer):
    groups = ["lobby"]
    disconnect_codes: list[int] = []

    async def connect(self) -> None:
        query = self.scope["query_string"]
        if query == b"deny":
            raise DenyConnection()
        if query == b"accept-signal":
            raise AcceptConnection()
        if query == b"close-4001":
            await self.close(code=4001, reason="go away")
            return
        if query == b"proto":
            await self.accept(subprotocol="chat.v2", headers=[(b"x-tidings", b"yes")])
            return
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "whoami":
            await self.send(text_data=self.channel_name)
        elif text_data == "bye":
            await self.send(text_data="bye!", close=True)
        elif text_data == "bye-4000":
            await self.send(text_data="bye!", close=4000)
        elif text_data == "explode":
            raise RuntimeError("consumer bug")
        elif text_data == "empty-send":
            await self.send()
        elif text_data is not None:
            await self.send(text_data=text_data.upper())
        else:
            assert bytes_data is not None
            await self.send(bytes_data=bytes_data[::-1])

    async def chat_message(self, event: Message) -> None:
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        self.disconnect_codes.append(code)


async def test_connect_echo_disconnect() -> None:
    communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/")
    assert await communicator.connect() == (True, None)
    await communicator.send_to(text_data="hello")
    assert await communicator.receive_from() == "HELLO"
    await communicator.send_to(bytes_data=b"abc")
    assert await communicator.receive_from() == b"cba"
    AsyncEcho.disconnect_codes.clear()
    await communicator.disconnect(code=4321)
    assert communicator.future.done()
    assert not communicator.future.cancelled()
    assert AsyncEcho.disconnect_codes == [4321]


async def test_disconnect_without_code_gets_1005() -> None:
    communicator = ApplicationCommunicator(
        AsyncEcho.as_asgi(), {"type": "websocket", "query_string": b""}
    )
    await communicator.send_input({"type": "websocket.connect"})
    await communicator.receive_output()
    AsyncEcho.disconnect_codes.clear()
    await communicator.send_input({"type": "websocket.disconnect"})
    await communicator.wait()
    assert AsyncEcho.disconnect_codes == [1005]


async def test_accept_with_subprotocol_and_headers() -> None:
    communicator = ApplicationCommunicator(
        AsyncEcho.as_asgi(), {"type": "websocket", "query_string": b"proto"}
    )
    await communicator.send_input({"type": "websocket.connect"})
    assert await communicator.receive_output() == {
        "type": "websocket.accept",
        "subprotocol": "chat.v2",
        "headers": [(b"x-tidings", b"yes")],
    }
    communicator.stop()
    ws = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/?proto", subprotocols=["chat.v2"])
    assert await ws.connect() == (True, "chat.v2")
    await ws.disconnect()


async def test_plain_accept_message_has_no_headers() -> None:
    communicator = ApplicationCommunicator(
        AsyncEcho.as_asgi(), {"type": "websocket", "query_string": b""}
    )
    await communicator.send_input({"type": "websocket.connect"})
    assert await communicator.receive_output() == {"type": "websocket.accept", "subprotocol": None}
    communicator.stop()


@pytest.mark.parametrize(
    ("query", "result"),
    [
        ("deny", (False, 1000)),
        ("close-4001", (False, 4001)),
        ("accept-signal", (True, None)),
    ],
)
async def test_connect_outcomes(query: str, result: tuple[bool, Any]) -> None:
    communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), f"/ws/?{query}")
    assert await communicator.connect() == result
    communicator.stop()


async def test_close_carries_code_and_reason() -> None:
    communicator = ApplicationCommunicator(
        AsyncEcho.as_asgi(), {"type": "websocket", "query_string": b"close-4001"}
    )
    await communicator.send_input({"type": "websocket.connect"})
    assert await communicator.receive_output() == {
        "type": "websocket.close",
        "code": 4001,
        "reason": "go away",
    }
    communicator.stop()


@pytest.mark.parametrize(("text", "close"), [("bye", {}), ("bye-4000", {"code": 4000})])
async def test_send_then_close(text: str, close: Message) -> None:
    communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_to(text_data=text)
    assert await communicator.receive_from() == "bye!"
    assert await communicator.receive_output() == {"type": "websocket.close", **close}
    await communicator.disconnect()


async def test_send_needs_data() -> None:
    communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_to(text_data="empty-send")
    with pytest.raises(ValueError, match="text_data or bytes_data"):
        await communicator.receive_from()


async def test_groups_joined_on_connect_left_on_disconnect(layer: BaseChannelLayer) -> None:
    communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_to(text_data="whoami")
    channel = await communicator.receive_from()
    assert isinstance(channel, str)
    await layer.group_send("lobby", {"type": "chat.message", "text": "to the lobby"})
    assert await communicator.receive_from() == "to the lobby"
    await communicator.disconnect()
    await assert_not_member(layer, "lobby", channel)


async def test_handler_exception_propagates_and_groups_are_left(
    layer: BaseChannelLayer,
) -> None:
    communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_to(text_data="whoami")
    channel = await communicator.receive_from()
    assert isinstance(channel, str)
    await communicator.send_to(text_data="explode")
    with pytest.raises(RuntimeError, match="consumer bug"):
        await communicator.receive_from()
    await assert_not_member(layer, "lobby", channel)


async def test_cancelled_consumer_leaves_groups(layer: BaseChannelLayer) -> None:
    communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_to(text_data="whoami")
    channel = await communicator.receive_from()
    assert isinstance(channel, str)
    communicator.stop()  # what a server does when the connection is lost
    await communicator.wait()
    assert communicator.future.cancelled()
    await assert_not_member(layer, "lobby", channel)


async def test_groups_need_a_channel_layer() -> None:
    with override_settings(CHANNEL_LAYERS={}):
        communicator = WebsocketCommunicator(AsyncEcho.as_asgi(), "/ws/")
        with pytest.raises(InvalidChannelLayerError, match="uses groups"):
            await communicator.connect()


async def test_groups_attribute_is_per_instance_copy_safe() -> None:
    class NoGroups(AsyncWebsocketConsumer):
        pass

    consumer = NoGroups()
    assert consumer.groups == []
    assert NoGroups.groups is None


async def test_works_through_url_router_with_kwargs() -> None:
    class Room(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            await self.accept()
            await self.send(text_data=str(self.scope["url_route"]["kwargs"]["room"]))

    app = URLRouter([path("ws/room/<int:room>/", Room.as_asgi())])
    communicator = WebsocketCommunicator(app, "/ws/room/12/")
    assert (await communicator.connect())[0]
    assert await communicator.receive_from() == "12"
    await communicator.disconnect()


# -- async JSON ---------------------------------------------------------------


class AsyncJson(AsyncJsonWebsocketConsumer):
    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if content == "fail":
            raise LookupError("receive_json bug")
        await self.send_json({"got": content})


async def test_async_json_round_trip() -> None:
    communicator = WebsocketCommunicator(AsyncJson.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_json_to({"a": [1, 2, None], "b": "é"})
    assert await communicator.receive_json_from() == {"got": {"a": [1, 2, None], "b": "é"}}
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ({"text_data": "{not json"}, "Expecting property name"),
        ({"text_data": ""}, "No text section for incoming WebSocket frame!"),
        ({"bytes_data": b'{"a": 1}'}, "No text section for incoming WebSocket frame!"),
    ],
)
@pytest.mark.parametrize("consumer", ["async", "sync"])
async def test_json_bad_input_raises_by_default(
    frame: dict[str, Any], error: str, consumer: str
) -> None:
    # Channels' behaviour: the consumer ends with a ValueError (JSONDecodeError is one).
    app = (AsyncJson if consumer == "async" else SyncJson).as_asgi()
    communicator = WebsocketCommunicator(app, "/ws/")
    await communicator.connect()
    await communicator.send_to(**frame)
    with pytest.raises(ValueError, match=error):
        await communicator.wait()


class AsyncJsonClosing(AsyncJson):
    invalid_json_close_code = 1007
    unsupported_data_close_code = 1003


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"text_data": "{not json"}, 1007),
        ({"text_data": ""}, 1007),
        ({"bytes_data": b'{"a": 1}'}, 1003),
    ],
)
@pytest.mark.parametrize("consumer", ["async", "sync"])
async def test_json_bad_input_closes_cleanly_with_close_codes(
    frame: dict[str, Any], code: int, consumer: str
) -> None:
    app = (AsyncJsonClosing if consumer == "async" else SyncJsonClosing).as_asgi()
    communicator = WebsocketCommunicator(app, "/ws/")
    await communicator.connect()
    await communicator.send_to(**frame)
    assert await communicator.receive_output() == {"type": "websocket.close", "code": code}
    # The consumer is still healthy and stops normally on the disconnect that follows.
    await communicator.disconnect(code=code)
    assert not communicator.future.cancelled()


async def test_json_close_codes_are_configurable() -> None:
    class Strict(AsyncJsonWebsocketConsumer):
        invalid_json_close_code = 4400

    communicator = WebsocketCommunicator(Strict.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_to(text_data="nope")
    assert (await communicator.receive_output())["code"] == 4400
    await communicator.disconnect()


async def test_async_json_receive_json_error_propagates() -> None:
    communicator = WebsocketCommunicator(AsyncJson.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_json_to("fail")
    with pytest.raises(LookupError, match="receive_json bug"):
        await communicator.receive_from()


async def test_async_json_custom_codec_and_send_json_close() -> None:
    class Codec(AsyncJsonWebsocketConsumer):
        @classmethod
        async def decode_json(cls, text_data: str) -> Any:
            return json.loads(text_data.removeprefix(">"))

        @classmethod
        async def encode_json(cls, content: Any) -> str:
            return ">" + json.dumps(content, sort_keys=True)

        async def receive_json(self, content: Any, **kwargs: Any) -> None:
            await self.send_json({"z": 1, "a": content}, close=True)

    communicator = WebsocketCommunicator(Codec.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_to(text_data='>"x"')
    assert await communicator.receive_from() == '>{"a": "x", "z": 1}'
    assert await communicator.receive_output() == {"type": "websocket.close"}
    await communicator.disconnect()


# -- sync consumers -----------------------------------------------------------


class SyncEcho(WebsocketConsumer):
    groups = ["sync-lobby"]
    threads: list[int] = []

    def connect(self) -> None:
        self.threads.append(threading.get_ident())
        if self.scope.get("query_string") == b"deny":
            raise DenyConnection()
        self.accept(subprotocol="v1")

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.threads.append(threading.get_ident())
        if text_data == "whoami":
            self.send(text_data=self.channel_name)
        elif text_data == "bye":
            self.send(text_data="bye!", close=4001)
        elif text_data is not None:
            self.send(text_data=text_data[::-1])
        else:
            self.send(bytes_data=bytes_data)

    def chat_message(self, event: Message) -> None:
        self.send(text_data=event["text"])


class SyncJson(JsonWebsocketConsumer):
    def receive_json(self, content: Any, **kwargs: Any) -> None:
        self.send_json([content, content])


class SyncJsonClosing(SyncJson):
    invalid_json_close_code = 1007
    unsupported_data_close_code = 1003


async def test_sync_consumer_runs_in_a_thread_with_groups(layer: BaseChannelLayer) -> None:
    SyncEcho.threads.clear()
    communicator = WebsocketCommunicator(SyncEcho.as_asgi(), "/ws/")
    assert await communicator.connect() == (True, "v1")
    await communicator.send_to(text_data="abc")
    assert await communicator.receive_from() == "cba"
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert await communicator.receive_from() == b"\x00\x01"
    await communicator.send_to(text_data="whoami")
    channel = await communicator.receive_from()
    assert isinstance(channel, str)
    await layer.group_send("sync-lobby", {"type": "chat.message", "text": "sync hi"})
    assert await communicator.receive_from() == "sync hi"
    await communicator.send_to(text_data="bye")
    assert await communicator.receive_from() == "bye!"
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4001}
    await communicator.disconnect()
    assert not communicator.future.cancelled()
    await assert_not_member(layer, "sync-lobby", channel)
    assert SyncEcho.threads
    assert threading.get_ident() not in SyncEcho.threads


async def test_sync_consumer_deny() -> None:
    communicator = WebsocketCommunicator(SyncEcho.as_asgi(), "/ws/?deny")
    assert await communicator.connect() == (False, 1000)
    communicator.stop()


async def test_sync_json_round_trip() -> None:
    communicator = WebsocketCommunicator(SyncJson.as_asgi(), "/ws/")
    await communicator.connect()
    await communicator.send_json_to({"k": 1})
    assert await communicator.receive_json_from() == [{"k": 1}, {"k": 1}]
    await communicator.disconnect()
