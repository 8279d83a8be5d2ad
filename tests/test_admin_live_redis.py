"""The live admin page on the Redis layer, against a real redis-server.

- The busiest groups come from a rolling ``SCAN`` whose cost per refresh is bounded
  (counted with Redis' own ``INFO commandstats``), whatever the number of keys.
- Layer health: a ``PING`` round trip per host; a host that does not answer is shown
  unreachable and the page keeps getting readings.
- Many admin pages cost Redis what one does.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as redis
from django.test import override_settings

from tests.test_admin_live import admin_site, logged_in, make_user, reading, socket_for
from tidings import presence
from tidings._admin_groups import KEEP_GROUPS, SCAN_CALLS, TOP_GROUPS, RedisGroups
from tidings.layers import get_channel_layer
from tidings.layers.redis import RedisChannelLayer

__all__ = ["admin_site"]  # the fixture, imported to be used here

FILLER_GROUPS = 12_000


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return "adm" + secrets.token_hex(4)


@pytest.fixture
def redis_layer(redis_url: str, prefix: str, admin_site: None) -> Iterator[RedisChannelLayer]:
    backend = {
        "BACKEND": "tidings.layers.redis.RedisChannelLayer",
        "CONFIG": {"hosts": [redis_url], "prefix": prefix},
    }
    with override_settings(CHANNEL_LAYERS={"default": backend}):
        layer = get_channel_layer()
        assert isinstance(layer, RedisChannelLayer)
        yield layer


@pytest.fixture
async def cleanup(redis_layer: RedisChannelLayer) -> AsyncIterator[None]:
    yield
    await presence.aclose()
    await redis_layer.flush()
    await redis_layer.close()


async def calls(client: redis.Redis, command: str) -> int:
    """How many times the server ran ``command`` (``INFO commandstats``)."""
    stats = await client.info("commandstats")
    entry: dict[str, Any] = stats.get(f"cmdstat_{command}", {})
    return int(entry.get("calls", 0))


async def make_filler(client: redis.Redis, prefix: str, count: int, *, score: float) -> None:
    """``count`` one-member groups in the layer's key layout, as other processes make."""
    async with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.zadd(f"{prefix}:{{0}}:gm:filler-{i:05d}", {f"{prefix}.n!{i}": score})
        await pipe.execute()


@pytest.mark.usefixtures("cleanup")
async def test_a_sweep_costs_a_bounded_slice_per_refresh(
    redis_layer: RedisChannelLayer, raw: redis.Redis, prefix: str
) -> None:
    now_ms = time.time() * 1000
    await make_filler(raw, prefix, FILLER_GROUPS, score=now_ms)
    # Memberships older than group_expiry: group_send no longer sees them, nor the page.
    async with raw.pipeline(transaction=False) as pipe:
        for i in range(40):
            pipe.zadd(f"{prefix}:{{0}}:gm:stale", {f"{prefix}.n!s{i}": 1000.0})
        await pipe.execute()
    for _ in range(30):
        await redis_layer.group_add("busiest", await redis_layer.new_channel())
    for _ in range(7):
        await redis_layer.group_add("second", await redis_layer.new_channel())

    groups = RedisGroups(redis_layer.hosts, prefix=prefix, group_expiry=redis_layer.group_expiry)
    try:
        refreshes = 0
        while True:
            scans = await calls(raw, "scan")
            counts = await groups.refresh()
            refreshes += 1
            assert await calls(raw, "scan") - scans <= SCAN_CALLS
            assert len(groups.walks[0].seen) <= KEEP_GROUPS  # memory: the largest only
            if not counts.partial:
                break
            assert refreshes < 20, "the sweep never ended"
        assert refreshes > 1  # 12,000 keys do not fit in one slice
        assert counts.top[:2] == [("busiest", 30), ("second", 7)]
        assert len(counts.top) == TOP_GROUPS
        assert "stale" not in dict(counts.top)
        assert FILLER_GROUPS + 2 <= counts.total <= FILLER_GROUPS + 2 + KEEP_GROUPS
        # The next sweep has begun, but the groups on show stay, counted afresh.
        await redis_layer.group_add("second", await redis_layer.new_channel())
        again = await groups.refresh()
        assert again.top[:2] == [("busiest", 30), ("second", 8)] and not again.partial
    finally:
        await groups.aclose()


@pytest.mark.usefixtures("cleanup")
async def test_the_page_over_redis_and_many_pages_cost_one(
    redis_layer: RedisChannelLayer, raw: redis.Redis
) -> None:
    staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=True)))
    for _ in range(3):
        await redis_layer.group_add("room-r", await redis_layer.new_channel())
    await presence.track("lobby", "ann", await redis_layer.new_channel())

    sockets = [socket_for(staff) for _ in range(10)]
    for socket in sockets:
        assert (await socket.connect())[0] is True
    first = await reading(sockets[0])
    assert first["layer"]["backend"] == "RedisChannelLayer"
    [host] = first["layer"]["hosts"]
    assert host["reachable"] is True and host["ping_ms"] >= 0
    assert ["room-r", 3] in first["groups"]["top"]
    assert ["lobby", 1] in first["presence"]["top"]
    for socket in sockets[1:]:
        await reading(socket)

    evals = await calls(raw, "eval")
    for _ in range(3):
        for socket in sockets:
            await reading(socket)
    # Three readings: three pings (one per reading, not one per page) and at most one
    # refresh of the groups; ten pages would make thirty.
    assert await calls(raw, "eval") - evals <= 6
    for socket in sockets:
        await socket.disconnect()


async def test_an_unreachable_redis_is_shown_and_the_page_keeps_going(
    admin_site: None, caplog: pytest.LogCaptureFixture
) -> None:
    import socket as sockets

    with sockets.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    backend = {
        "BACKEND": "tidings.layers.redis.RedisChannelLayer",
        "CONFIG": {"hosts": [f"redis://127.0.0.1:{dead}/0"]},
    }
    with override_settings(CHANNEL_LAYERS={"default": backend}):
        staff = await asyncio.to_thread(lambda: logged_in(make_user(staff=True)))
        socket = socket_for(staff)
        assert (await socket.connect())[0] is True
        first = await reading(socket, timeout=10)
        assert first["layer"]["hosts"] == [
            {"host": f"redis://127.0.0.1:{dead}/0", "reachable": False, "ping_ms": None}
        ]
        assert first["groups"]["note"] == "unavailable (see the server log)"
        assert first["presence"]["note"] == "unavailable (see the server log)"
        second = await reading(socket, timeout=10)
        assert second["at"] > first["at"]
        await socket.disconnect()
        layer = get_channel_layer()
        assert layer is not None
        await presence.aclose()
        await layer.close()  # type: ignore[attr-defined]
    warnings = [r.getMessage() for r in caplog.records if r.name == "tidings.admin"]
    assert any("unreachable" in w for w in warnings), warnings
    # Logged once, not once a second; no exception text ever reaches the page.
    assert sum("unreachable" in w for w in warnings) == 1
