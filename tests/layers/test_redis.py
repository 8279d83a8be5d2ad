"""Tests of the Redis channel layer beyond the conformance suite.

They run against real redis-servers: the run's private one (``redis_url``),
or servers a test starts itself on free ports (restarts, shards, a cluster),
always stopped by PID. Every layer gets a key prefix of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from tidings import exceptions
from tidings.exceptions import ChannelFull, ChannelLayerUnavailable, InvalidChannelLayerError
from tidings.layers import _redis_hosts, _redis_node, channel_layers, get_channel_layer
from tidings.layers import redis as redis_layer
from tidings.layers._redis_hosts import jump_hash, parse_hosts
from tidings.layers._redis_scripts import ENTRY_HEAD, Keys
from tidings.layers.redis import RedisChannelLayer, RedisUnavailable, node_of_channel

GUARD = 5.0
ROOT = Path(__file__).resolve().parents[2]


# -- helpers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too; at most 55535."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 45000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


class RedisServer:
    """A redis-server this test started (stopped by PID, never anything else)."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The command line that starts this server (a subclass may start a sentinel)."""
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra,
        ]

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            if self.answers():
                return
            time.sleep(0.02)
        self.kill()
        log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")

    def answers(self) -> bool:
        """Whether the server answers a PING (one with a password answers NOAUTH)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(GUARD)
        self.process = None


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers of this test's own; all are killed (by PID) afterwards."""
    started: list[RedisServer] = []

    def start(*extra: str, port: int | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", port, *extra)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
async def make_layer(redis_url: str) -> AsyncIterator[Callable[..., RedisChannelLayer]]:
    """Build layers on the run's redis-server (or given hosts) under one fresh prefix."""
    prefix = f"t{secrets.token_hex(5)}"
    made: list[RedisChannelLayer] = []

    def make(**options: Any) -> RedisChannelLayer:
        options.setdefault("hosts", [redis_url])
        options.setdefault("prefix", prefix)
        layer = RedisChannelLayer(**options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        try:
            await layer.flush()
        except RedisUnavailable:
            pass  # a server this test stopped
        await layer.close()


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``predicate`` until it holds (eventually consistent state), or fail."""
    deadline = time.monotonic() + GUARD
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


async def receive(layer: RedisChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), GUARD)


async def assert_empty(layer: RedisChannelLayer, channel: str) -> None:
    """The next message of ``channel`` is a marker sent now."""
    await layer.send(channel, {"type": "marker"})
    assert await receive(layer, channel) == {"type": "marker"}


# -- across processes ----------------------------------------------------------------

CHILD = """
import asyncio, sys
from tidings.layers.redis import RedisChannelLayer

async def main():
    layer = RedisChannelLayer([sys.argv[1]], prefix=sys.argv[2])
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.send("parent.inbox", {"type": "ready", "channel": channel})
    for _ in range(2):
        message = await layer.receive(channel)
        await layer.send("parent.inbox", {"type": "echo", "channel": channel, "got": message})
    job = await layer.receive("jobs")
    await layer.send("parent.inbox", {"type": "job", "channel": channel, "got": job})
    await layer.close()

asyncio.run(main())
"""


async def test_messages_cross_real_processes(
    make_layer: Callable[..., RedisChannelLayer], redis_url: str
) -> None:
    parent = make_layer()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, redis_url, parent.prefix, env=env
        )
        for _ in range(2)
    ]
    try:
        ready = [await asyncio.wait_for(parent.receive("parent.inbox"), 20) for _ in children]
        channels = {message["channel"] for message in ready}
        assert len(channels) == 2
        assert {node_of_channel(channel) for channel in channels}.isdisjoint({parent.node})
        await parent.group_send("room", {"type": "room.message", "text": "to all"})
        first = sorted(channels)[0]
        await parent.send(first, {"type": "direct", "n": 1})
        second = sorted(channels)[1]
        await parent.send(second, {"type": "direct", "n": 2})
        echoes = [await receive(parent, "parent.inbox") for _ in range(4)]
        got: dict[str, list[Any]] = {channel: [] for channel in channels}
        for echo in echoes:
            got[echo["channel"]].append(echo["got"])
        assert got == {
            first: [{"type": "room.message", "text": "to all"}, {"type": "direct", "n": 1}],
            second: [{"type": "room.message", "text": "to all"}, {"type": "direct", "n": 2}],
        }
        for n in range(2):
            await parent.send("jobs", {"type": "job", "n": n})
        jobs = [await receive(parent, "parent.inbox") for _ in children]
        assert sorted(job["got"]["n"] for job in jobs) == [0, 1]
        assert {job["channel"] for job in jobs} == channels
        for child in children:
            assert await asyncio.wait_for(child.wait(), GUARD) == 0
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()


# -- per-node fan-out ----------------------------------------------------------------


async def cmdstat(client: Redis, command: str) -> int:
    stats = await client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}", {"calls": 0})
    calls: int = entry["calls"]
    return calls


async def test_group_send_writes_one_small_entry_per_node(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    # Two made-up nodes that nobody reads for, so their inboxes can be inspected.
    sender = make_layer()
    few = [f"specific.nodeaaaaaaaa!{n}" for n in range(2)]
    many = [f"specific.nodebbbbbbbb!{n}" for n in range(500)]
    await asyncio.gather(*(sender.group_add("room", channel) for channel in few + many))
    await sender.group_send("warm.up", {"type": "x"})  # loads the script
    payload = {"type": "room.message", "text": "x" * 1000}
    input_before = (await raw.info("stats"))["total_net_input_bytes"]
    calls_before = await cmdstat(raw, "evalsha")
    await sender.group_send("room", payload)
    calls_after = await cmdstat(raw, "evalsha")
    input_after = (await raw.info("stats"))["total_net_input_bytes"]
    assert calls_after - calls_before == 1  # one round trip
    # What the client sent: the payload once (the INFO commands are counted too).
    assert input_after - input_before < 1000 + 400
    keys = Keys(sender.prefix, 0)
    entries = {}
    for node, members in (("nodeaaaaaaaa", few), ("nodebbbbbbbb", many)):
        inbox = await raw.lrange(keys.inbox(node), 0, -1)
        # One join notice per member (sent by group_add), then one group entry.
        assert [entry[ENTRY_HEAD : ENTRY_HEAD + 1] for entry in inbox] == [b"J"] * len(members) + [
            b"G"
        ]
        entries[node] = inbox[-1]
    small, big = entries["nodeaaaaaaaa"], entries["nodebbbbbbbb"]
    assert small[ENTRY_HEAD:] == big[ENTRY_HEAD:]  # the same bytes, whatever the group size
    assert len(big) < 1000 + 100
    assert b"room" in big and b"nodebbbbbbbb" not in big


async def test_members_in_the_senders_process_cost_no_inbox_entry(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    layer = make_layer()
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "room.message"})
    for channel in channels:
        assert await receive(layer, channel) == {"type": "room.message"}
    assert await raw.llen(Keys(layer.prefix, 0).inbox(layer.node)) == 0
    assert await raw.hgetall(Keys(layer.prefix, 0).group("room", "-")[1]) == {
        layer.node.encode(): b"3"
    }


async def test_group_send_reaches_members_on_several_nodes(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    nodes = [make_layer() for _ in range(3)]
    sender = make_layer()
    members = []
    for node in nodes:
        for _ in range(4):
            channel = await node.new_channel()
            await node.group_add("room", channel)
            members.append((node, channel))
    await sender.group_send("room", {"type": "room.message", "n": 1})
    for node, channel in members:
        assert await receive(node, channel) == {"type": "room.message", "n": 1}
    await nodes[0].group_discard("room", members[0][1])
    await sender.group_send("room", {"type": "room.message", "n": 2})
    for node, channel in members[1:]:
        assert await receive(node, channel) == {"type": "room.message", "n": 2}
    await assert_empty(nodes[0], members[0][1])


async def test_another_process_can_add_and_discard_my_channel(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    owner, other = make_layer(), make_layer()
    channel = await owner.new_channel()
    await other.group_add("room", channel)
    await other.group_send("room", {"type": "room.message", "n": 1})
    assert await receive(owner, channel) == {"type": "room.message", "n": 1}
    await owner.group_send("room", {"type": "room.message", "n": 2})  # owner learnt it
    assert await receive(owner, channel) == {"type": "room.message", "n": 2}
    await other.group_discard("room", channel)
    await other.group_send("room", {"type": "room.message", "n": 3})
    await owner.group_send("room", {"type": "room.message", "n": 4})
    await assert_empty(owner, channel)


async def test_shared_channels_in_groups(make_layer: Callable[..., RedisChannelLayer]) -> None:
    layer, worker = make_layer(), make_layer()
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.group_add("room", "audit.log")
    await layer.group_send("room", {"type": "room.message"})
    assert await receive(worker, "audit.log") == {"type": "room.message"}
    assert await receive(layer, channel) == {"type": "room.message"}
    await layer.group_discard("room", "audit.log")
    await layer.group_send("room", {"type": "again"})
    assert await receive(layer, channel) == {"type": "again"}
    await assert_empty(worker, "audit.log")


# -- delivery: published to a listening node, queued otherwise ------------------------------


async def test_messages_queued_before_a_node_listens_come_first_and_in_order(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    # The owner's receive loop is not running: the first messages queue on its inbox
    # list. They keep coming while the loop starts, subscribes and pops the list;
    # those published meanwhile must wait for the popped ones (the listener holds them).
    owner, sender = make_layer(capacity=1000), make_layer(capacity=1000)
    channel = f"specific.{owner.node}!{secrets.token_hex(8)}"
    count = 400

    async def produce() -> None:
        for n in range(count):
            await sender.send(channel, {"type": "seq", "n": n})
            if n == 100:
                started.set()

    started = asyncio.Event()
    producing = asyncio.create_task(produce())
    await asyncio.wait_for(started.wait(), GUARD)
    inbox = Keys(owner.prefix, 0).inbox(owner.node)
    assert await raw.llen(inbox) > 0  # nobody listened yet: queued
    got = [(await receive(owner, channel))["n"] for _ in range(count)]
    await producing
    assert got == list(range(count))
    # Now the node listens: nothing is queued any more, entries go straight to it.
    await sender.send(channel, {"type": "seq", "n": count})
    assert (await receive(owner, channel))["n"] == count
    assert await raw.llen(inbox) == 0
    numsub = await raw.pubsub_numsub(inbox)
    assert numsub == [(inbox.encode(), 1)]


async def test_a_lost_subscription_is_replaced_and_loses_nothing_queued(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    owner, sender = make_layer(), make_layer()
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "first"})
    assert await receive(owner, channel) == {"type": "first"}
    inbox = Keys(owner.prefix, 0).inbox(owner.node)
    # Kill the owner's subscription (the only subscriber of its inbox channel).
    clients = await raw.client_list()
    subscribed = [c for c in clients if c.get("sub") not in ("0", 0, None)]
    ids = []
    for client in subscribed:
        ids.append(client["id"])
    assert await raw.pubsub_numsub(inbox) == [(inbox.encode(), 1)]
    killed = 0
    for client_id in ids:
        await raw.client_kill_filter(_id=client_id)
        killed += 1
        if await raw.pubsub_numsub(inbox) == [(inbox.encode(), 0)]:
            break
    assert killed
    # While nobody listens, sends queue on the list; the loop subscribes again and pops them.
    for n in range(20):
        await sender.send(channel, {"type": "again", "n": n})
    got = [(await receive(owner, channel))["n"] for _ in range(20)]
    assert got == list(range(20))

    async def listening() -> bool:
        return bool(await raw.pubsub_numsub(inbox) == [(inbox.encode(), 1)])

    await wait_until(listening, "the owner subscribes again")
    await assert_empty(owner, channel)


# -- shared channels -------------------------------------------------------------------


async def test_competing_workers_each_get_distinct_messages(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    workers = [make_layer() for _ in range(3)]
    sender = make_layer()
    got: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def work(index: int, layer: RedisChannelLayer) -> None:
        while True:
            message = await layer.receive("thumbnails")
            await got.put((index, message["n"]))

    tasks = [
        asyncio.create_task(work(index, layer))
        for index, layer in enumerate(workers)
        for _ in range(2)
    ]
    for n in range(60):
        await sender.send("thumbnails", {"type": "thumbnail", "n": n})
    received = [await asyncio.wait_for(got.get(), GUARD) for _ in range(60)]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(n for _, n in received) == list(range(60))
    await assert_empty(sender, "thumbnails")  # cancelled receivers took nothing


async def test_cancelled_shared_receive_loses_no_message(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    layer = make_layer()
    for _ in range(3):
        task = asyncio.create_task(layer.receive("jobs"))
        await asyncio.sleep(0.05)  # let it reach its blocking wait
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await layer.send("jobs", {"type": "job"})
    assert await receive(layer, "jobs") == {"type": "job"}


async def test_large_messages_between_processes(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    sender, owner = make_layer(), make_layer()
    payload = os.urandom(1 << 20)
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.send(channel, {"type": "direct", "bytes": payload})
    await sender.group_send("room", {"type": "group", "bytes": payload})
    await sender.send("big.jobs", {"type": "shared", "bytes": payload})
    assert await receive(owner, channel) == {"type": "direct", "bytes": payload}
    assert await receive(owner, channel) == {"type": "group", "bytes": payload}
    assert await receive(owner, "big.jobs") == {"type": "shared", "bytes": payload}


# -- capacity and expiry ----------------------------------------------------------------


async def test_remote_sender_learns_that_a_channel_is_full(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    sender, owner = make_layer(capacity=2), make_layer(capacity=2)
    channel = await owner.new_channel()
    full_set = Keys(owner.prefix, 0).full(owner.node)
    for n in range(3):  # the third overflows at the owner, which reports the channel full
        await sender.send(channel, {"type": "m", "n": n})

    async def reported() -> bool:
        return bool(await raw.sismember(full_set, channel))

    await wait_until(reported, "the owner reports the channel full")
    with pytest.raises(ChannelFull):
        await sender.send(channel, {"type": "m", "n": 3})
    assert await receive(owner, channel) == {"type": "m", "n": 0}

    async def cleared() -> bool:
        return not await raw.sismember(full_set, channel)

    await wait_until(cleared, "the owner withdraws the report")
    await sender.send(channel, {"type": "m", "n": 4})
    assert [(await receive(owner, channel))["n"] for _ in range(2)] == [1, 4]


async def test_full_inbox_of_a_stalled_node_refuses_sends(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    sender = make_layer(inbox_capacity=3)
    stalled = "specific.nodecccccccc!abc"  # nobody reads that node's inbox
    for n in range(3):
        await sender.send(stalled, {"type": "m", "n": n})
    with pytest.raises(ChannelFull):
        await sender.send(stalled, {"type": "m", "n": 3})
    await sender.group_add("room", stalled)  # a join notice goes past the capacity
    await sender.group_send("room", {"type": "room.message"})  # skipped, silently


async def test_shared_channel_capacity_and_expiry(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    layer = make_layer(expiry=0.2, capacity=1)
    await layer.send("jobs", {"type": "old"})
    with pytest.raises(ChannelFull):
        await layer.send("jobs", {"type": "refused"})
    ttl = await raw.pttl(Keys(layer.prefix, 0).channel("jobs"))
    assert 0 < ttl <= 1200  # an unread list vanishes shortly after its messages expire
    await asyncio.sleep(0.3)
    await layer.send("jobs", {"type": "new"})
    assert await receive(layer, "jobs") == {"type": "new"}
    await assert_empty(layer, "jobs")


async def test_messages_to_a_remote_channel_expire(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    sender, owner = make_layer(expiry=0.2), make_layer(expiry=0.2)
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "old"})
    await asyncio.sleep(0.3)
    await sender.send(channel, {"type": "new"})
    assert await receive(owner, channel) == {"type": "new"}
    await assert_empty(owner, channel)


SENDER = """
import asyncio, sys
from tidings.layers.redis import RedisChannelLayer

async def main():
    layer = RedisChannelLayer([sys.argv[1]], prefix=sys.argv[2], expiry=1)
    for text in sys.argv[3:]:
        await layer.group_send("room", {"type": "room.message", "text": text})
    await layer.close()

asyncio.run(main())
"""


async def group_send_from_another_process(redis_url: str, prefix: str, *texts: str) -> None:
    """Run a process that sends ``texts`` to the group "room", one message each, and exits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, redis_url, prefix, *texts, env=env
    )
    try:
        assert await asyncio.wait_for(child.wait(), 20) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_a_member_stays_in_its_groups_after_a_message_expired_unread(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis, redis_url: str
) -> None:
    # channels_redis' rule (the in-memory layer's differs, as in Channels): a consumer
    # busy for longer than expiry misses what expired, not every later group message.
    owner = make_layer(expiry=1)
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await group_send_from_another_process(redis_url, owner.prefix, "expires unread")
    await asyncio.sleep(1.5)
    await group_send_from_another_process(redis_url, owner.prefix, "one", "two", "three")
    got = [await receive(owner, channel) for _ in range(3)]
    assert [message["text"] for message in got] == ["one", "two", "three"]
    await owner.group_send("room", {"type": "room.message", "text": "from this process"})
    assert (await receive(owner, channel))["text"] == "from this process"
    await assert_empty(owner, channel)
    members, _, _, _ = Keys(owner.prefix, 0).group("room", "-")
    assert await raw.zrange(members, 0, -1) == [channel.encode()]


async def test_memberships_expire_in_redis_too(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    sender, owner = make_layer(group_expiry=0.3), make_layer(group_expiry=0.3)
    stale, renewed = await owner.new_channel(), await owner.new_channel()
    await owner.group_add("room", stale)
    await owner.group_add("room", renewed)
    await asyncio.sleep(0.15)
    await owner.group_add("room", renewed)
    await asyncio.sleep(0.2)
    await sender.group_send("room", {"type": "room.message"})
    assert await receive(owner, renewed) == {"type": "room.message"}
    await assert_empty(owner, stale)
    members, nodes, _, _ = Keys(owner.prefix, 0).group("room", "-")
    assert await raw.zrange(members, 0, -1) == [renewed.encode()]
    assert await raw.hgetall(nodes) == {owner.node.encode(): b"1"}


# -- bursts -------------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", ["default", "pool of 4"])
async def test_a_burst_of_1000_connects_and_disconnects(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis, redis_url: str, hosts: str
) -> None:
    if hosts == "default":
        layer, sender = make_layer(), make_layer()
    else:
        small = [{"address": redis_url, "max_connections": 4}]
        layer, sender = make_layer(hosts=small), make_layer(hosts=small)
    channels = [await layer.new_channel() for _ in range(1000)]
    await asyncio.gather(*(layer.group_add("crowd", channel) for channel in channels))
    members, nodes, _, _ = Keys(layer.prefix, 0).group("crowd", "-")
    assert await raw.zcard(members) == 1000
    assert await raw.hgetall(nodes) == {layer.node.encode(): b"1000"}
    await sender.group_send("crowd", {"type": "crowd.message"})
    received = await asyncio.gather(*(receive(layer, channel) for channel in channels))
    assert received == [{"type": "crowd.message"}] * 1000
    await asyncio.gather(*(layer.group_discard("crowd", channel) for channel in channels))
    assert await raw.exists(members, nodes) == 0  # no stale membership left
    await sender.group_send("crowd", {"type": "nobody"})
    await assert_empty(layer, channels[0])


# -- event loops and threads ----------------------------------------------------------------


def test_async_to_sync_repeatedly_reaches_another_process(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    # Each async_to_sync call runs in a fresh event loop that closes afterwards.
    owner, sender = make_layer(), make_layer()
    channel = async_to_sync(owner.new_channel)()
    async_to_sync(owner.group_add)("room", channel)
    for n in range(20):
        async_to_sync(sender.group_send)("room", {"type": "room.message", "n": n})
    got = [async_to_sync(owner.receive)(channel)["n"] for _ in range(20)]
    assert got == list(range(20))


async def test_receive_loops_move_to_a_live_event_loop(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    owner, sender = make_layer(), make_layer()
    holder: list[str] = []
    thread = threading.Thread(target=lambda: holder.append(asyncio.run(owner.new_channel())))
    thread.start()
    await asyncio.to_thread(thread.join, GUARD)
    channel = holder[0]  # its receive loops died with that event loop
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}


async def test_receive_on_another_processes_channel_is_refused(
    make_layer: Callable[..., RedisChannelLayer],
) -> None:
    owner, other = make_layer(), make_layer()
    channel = await owner.new_channel()
    with pytest.raises(ValueError, match="belongs to another process"):
        await other.receive(channel)
    with pytest.raises(ValueError, match="belongs to another process"):
        await other.receive(channel)  # refused every time, not only the first


async def test_names_receive_has_checked_are_remembered_within_a_bound(
    make_layer: Callable[..., RedisChannelLayer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_layer, "_CHECKED_NAMES", 3)
    owner, sender = make_layer(), make_layer()
    channels = [await owner.new_channel() for _ in range(5)]
    for n, channel in enumerate(channels * 2):
        await sender.send(channel, {"type": "m", "n": n})
        assert (await receive(owner, channel))["n"] == n
        assert channel in owner._checked and len(owner._checked) <= 3
    with pytest.raises(TypeError):
        await owner.receive("bad name!")
    assert "bad name!" not in owner._checked


# -- faults ---------------------------------------------------------------------------------


async def test_redis_restart_mid_traffic(
    servers: Callable[..., RedisServer],
    make_layer: Callable[..., RedisChannelLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.layers.redis")
    server = servers()
    owner, sender = make_layer(hosts=[server.url]), make_layer(hosts=[server.url])
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.group_send("room", {"type": "before"})
    assert await receive(owner, channel) == {"type": "before"}

    server.kill()
    with pytest.raises(RedisUnavailable, match=f"127.0.0.1:{server.port}"):
        await sender.group_send("room", {"type": "lost"})
    with pytest.raises(RedisUnavailable):
        await sender.send("jobs", {"type": "lost"})
    with pytest.raises(RedisUnavailable):
        await sender.receive("jobs")
    with pytest.raises(ChannelLayerUnavailable):  # what backend-neutral code catches
        await sender.group_add("room", "audit.log")

    async def lost_logged() -> bool:
        return any("unreachable" in record.message for record in caplog.records)

    await wait_until(lost_logged, "the receive loop logs the loss")
    server.start()  # same port, empty: every membership is gone from Redis

    async def delivered() -> bool:
        await sender.group_send("room", {"type": "after"})
        try:
            return await asyncio.wait_for(owner.receive(channel), 0.2) == {"type": "after"}
        except TimeoutError:
            return False

    await wait_until(delivered, "the owner registers again and receives")
    messages = [record.message for record in caplog.records]
    assert sum("unreachable" in message for message in messages) == 1
    assert sum("reachable again" in message for message in messages) == 1
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}


async def test_a_frozen_server_is_logged_with_a_reason(
    servers: Callable[..., RedisServer],
    make_layer: Callable[..., RedisChannelLayer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server that stops answering (SIGSTOP: the connection stays open) ends the receive
    # loop's step with a TimeoutError, whose message is empty: the log names the error.
    monkeypatch.setattr(_redis_node, "READER_GRACE", 0.3)
    monkeypatch.setattr(_redis_node, "MARKER_CHECK_INTERVAL", 0.1)
    monkeypatch.setattr(_redis_hosts, "BLOCK_TIMEOUT", 0.3)
    caplog.set_level(logging.WARNING, logger="tidings.layers.redis")
    server = servers()
    owner = make_layer(hosts=[server.url])
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:

        async def lost_logged() -> bool:
            return any("unreachable" in record.message for record in caplog.records)

        await wait_until(lost_logged, "the receive loop logs the frozen server")
    finally:
        server.process.send_signal(signal.SIGCONT)
    (message,) = [r.message for r in caplog.records if "unreachable" in r.message]
    assert "unreachable (TimeoutError)" in message, message


async def test_lost_data_without_a_disconnect_is_noticed(
    servers: Callable[..., RedisServer],
    make_layer: Callable[..., RedisChannelLayer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_redis_node, "MARKER_CHECK_INTERVAL", 0.05)
    server = servers()
    # A short socket timeout makes the receive loop's blocking waits short too.
    hosts = [{"address": server.url, "socket_timeout": 0.4}]
    owner, sender = make_layer(hosts=hosts), make_layer(hosts=hosts)
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    client = Redis.from_url(server.url)
    try:
        await client.flushall()  # a server of this test's own
    finally:
        await client.aclose()

    async def delivered() -> bool:
        await sender.group_send("room", {"type": "after"})
        try:
            return await asyncio.wait_for(owner.receive(channel), 0.2) == {"type": "after"}
        except TimeoutError:
            return False

    await wait_until(delivered, "the owner registers its membership again")


async def test_a_redis_user_without_info_is_enough(
    servers: Callable[..., RedisServer],
    make_layer: Callable[..., RedisChannelLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # INFO (which tells the receive loop which server it reads) is @dangerous in Redis
    # ACLs; a user without it must still get every message.
    server = servers()
    cli(server, "ACL", "SETUSER", "layer", "on", ">pw", "~*", "&*", "+@all", "-info")
    hosts = [{"address": server.url, "username": "layer", "password": "pw"}]
    owner, sender = make_layer(hosts=hosts), make_layer(hosts=hosts)
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.group_send("room", {"type": "room.message"})
    assert await receive(owner, channel) == {"type": "room.message"}
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    client = Redis.from_url(server.url, username="layer", password="pw")
    try:
        with pytest.raises(NoPermissionError):
            await client.info("server")
    finally:
        await client.aclose()


async def test_a_redis_user_without_pubsub_channels_still_gets_every_message(
    servers: Callable[..., RedisServer],
    make_layer: Callable[..., RedisChannelLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Redis 7 gives new ACL users no pub/sub channels (resetchannels): the scripts'
    # PUBLISH is refused and the node's SUBSCRIBE too. Entries then queue on the inbox
    # list and the receive loop waits on it instead, saying so once.
    server = servers()
    cli(server, "ACL", "SETUSER", "layer", "on", ">pw", "~*", "resetchannels", "+@all")
    hosts = [{"address": server.url, "username": "layer", "password": "pw"}]
    owner, sender = make_layer(hosts=hosts), make_layer(hosts=hosts)
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    for n in range(3):
        await sender.group_send("room", {"type": "room.message", "n": n})
        await sender.send(channel, {"type": "direct", "n": n})
    got = [await receive(owner, channel) for _ in range(6)]
    assert got == [{"type": kind, "n": n} for n in range(3) for kind in ("room.message", "direct")]
    refusals = [r for r in caplog.records if "may not subscribe" in r.getMessage()]
    assert len(refusals) == 1
    await assert_empty(owner, channel)


# -- scale out ------------------------------------------------------------------------------


async def test_three_sharded_servers(
    servers: Callable[..., RedisServer], make_layer: Callable[..., RedisChannelLayer]
) -> None:
    shards = [servers() for _ in range(3)]
    hosts = [shard.url for shard in shards]
    owner, sender = make_layer(hosts=hosts), make_layer(hosts=hosts)
    channel = await owner.new_channel()
    groups = [f"room{n}" for n in range(30)]
    for group in groups:
        await owner.group_add(group, channel)
    await owner.group_add("room0", "audit.log")  # a shared member on another shard
    for group in groups:
        await sender.group_send(group, {"type": "room.message", "group": group})
    got = {(await receive(owner, channel))["group"] for _ in groups}
    assert got == set(groups)
    assert await receive(sender, "audit.log") == {"type": "room.message", "group": "room0"}
    for n in range(30):
        await sender.send(f"jobs{n}", {"type": "job", "n": n})
    for n in range(30):
        assert await receive(owner, f"jobs{n}") == {"type": "job", "n": n}
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}
    for shard in shards:  # every shard holds some of the layer's keys
        client = Redis.from_url(shard.url)
        try:
            assert await client.dbsize() > 0
        finally:
            await client.aclose()


@pytest.fixture
def cluster(servers: Callable[..., RedisServer], tmp_path: Path) -> list[RedisServer]:
    """A three-master Redis Cluster of this test's own."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is needed to create a cluster")
    nodes = []
    for index in range(3):
        config = tmp_path / f"cluster-{index}.conf"
        nodes.append(
            servers(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(config),
                "--cluster-node-timeout",
                "2000",
                port=free_cluster_port(),
            )
        )
    # What ``redis-cli --cluster create`` does, without its one-second pauses:
    # a third of the slots to each node, then introduce the nodes to each other.
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    for node, (first, last) in zip(nodes, ranges, strict=True):
        cli(node, "cluster", "addslotsrange", str(first), str(last))
    for node in nodes[1:]:
        cli(nodes[0], "cluster", "meet", "127.0.0.1", str(node.port))
    deadline = time.monotonic() + 20
    while True:
        states = [cli(node, "cluster", "info") for node in nodes]
        if all("cluster_state:ok" in state for state in states):
            return nodes
        if time.monotonic() > deadline:
            pytest.fail(f"the cluster did not come up: {states}")
        time.sleep(0.05)


def cli(server: RedisServer, *command: str) -> str:
    """Run one redis-cli command against a server of this test's own."""
    done = subprocess.run(
        ["redis-cli", "-p", str(server.port), *command],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    )
    return done.stdout


async def test_redis_cluster(
    cluster: list[RedisServer], make_layer: Callable[..., RedisChannelLayer]
) -> None:
    hosts = [{"address": cluster[0].url.rsplit("/", 1)[0], "cluster": True, "shards": 6}]
    owner, sender = make_layer(hosts=hosts), make_layer(hosts=hosts)
    channel = await owner.new_channel()
    for n in range(6):
        await owner.group_add(f"room{n}", channel)
    await owner.group_add("room0", "audit.log")
    for n in range(6):
        await sender.group_send(f"room{n}", {"type": "room.message", "n": n})
    got = sorted([(await receive(owner, channel))["n"] for _ in range(6)])
    assert got == list(range(6))
    assert await receive(sender, "audit.log") == {"type": "room.message", "n": 0}
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}
    await sender.send("jobs", {"type": "job"})
    assert await receive(owner, "jobs") == {"type": "job"}
    used = set()
    for node in cluster:
        client = Redis.from_url(node.url.rsplit("/", 1)[0])
        try:
            used.add(await client.dbsize() > 0)
        finally:
            await client.aclose()
    assert used == {True}  # the shards spread over every master
    await owner.flush()
    await sender.group_send("room1", {"type": "after.flush"})
    await assert_empty(owner, channel)


# -- configuration ------------------------------------------------------------------------


def test_hosts_forms() -> None:
    specs = parse_hosts(
        [
            "redis://:secret@127.0.0.1:6380/1",
            ("10.0.0.1", 6381),
            {"address": "rediss://example.org:6390", "password": "pw", "max_connections": 8},
            {"address": ("10.0.0.2", 6382), "db": 2},
            {"host": "10.0.0.3", "port": 6383},
        ]
    )
    assert [spec.kind for spec in specs] == ["plain"] * 5
    assert specs[0].describe() == "redis://127.0.0.1:6380/1"  # no password
    assert (specs[1].host, specs[1].port) == ("10.0.0.1", 6381)
    assert specs[2].max_connections == 8 and specs[2].options == {"password": "pw"}
    assert specs[3].options == {"db": 2}
    assert (specs[4].host, specs[4].port) == ("10.0.0.3", 6383)
    assert parse_hosts(None)[0].describe() == "localhost:6379"
    assert len(parse_hosts(("127.0.0.1", 6379))) == 1
    sentinel = parse_hosts(
        [{"sentinels": [("127.0.0.1", 26379)], "master_name": "main", "password": "pw"}]
    )[0]
    assert sentinel.kind == "sentinel" and sentinel.master_name == "main"
    assert "sentinel master 'main'" in sentinel.describe()
    cluster = parse_hosts([{"address": "redis://127.0.0.1:7000", "cluster": True}])[0]
    assert cluster.kind == "cluster" and cluster.shards == 12


@pytest.mark.parametrize(
    ("hosts", "error"),
    [
        (["http://127.0.0.1"], "not a redis://"),
        ([("127.0.0.1", "6379")], "URL or a"),
        ([{"db": 1}], "needs an 'address'"),
        ([{"sentinels": [("h", 1)]}], "master_name"),
        ([{"address": "redis://a", "shards": 3}], "only applies"),
        ([{"address": "redis://a", "cluster": True}, "redis://b"], "only entry"),
        ([], "non-empty"),
    ],
)
def test_bad_hosts(hosts: Any, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        RedisChannelLayer(hosts)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"prefix": "a{b}"}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"random_prefix_length": 4}, "random_prefix_length"),
        ({"inbox_capacity": 0}, "inbox_capacity"),
        ({"group_expiry": 0}, "group_expiry"),
        ({"serializer_format": "pickle"}, "serializer_format"),
    ],
)
def test_bad_options(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RedisChannelLayer(**options)


async def test_json_serializer(make_layer: Callable[..., RedisChannelLayer]) -> None:
    sender, owner = make_layer(serializer_format="json"), make_layer(serializer_format="json")
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "m", "list": [1, "two"], "map": {"k": None}})
    assert await receive(owner, channel) == {"type": "m", "list": [1, "two"], "map": {"k": None}}
    with pytest.raises(TypeError):
        await sender.send(channel, {"type": "m", "bytes": b"no"})


def test_redis_unavailable_is_a_channel_layer_unavailable() -> None:
    assert issubclass(RedisUnavailable, ChannelLayerUnavailable)
    assert issubclass(ChannelLayerUnavailable, exceptions.TidingsError)
    assert "ChannelLayerUnavailable" in exceptions.__all__
    assert "RedisUnavailable" in redis_layer.__all__
    assert "RedisUnavailable" in (exceptions.__doc__ or "")


def test_node_ids_and_channel_names() -> None:
    layer = RedisChannelLayer(random_prefix_length=20)
    assert len(layer.node) == 20
    name = async_to_sync(layer.new_channel)("chat.worker")
    assert name.startswith(f"chat.worker.{layer.node}!")
    assert node_of_channel(name) == layer.node
    assert node_of_channel("a.b.c!x") == "c" and node_of_channel("plain!x") == "plain"
    async_to_sync(layer.close)()


def test_channels_backend_path_builds_this_layer(redis_url: str) -> None:
    config = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url], "capacity": 7, "prefix": "settings"},
        }
    }
    with override_settings(CHANNEL_LAYERS=config):
        layer = get_channel_layer()
        assert isinstance(layer, RedisChannelLayer)
        assert layer.capacity == 7 and layer.prefix == "settings"
        assert channel_layers.make_backend("default") is not layer
    bad = {"default": {**config["default"], "CONFIG": {"hosts": ["http://x"]}}}
    with override_settings(CHANNEL_LAYERS=bad), pytest.raises(InvalidChannelLayerError):
        get_channel_layer()


def test_jump_hash_is_stable_and_moves_few_names() -> None:
    names = [f"group{n}" for n in range(3000)]
    three = [jump_hash(name, 3) for name in names]
    four = [jump_hash(name, 4) for name in names]
    assert three == [jump_hash(name, 3) for name in names]
    assert {three.count(bucket) for bucket in range(3)} <= set(range(850, 1150))
    moved = sum(a != b for a, b in zip(three, four, strict=True))
    assert all(b == 3 for a, b in zip(three, four, strict=True) if a != b)
    assert 600 < moved < 900  # about a quarter, all to the new bucket


# -- whole layer ---------------------------------------------------------------------------


async def test_flush_deletes_only_this_prefix(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    layer = make_layer()
    neighbour = make_layer(prefix=layer.prefix + "x")
    await layer.send("jobs", {"type": "job"})
    await neighbour.send("jobs", {"type": "kept"})
    bystanders = {f"{layer.prefix}:plain": b"1", f"{layer.prefix}x:{{0}}:other": b"2"}
    await raw.mset(bystanders)
    try:
        await layer.flush()
        assert await raw.keys(f"{layer.prefix}:{{*") == []
        assert await raw.mget(list(bystanders)) == list(bystanders.values())
        assert await receive(neighbour, "jobs") == {"type": "kept"}
    finally:
        await raw.delete(*bystanders)


async def test_close_releases_connections_and_allows_reuse(
    make_layer: Callable[..., RedisChannelLayer], raw: Redis
) -> None:
    async def clients() -> int:
        connected: int = (await raw.info("clients"))["connected_clients"]
        return connected

    before = await clients()
    layer = make_layer()
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "room.message"})
    assert await receive(layer, channel) == {"type": "room.message"}
    await layer.send("jobs", {"type": "job"})
    assert await receive(layer, "jobs") == {"type": "job"}
    assert await clients() > before
    readers = layer._receiver.readers
    await layer.close()
    assert readers is not None and all(task.done() for task in readers.tasks)

    async def released() -> bool:
        return await clients() == before

    await wait_until(released, "the server sees the connections closed")
    await layer.send("jobs", {"type": "again"})  # usable again
    assert await receive(layer, "jobs") == {"type": "again"}
