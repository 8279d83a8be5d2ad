"""InMemoryChannelLayer: what the conformance suite cannot see from outside.

Memory reclamation, the copy strategy, group fan-out without tasks, and use
from several event loops and threads.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from tests.layers.conftest import FakeClock
from tidings.exceptions import ChannelFull
from tidings.layers import InMemoryChannelLayer
from tidings.layers.inmemory import DEFAULT_GROUP_EXPIRY, SEND_SWEEP_CHANNELS

GUARD = 5.0


@pytest.fixture
def layer(fake_clock: FakeClock) -> InMemoryChannelLayer:
    layer = InMemoryChannelLayer(expiry=10, group_expiry=100)
    layer._mailboxes.clock = fake_clock
    return layer


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (another thread is expected to make it so)."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


def test_defaults() -> None:
    layer = InMemoryChannelLayer()
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (60, 86400, 100)
    assert DEFAULT_GROUP_EXPIRY == 86400


@pytest.mark.parametrize("value", [0, -5, "1", None])
def test_group_expiry_must_be_positive(value: Any) -> None:
    with pytest.raises(ValueError, match="group_expiry must be a positive number"):
        InMemoryChannelLayer(group_expiry=value)


# -- memory ------------------------------------------------------------------------


async def test_channel_records_are_reclaimed_when_empty(layer: InMemoryChannelLayer) -> None:
    await layer.send("a", {"type": "m"})
    assert set(layer.channels) == {"a"}
    await layer.receive("a")
    assert layer.channels == {}
    task = asyncio.create_task(layer.receive("b"))
    await asyncio.sleep(0)
    assert set(layer.channels) == {"b"}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert layer.channels == {}


async def test_a_polled_channel_keeps_its_record_until_unwatched_or_swept(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    # A MessageMux polls, then watches again at once: the record is reused, not remade.
    await layer.send("p", {"type": "m"})
    assert layer.receive_nowait("p") == {"type": "m"}
    record = layer.channels["p"]
    waiter = asyncio.get_running_loop().create_future()
    layer.watch("p", waiter)
    assert layer.channels["p"] is record
    layer.unwatch("p", waiter)
    assert "p" not in layer.channels  # nobody waits and nothing is queued: reclaimed
    await layer.send("q", {"type": "m"})
    assert layer.receive_nowait("q") == {"type": "m"}
    fake_clock.advance(10)  # a sweep is due
    await layer.send("fresh", {"type": "m"})
    assert layer.receive_nowait("other") is None  # receives sweep
    assert set(layer.channels) == {"fresh"}


async def test_channels_never_read_are_swept(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    for n in range(50):
        await layer.send(f"forgotten.{n}", {"type": "m"})
    assert len(layer.channels) == 50
    fake_clock.advance(10)  # every message is now expired, and a sweep is due
    await layer.send("fresh", {"type": "m"})
    assert len(layer.channels) == 51  # as in Channels, sends leave the sweep to receivers
    await layer.group_add("g", "c")
    assert set(layer.channels) == {"fresh"}


async def test_a_flood_of_sends_sweeps_even_where_nothing_receives(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    layer.receive_nowait("warmup")  # the first sweep
    for n in range(SEND_SWEEP_CHANNELS + 10):
        await layer.send(f"forgotten.{n}", {"type": "m"})
    fake_clock.advance(10)
    await layer.send("fresh", {"type": "m"})
    assert set(layer.channels) == {"fresh"}


async def test_channels_expiry_unread_rule(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    """Channels' own test: an expired channel is listed until a receive cleans up."""
    await layer.send("one", {"type": "m1"})
    fake_clock.advance(10)
    await layer.send("two", {"type": "m2"})
    assert set(layer.channels) == {"one", "two"}
    assert await layer.receive("two") == {"type": "m2"}
    assert layer.channels == {}


async def test_a_woken_receiver_gets_its_message_after_its_record_was_removed(
    layer: InMemoryChannelLayer,
) -> None:
    """Channels' race test deletes ``channels[name]`` between the send and the wake-up."""
    task = asyncio.create_task(layer.receive("c"))
    await asyncio.sleep(0)
    await layer.send("c", {"type": "m"})
    del layer.channels["c"]
    assert await asyncio.wait_for(task, 2) == {"type": "m"}
    assert layer.channels == {}


