"""The channel layer conformance suite: every backend must pass all of it.

Each test runs once per backend of ``LAYER_BACKENDS`` (see ``conftest.py`` for
the fixture contract). Tests wait on results, never on time, except those
that are about time; those use ``timed_backend.advance``, instant on a fake
clock and real (and marked slow) elsewhere.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from tests.layers.conftest import LayerBackend
from tidings.exceptions import ChannelFull
from tidings.layers import BaseChannelLayer
from tidings.layers.base import ChannelSource

# A guard against hanging forever when a test fails; never what a test waits for.
GUARD = 5.0


async def receive_or_none(layer: BaseChannelLayer, channel: str) -> dict[str, Any] | None:
    """Receive from ``channel``, or ``None`` if nothing arrives within the guard."""
    try:
        return await asyncio.wait_for(layer.receive(channel), GUARD)
    except TimeoutError:
        return None


async def assert_next(layer: BaseChannelLayer, channel: str, expected: dict[str, Any]) -> None:
    """Assert that the next message on ``channel`` is ``expected``."""
    assert await receive_or_none(layer, channel) == expected


async def assert_no_older_message(layer: BaseChannelLayer, channel: str) -> None:
    """Assert that ``channel`` holds nothing: a marker sent now is the next message out."""
    marker = {"type": "test.marker"}
    await layer.send(channel, marker)
    await assert_next(layer, channel, marker)


# -- basics -------------------------------------------------------------------


async def test_extensions(layer: BaseChannelLayer) -> None:
    assert "groups" in layer.extensions
    assert "flush" in layer.extensions


async def test_send_receive_fifo(layer: BaseChannelLayer) -> None:
    channel = await layer.new_channel()
    messages = [{"type": "test.message", "n": n} for n in range(10)]
    for message in messages:
        await layer.send(channel, message)
    assert [await layer.receive(channel) for _ in messages] == messages


async def test_receive_waits_for_a_send(backend: LayerBackend, layer: BaseChannelLayer) -> None:
    channel = await layer.new_channel()
    task = asyncio.create_task(layer.receive(channel))
    await backend.settle()
    assert not task.done()
    await layer.send(channel, {"type": "test.message"})
    assert await asyncio.wait_for(task, GUARD) == {"type": "test.message"}


async def test_channels_are_separate(layer: BaseChannelLayer) -> None:
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.send("plain.channel", {"type": "plain"})
    await layer.send(first, {"type": "first"})
    await layer.send(second, {"type": "second"})
    await assert_next(layer, second, {"type": "second"})
    await assert_next(layer, "plain.channel", {"type": "plain"})
    await assert_next(layer, first, {"type": "first"})
    for channel in (first, second, "plain.channel"):
        await assert_no_older_message(layer, channel)


async def test_new_channel_names_are_unique_and_valid(layer: BaseChannelLayer) -> None:
    names = [await layer.new_channel() for _ in range(500)]
    assert len(set(names)) == len(names)
    for name in names:
        assert layer.require_valid_channel_name(name)
        assert name.startswith("specific.")
        assert name.count("!") == 1
        assert not name.endswith("!")
    custom = await layer.new_channel(prefix="chat.worker")
    assert custom.startswith("chat.worker.")
    await layer.send(custom, {"type": "test.message"})
    await assert_next(layer, custom, {"type": "test.message"})


@pytest.mark.parametrize("prefix", ["has space", "a!b", "", "x" * 99])
async def test_new_channel_rejects_bad_prefixes(layer: BaseChannelLayer, prefix: str) -> None:
    with pytest.raises(TypeError):
        await layer.new_channel(prefix)


# -- capacity -------------------------------------------------------------------


async def test_full_channel_raises_channel_full(
    layer_factory: Callable[..., BaseChannelLayer],
) -> None:
    layer = layer_factory(capacity=3)
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "test.message", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "test.message", "n": 3})
    await assert_next(layer, channel, {"type": "test.message", "n": 0})
    await layer.send(channel, {"type": "test.message", "n": 4})
    assert [(await layer.receive(channel))["n"] for _ in range(3)] == [1, 2, 4]


async def test_channel_capacity_patterns(layer_factory: Callable[..., BaseChannelLayer]) -> None:
    layer = layer_factory(
        capacity=2,
        channel_capacity={"big.*": 4, re.compile(r"tiny"): 1},
    )

    async def fill(channel: str) -> int:
        for n in range(10):
            try:
                await layer.send(channel, {"type": "test.message", "n": n})
            except ChannelFull:
                return n
        return 10

    assert await fill("big.one") == 4
    assert await fill("tiny.one") == 1
    assert await fill("other") == 2
    assert await fill("notbig.one") == 2  # globs match the whole name


# -- expiry ----------------------------------------------------------------------


async def test_expired_messages_are_not_delivered(timed_backend: LayerBackend) -> None:
    layer = timed_backend.make(expiry=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "old"})
    await timed_backend.advance(1.5)
    await layer.send(channel, {"type": "new"})
    await assert_next(layer, channel, {"type": "new"})
    await assert_no_older_message(layer, channel)


async def test_expired_messages_free_capacity(timed_backend: LayerBackend) -> None:
    layer = timed_backend.make(expiry=1, capacity=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "old"})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "refused"})
    await timed_backend.advance(1.5)
    await layer.send(channel, {"type": "new"})
    await assert_next(layer, channel, {"type": "new"})


async def test_group_memberships_expire(timed_backend: LayerBackend) -> None:
    layer = timed_backend.make(group_expiry=2)
    stale, renewed = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", stale)
    await layer.group_add("room", renewed)
    await timed_backend.advance(1)
    await layer.group_add("room", renewed)  # a second add renews the membership
    await timed_backend.advance(1.5)
    await layer.group_send("room", {"type": "room.message"})
    await assert_next(layer, renewed, {"type": "room.message"})
    await assert_no_older_message(layer, stale)


# -- groups ----------------------------------------------------------------------


async def test_group_send_reaches_every_member(layer: BaseChannelLayer) -> None:
    members = [await layer.new_channel() for _ in range(5)]
    outsider = await layer.new_channel()
    for channel in members:
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "room.message", "text": "hi"})
    for channel in members:
        await assert_next(layer, channel, {"type": "room.message", "text": "hi"})
    await assert_no_older_message(layer, outsider)


async def test_group_add_and_discard_are_idempotent(layer: BaseChannelLayer) -> None:
    kept, left = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", kept)
    await layer.group_add("room", kept)
    await layer.group_add("room", left)
    await layer.group_discard("room", left)
    await layer.group_discard("room", left)
    await layer.group_discard("never.created", left)
    await layer.group_send("room", {"type": "room.message"})
    await assert_next(layer, kept, {"type": "room.message"})
    await assert_no_older_message(layer, kept)  # added twice, delivered once
    await assert_no_older_message(layer, left)


async def test_groups_are_separate(layer: BaseChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.group_add("one", channel)
    await layer.group_add("two", channel)
    await layer.group_discard("one", channel)
    await layer.group_send("one", {"type": "one"})
    await layer.group_send("two", {"type": "two"})
    await assert_next(layer, channel, {"type": "two"})
    await assert_no_older_message(layer, channel)


async def test_group_send_to_an_empty_group_is_fine(layer: BaseChannelLayer) -> None:
    await layer.group_send("nobody.here", {"type": "room.message"})


async def test_group_send_skips_full_members_silently(
    layer_factory: Callable[..., BaseChannelLayer],
) -> None:
    layer = layer_factory(capacity=1)
    full, free = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", full)
    await layer.group_add("room", free)
    await layer.send(full, {"type": "already.here"})
    await layer.group_send("room", {"type": "room.message"})  # must not raise
    await assert_next(layer, free, {"type": "room.message"})
    await assert_next(layer, full, {"type": "already.here"})
    await assert_no_older_message(layer, full)


# -- flush -----------------------------------------------------------------------


async def test_flush_drops_messages_and_groups(layer: BaseChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "dropped"})
    await layer.send("plain.channel", {"type": "dropped"})
    await layer.group_add("room", channel)
    await layer.flush()
    await layer.group_send("room", {"type": "room.message"})
    await assert_no_older_message(layer, channel)
    await assert_no_older_message(layer, "plain.channel")


async def test_receive_waiting_across_flush_still_gets_messages(
    backend: LayerBackend, layer: BaseChannelLayer
) -> None:
    channel = await layer.new_channel()
    task = asyncio.create_task(layer.receive(channel))
    await backend.settle()
    await layer.flush()
    await layer.send(channel, {"type": "after.flush"})
    assert await asyncio.wait_for(task, GUARD) == {"type": "after.flush"}


# -- receivers -------------------------------------------------------------------


async def test_cancelled_receive_loses_no_message(
    backend: LayerBackend, layer: BaseChannelLayer
) -> None:
    channel = await layer.new_channel()
    task = asyncio.create_task(layer.receive(channel))
    await backend.settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await layer.send(channel, {"type": "test.message"})
    await assert_next(layer, channel, {"type": "test.message"})


async def test_receive_cancelled_just_after_a_send_loses_no_message(
    backend: LayerBackend, layer: BaseChannelLayer
) -> None:
    channel = await layer.new_channel()
    task = asyncio.create_task(layer.receive(channel))
    await backend.settle()
    await layer.send(channel, {"type": "test.message"})
    task.cancel()  # the receiver was woken but has not run yet
    try:
        got = await task  # it may already have taken the message: then it returns it
    except asyncio.CancelledError:
        got = await layer.receive(channel)
    assert got == {"type": "test.message"}
    await assert_no_older_message(layer, channel)


async def test_cancelled_receiver_hands_its_message_to_another(
    backend: LayerBackend, layer: BaseChannelLayer
) -> None:
    channel = await layer.new_channel()
    first = asyncio.create_task(layer.receive(channel))
    await backend.settle()
    second = asyncio.create_task(layer.receive(channel))
    await backend.settle()
    await layer.send(channel, {"type": "test.message", "n": 1})
    first.cancel()
    try:
        first_got: dict[str, Any] | None = await first
    except asyncio.CancelledError:
        first_got = None
    if first_got is None:
        # The message must reach the receiver still waiting, with no new send.
        assert await asyncio.wait_for(second, GUARD) == {"type": "test.message", "n": 1}
    else:
        assert first_got == {"type": "test.message", "n": 1}
        await layer.send(channel, {"type": "test.message", "n": 2})
        assert await asyncio.wait_for(second, GUARD) == {"type": "test.message", "n": 2}


async def test_concurrent_receivers_get_distinct_messages(
    backend: LayerBackend, layer: BaseChannelLayer
) -> None:
    channel = await layer.new_channel()
    receivers = [asyncio.create_task(layer.receive(channel)) for _ in range(8)]
    await backend.settle()
    for n in range(8):
        await layer.send(channel, {"type": "test.message", "n": n})
    results = await asyncio.wait_for(asyncio.gather(*receivers), GUARD)
    assert sorted(message["n"] for message in results) == list(range(8))
    await assert_no_older_message(layer, channel)


# -- validation ------------------------------------------------------------------

BAD_CHANNELS: list[Any] = ["has space", "x" * 100, 42, "", "a!b!c", "!local", "a?b", "é"]
BAD_GROUPS: list[Any] = ["has space", "x" * 100, 42, "", "a!b", "a?b"]


@pytest.mark.parametrize("name", BAD_CHANNELS, ids=repr)
async def test_bad_channel_names_raise_type_error(layer: BaseChannelLayer, name: Any) -> None:
    operations: list[Callable[[], Awaitable[Any]]] = [
        lambda: layer.send(name, {"type": "test.message"}),
        lambda: layer.receive(name),
        lambda: layer.group_add("room", name),
        lambda: layer.group_discard("room", name),
    ]
    for operation in operations:
        with pytest.raises(TypeError, match="Channel name"):
            await operation()


@pytest.mark.parametrize("name", BAD_GROUPS, ids=repr)
async def test_bad_group_names_raise_type_error(layer: BaseChannelLayer, name: Any) -> None:
    operations: list[Callable[[], Awaitable[Any]]] = [
        lambda: layer.group_add(name, "plain.channel"),
        lambda: layer.group_discard(name, "plain.channel"),
        lambda: layer.group_send(name, {"type": "test.message"}),
    ]
    for operation in operations:
        with pytest.raises(TypeError, match="Group name"):
            await operation()


@pytest.mark.parametrize("message", ["text", [("type", "x")], None], ids=repr)
async def test_messages_must_be_dicts(layer: BaseChannelLayer, message: Any) -> None:
    with pytest.raises(TypeError, match="message must be a dict"):
        await layer.send("plain.channel", message)
    with pytest.raises(TypeError, match="message must be a dict"):
        await layer.group_send("room", message)


# -- message content -------------------------------------------------------------


async def test_large_messages(layer: BaseChannelLayer) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.send(channel, {"type": "big", "bytes": payload})
    await layer.group_send("room", {"type": "big.group", "bytes": payload})
    assert await layer.receive(channel) == {"type": "big", "bytes": payload}
    assert await layer.receive(channel) == {"type": "big.group", "bytes": payload}


async def test_message_types_survive(layer: BaseChannelLayer) -> None:
    message = {
        "type": "test.types",
        "text": "héllo ☃",
        "bytes": b"\x00\xff",
        "int": -(2**63),
        "float": 1.5,
        "true": True,
        "none": None,
        "list": [1, "two", [3.0]],
        "dict": {"nested": {"deeper": [b"x"]}},
    }
    channel = await layer.new_channel()
    await layer.send(channel, message)
    assert await layer.receive(channel) == message


async def test_group_members_get_independent_copies(layer: BaseChannelLayer) -> None:
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", first)
    await layer.group_add("room", second)
    await layer.group_send("room", {"type": "room.message", "items": [1], "meta": {"k": "v"}})
    mine = await layer.receive(first)
    mine["items"].append(2)
    mine["meta"]["k"] = "changed"
    mine["type"] = "changed"
    assert await layer.receive(second) == {
        "type": "room.message",
        "items": [1],
        "meta": {"k": "v"},
    }


async def test_sender_changes_after_send_are_not_seen(layer: BaseChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    message: dict[str, Any] = {"type": "test.message", "items": [1]}
    await layer.send(channel, message)
    await layer.group_send("room", message)
    message["items"].append(2)
    message["type"] = "changed"
    assert await layer.receive(channel) == {"type": "test.message", "items": [1]}
    assert await layer.receive(channel) == {"type": "test.message", "items": [1]}


# -- sync callers ----------------------------------------------------------------


def test_async_to_sync_from_the_main_thread(backend: LayerBackend) -> None:
    # No event loop runs here: each async_to_sync call runs in a loop of its own.
    layer = backend.make()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("room", channel)
    for n in range(3):
        async_to_sync(layer.group_send)("room", {"type": "room.message", "n": n})
    async_to_sync(layer.send)(channel, {"type": "direct"})
    received = [async_to_sync(layer.receive)(channel) for _ in range(4)]
    assert received == [{"type": "room.message", "n": n} for n in range(3)] + [{"type": "direct"}]


async def test_async_to_sync_from_a_thread_reaches_a_waiting_receiver(
    backend: LayerBackend, layer: BaseChannelLayer
) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    task = asyncio.create_task(layer.receive(channel))
    await backend.settle()
    errors: list[Exception] = []

    def sync_code() -> None:
        try:
            for n in range(3):
                async_to_sync(layer.group_send)("room", {"type": "room.message", "n": n})
        except Exception as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=sync_code)
    thread.start()
    assert await asyncio.wait_for(task, GUARD) == {"type": "room.message", "n": 0}
    await asyncio.to_thread(thread.join, GUARD)
    assert errors == []
    assert await layer.receive(channel) == {"type": "room.message", "n": 1}
    assert await layer.receive(channel) == {"type": "room.message", "n": 2}


# -- polled channel sources and direct delivery (Tidings extensions) ---------------------


async def test_channel_source_receives_and_polls(layer: BaseChannelLayer) -> None:
    channel = await layer.new_channel()
    source = layer.channel_source(channel)
    assert source.channel == channel
    assert source.poll is not None, "a process-specific channel of a Tidings layer is polled"
    assert source.poll() is None
    await layer.send(channel, {"type": "one"})
    await layer.send(channel, {"type": "two"})
    assert await asyncio.wait_for(source(), GUARD) == {"type": "one"}
    got = None
    for _ in range(500):  # the Redis layer's receive loop delivers asynchronously
        got = source.poll()
        if got is not None:
            break
        await asyncio.sleep(0.01)
    assert got == {"type": "two"}
    assert source.poll() is None


async def test_channel_sources_share_their_layer_s_callables(layer: BaseChannelLayer) -> None:
    """A consumer's source holds no bound method of its own (memory per connection)."""
    first, second = [layer.channel_source(await layer.new_channel()) for _ in range(2)]
    for name in ChannelSource.__slots__:
        if name != "channel":
            assert getattr(first, name) is getattr(second, name), name


