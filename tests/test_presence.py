"""Presence on the in-memory layer: the API, consumers, batching, expiry, bad input.

Other "processes" are simulated with a second :class:`Tracker` on the same layer
(its node is as separate as another process's: it talks only through the
layer); the real multi-process runs are in ``test_presence_redis.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tidings import presence
from tidings._presence_registry import tracker_for
from tidings._presence_state import PresenceSettings, Replica, check_meta, parse_settings
from tidings._presence_tracker import NODES_GROUP, Tracker
from tidings.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer
from tidings.layers import InMemoryChannelLayer, get_channel_layer
from tidings.layers.base import BaseChannelLayer, Message
from tidings.testing import WebsocketCommunicator

FAST = {"HEARTBEAT_INTERVAL": 0.05, "TIMEOUT": 0.25, "BATCH_WINDOW": 0.02, "SYNC_WAIT": 0.1}


class CountingLayer(InMemoryChannelLayer):
    """The in-memory layer, counting every message it is asked to carry."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.sent: list[tuple[str, Message]] = []
        self.group_sent: list[tuple[str, Message]] = []

    async def send(self, channel: str, message: Message) -> None:
        self.sent.append((channel, message))
        await super().send(channel, message)

    async def group_send(self, group: str, message: Message) -> None:
        self.group_sent.append((group, message))
        await super().group_send(group, message)


@pytest.fixture
def layer() -> Iterator[CountingLayer]:
    """A fresh counting in-memory layer as the default alias, with fast presence timings."""
    backend = {"BACKEND": f"{__name__}.CountingLayer", "CONFIG": {"capacity": 2000}}
    with override_settings(CHANNEL_LAYERS={"default": backend}, TIDINGS_PRESENCE=FAST):
        made = get_channel_layer()
        assert isinstance(made, CountingLayer)
        yield made


@pytest.fixture
async def closing() -> AsyncIterator[None]:
    yield
    await presence.aclose()


