"""Metrics of the Redis layer: outages and reconnects of a real redis-server, ChannelFull.

The redis-server of the outage test is the test's own (killed and restarted by PID).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import pytest

from tests.layers.test_redis import (  # the layer tests' own fixtures and helpers
    RedisServer,
    make_layer,  # noqa: F401
    receive,
    servers,  # noqa: F401
    wait_until,
)
from tidings import _metrics
from tidings.exceptions import ChannelFull
from tidings.layers.redis import RedisChannelLayer


@pytest.fixture
def metrics() -> Iterator[_metrics.Metrics]:
    assert _metrics.ACTIVE is None
    try:
        yield _metrics.enable()
    finally:
        _metrics.disable()


async def test_an_outage_and_its_reconnect_are_counted_once_per_receive_loop(
    metrics: _metrics.Metrics,
    servers: Callable[..., RedisServer],  # noqa: F811
    make_layer: Callable[..., RedisChannelLayer],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.layers.redis")
    server = servers()
    owner, sender = make_layer(hosts=[server.url]), make_layer(hosts=[server.url])
    channel = await owner.new_channel()
    await owner.group_add("room", channel)
    await sender.group_send("room", {"type": "before"})
    assert await receive(owner, channel) == {"type": "before"}
    assert (metrics.redis_outages, metrics.redis_reconnects) == (0, 0)

    server.kill()

    async def lost() -> bool:
        return metrics.redis_outages > 0

    await wait_until(lost, "the receive loop counts the outage")
    server.start()

    async def delivered() -> bool:
        await sender.group_send("room", {"type": "after"})
        try:
            return await asyncio.wait_for(owner.receive(channel), 0.2) == {"type": "after"}
        except TimeoutError:
            return False

    await wait_until(delivered, "the owner registers again and receives")
    messages = [record.message for record in caplog.records]
    assert metrics.redis_outages == sum("unreachable" in m for m in messages) >= 1
    assert metrics.redis_reconnects == sum("reachable again" in m for m in messages)
    assert metrics.redis_reconnects == metrics.redis_outages


async def test_channel_full_is_counted_for_local_and_remote_channels(
    metrics: _metrics.Metrics,
    make_layer: Callable[..., RedisChannelLayer],  # noqa: F811
) -> None:
    owner, sender = make_layer(capacity=1), make_layer(capacity=1)
    channel = await owner.new_channel()
    await owner.send(channel, {"type": "one"})
    with pytest.raises(ChannelFull):
        await owner.send(channel, {"type": "two"})  # this process's channel
    shared = "jobs.metrics"
    await sender.send(shared, {"type": "one"})
    with pytest.raises(ChannelFull):
        await sender.send(shared, {"type": "two"})  # a channel in Redis
    assert metrics.channel_full == 2
    assert metrics.limits["channel_capacity"] == 2
    assert sum(metrics.layer_send.counts) == 4
    await sender.flush()
