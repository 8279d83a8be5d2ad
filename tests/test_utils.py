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


class PolledQueue:
    """A source in the shape of a Tidings ``ChannelSource`` that can be polled."""

    def __init__(self) -> None:
        self.items: list[Message] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.polls = 0

    async def __call__(self) -> Message:  # pragma: no cover - the mux polls instead
        raise AssertionError("a polled source is never awaited by the mux")

    def put(self, message: Message) -> None:
        self.items.append(message)
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def poll(self) -> Message | None:
        self.polls += 1
        return self.items.pop(0) if self.items else None

    def watch(self, waiter: asyncio.Future[None]) -> None:
        self.waiters.append(waiter)

    def unwatch(self, waiter: asyncio.Future[None]) -> None:
        self.waiters.remove(waiter)


async def test_no_task_per_source_and_polled_ones_are_taken_only_on_demand() -> None:
    client, layer = CountingQueue(), PolledQueue()
    before = len(asyncio.all_tasks())
    async with MessageMux([client.get, layer]) as mux:
        assert len(asyncio.all_tasks()) == before  # the client's calls are driven by get()
        layer.put({"n": 1})
        layer.put({"n": 2})
        assert await mux.get() == {"n": 1}
        assert layer.items == [{"n": 2}], "the next message stays queued until asked for"
        assert await mux.get() == {"n": 2}
        # Waiting: both the pump and the polled source can end the wait.
        getter = asyncio.create_task(mux.get())
        await asyncio.sleep(0.01)
        assert len(layer.waiters) == 1
        layer.put({"n": 3})
        assert await asyncio.wait_for(getter, 5) == {"n": 3}
        assert layer.waiters == [], "the mux unwatches after every wait"
        getter = asyncio.create_task(mux.get())
        await asyncio.sleep(0.01)
        client.queue.put_nowait({"from": "client"})
        assert await asyncio.wait_for(getter, 5) == {"from": "client"}
        assert layer.waiters == []


async def test_ready_client_messages_come_before_polled_ones() -> None:
    client, layer = CountingQueue(), PolledQueue()
    async with MessageMux([client.get, layer]) as mux:
        client.queue.put_nowait({"from": "client"})
        await asyncio.sleep(0.01)  # the pump has it ready
        layer.put({"from": "layer"})
        assert await mux.get() == {"from": "client"}
        assert await mux.get() == {"from": "layer"}


async def test_cancelled_get_unwatches_polled_sources() -> None:
    client, layer = CountingQueue(), PolledQueue()
    async with MessageMux([client.get, layer]) as mux:
        getter = asyncio.create_task(mux.get())
        await asyncio.sleep(0.01)
        assert len(layer.waiters) == 1
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter
        assert layer.waiters == []
        layer.put({"n": 1})
        assert await mux.get() == {"n": 1}


async def test_get_nowait_start_wait_end_wait() -> None:
    client, layer = CountingQueue(), PolledQueue()
    async with MessageMux([client.get, layer]) as mux:
        assert mux.get_nowait() is None
        waiter = mux.start_wait()
        assert layer.waiters == [waiter]
        layer.put({"n": 1})
        await asyncio.wait_for(waiter, 5)
        mux.end_wait(waiter)
        assert layer.waiters == []
        assert mux.get_nowait() == {"n": 1}
        # A client message wakes the same kind of wait, through the pump.
        waiter = mux.start_wait()
        client.queue.put_nowait({"from": "client"})
        await asyncio.wait_for(waiter, 5)
        mux.end_wait(waiter)
        assert mux.get_nowait() == {"from": "client"}
        assert mux.get_nowait() is None


async def test_get_or_wait_returns_a_message_or_a_wait_it_ends_itself() -> None:
    client, layer = CountingQueue(), PolledQueue()
    async with MessageMux([client.get, layer]) as mux:
        waiter = mux.get_or_wait()
        assert isinstance(waiter, asyncio.Future) and layer.waiters == [waiter]
        layer.put({"n": 1})
        await asyncio.wait_for(waiter, 5)
        assert mux.get_or_wait() == {"n": 1}
        assert layer.waiters == [], "the next call ended the wait"
        waiter = mux.get_or_wait()
        client.queue.put_nowait({"from": "client"})  # woken through the pump
        await asyncio.wait_for(waiter, 5)
        assert mux.get_or_wait() == {"from": "client"}
        assert client.calls == 1, "not called again before the next look"
        waiter = mux.get_or_wait()
        assert isinstance(waiter, asyncio.Future) and client.calls == 2
        mux.end_wait(waiter)  # a wait that failed is ended by its caller
        assert layer.waiters == []


