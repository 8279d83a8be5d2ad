"""The Redis channel layer behind Redis Sentinel, against real servers.

Each test starts a deployment of its own on free ports of 127.0.0.1: a
master, a replica of it (``--replicaof``) and a sentinel (``redis-server
<conf> --sentinel``) that watches them with a quorum of one and short
timeouts, so that a fail-over takes a second or two. Every process is
stopped by PID at the end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from tests.layers.test_redis import RedisServer, free_port
from tidings.layers.redis import RedisChannelLayer, RedisUnavailable

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
"""How long the master must stay silent before the sentinel calls it down."""
FAILOVER_TIMEOUT_MS = 2000
GUARD = 5.0
"""A guard against hanging when a test fails; never what a test waits for."""
FAILOVER_GUARD = 15.0
"""How long a fail-over may take in these tests (it takes about 2 s)."""
CALL_GUARD = 5.0
"""No call may take longer than this, fail-over or not."""


class SentinelServer(RedisServer):
    """A Redis Sentinel this test started, watching ``master_port`` as ``MASTER``."""

    def __init__(self, directory: Path, master_port: int) -> None:
        super().__init__(directory)
        self.master_port = master_port

    def command(self) -> list[str]:
        config = self.directory / "sentinel.conf"
        if not config.exists():  # the sentinel rewrites it as it learns
            config.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"logfile {self.directory / 'redis.log'}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            )
        return ["redis-server", str(config), "--sentinel"]


@dataclass
class Deployment:
    master: RedisServer
    replica: RedisServer
    sentinel: SentinelServer

    def hosts(self, *sentinel_ports: int, **options: Any) -> list[dict[str, Any]]:
        """The layer's ``hosts``: this sentinel (after ``sentinel_ports``, if given)."""
        ports = [*sentinel_ports, self.sentinel.port]
        return [
            {"sentinels": [("127.0.0.1", port) for port in ports], "master_name": MASTER, **options}
        ]

    def master_address(self) -> tuple[str, int]:
        """Where the sentinel says the master is now."""
        with SyncRedis(port=self.sentinel.port, socket_timeout=GUARD) as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return host.decode(), int(port)

    def replica_is_ready(self) -> bool:
        """The replica is in sync and the sentinel knows it as a healthy replica."""
        with SyncRedis(port=self.replica.port, socket_timeout=GUARD) as client:
            if client.info("replication").get("master_link_status") != "up":
                return False
        with SyncRedis(port=self.sentinel.port, socket_timeout=GUARD) as client:
            replicas = client.sentinel_slaves(MASTER)
        return any(
            int(replica["port"]) == self.replica.port
            and not replica["is_sdown"]
            and replica.get("master-link-status") == "ok"
            for replica in replicas
        )


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A master, its replica and a sentinel of this test's own, killed by PID afterwards."""
    # Redis 7 waits 5 s before a full sync by default, for more replicas to join.
    sync_now = ("--repl-diskless-sync-delay", "0")
    master = RedisServer(tmp_path / "master", None, *sync_now)
    replica = RedisServer(
        tmp_path / "replica", None, *sync_now, "--replicaof", "127.0.0.1", str(master.port)
    )
    sentinel = SentinelServer(tmp_path / "sentinel", master.port)
    servers = [master, replica, sentinel]
    try:
        for server in servers:
            server.start()
        found = Deployment(master, replica, sentinel)
        deadline = time.monotonic() + GUARD
        while not found.replica_is_ready():
            if time.monotonic() > deadline:
                pytest.fail("the sentinel did not see the replica in sync")
            time.sleep(0.02)
        yield found
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
async def make_layer(
    deployment: Deployment,
) -> AsyncIterator[Callable[..., RedisChannelLayer]]:
    """Build layers on the sentinel's deployment, under one fresh key prefix."""
    prefix = f"t{secrets.token_hex(5)}"
    made: list[RedisChannelLayer] = []

    def make(**options: Any) -> RedisChannelLayer:
        options.setdefault("hosts", deployment.hosts())
        layer = RedisChannelLayer(prefix=prefix, **options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.close()


async def receive(layer: RedisChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), GUARD)


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], what: str, guard: float = GUARD
) -> None:
    deadline = time.monotonic() + guard
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


