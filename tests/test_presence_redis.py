"""Presence over the Redis layer, across real processes (one of them SIGKILLed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from redis import Redis

from tidings import presence
from tidings.layers import get_channel_layer

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["private_redis_url"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def private_redis_url() -> Iterator[str]:
    """A redis-server of this test's own on a free port, stopped (by its PID) afterwards."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        server.terminate()
        server.wait(10)


FAST = {"HEARTBEAT_INTERVAL": 0.2, "TIMEOUT": 1.0, "BATCH_WINDOW": 0.02, "SYNC_WAIT": 2.0}
BOUND = FAST["TIMEOUT"] + FAST["HEARTBEAT_INTERVAL"]

CHILD = """
import asyncio, json, os, sys
import django

django.setup()
from django.conf import settings

url, prefix, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
settings.CHANNEL_LAYERS = {"default": {
    "BACKEND": "tidings.layers.redis.RedisChannelLayer",
    "CONFIG": {"hosts": [url], "prefix": prefix},
}}
settings.TIDINGS_PRESENCE = json.loads(sys.argv[5])

from tidings import presence
from tidings.layers import get_channel_layer


async def main():
    layer = get_channel_layer()
    for number in range(count):
        channel = await layer.new_channel()
        await presence.track("room", f"{name}-{number}", channel, meta={"process": name})
    print("tracked", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
"""


@pytest.fixture
def redis_presence(private_redis_url: str) -> Iterator[tuple[str, str]]:
    """The Redis layer as the default alias, under a key prefix of this test's own."""
    prefix = f"presence-{secrets.token_hex(4)}"
    config = {"hosts": [private_redis_url], "prefix": prefix}
    backend = {"BACKEND": "tidings.layers.redis.RedisChannelLayer", "CONFIG": config}
    with override_settings(CHANNEL_LAYERS={"default": backend}, TIDINGS_PRESENCE=FAST):
        yield private_redis_url, prefix


@contextlib.asynccontextmanager
async def tracking_process(
    url: str, prefix: str, name: str, count: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process that tracks ``count`` members of "room" and heartbeats until killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "tests.django_settings"}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        url,
        prefix,
        name,
        str(count),
        json.dumps(FAST),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"tracked\n"
        yield child
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


async def eventually(check: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Wait (bounded) until ``check()`` passes; re-raise its last failure at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


def counts_by_process(listed: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in listed.values():
        for meta in entry["metas"]:
            counts[meta["process"]] = counts.get(meta["process"], 0) + 1
    return counts


async def test_two_processes_and_one_sigkilled(redis_presence: tuple[str, str]) -> None:
    url, prefix = redis_presence
    layer = get_channel_layer()
    assert layer is not None
    try:
        async with (
            tracking_process(url, prefix, "doomed", 600) as doomed,
            tracking_process(url, prefix, "survivor", 5),
        ):
            # This process starts last: it learns both others' states (600 entries
            # arrive in two parts) before its first list returns.
            assert counts_by_process(await presence.list("room")) == {"doomed": 600, "survivor": 5}
            watcher = await layer.new_channel()
            await presence.subscribe("room", watcher)
            mine = await layer.new_channel()
            await presence.track("room", "here", mine, meta={"process": "here"})

            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()

            async def converged() -> None:
                listed = await presence.list("room")
                assert counts_by_process(listed) == {"survivor": 5, "here": 1}

            # The documented bound, plus slack for a loaded machine (2 cores, shared).
            await eventually(converged, timeout=BOUND + 4.0)

            left: set[str] = set()

            async def diffs_told() -> None:
                while len(left) < 600:
                    diff = await asyncio.wait_for(layer.receive(watcher), 1)
                    left.update(diff["leaves"])
                assert left == {f"doomed-{number}" for number in range(600)}

            await eventually(diffs_told, timeout=5)
    finally:
        await presence.aclose()
        await layer.close()