async def test_sweep_runs_at_most_once_per_expiry(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    await layer.send("first", {"type": "m"})
    layer.receive_nowait("nothing")  # the first receive sweeps (nothing yet)
    await layer.send("old", {"type": "m"})
    fake_clock.advance(9.9)
    await layer.send("other", {"type": "m"})
    layer.receive_nowait("nothing")
    assert set(layer.channels) == {"first", "old", "other"}  # no sweep yet
    fake_clock.advance(0.1)
    await layer.send("other", {"type": "m"})
    layer.receive_nowait("nothing")
    assert set(layer.channels) == {"other"}


async def test_expired_members_leave_their_groups(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    await layer.group_add("room", "dead")
    await layer.group_add("lobby", "dead")
    await layer.group_add("room", "alive")
    await layer.group_send("room", {"type": "m"})
    await layer.receive("alive")
    fake_clock.advance(9)  # not expired yet, no sweep yet
    await layer.group_send("room", {"type": "m2"})
    assert len(layer.channels["dead"].queue) == 2
    fake_clock.advance(1.5)  # the first message to "dead" expired unread
    await layer.group_send("room", {"type": "m3"})
    assert layer.groups == {"room": {"alive": pytest.approx(1000.0)}}
    assert layer._mailboxes.memberships == {"alive": "room"}


async def test_expiry_seen_by_send_drops_memberships(
    fake_clock: FakeClock,
) -> None:
    layer = InMemoryChannelLayer(expiry=10)
    layer._mailboxes.clock = fake_clock
    await layer.send("warmup", {"type": "m"})  # runs the first sweep
    await layer.group_add("room", "slow")
    await layer.send("slow", {"type": "old"})
    fake_clock.advance(10)
    layer._mailboxes.next_sweep = fake_clock.now + 100  # no sweep: send itself must notice
    await layer.send("slow", {"type": "new"})
    assert "room" not in layer.groups
    assert await layer.receive("slow") == {"type": "new"}


async def test_expiry_seen_by_receive_drops_memberships(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    await layer.send("warmup", {"type": "m"})
    await layer.group_add("room", "slow")
    await layer.send("slow", {"type": "old"})
    fake_clock.advance(10)
    layer._mailboxes.next_sweep = fake_clock.now + 100
    task = asyncio.create_task(layer.receive("slow"))
    await asyncio.sleep(0)
    assert not task.done()
    assert layer.groups == {}
    await layer.send("slow", {"type": "new"})
    assert await task == {"type": "new"}


async def test_stale_memberships_are_swept_without_group_send(
    layer: InMemoryChannelLayer, fake_clock: FakeClock
) -> None:
    for n in range(20):
        await layer.group_add(f"group.{n}", f"member.{n}")
    fake_clock.advance(100)
    layer.receive_nowait("trigger")
    assert layer.groups == {}
    assert layer._mailboxes.memberships == {}


async def test_group_discard_cleans_both_indexes(layer: InMemoryChannelLayer) -> None:
    await layer.group_add("room", "a")
    await layer.group_add("lobby", "a")
    await layer.group_discard("room", "a")
    assert layer.groups == {"lobby": {"a": pytest.approx(1000.0)}}
    assert layer._mailboxes.memberships == {"a": "lobby"}
    await layer.group_discard("lobby", "a")
    assert layer.groups == {}
    assert layer._mailboxes.memberships == {}


async def test_flush_clears_state(layer: InMemoryChannelLayer) -> None:
    await layer.send("a", {"type": "m"})
    await layer.group_add("room", "a")
    await layer.flush()
    assert (layer.channels, layer.groups, layer._mailboxes.memberships) == ({}, {}, {})


# -- group_send cost ---------------------------------------------------------------


async def test_group_send_creates_no_tasks(layer: InMemoryChannelLayer) -> None:
    members = [await layer.new_channel() for _ in range(1000)]
    for channel in members:
        await layer.group_add("room", channel)
    waiting = [asyncio.create_task(layer.receive(channel)) for channel in members[:10]]
    await asyncio.sleep(0)
    before = asyncio.all_tasks()
    await layer.group_send("room", {"type": "m"})
    assert asyncio.all_tasks() == before
    assert [await task for task in waiting] == [{"type": "m"}] * 10
    assert all(len(layer.channels[channel].queue) == 1 for channel in members[10:])


async def test_group_members_share_one_snapshot(layer: InMemoryChannelLayer) -> None:
    # One copy per group_send, not one per member; each receive makes its own.
    for channel in ("a", "b"):
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "m", "items": [1]})
    snapshot_a = layer.channels["a"].queue[0][1]
    assert snapshot_a is layer.channels["b"].queue[0][1]
    received = await layer.receive("a")
    assert received == snapshot_a
    assert received is not snapshot_a
    assert received["items"] is not snapshot_a["items"]


# -- copies ------------------------------------------------------------------------


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


async def test_copies_rebuild_containers_and_share_immutables(
    layer: InMemoryChannelLayer,
) -> None:
    blob = b"x" * 1024
    original: dict[str, Any] = {
        "type": "m",
        "blob": blob,
        "tuple": (1, [2]),
        "buffer": bytearray(b"ab"),
        "ordered": collections.OrderedDict(a=[1]),
        "object": Point(1),
        "nested": [{"deep": [1]}],
    }
    await layer.send("c", original)
    copy = await layer.receive("c")
    assert copy["blob"] is blob  # immutable: shared, not copied
    assert isinstance(copy["tuple"], tuple)
    copy["tuple"][1].append(3)
    copy["buffer"][0] = 0
    copy["ordered"]["a"].append(2)
    copy["object"].x = 99
    copy["nested"][0]["deep"].append(2)
    assert original["tuple"] == (1, [2])
    assert original["buffer"] == bytearray(b"ab")
    assert type(copy["ordered"]) is collections.OrderedDict
    assert original["ordered"] == {"a": [1]}
    assert original["object"].x == 1
    assert original["nested"] == [{"deep": [1]}]


async def test_uncopyable_messages_fail_at_send(layer: InMemoryChannelLayer) -> None:
    with pytest.raises(TypeError):
        await layer.send("c", {"type": "m", "lock": threading.Lock()})
    assert layer.channels == {}


# -- receivers ---------------------------------------------------------------------


async def test_capacity_is_per_full_channel_name() -> None:
    layer = InMemoryChannelLayer(capacity=1)
    await layer.send("specific.p!a", {"type": "m"})
    await layer.send("specific.p!b", {"type": "m"})
    with pytest.raises(ChannelFull, match=re.escape("'specific.p!a' is full (1 messages)")):
        await layer.send("specific.p!a", {"type": "m"})


async def test_new_channel_names_share_a_process_part_per_layer() -> None:
    first, second = InMemoryChannelLayer(), InMemoryChannelLayer()
    a, b = await first.new_channel(), await first.new_channel()
    c = await second.new_channel()
    assert first.non_local_name(a) == first.non_local_name(b)
    assert first.non_local_name(a) != second.non_local_name(c)


async def test_close_is_harmless(layer: InMemoryChannelLayer) -> None:
    await layer.close()
    await layer.send("a", {"type": "m"})
    assert await layer.receive("a") == {"type": "m"}


# -- loops and threads -------------------------------------------------------------


def test_one_layer_serves_successive_event_loops() -> None:
    layer = InMemoryChannelLayer()  # built with no loop running

    async def leave_a_receiver_waiting() -> None:
        task = asyncio.create_task(layer.receive("c"))
        await asyncio.sleep(0)
        assert not task.done()
        # asyncio.run() cancels the still-waiting receive when this returns.

    async def round_trip() -> dict[str, Any]:
        task = asyncio.create_task(layer.receive("c"))
        await asyncio.sleep(0)
        await layer.send("c", {"type": "m"})
        return await task

    asyncio.run(leave_a_receiver_waiting())
    assert layer.channels == {}
    assert asyncio.run(round_trip()) == {"type": "m"}
    assert asyncio.run(round_trip()) == {"type": "m"}


async def test_receiver_in_another_thread_is_woken(layer: InMemoryChannelLayer) -> None:
    result: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(layer.receive("c"))))
    thread.start()
    await until(lambda: "c" in layer.channels and bool(layer.channels["c"].waiters))
    await layer.send("c", {"type": "m"})
    await asyncio.to_thread(thread.join, GUARD)
    assert result == [{"type": "m"}]