async def replicated(server: RedisServer) -> None:
    """Return once the replica has every write the master has taken."""
    client = Redis.from_url(server.url)
    try:
        assert await client.wait(1, int(GUARD * 1000)) == 1
    finally:
        await client.aclose()


# -- through the sentinel -------------------------------------------------------------------


async def test_layers_meet_through_the_sentinel(
    deployment: Deployment, make_layer: Callable[..., RedisChannelLayer]
) -> None:
    # The first sentinel listed is down: the layer asks the next one, without delay.
    hosts = deployment.hosts(free_port())
    owner, sender = make_layer(hosts=hosts), make_layer(hosts=hosts)
    started = time.monotonic()
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    assert time.monotonic() - started < 1.0
    await sender.group_send("room", {"type": "room.message", "text": "hello"})
    assert await receive(owner, channel) == {"type": "room.message", "text": "hello"}
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}
    await sender.send("jobs", {"type": "job"})
    assert await receive(owner, "jobs") == {"type": "job"}
    # The keys live on the master that the sentinel names, and reach its replica.
    await replicated(deployment.master)
    for server in (deployment.master, deployment.replica):
        client = Redis.from_url(server.url)
        try:
            assert await client.keys(f"{owner.prefix}:*")
        finally:
            await client.aclose()
    await owner.flush()


async def test_close_stops_a_receive_loop_that_is_connecting(
    deployment: Deployment, make_layer: Callable[..., RedisChannelLayer]
) -> None:
    # A loop that is still asking the sentinel where the master is must stop at once:
    # Python 3.11's wait_for inside redis-py (the sentinels' socket_timeout) can swallow
    # the cancellation, and the loop must not then go on to block for 5 s.
    layer = make_layer()
    for passes in range(8):
        await layer.new_channel()  # starts the receive loop
        for _ in range(passes):
            await asyncio.sleep(0)
        started = time.monotonic()
        await layer.close()
        assert time.monotonic() - started < 1.0, passes


async def test_a_burst_waits_for_pooled_connections(
    deployment: Deployment, make_layer: Callable[..., RedisChannelLayer]
) -> None:
    # 300 joins at once on 10 pooled connections: they queue, none fails.
    layer = make_layer(hosts=deployment.hosts(max_connections=10))
    channels = [await layer.new_channel() for _ in range(300)]
    await asyncio.gather(*(layer.group_add("room", channel) for channel in channels))
    client = Redis.from_url(deployment.master.url)
    try:
        clients = await client.client_list()
        members = await client.keys(f"{layer.prefix}:*:gm:*")
        assert len(members) == 1 and await client.zcard(members[0]) == 300
    finally:
        await client.aclose()
    # The master's clients: 10 pooled + 2 for the receive loop, the sentinel's 2, the
    # replica's 1 and this one.
    assert len(clients) <= 10 + 2 + 2 + 1 + 1, clients
    await layer.flush()


async def calls_during_failover(
    sender: RedisChannelLayer, owner: RedisChannelLayer, channel: str
) -> list[str]:
    """``group_send`` to ``room`` until one is delivered; return what each call did.

    Every call must return or raise ``RedisUnavailable`` within ``CALL_GUARD``.
    """
    outcomes: list[str] = []
    deadline = time.monotonic() + FAILOVER_GUARD
    while True:
        if time.monotonic() > deadline:
            pytest.fail(f"no group_send got through the fail-over: {outcomes}")
        n = len(outcomes)
        started = time.monotonic()
        try:
            await asyncio.wait_for(
                sender.group_send("room", {"type": "room.message", "n": n}), CALL_GUARD
            )
        except RedisUnavailable as exc:
            outcomes.append(f"unavailable after {time.monotonic() - started:.2f} s: {exc}")
        except TimeoutError:
            pytest.fail(f"group_send hung during the fail-over (after {outcomes})")
        else:
            outcomes.append(f"sent after {time.monotonic() - started:.2f} s")
            break
        try:  # a shared channel's receive must not hang either
            await asyncio.wait_for(sender.receive("nothing.here"), 0.2)
        except (RedisUnavailable, TimeoutError):
            pass
    # The sent message arrives once the owner's receive loop has found the new master.
    assert await asyncio.wait_for(owner.receive(channel), FAILOVER_GUARD) == {
        "type": "room.message",
        "n": len(outcomes) - 1,
    }
    return outcomes


