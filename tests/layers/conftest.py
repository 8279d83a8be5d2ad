"""Fixtures of the channel layer tests, and how a backend joins the conformance suite.

``test_conformance.py`` holds one suite that every channel layer backend must
pass. Its tests never build a layer themselves: they ask for ``layer`` (a
fresh layer with default options), ``layer_factory`` (``make(**options)``) or
``backend`` (the whole ``LayerBackend``), and run once per backend listed in
``LAYER_BACKENDS``.

The fixture contract
--------------------
To add a backend (Redis, say):

1. Write a fixture, in this file, that returns (or yields) a ``LayerBackend``:

   - ``name``: a short id for test names (``"redis"``);
   - ``make(**options)``: a new layer. ``options`` are the backend-neutral
     keyword arguments ``expiry``, ``group_expiry``, ``capacity`` and
     ``channel_capacity``; add whatever else the backend needs (a server URL,
     a unique key prefix per test) inside ``make``. Layers made by one
     ``LayerBackend`` must not see another test's messages;
   - ``advance(seconds)``: make at least ``seconds`` of layer time pass. A
     backend with an injectable clock moves it; one whose expiry runs on a
     server clock really waits (``asyncio.sleep``);
   - ``settle()``: return once a ``receive()`` task started just before has
     had the chance to reach its waiting state (it must be safe to return
     early: tests stay correct, only less sharp);
   - clean-up: after the test, the fixture flushes and closes every layer
     ``make`` built (fixture teardown, after its ``yield``).

2. Add ``"<name>": BackendSpec(fixture="<fixture name>", fake_clock=...)`` to
   ``LAYER_BACKENDS``. ``fake_clock=False`` marks the tests that wait for
   expiry ``slow`` for that backend, since they then take real seconds.

Tests that only make sense for one backend go in its own test module.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from tidings.layers import BaseChannelLayer, InMemoryChannelLayer

__all__ = ["LAYER_BACKENDS", "BackendSpec", "FakeClock", "LayerBackend"]


@dataclass(frozen=True)
class LayerBackend:
    """What the conformance suite needs from a backend (see the module docstring)."""

    name: str
    make: Callable[..., BaseChannelLayer]
    advance: Callable[[float], Awaitable[None]]
    settle: Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class BackendSpec:
    """An entry of ``LAYER_BACKENDS``: which fixture builds the backend, and how time passes."""

    fixture: str
    fake_clock: bool
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


LAYER_BACKENDS: dict[str, BackendSpec] = {
    "inmemory": BackendSpec(fixture="inmemory_backend", fake_clock=True),
    "redis": BackendSpec(fixture="redis_backend", fake_clock=False),
    "redis-py": BackendSpec(fixture="redis_py_backend", fake_clock=False),
}


def _params(*, timed: bool) -> list[Any]:
    """Parameters over ``LAYER_BACKENDS``; ``timed`` marks real-clock backends slow."""
    params = []
    for name, spec in LAYER_BACKENDS.items():
        marks = list(spec.marks)
        if timed and not spec.fake_clock:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(spec.fixture, id=name, marks=marks))
    return params


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh ``FakeClock``."""
    return FakeClock()


@pytest.fixture
def inmemory_backend(fake_clock: FakeClock) -> LayerBackend:
    """The in-memory layer, on a fake clock shared by the layers it makes."""

    def make(**options: Any) -> BaseChannelLayer:
        layer = InMemoryChannelLayer(**options)
        layer._mailboxes.clock = fake_clock
        return layer

    async def advance(seconds: float) -> None:
        fake_clock.advance(seconds)

    async def settle() -> None:
        # A task started with create_task() parks on its first await; a few
        # passes of the loop are more than enough, and no time passes.
        for _ in range(3):
            await asyncio.sleep(0)

    return LayerBackend(name="inmemory", make=make, advance=advance, settle=settle)


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[LayerBackend]:
    """The Redis layer on the run's private redis-server, under a key prefix of its own."""
    async for backend in _redis_backend("redis", redis_url):
        yield backend


@pytest.fixture
async def redis_py_backend(redis_url: str) -> AsyncIterator[LayerBackend]:
    """The Redis layer talking through redis-py, as it does for hosts the lean client can't serve.

    ``health_check_interval`` is a redis-py option the lean client does not
    know, so the host goes through redis-py (as Sentinel, Cluster and TLS do).
    """
    host = {"address": redis_url, "health_check_interval": 30}
    async for backend in _redis_backend("redis-py", host):
        yield backend


async def _redis_backend(name: str, host: object) -> AsyncIterator[LayerBackend]:
    from tidings.layers.redis import RedisChannelLayer

    prefix = f"test-{secrets.token_hex(6)}"
    made: list[RedisChannelLayer] = []

    def make(**options: Any) -> BaseChannelLayer:
        layer = RedisChannelLayer([host], prefix=prefix, **options)
        made.append(layer)
        return layer

    async def advance(seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def settle() -> None:
        # A receive on a local channel parks on its first await; give it a few passes.
        for _ in range(3):
            await asyncio.sleep(0)

    yield LayerBackend(name=name, make=make, advance=advance, settle=settle)
    for layer in made:
        await layer.flush()
        await layer.close()


@pytest.fixture(params=_params(timed=False))
def backend(request: pytest.FixtureRequest) -> LayerBackend:
    """Each backend of ``LAYER_BACKENDS`` in turn."""
    result: LayerBackend = request.getfixturevalue(request.param)
    return result


@pytest.fixture(params=_params(timed=True))
def timed_backend(request: pytest.FixtureRequest) -> LayerBackend:
    """Each backend in turn, for tests that let time pass (slow on real clocks)."""
    result: LayerBackend = request.getfixturevalue(request.param)
    return result


@pytest.fixture
def layer_factory(backend: LayerBackend) -> Callable[..., BaseChannelLayer]:
    """``make(**options)`` of each backend in turn."""
    return backend.make


@pytest.fixture
def layer(backend: LayerBackend) -> BaseChannelLayer:
    """A layer with default options, of each backend in turn."""
    return backend.make()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client of the run's redis-server, to look at keys."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()