pytestmark = pytest.mark.usefixtures("closing")


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` passes; re-raise its last failure at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                await result
            return
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def drain(layer: BaseChannelLayer, channel: str) -> list[Message]:
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(layer.receive(channel), 0.01))
        except TimeoutError:
            return got


# -- the state, without I/O ---------------------------------------------------------------


def test_settings_defaults_and_errors_name_the_key() -> None:
    assert parse_settings(None) == PresenceSettings()
    defaults = PresenceSettings()
    assert defaults.timeout + defaults.heartbeat_interval <= 30
    for raw, key in [
        ({"TIMEOUT": -1}, "'TIMEOUT'"),
        ({"HEARTBEAT_INTERVAL": "5"}, "'HEARTBEAT_INTERVAL'"),
        ({"MAX_META_BYTES": 1.5}, "'MAX_META_BYTES'"),
        ({"BATCH_WINDOW": float("nan")}, "'BATCH_WINDOW'"),
        ({"TIMEOUT": 6, "HEARTBEAT_INTERVAL": 5}, "'TIMEOUT'"),
        ({"TIMEOUT_S": 6}, "'TIMEOUT_S'"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=key):
            parse_settings(raw)
    with pytest.raises(ImproperlyConfigured, match="must be a dict"):
        parse_settings([("TIMEOUT", 5)])


async def test_bad_settings_fail_at_first_use_naming_the_key() -> None:
    with (
        override_settings(TIDINGS_PRESENCE={"TIMEOUT": 0}),
        pytest.raises(ImproperlyConfigured, match=r"TIDINGS_PRESENCE\['TIMEOUT'\]"),
    ):
        await presence.list("room")


def test_bad_settings_fail_when_the_app_loads() -> None:
    # What `tidings serve` does: Django set up, then the app (and its consumers) imported.
    code = (
        "import django; from django.conf import settings; "
        "settings.configure(TIDINGS_PRESENCE={'HEARTBEAT_INTERVAL': 0}); django.setup(); "
        "import tidings.presence"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "ImproperlyConfigured: TIDINGS_PRESENCE['HEARTBEAT_INTERVAL']" in done.stderr


def test_meta_rules() -> None:
    assert check_meta({"name": "ann"}, 100) == {"name": "ann"}
    assert check_meta(None, 100) == {}
    with pytest.raises(ValueError, match=r"5008 bytes as JSON, over the limit of 4096"):
        check_meta({"x": "y" * 5000}, 4096)
    with pytest.raises(ValueError, match="may not set ref"):
        check_meta({"ref": "mine"}, 4096)
    with pytest.raises(TypeError, match="JSON-serializable"):
        check_meta({"when": object()}, 4096)
    with pytest.raises(TypeError, match="dict with str keys"):
        check_meta({1: "x"}, 4096)


def test_replica_ownership_and_coalescing() -> None:
    replica = Replica()
    replica.join("a", "room", "ann", "r1", {"ref": "r1"})
    replica.join("a", "room", "ann", "r2", {"ref": "r2"})
    replica.join("b", "room", "bob", "r3", {"ref": "r3"})
    assert replica.list("room") == {
        "ann": {"metas": [{"ref": "r1"}, {"ref": "r2"}]},
        "bob": {"metas": [{"ref": "r3"}]},
    }
    replica.take_diffs()
    # Node b cannot remove node a's member, nor take over its ref.
    assert not replica.leave("b", "r1")
    replica.join("b", "room", "mallory", "r1", {"ref": "r1"})
    assert replica.list("room")["ann"]["metas"][0] == {"ref": "r1"}
    assert "mallory" not in replica.list("room")
    # A join and a leave within one window cancel out.
    replica.join("a", "room", "cy", "r4", {"ref": "r4"})
    assert replica.leave("a", "r4")
    assert replica.leave("a", "r2")
    diff = replica.take_diffs()["room"].as_message("room")
    assert diff == {
        "type": "presence.diff",
        "topic": "room",
        "joins": {},
        "leaves": {"ann": {"metas": [{"ref": "r2"}]}},
    }
    replica.replace_node("a", [("hall", "ann", "r5", {"ref": "r5"})])
    assert replica.topics() == {"room": 1, "hall": 1}
    assert replica.drop_node("b") == 1
    assert replica.topics() == {"hall": 1}


# -- one process ----------------------------------------------------------------------------


async def test_one_user_with_two_connections_is_one_entry(layer: CountingLayer) -> None:
    first, second, other = [await layer.new_channel() for _ in range(3)]
    meta = await presence.track("room", "ann", first, meta={"device": "phone"})
    assert set(meta) == {"device", "ref", "conn", "joined_at"}
    assert first not in json.dumps(meta)  # the channel name never leaves the server
    await presence.track("room", "ann", second, meta={"device": "laptop"})
    await presence.track("room", "bob", other)
    listed = await presence.list("room")
    assert sorted(listed) == ["ann", "bob"]
    assert [m["device"] for m in listed["ann"]["metas"]] == ["phone", "laptop"]
    assert await presence.topics() == {"room": 2}

    assert await presence.untrack("room", first)
    listed = await presence.list("room")
    assert [m["device"] for m in listed["ann"]["metas"]] == ["laptop"]
    # Untracking what this channel never tracked changes nothing.
    assert not await presence.untrack("room", first)
    assert not await presence.untrack("hall", other)
    assert sorted(await presence.list("room")) == ["ann", "bob"]
    assert presence.list_sync is not None


async def test_retracking_replaces_the_meta_with_a_new_ref(layer: CountingLayer) -> None:
    channel, watcher = await layer.new_channel(), await layer.new_channel()
    old = await presence.track("room", "ann", channel, meta={"status": "away"})
    await presence.subscribe("room", watcher)
    await asyncio.sleep(0.05)
    await drain(layer, watcher)
    new = await presence.track("room", "ann", channel, meta={"status": "busy"})
    assert new["ref"] != old["ref"]
    assert (await presence.list("room"))["ann"]["metas"] == [new]

    got: list[Message] = []

    async def diffed() -> None:
        got.extend(await drain(layer, watcher))
        assert len(got) == 1
        assert got[0]["joins"] == {"ann": {"metas": [new]}}
        assert got[0]["leaves"] == {"ann": {"metas": [old]}}

    await eventually(diffed)


async def test_bad_topics_get_the_layers_group_name_errors(layer: CountingLayer) -> None:
    channel = await layer.new_channel()
    for bad in ["", "no spaces", "x" * 100, "tab\t", 42, "bang!"]:
        with pytest.raises(TypeError) as expected:
            layer.require_valid_group_name(bad)
        with pytest.raises(TypeError) as got:
            await presence.track(bad, "ann", channel)  # type: ignore[arg-type]
        assert str(got.value) == str(expected.value)
        with pytest.raises(TypeError):
            await presence.list(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="presence key"):
        await presence.track("room", "", channel)
    with pytest.raises(TypeError, match="Channel name"):
        await presence.track("room", "ann", "not a channel")


async def test_oversized_meta_is_refused_and_nothing_is_kept(layer: CountingLayer) -> None:
    # The attacker's case: a client that gets to choose its meta (a status text) cannot
    # make every process hold megabytes per connection.
    channel = await layer.new_channel()
    with pytest.raises(ValueError, match=r"MAX_META_BYTES"):
        await presence.track("room", "ann", channel, meta={"status": "x" * 1_000_000})
    with pytest.raises(TypeError, match="presence key"):
        await presence.track("room", "k" * 10_000, channel)
    assert await presence.list("room") == {}
    await asyncio.sleep(0.05)
    assert not [m for _, m in layer.group_sent if m["type"] == "presence.delta"]


async def test_a_client_retracking_in_a_loop_holds_one_meta(layer: CountingLayer) -> None:
    # The attacker's case: a client makes its consumer re-track (a status change) as
    # fast as it can. Memory and messages stay at one meta, coalesced per window.
    here = tracker_for("default")
    channel, watcher = await layer.new_channel(), await layer.new_channel()
    await presence.subscribe("room", watcher)
    for number in range(1000):
        await presence.track("room", "mallory", channel, meta={"status": str(number)})
        assert len(here._outbound) <= 2
    listed = await presence.list("room")
    assert [meta["status"] for meta in listed["mallory"]["metas"]] == ["999"]
    await asyncio.sleep(0.1)
    deltas = [m for _, m in layer.group_sent if m["type"] == "presence.delta"]
    assert all(len(delta["joins"]) + len(delta["leaves"]) <= 2 for delta in deltas)
    for diff in await drain(layer, watcher):
        assert sum(len(entry["metas"]) for entry in diff["joins"].values()) <= 1


async def test_a_burst_of_1000_joins_costs_a_bounded_number_of_messages(
    layer: CountingLayer,
) -> None:
    # One joiner in ten also watches: one diff per watcher per batch window, where a
    # message per join per watcher would be 100,000 messages.
    channels = [await layer.new_channel() for _ in range(1000)]
    watchers = channels[::10]
    for number, channel in enumerate(channels):
        await presence.track("crowd", f"user{number}", channel)
        if channel in watchers:
            await presence.subscribe("crowd", channel)

    async def all_listed() -> None:
        assert len(await presence.list("crowd")) == 1000

    await eventually(all_listed)
    await asyncio.sleep(0.1)  # let the last batch go out
    diffs = [m for _, m in layer.sent if m["type"] == "presence.diff"]
    deltas = [m for _, m in layer.group_sent if m["type"] == "presence.delta"]
    assert len(diffs) <= 3 * len(watchers)
    assert len(deltas) <= 10
    assert sum(len(delta["joins"]) for delta in deltas) == 1000
    # The first subscriber saw everyone who joined after it, in a few diffs.
    seen = {key for diff in await drain(layer, channels[0]) for key in diff["joins"]}
    assert seen == {f"user{number}" for number in range(1000)}


# -- consumers ------------------------------------------------------------------------------


class Room(presence.AsyncPresenceMixin, AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        name = self.scope["query_string"].decode()
        await self.presence_subscribe("room")
        await self.presence_track("room", key=name, meta={"name": name})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # A client asking to "untrack" anything only ever untracks itself.
        await self.presence_untrack(text_data or "")


class SyncRoom(presence.PresenceMixin, WebsocketConsumer):
    def connect(self) -> None:
        self.accept()
        name = self.scope["query_string"].decode()
        self.presence_subscribe("room")
        self.presence_track("room", key=name, meta={"name": name})
        assert name in self.presence_list("room")


def connect_to(consumer: type[Any], name: str) -> WebsocketCommunicator:
    return WebsocketCommunicator(consumer.as_asgi(), f"/room?{name}")


async def receive_json(client: WebsocketCommunicator) -> Any:
    return json.loads((await client.receive_from(timeout=2)) or "")


@pytest.mark.parametrize("consumer", [Room, SyncRoom])
async def test_consumers_get_state_then_diffs_and_leave_on_disconnect(
    layer: CountingLayer, consumer: type[Any]
) -> None:
    ann = connect_to(consumer, "ann")
    assert (await ann.connect())[0]
    assert await receive_json(ann) == {"type": "presence.state", "topic": "room", "state": {}}
    joined = await receive_json(ann)
    assert joined["type"] == "presence.diff" and list(joined["joins"]) == ["ann"]

    bob = connect_to(consumer, "bob")
    assert (await bob.connect())[0]
    state = await receive_json(bob)
    assert list(state["state"]) == ["ann"]
    diff = await receive_json(ann)
    assert list(diff["joins"]) == ["bob"] and diff["leaves"] == {}
    assert diff["joins"]["bob"]["metas"][0]["name"] == "bob"

    await bob.disconnect()
    diff = await receive_json(ann)
    assert diff["joins"] == {} and list(diff["leaves"]) == ["bob"]
    assert list(await presence.list("room")) == ["ann"]
    await ann.disconnect()
    await eventually(no_topics)


async def no_topics() -> None:
    assert await presence.topics() == {}


def keys_are(topic: str, keys: list[str]) -> Callable[[], Any]:
    async def check() -> None:
        assert sorted(await presence.list(topic)) == keys

    return check


async def test_a_client_cannot_untrack_someone_else(layer: CountingLayer) -> None:
    ann, bob = connect_to(Room, "ann"), connect_to(Room, "bob")
    assert (await ann.connect())[0] and (await bob.connect())[0]
    # Bob names the topic they share: only his own tracking can go.
    await bob.send_to(text_data="room")
    await eventually(keys_are("room", ["ann"]))
    await ann.disconnect()
    await bob.disconnect()


def _assert_keys(listed: dict[str, Any], keys: list[str]) -> None:
    assert sorted(listed) == keys


# -- several nodes on one layer -------------------------------------------------------------


async def other_node(layer: BaseChannelLayer) -> Tracker:
    tracker = Tracker(layer, parse_settings(FAST))
    await tracker.start()
    return tracker


async def test_a_silent_node_is_dropped_after_the_timeout(layer: CountingLayer) -> None:
    here = tracker_for("default")
    await here.start()
    there = await other_node(layer)
    watcher = await layer.new_channel()
    await presence.subscribe("room", watcher)
    await there.track("room", "remote", await layer.new_channel(), None)
    await presence.track("room", "local", await layer.new_channel())
    await eventually(lambda: _assert_keys(here.replica.list("room"), ["local", "remote"]))

    there.abandon()  # a SIGKILL: no goodbye, no more heartbeats
    killed_at = asyncio.get_running_loop().time()
    await eventually(lambda: _assert_keys(here.replica.list("room"), ["local"]))
    settings = parse_settings(FAST)
    waited = asyncio.get_running_loop().time() - killed_at
    assert waited >= settings.timeout - settings.heartbeat_interval
    diffs: list[Message] = []

    async def left() -> None:
        diffs.extend(await drain(layer, watcher))
        assert [key for diff in diffs for key in diff["leaves"]] == ["remote"]

    await eventually(left)
    # Its membership of the nodes' group is removed too (no more writes to a dead node).
    assert there.node not in layer.groups[NODES_GROUP]
    assert here.node in layer.groups[NODES_GROUP]


async def test_a_new_node_gets_the_state_and_a_closed_one_leaves_at_once(
    layer: CountingLayer,
) -> None:
    there = await other_node(layer)
    for number in range(1200):  # more than one state chunk
        await there.track("hall", f"u{number}", await layer.new_channel(), None)
    await asyncio.sleep(0.05)
    # This loop's tracker starts now, after all that happened; with a timeout that
    # this test never reaches, so that only the goodbye can empty the list.
    with override_settings(TIDINGS_PRESENCE={**FAST, "TIMEOUT": 600}):
        assert len(await presence.list("hall")) == 1200
        await there.aclose()
        await eventually(no_topics)


async def test_a_lost_delta_is_repaired_from_the_next_heartbeat(layer: CountingLayer) -> None:
    here = tracker_for("default")
    await here.start()
    there = await other_node(layer)
    await there.track("room", "first", await layer.new_channel(), None)
    await eventually(lambda: _assert_keys(here.replica.list("room"), ["first"]))
    # Drop the next delta on its way, as a full channel would.
    original = layer.group_send

    async def lose_deltas(group: str, message: Message) -> None:
        if message["type"] != "presence.delta":
            await original(group, message)

    layer.group_send = lose_deltas  # type: ignore[method-assign]
    await there.track("room", "second", await layer.new_channel(), None)
    # Only a state can bring "second" here now: the heartbeat shows the gap.
    await eventually(lambda: _assert_keys(here.replica.list("room"), ["first", "second"]))
    layer.group_send = original  # type: ignore[method-assign]
    asked = [m for channel, m in layer.sent if channel == there.node]
    assert {"type": "presence.sync", "node": here.node} in asked


async def test_forged_and_malformed_node_messages_change_nothing(
    layer: CountingLayer, caplog: pytest.LogCaptureFixture
) -> None:
    here = tracker_for("default")
    mine = await presence.track("room", "ann", await layer.new_channel())
    intruder = await layer.new_channel()
    forged: list[Message] = [
        # Another node claims to leave Ann's ref, or to be this node.
        {
            "type": "presence.delta",
            "node": intruder,
            "seq": 1,
            "joins": [],
            "leaves": [mine["ref"]],
        },
        {
            "type": "presence.delta",
            "node": here.node,
            "seq": 9,
            "joins": [],
            "leaves": [mine["ref"]],
        },
        {"type": "presence.state", "node": intruder, "seq": 5, "part": 0, "parts": 1}
        | {"entries": [["room", "ann", mine["ref"], {}]]},
        # Garbage.
        {"type": "presence.delta", "node": intruder, "seq": "x", "joins": [], "leaves": []},
        {"type": "presence.delta", "node": intruder, "seq": 6, "joins": [[1]], "leaves": []},
        {"type": "presence.nonsense", "node": intruder},
        {"type": "presence.hb", "node": "not a channel", "seq": 0},
        {"node": intruder},
    ]
    with caplog.at_level(logging.WARNING, logger="tidings.presence"):
        for message in forged:
            await layer.group_send(NODES_GROUP, message)
        await asyncio.sleep(0.1)
    assert (await presence.list("room"))["ann"]["metas"] == [mine]
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 5
