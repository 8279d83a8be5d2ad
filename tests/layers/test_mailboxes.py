"""Mailboxes: the core both layers compose, on a fake clock, under both membership rules."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest

from tests.layers.conftest import FakeClock
from tidings.exceptions import ChannelFull
from tidings.layers._mailboxes import SEND_SWEEP_CHANNELS, Mailboxes, isolate
from tidings.layers.base import Message

EXPIRY = 10.0
GROUP_EXPIRY = 100.0

LEAVE = pytest.param(True, id="channels-rule")
STAY = pytest.param(False, id="channels_redis-rule")


def make(clock: FakeClock, *, leave: bool, capacity: int = 100) -> Mailboxes:
    return Mailboxes(
        expiry=EXPIRY,
        group_expiry=GROUP_EXPIRY,
        capacity_of=lambda channel: capacity,
        leave_groups_on_expiry=leave,
        clock=clock,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=[LEAVE, STAY])
def boxes(request: pytest.FixtureRequest, clock: FakeClock) -> Mailboxes:
    return make(clock, leave=request.param)


# -- channels ------------------------------------------------------------------


async def test_put_then_take_returns_a_copy(boxes: Mailboxes) -> None:
    snapshot: Message = {"type": "m", "items": [1]}
    boxes.put("c", snapshot)
    taken = boxes.take_nowait("c")
    assert taken == snapshot
    assert taken is not snapshot and taken["items"] is not snapshot["items"]
    assert boxes.take_nowait("c") is None


async def test_copy_is_a_parameter(clock: FakeClock) -> None:
    seen: list[Message] = []

    def copy(message: Message) -> Message:
        seen.append(message)
        return message

    boxes = Mailboxes(
        expiry=EXPIRY,
        group_expiry=GROUP_EXPIRY,
        capacity_of=lambda channel: 10,
        leave_groups_on_expiry=True,
        copy=copy,
        clock=clock,
    )
    snapshot: Message = {"type": "m"}
    boxes.put("c", snapshot)
    assert await boxes.take("c") is snapshot
    assert seen == [snapshot]


async def test_capacity_is_read_per_channel(clock: FakeClock) -> None:
    boxes = Mailboxes(
        expiry=EXPIRY,
        group_expiry=GROUP_EXPIRY,
        capacity_of=lambda channel: 2 if channel == "small" else 5,
        leave_groups_on_expiry=True,
        clock=clock,
    )
    boxes.put("small", {"type": "m"})
    boxes.put("small", {"type": "m"})
    with pytest.raises(ChannelFull, match="'small' is full \\(2 messages\\)"):
        boxes.put("small", {"type": "m"})
    for _ in range(5):
        boxes.put("big", {"type": "m"})


async def test_messages_expire_unread(boxes: Mailboxes, clock: FakeClock) -> None:
    boxes.put("c", {"type": "old"})
    clock.advance(EXPIRY - 0.1)
    boxes.put("c", {"type": "new"})
    clock.advance(0.1)
    assert boxes.take_nowait("c") == {"type": "new"}
    assert boxes.take_nowait("c") is None


async def test_expired_messages_free_capacity(clock: FakeClock) -> None:
    boxes = make(clock, leave=True, capacity=1)
    boxes.put("c", {"type": "old"})
    clock.advance(EXPIRY)
    boxes.put("c", {"type": "new"})
    assert boxes.take_nowait("c") == {"type": "new"}


async def test_take_waits_and_a_cancelled_take_loses_nothing(boxes: Mailboxes) -> None:
    first = asyncio.create_task(boxes.take("c"))
    second = asyncio.create_task(boxes.take("c"))
    await asyncio.sleep(0)
    boxes.put("c", {"type": "m"})
    first.cancel()  # woken, but cancelled before it ran: the wake-up passes on
    assert await asyncio.wait_for(second, 2) == {"type": "m"}
    with pytest.raises(asyncio.CancelledError):
        await first
    assert boxes.channels == {}


async def test_watch_and_unwatch(boxes: Mailboxes) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    boxes.watch("c", waiter)
    assert not waiter.done()
    boxes.put("c", {"type": "m"})
    assert waiter.done()
    boxes.unwatch("c", waiter)
    assert boxes.take_nowait("c") == {"type": "m"}
    again: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    boxes.watch("c", again)
    boxes.unwatch("c", again)
    assert "c" not in boxes.channels


async def test_sweep_runs_at_most_once_per_expiry(boxes: Mailboxes, clock: FakeClock) -> None:
    boxes.take_nowait("nothing")  # the first sweep
    boxes.put("old", {"type": "m"})
    clock.advance(EXPIRY - 0.1)
    boxes.take_nowait("nothing")
    assert set(boxes.channels) == {"old"}
    assert boxes.next_sweep == pytest.approx(1000.0 + EXPIRY)
    clock.advance(0.1)
    boxes.take_nowait("nothing")
    assert boxes.channels == {}


async def test_puts_sweep_only_past_send_sweep_channels(clock: FakeClock) -> None:
    boxes = make(clock, leave=True)
    boxes.take_nowait("warmup")
    for n in range(SEND_SWEEP_CHANNELS - 1):
        boxes.put(f"c.{n}", {"type": "m"})
    clock.advance(EXPIRY)
    boxes.put("fresh", {"type": "m"})  # SEND_SWEEP_CHANNELS - 1 records before: no sweep
    assert len(boxes.channels) == SEND_SWEEP_CHANNELS
    clock.advance(EXPIRY)
    boxes.put("fresher", {"type": "m"})
    assert set(boxes.channels) == {"fresher"}


# -- groups and the membership rules ---------------------------------------------


async def test_join_reports_an_existing_membership_and_refreshes_it(
    boxes: Mailboxes, clock: FakeClock
) -> None:
    assert boxes.join("g", "c") is False
    clock.advance(5)
    assert boxes.join("g", "c") is True
    assert boxes.groups == {"g": {"c": 1005.0}}
    assert boxes.memberships == {"c": "g"}  # one group: the name, no set


async def test_leave_cleans_both_indexes(boxes: Mailboxes) -> None:
    boxes.join("room", "a")
    boxes.join("lobby", "a")
    boxes.leave("room", "a")
    assert (boxes.groups, boxes.memberships) == ({"lobby": {"a": 1000.0}}, {"a": "lobby"})
    boxes.leave("lobby", "a")
    boxes.leave("lobby", "a")  # not a member: nothing happens
    assert (boxes.groups, boxes.memberships) == ({}, {})


async def test_group_put_shares_one_snapshot(boxes: Mailboxes) -> None:
    boxes.join("g", "a")
    boxes.join("g", "b")
    snapshot: Message = {"type": "m", "items": [1]}
    boxes.group_put("g", snapshot)
    assert boxes.channels["a"].queue[0][1] is snapshot
    assert boxes.channels["b"].queue[0][1] is snapshot
    boxes.group_put("nobody", snapshot)
    assert "nobody" not in boxes.groups


async def test_full_members_miss_group_messages(clock: FakeClock) -> None:
    boxes = make(clock, leave=True, capacity=1)
    boxes.join("g", "c")
    boxes.group_put("g", {"type": "first"})
    boxes.group_put("g", {"type": "second"})  # no ChannelFull
    assert boxes.take_nowait("c") == {"type": "first"}
    assert boxes.take_nowait("c") is None


async def test_memberships_expire_under_both_rules(boxes: Mailboxes, clock: FakeClock) -> None:
    boxes.join("g", "old")
    clock.advance(GROUP_EXPIRY / 2)
    boxes.join("g", "young")
    clock.advance(GROUP_EXPIRY / 2)
    boxes.group_put("g", {"type": "m"})
    assert set(boxes.groups["g"]) == {"young"}
    assert "old" not in boxes.channels
    clock.advance(GROUP_EXPIRY / 2)
    boxes.take_nowait("trigger")  # the sweep drops it too
    assert (boxes.groups, boxes.memberships) == ({}, {})


@pytest.mark.parametrize(
    "notice",
    [
        pytest.param(lambda boxes: boxes.group_put("g", {"type": "m3"}), id="group_put"),
        pytest.param(lambda boxes: boxes.put("slow", {"type": "m3"}), id="put"),
        pytest.param(lambda boxes: boxes.take_nowait("slow"), id="take_nowait"),
    ],
)
async def test_channels_rule_an_expired_member_leaves_its_groups(
    clock: FakeClock, notice: Callable[[Mailboxes], Any]
) -> None:
    boxes = make(clock, leave=True)
    boxes.take_nowait("warmup")  # the first sweep
    boxes.join("g", "slow")
    boxes.join("other", "slow")
    boxes.join("g", "fast")
    boxes.group_put("g", {"type": "m1"})
    boxes.take_nowait("fast")
    clock.advance(EXPIRY)
    boxes.next_sweep = clock.now + 100  # no sweep: the operation itself notices
    notice(boxes)
    assert set(boxes.groups) == {"g"}
    assert set(boxes.groups["g"]) == {"fast"}
    assert boxes.memberships == {"fast": "g"}


async def test_channels_rule_the_sweep_notices_expiry(clock: FakeClock) -> None:
    boxes = make(clock, leave=True)
    boxes.join("g", "slow")
    boxes.group_put("g", {"type": "m"})
    clock.advance(EXPIRY)
    boxes.take_nowait("elsewhere")
    assert (boxes.groups, boxes.memberships, boxes.channels) == ({}, {}, {})


async def test_channels_redis_rule_an_expired_member_stays(clock: FakeClock) -> None:
    boxes = make(clock, leave=False)
    boxes.take_nowait("warmup")
    boxes.join("g", "slow")
    boxes.group_put("g", {"type": "m1"})
    clock.advance(EXPIRY)
    boxes.put("slow", {"type": "m2"})  # put notices the expiry
    boxes.group_put("g", {"type": "m3"})
    clock.advance(EXPIRY)  # everything expired; the sweep runs on the next take
    boxes.take_nowait("elsewhere")
    assert boxes.groups == {"g": {"slow": 1000.0}}
    boxes.group_put("g", {"type": "m4"})
    assert boxes.take_nowait("slow") == {"type": "m4"}


async def test_live_memberships_lists_ages_and_drops_stale_ones(
    boxes: Mailboxes, clock: FakeClock
) -> None:
    boxes.join("g", "old")
    clock.advance(60)
    boxes.join("g", "young")
    boxes.join("h", "young")
    clock.advance(40)
    assert sorted(boxes.live_memberships()) == [("g", "young", 40.0), ("h", "young", 40.0)]
    assert boxes.memberships == {"young": {"g", "h"}}


async def test_clear_keeps_waiting_receivers(boxes: Mailboxes) -> None:
    boxes.join("g", "a")
    boxes.put("a", {"type": "m"})
    task = asyncio.create_task(boxes.take("b"))
    await asyncio.sleep(0)
    boxes.clear()
    assert (boxes.groups, boxes.memberships, set(boxes.channels)) == ({}, {}, {"b"})
    boxes.put("b", {"type": "m"})
    assert await asyncio.wait_for(task, 2) == {"type": "m"}


# -- direct delivery -------------------------------------------------------------


async def test_direct_senders_get_idle_members_websocket_sends(boxes: Mailboxes) -> None:
    sent: dict[str, list[Message]] = {"idle": [], "refusing": [], "busy": []}

    def sender(channel: str, accepts: bool) -> Callable[[Message], bool]:
        def send_now(message: Message) -> bool:
            sent[channel].append(message)
            return accepts

        return send_now

    waiting = {
        channel: asyncio.create_task(boxes.take(channel)) for channel in ("idle", "refusing")
    }
    await asyncio.sleep(0)
    for channel in ("idle", "refusing", "busy"):
        boxes.join("g", channel)
        boxes.set_direct(channel, sender(channel, channel != "refusing"))
    boxes.put("busy", {"type": "earlier"})
    frame: Message = {"type": "websocket.send", "text": "hi"}
    boxes.group_put("g", frame)
    assert sent == {"idle": [frame], "refusing": [frame], "busy": []}
    assert await asyncio.wait_for(waiting["refusing"], 2) == frame  # queued after refusal
    assert not waiting["idle"].done()  # never woken
    assert [boxes.take_nowait("busy"), boxes.take_nowait("busy")] == [{"type": "earlier"}, frame]
    boxes.group_put("g", {"type": "chat"})  # not websocket.send: queued
    assert await asyncio.wait_for(waiting["idle"], 2) == {"type": "chat"}
    boxes.set_direct("idle", None)
    boxes.set_direct("idle", None)
    assert set(boxes.direct) == {"refusing", "busy"}


async def test_a_direct_fan_out_allocates_nothing_per_member(boxes: Mailboxes) -> None:
    # Objects the garbage collector tracks, alive at once, count towards its collections;
    # thousands per broadcast set off full collections (a pass over every object of the
    # process, a pause of all its connections). The fan-out holds none per member.
    members = 2000
    counts: list[int] = []

    def send_now(message: Message) -> bool:
        counts.append(gc.get_count()[0])
        return True

    waiting = [asyncio.create_task(boxes.take(f"c{n}")) for n in range(members)]
    await asyncio.sleep(0)
    for n in range(members):
        boxes.join("g", f"c{n}")
        boxes.set_direct(f"c{n}", send_now)
    message: Message = {"type": "websocket.send", "text": "hi"}
    gc.disable()
    try:
        before = gc.get_count()[0]
        boxes.group_put("g", message)
    finally:
        gc.enable()
    assert len(counts) == members
    assert max(counts) - before < members // 10
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


# -- isolate -----------------------------------------------------------------------


def test_isolate_rebuilds_containers_and_shares_atoms() -> None:
    blob = b"x" * 100
    value: dict[str, Any] = {
        "a": [1, {"b": (2, [3])}],
        "blob": blob,
        "buf": bytearray(b"z"),
        "set": {1},
    }
    copy = isolate(value)
    assert copy == value
    assert copy["blob"] is blob
    assert copy["a"] is not value["a"] and copy["a"][1]["b"][1] is not value["a"][1]["b"][1]
    assert copy["buf"] is not value["buf"] and copy["set"] is not value["set"]


async def test_a_channel_in_several_groups_gets_a_set_and_back(boxes: Mailboxes) -> None:
    for group in ("a", "b", "c"):
        boxes.join(group, "ch")
    boxes.join("a", "ch")  # again: still three
    assert boxes.memberships == {"ch": {"a", "b", "c"}}
    boxes.leave("b", "ch")
    assert boxes.memberships == {"ch": {"a", "c"}}
    boxes.leave("a", "ch")
    assert boxes.memberships == {"ch": "c"}
    boxes.join("d", "ch")
    assert boxes.memberships == {"ch": {"c", "d"}}
    boxes.leave("zz", "ch")  # not a member: nothing changes
    assert boxes.memberships == {"ch": {"c", "d"}}


async def test_an_idle_watched_mailbox_holds_no_deque(boxes: Mailboxes, clock: FakeClock) -> None:
    """A consumer waiting for its next message costs its mailbox and one list slot.

    Containers emptied on the hot path (woken waiter, last message taken) are kept
    for the next message, and dropped by the next sweep that finds them empty.
    """
    waiter = asyncio.get_running_loop().create_future()
    boxes.watch("c", waiter)
    record = boxes.channels["c"]
    assert record.queue is None and record.waiters == [waiter]
    boxes.put("c", {"type": "m", "n": 1})
    boxes.put("c", {"type": "m", "n": 2})
    assert waiter.done() and not record.waiters, "woken and forgotten"
    assert record.size() == 2
    assert boxes.take_nowait("c") == {"type": "m", "n": 1}
    assert boxes.take_nowait("c") == {"type": "m", "n": 2}
    assert record.queue is not None and not record.queue, "kept for the next message"
    again = asyncio.get_running_loop().create_future()
    boxes.watch("c", again)
    assert boxes.channels["c"] is record and record.waiters == [again]
    clock.advance(EXPIRY)
    assert boxes.take_nowait("c") is None  # runs the sweep
    assert record.queue is None, "an emptied queue is dropped by the sweep"
    assert record.waiters == [again], "a live waiter stays"
    boxes.unwatch("c", again)
    assert "c" not in boxes.channels


async def test_the_sweep_drops_an_emptied_waiter_list(boxes: Mailboxes, clock: FakeClock) -> None:
    waiter = asyncio.get_running_loop().create_future()
    boxes.watch("c", waiter)
    record = boxes.channels["c"]
    boxes.put("c", {"type": "m", "n": 1})  # (sweeps first) wakes the waiter: its list stays
    assert waiter.done() and record.waiters == []
    clock.advance(EXPIRY - 1)
    boxes.put("c", {"type": "m", "n": 2})
    clock.advance(1)
    # The sweep (due now) drops message 1 (expired) and the empty list; 2 is left.
    assert boxes.take_nowait("c") == {"type": "m", "n": 2}
    assert record.waiters is None


async def test_several_receivers_of_one_channel_are_served_in_order(boxes: Mailboxes) -> None:
    takers = [asyncio.create_task(boxes.take("jobs")) for _ in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)
    record = boxes.channels["jobs"]
    assert record.waiters is not None and len(record.waiters) == 3
    takers[1].cancel()  # one in the middle gives up
    with pytest.raises(asyncio.CancelledError):
        await takers[1]
    for n in range(2):
        boxes.put("jobs", {"type": "job", "n": n})
    assert [await takers[0], await takers[2]] == [{"type": "job", "n": 0}, {"type": "job", "n": 1}]
    assert "jobs" not in boxes.channels