async def test_get_nowait_needs_two_sources() -> None:
    source = CountingQueue()
    async with MessageMux([source.get]) as mux:
        with pytest.raises(TypeError, match="await get"):
            mux.get_nowait()


async def test_an_idle_mux_holds_no_event_gate_or_queue() -> None:
    """While idle, a mux of a client and a polled layer source holds only what waits."""
    import tracemalloc

    count = 200
    clients = [CountingQueue() for _ in range(count)]
    layers = [PolledQueue() for _ in range(count)]
    started = asyncio.Event()
    ready = 0

    async def consumer(client: CountingQueue, layer: PolledQueue) -> None:
        nonlocal ready
        async with MessageMux([client.get, layer]) as mux:
            assert await mux.get() == {"type": "connect"}
            ready += 1
            if ready == count:
                started.set()
            await mux.get()

    for client in clients:
        client.queue.put_nowait({"type": "connect"})
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        tasks = [asyncio.create_task(consumer(c, p)) for c, p in zip(clients, layers, strict=True)]
        await asyncio.wait_for(started.wait(), 10)
        for _ in range(5):
            await asyncio.sleep(0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    utils_file = tidings.utils.__file__
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename == utils_file
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # What utils.py itself allocates per idle mux: the mux and its pump (slots) and the
    # one waiter (about 500 bytes). Two Events, a deque and a pump task with its
    # coroutine (about 3.4 KiB) used to be here.
    assert grown / count < 600, f"{grown / count:.0f} bytes per idle mux"


async def test_a_source_that_awaits_several_times_and_yields_to_the_loop() -> None:
    steps: list[str] = []
    other_ran = asyncio.Event()

    async def slow_source() -> Message:
        steps.append("start")
        for _ in range(1000):  # bare yields: each must give the other task a turn
            if other_ran.is_set():
                break
            await asyncio.sleep(0)
        steps.append(f"other ran: {other_ran.is_set()}")
        await asyncio.sleep(0.01)
        steps.append("after sleep")
        return {"from": "slow"}

    async def other() -> None:
        other_ran.set()

    async with MessageMux([slow_source, PolledQueue()]) as mux:
        task = asyncio.create_task(other())
        assert await asyncio.wait_for(mux.get(), 5) == {"from": "slow"}
        await task
    assert steps == ["start", "other ran: True", "after sleep"]


async def test_a_source_awaiting_a_future_of_another_loop_fails() -> None:
    foreign = asyncio.new_event_loop()
    try:

        async def wrong_loop() -> Message:
            await foreign.create_future()
            raise AssertionError("never resumed")

        async with MessageMux([wrong_loop, PolledQueue()]) as mux:
            with pytest.raises(RuntimeError, match="not a future of its loop"):
                await asyncio.wait_for(mux.get(), 5)
    finally:
        foreign.close()


async def test_closing_cancels_the_call_in_progress_like_a_task() -> None:
    seen: list[str] = []
    waiting = asyncio.get_running_loop().create_future()

    async def source() -> Message:
        try:
            await waiting
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        raise AssertionError("not resumed normally")

    async with MessageMux([source, PolledQueue()]) as mux:
        assert mux.get_nowait() is None
    assert seen == ["cancelled"]
    assert waiting.cancelled(), "the future it waited on is cancelled, as Task.cancel() does"
    # And an asyncio.Queue's getter is withdrawn: a later put is not lost.
    queue: asyncio.Queue[Message] = asyncio.Queue()
    async with MessageMux([queue.get, PolledQueue()]) as mux:
        assert mux.get_nowait() is None
    queue.put_nowait({"kept": True})
    assert queue.get_nowait() == {"kept": True}