async def test_channel_source_of_a_normal_channel_is_not_polled(layer: BaseChannelLayer) -> None:
    source = layer.channel_source("jobs.thumbnails")
    assert source.poll is None
    await layer.send("jobs.thumbnails", {"type": "job"})
    assert await asyncio.wait_for(source(), GUARD) == {"type": "job"}


async def test_watch_resolves_on_arrival_and_unwatch_forgets(layer: BaseChannelLayer) -> None:
    channel = await layer.new_channel()
    source = layer.channel_source(channel)
    assert source.poll is not None and source.poll() is None  # starts the receive loop
    loop = asyncio.get_running_loop()
    forgotten = loop.create_future()
    source.watch(forgotten)
    source.unwatch(forgotten)
    waiter = loop.create_future()
    source.watch(waiter)
    await layer.send(channel, {"type": "hello"})
    await asyncio.wait_for(waiter, GUARD)
    source.unwatch(waiter)
    assert not forgotten.done(), "an unwatched future is never resolved"
    assert source.poll() == {"type": "hello"}
    # A message already waiting resolves a new watch at once.
    await layer.send(channel, {"type": "again"})
    for _ in range(500):
        ready = loop.create_future()
        source.watch(ready)
        source.unwatch(ready)
        if ready.done():
            break
        await asyncio.sleep(0.01)
    assert ready.done()
    assert source.poll() == {"type": "again"}


