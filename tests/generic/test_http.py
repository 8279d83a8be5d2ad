"""Tests for tidings.generic.http: AsyncHttpConsumer and AsyncHttpStreamConsumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import tidings.generic.http
from tidings.generic.http import AsyncHttpConsumer, AsyncHttpStreamConsumer
from tidings.layers import get_channel_layer
from tidings.layers.base import BaseChannelLayer
from tidings.testing import ApplicationCommunicator, HttpCommunicator

Message = dict[str, Any]
HTTP_SCOPE: Message = {"type": "http", "method": "POST", "path": "/", "headers": []}


@pytest.fixture
async def layer() -> AsyncIterator[BaseChannelLayer]:
    channel_layer = get_channel_layer()
    assert channel_layer is not None
    await channel_layer.flush()
    yield channel_layer
    await channel_layer.flush()


async def assert_not_member(layer: BaseChannelLayer, group: str, channel: str) -> None:
    await layer.group_send(group, {"type": "probe"})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await layer.receive(channel)


def test_public_names() -> None:
    assert sorted(tidings.generic.http.__all__) == ["AsyncHttpConsumer", "AsyncHttpStreamConsumer"]


class Hello(AsyncHttpConsumer):
    disconnects = 0

    async def handle(self, body: bytes) -> None:
        if self.scope["path"] == "/dict-headers":
            await self.send_response(201, b"made", headers={b"x-kind": b"dict"})
        elif self.scope["path"] == "/stream":
            await self.send_headers(headers=[(b"content-type", b"text/plain")])
            for part in (b"one ", b"two ", b"three"):
                await self.send_body(part, more_body=True)
            await self.send_body(b"")
        elif self.scope["path"] == "/not-bytes":
            await self.send_headers()
            await self.send_body("text")  # type: ignore[arg-type]
        elif self.scope["path"] == "/fail":
            raise RuntimeError("handle failed")
        else:
            await self.send_response(
                200, b"echo:" + body, headers=[(b"content-type", b"text/plain")]
            )

    async def disconnect(self) -> None:
        type(self).disconnects += 1


async def test_send_response() -> None:
    communicator = HttpCommunicator(Hello.as_asgi(), "POST", "/", body=b"hi")
    response = await communicator.get_response()
    assert response == {
        "status": 200,
        "headers": [(b"content-type", b"text/plain")],
        "body": b"echo:hi",
    }
    await communicator.wait()
    assert not communicator.future.cancelled()


async def test_headers_as_dict() -> None:
    response = await HttpCommunicator(Hello.as_asgi(), "GET", "/dict-headers").get_response()
    assert response["status"] == 201
    assert response["headers"] == [(b"x-kind", b"dict")]
    assert response["body"] == b"made"


async def test_streamed_body_chunks() -> None:
    communicator = ApplicationCommunicator(Hello.as_asgi(), {**HTTP_SCOPE, "path": "/stream"})
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output()
    assert start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain")],
    }
    chunks = [await communicator.receive_output() for _ in range(4)]
    assert [(c["body"], c["more_body"]) for c in chunks] == [
        (b"one ", True),
        (b"two ", True),
        (b"three", True),
        (b"", False),
    ]
    response = await HttpCommunicator(Hello.as_asgi(), "GET", "/stream").get_response()
    assert response["body"] == b"one two three"


async def test_request_body_over_several_chunks() -> None:
    communicator = ApplicationCommunicator(Hello.as_asgi(), HTTP_SCOPE)
    await communicator.send_input({"type": "http.request", "body": b"ab", "more_body": True})
    await communicator.send_input({"type": "http.request", "more_body": True})
    await communicator.send_input({"type": "http.request", "body": b"cd", "more_body": False})
    await communicator.receive_output()
    assert (await communicator.receive_output())["body"] == b"echo:abcd"
    await communicator.wait()
    assert not communicator.future.cancelled()


async def test_body_must_be_bytes() -> None:
    communicator = HttpCommunicator(Hello.as_asgi(), "GET", "/not-bytes")
    with pytest.raises(TypeError, match="must be bytes, not str"):
        await communicator.get_response()


async def test_handle_error_propagates_after_disconnect() -> None:
    Hello.disconnects = 0
    communicator = HttpCommunicator(Hello.as_asgi(), "GET", "/fail")
    with pytest.raises(RuntimeError, match="handle failed"):
        await communicator.get_response()
    assert Hello.disconnects == 1


async def test_disconnect_called_once_after_handle() -> None:
    Hello.disconnects = 0
    await HttpCommunicator(Hello.as_asgi(), "GET", "/").get_response()
    assert Hello.disconnects == 1


async def test_client_disconnect_stops_consumer() -> None:
    Hello.disconnects = 0
    communicator = ApplicationCommunicator(Hello.as_asgi(), HTTP_SCOPE)
    await communicator.send_input({"type": "http.request", "body": b"a", "more_body": True})
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait()
    assert not communicator.future.cancelled()
    assert Hello.disconnects == 1
    assert communicator.output_queue.empty()


async def test_handle_must_be_implemented() -> None:
    class Lazy(AsyncHttpConsumer):
        pass

    with pytest.raises(NotImplementedError, match=r"Lazy must implement handle\(body\)"):
        await HttpCommunicator(Lazy.as_asgi(), "GET", "/").get_response()


# -- AsyncHttpStreamConsumer ----------------------------------------------------


class Feed(AsyncHttpStreamConsumer):
    groups = ["news"]
    disconnects = 0

    async def handle(self, body: bytes) -> None:
        if body == b"plain":
            await self.send_response(200, b"not streaming")
            return
        await self.send_headers(headers=[(b"content-type", b"text/event-stream")])
        await self.send_body(self.channel_name.encode(), more_body=True)
        assert self.response_open
        if body == b"fail":
            raise RuntimeError("stream handle failed")

    async def news_item(self, event: Message) -> None:
        await self.send_body(event["text"].encode(), more_body=not event.get("last"))

    async def disconnect(self) -> None:
        type(self).disconnects += 1


async def start_feed(body: bytes = b"") -> tuple[ApplicationCommunicator, str]:
    communicator = ApplicationCommunicator(Feed.as_asgi(), {**HTTP_SCOPE, "method": "GET"})
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output()
    assert start["type"] == "http.response.start"
    first = await communicator.receive_output()
    assert first["more_body"] is True
    return communicator, first["body"].decode()


async def test_stream_receives_group_events_until_finished(layer: BaseChannelLayer) -> None:
    Feed.disconnects = 0
    communicator, channel = await start_feed()
    await layer.group_send("news", {"type": "news.item", "text": "first"})
    assert await communicator.receive_output() == {
        "type": "http.response.body",
        "body": b"first",
        "more_body": True,
    }
    await layer.group_send("news", {"type": "news.item", "text": "last", "last": True})
    assert (await communicator.receive_output())["more_body"] is False
    await communicator.wait()
    assert not communicator.future.cancelled()
    assert Feed.disconnects == 1
    await assert_not_member(layer, "news", channel)


async def test_stream_client_disconnect_leaves_groups(layer: BaseChannelLayer) -> None:
    Feed.disconnects = 0
    communicator, channel = await start_feed()
    assert await communicator.receive_nothing()
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait()
    assert not communicator.future.cancelled()
    assert Feed.disconnects == 1
    await assert_not_member(layer, "news", channel)


async def test_stream_cancel_leaves_groups(layer: BaseChannelLayer) -> None:
    communicator, channel = await start_feed()
    communicator.stop()
    await communicator.wait()
    assert communicator.future.cancelled()
    await assert_not_member(layer, "news", channel)


async def test_stream_handle_finishing_response_stops(layer: BaseChannelLayer) -> None:
    Feed.disconnects = 0
    communicator = HttpCommunicator(Feed.as_asgi(), "GET", "/", body=b"plain")
    response = await communicator.get_response()
    assert response["body"] == b"not streaming"
    await communicator.wait()
    assert not communicator.future.cancelled()
    assert Feed.disconnects == 1


async def test_stream_handle_error_propagates_and_cleans_up(layer: BaseChannelLayer) -> None:
    Feed.disconnects = 0
    communicator, channel = await start_feed(b"fail")
    with pytest.raises(RuntimeError, match="stream handle failed"):
        await communicator.wait()
    assert Feed.disconnects == 1
    await assert_not_member(layer, "news", channel)


async def test_stream_response_open_property() -> None:
    consumer = Feed()
    assert not consumer.response_open
    assert consumer.groups == ["news"]