def test_a_receiver_whose_loop_closed_does_not_swallow_messages() -> None:
    layer = InMemoryChannelLayer()
    dead_loop = asyncio.new_event_loop()
    orphans = [dead_loop.create_task(layer.receive("c"))]
    dead_loop.run_until_complete(asyncio.sleep(0))
    assert not orphans[0].done()
    dead_loop.close()  # the receive never finishes and its waiter stays registered
    orphan_ref = weakref.ref(orphans[0])

    async def send_then_receive() -> dict[str, Any]:
        await layer.send("c", {"type": "m"})
        return await layer.receive("c")

    assert asyncio.run(send_then_receive()) == {"type": "m"}

    # The orphaned receive is now garbage. The collector may finalise it at
    # any allocation, even inside one of the layer's locked sections: its
    # clean-up must not take the lock (a deadlock if it did).
    def collect_while_locked() -> None:
        with layer._mailboxes.lock:
            orphans.clear()
            gc.collect()

    thread = threading.Thread(target=collect_while_locked, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), "finalising an orphaned receive deadlocked"
    assert orphan_ref() is None
    assert layer.channels == {}


async def test_many_threads_sending_to_one_receiver(layer: InMemoryChannelLayer) -> None:
    layer.capacity = 10_000
    threads = 4
    per_thread = 100

    def sender(thread_number: int) -> None:
        for n in range(per_thread):
            async_to_sync(layer.send)("c", {"type": "m", "from": thread_number, "n": n})

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    received = [
        await asyncio.wait_for(layer.receive("c"), GUARD) for _ in range(threads * per_thread)
    ]
    for worker in workers:
        await asyncio.to_thread(worker.join, GUARD)
    for thread_number in range(threads):
        mine = [m["n"] for m in received if m["from"] == thread_number]
        assert mine == list(range(per_thread))  # FIFO per sender, nothing lost or doubled
    assert layer.channels == {}