async def test_group_websocket_send_goes_to_an_idle_members_direct_sender(
    layer: BaseChannelLayer,
) -> None:
    idle, busy, refusing = [await layer.new_channel() for _ in range(3)]
    for channel in (idle, busy, refusing):
        await layer.group_add("room", channel)
    written: dict[str, list[dict[str, Any]]] = {idle: [], busy: [], refusing: []}

    arrived = asyncio.Event()

    def sender(channel: str, accept: bool) -> Callable[[dict[str, Any]], bool]:
        def send_now(message: dict[str, Any]) -> bool:
            if accept:
                written[channel].append(message)
                arrived.set()
            return accept

        return send_now

    layer.set_direct(idle, sender(idle, True))
    layer.set_direct(busy, sender(busy, True))
    layer.set_direct(refusing, sender(refusing, False))
    sources = {channel: layer.channel_source(channel) for channel in (idle, refusing)}
    loop = asyncio.get_running_loop()
    waiters = {}
    for channel, source in sources.items():
        assert source.poll is not None and source.poll() is None
        waiters[channel] = loop.create_future()
        source.watch(waiters[channel])
    # ``busy`` has no waiting reader: its message is queued as usual.
    message = {"type": "websocket.send", "text": "hi"}
    await layer.group_send("room", message)

    await asyncio.wait_for(arrived.wait(), GUARD)
    assert written[idle] == [message]
    assert not waiters[idle].done(), "the idle consumer was not woken"
    assert await asyncio.wait_for(layer.receive(busy), GUARD) == message
    assert written[busy] == []
    # The refusing sender (a slow client) leaves the message queued for the consumer.
    await asyncio.wait_for(waiters[refusing], GUARD)
    assert sources[refusing].poll() == message
    # Other message types never take the direct path.
    await layer.group_send("room", {"type": "chat.message", "text": "x"})
    waiters[idle].cancel()
    sources[idle].unwatch(waiters[idle])
    assert await asyncio.wait_for(layer.receive(idle), GUARD) == {
        "type": "chat.message",
        "text": "x",
    }
    # Unregistered: queued again.
    layer.set_direct(idle, None)
    await layer.group_send("room", message)
    assert await asyncio.wait_for(layer.receive(idle), GUARD) == message
    assert len(written[idle]) == 1
