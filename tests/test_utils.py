"""Tests for tidings.utils: MessageMux and await_many_dispatch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tidings.utils
from tidings.exceptions import StopConsumer
from tidings.utils import MessageMux, await_many_dispatch

Message = dict[str, Any]


class CountingQueue:
    """An asyncio.Queue whose ``get`` calls are counted."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.calls = 0

    async def get(self) -> Message:
        self.calls += 1
        return await self.queue.get()


def test_public_names() -> None:
    assert sorted(tidings.utils.__all__) == ["MessageMux", "MessageSource", "await_many_dispatch"]


def test_needs_a_source() -> None:
    with pytest.raises(ValueError, match="at least one"):
        MessageMux([])


async def test_single_source_uses_no_task() -> None:
    source = CountingQueue()
    source.queue.put_nowait({"n": 1})
    before = len(asyncio.all_tasks())
    async with MessageMux([source.get]) as mux:
        assert len(asyncio.all_tasks()) == before
        assert await mux.get() == {"n": 1}


async def test_two_sources_in_arrival_order() -> None:
    a, b = CountingQueue(), CountingQueue()
    async with MessageMux([a.get, b.get]) as mux:
        b.queue.put_nowait({"from": "b"})
        assert await mux.get() == {"from": "b"}
        a.queue.put_nowait({"from": "a"})
        assert await mux.get() == {"from": "a"}


async def test_source_not_read_again_until_next_get() -> None:
    a, b = CountingQueue(), CountingQueue()
    for n in range(3):
        a.queue.put_nowait({"n": n})
    async with MessageMux([a.get, b.get]) as mux:
        assert await mux.get() == {"n": 0}
        # While the caller "handles" message 0, nothing more is read from a.
        for _ in range(5):
            await asyncio.sleep(0)
        assert a.calls == 1
        assert a.queue.qsize() == 2
        assert await mux.get() == {"n": 1}
        assert a.calls == 2


async def test_close_leaves_unread_messages_in_the_source() -> None:
    a, b = CountingQueue(), CountingQueue()
    async with MessageMux([a.get, b.get]) as mux:
        a.queue.put_nowait({"n": 0})
        assert await mux.get() == {"n": 0}
        a.queue.put_nowait({"n": 1})  # arrives while message 0 is handled
    assert a.queue.get_nowait() == {"n": 1}
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_source_error_is_raised_from_get() -> None:
    async def broken() -> Message:
        raise OSError("source broke")

    other = CountingQueue()
    async with MessageMux([broken, other.get]) as mux:
        with pytest.raises(OSError, match="source broke"):
            await mux.get()
        # The other source still works.
        other.queue.put_nowait({"ok": True})
        assert await mux.get() == {"ok": True}


async def test_cancelling_get_cleans_up() -> None:
    a, b = CountingQueue(), CountingQueue()

    async def use() -> None:
        async with MessageMux([a.get, b.get]) as mux:
            await mux.get()

    task = asyncio.create_task(use())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    a.queue.put_nowait({"kept": True})
    assert a.queue.get_nowait() == {"kept": True}


async def test_await_many_dispatch_until_stop() -> None:
    a, b = CountingQueue(), CountingQueue()
    seen: list[Message] = []

    async def dispatch(message: Message) -> None:
        seen.append(message)
        if message.get("stop"):
            raise StopConsumer()

    a.queue.put_nowait({"n": 1})
    a.queue.put_nowait({"stop": True})
    b.queue.put_nowait({"n": 2})
    with pytest.raises(StopConsumer):
        async with asyncio.timeout(1):
            await await_many_dispatch([a.get, b.get], dispatch)
    assert sorted(m.get("n", 0) for m in seen) == [0, 1, 2]
    assert seen[-1] == {"stop": True}