async def assert_traffic_flows(
    sender: RedisChannelLayer, owner: RedisChannelLayer, channel: str
) -> None:
    """Every kind of message goes through, and new memberships work."""
    await sender.group_send("room", {"type": "room.message", "text": "after"})
    assert await receive(owner, channel) == {"type": "room.message", "text": "after"}
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}
    await sender.send("jobs", {"type": "job"})
    assert await receive(owner, "jobs") == {"type": "job"}
    newcomer = await owner.new_channel()
    await owner.group_add("hall", newcomer)
    await sender.group_send("hall", {"type": "hall.message"})
    assert await receive(owner, newcomer) == {"type": "hall.message"}


async def test_failover_when_the_master_dies(
    deployment: Deployment,
    make_layer: Callable[..., RedisChannelLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.layers.redis")
    owner, sender = make_layer(), make_layer()
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.group_send("room", {"type": "before"})
    assert await receive(owner, channel) == {"type": "before"}
    await replicated(deployment.master)
    assert deployment.master_address() == ("127.0.0.1", deployment.master.port)

    deployment.master.kill()
    outcomes = await calls_during_failover(sender, owner, channel)
    assert deployment.master_address() == ("127.0.0.1", deployment.replica.port)
    # At first the sentinel still names the dead master.
    assert outcomes[0].startswith("unavailable"), outcomes
    assert all(f"sentinel master {MASTER!r}" in outcome for outcome in outcomes[:-1])
    messages = [record.message for record in caplog.records]
    assert sum("unreachable" in message for message in messages) == 1, messages
    assert sum("reachable again" in message for message in messages) == 1, messages
    assert f"sentinel master {MASTER!r}" in messages[-1]
    await assert_traffic_flows(sender, owner, channel)


async def test_failover_ordered_by_the_sentinel(
    deployment: Deployment,
    make_layer: Callable[..., RedisChannelLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # SENTINEL FAILOVER: the old master lives on. Until the sentinel turns it into a
    # replica of the new one (seconds later), connections made before keep writing
    # to it; then it drops them and takes the new master's data, losing those writes.
    caplog.set_level(logging.WARNING, logger="tidings.layers.redis")
    owner, sender = make_layer(), make_layer()
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.group_send("room", {"type": "before"})
    assert await receive(owner, channel) == {"type": "before"}
    await replicated(deployment.master)
    old = deployment.master_address()
    with SyncRedis(port=deployment.sentinel.port, socket_timeout=GUARD) as client:
        assert client.execute_command("SENTINEL", "FAILOVER", MASTER)

    async def switched() -> bool:
        return deployment.master_address() != old

    await wait_until(switched, "the sentinel names the new master", FAILOVER_GUARD)
    # A membership made now lands on the old master, and will be lost there.
    newcomer = await owner.new_channel()
    await owner.group_add("lobby", newcomer)
    for server, holds in ((deployment.master, True), (deployment.replica, False)):
        with SyncRedis(port=server.port, socket_timeout=GUARD) as client:
            assert bool(client.keys(f"{owner.prefix}:*:gm:lobby")) is holds

    async def demoted() -> bool:
        # The old master closes every connection when it becomes a replica: a new one.
        with SyncRedis(port=deployment.master.port, socket_timeout=GUARD) as client:
            role: str = client.info("replication")["role"]
            return role == "slave"

    await wait_until(demoted, "the sentinel turns the old master into a replica", 20)

    await calls_during_failover(sender, owner, channel)
    await assert_traffic_flows(sender, owner, channel)
    # The owner noticed that it talks to another server and registered its memberships
    # again, so the one made on the old master works.
    await sender.group_send("lobby", {"type": "lobby.message"})
    assert await receive(owner, newcomer) == {"type": "lobby.message"}
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]
