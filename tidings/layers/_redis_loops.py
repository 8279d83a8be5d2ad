"""Redis clients per event loop, closed when their loop shuts down.

redis.asyncio connections belong to the event loop that opened them: used
from another loop they fail ("attached to a different loop", "Event loop is
closed"). A channel layer, though, is one object that Django code calls
from many loops: the server's, and a fresh one for every
``async_to_sync(layer.group_send)`` from a sync view. So
:class:`LoopClients` keeps one set of clients per loop.

Each loop's clients come with a *guard* task that waits forever. When the
loop shuts down, ``asyncio.run`` (and ``asyncio.Runner``, which
``async_to_sync`` and pytest-asyncio use) cancels every task and lets them
finish; the guard then closes its loop's clients, so no connection outlives
its loop. Entries of loops that closed otherwise are dropped on the next
lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from tidings.layers._redis_hosts import HostClients, HostSpec

__all__ = ["LoopClients", "LoopState", "cancel_task"]


class LoopState:
    """The clients of one event loop, one ``HostClients`` per host."""

    def __init__(self, hosts: list[HostClients]) -> None:
        self.hosts = hosts
        self.closed = False
        self.guard: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        """Close every client; the state is unusable afterwards."""
        self.closed = True
        for host in self.hosts:
            with contextlib.suppress(Exception):
                await host.aclose()


class LoopClients:
    """Per-event-loop clients for a list of hosts (see the module docstring)."""

    def __init__(self, specs: Sequence[HostSpec]) -> None:
        self._specs = list(specs)
        self._lock = threading.Lock()
        self._states: dict[asyncio.AbstractEventLoop, LoopState] = {}

    def get(self) -> LoopState:
        """Return the running loop's clients, creating them and their guard on first use."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is not None and not state.closed:
            return state
        with self._lock:
            state = self._states.get(loop)
            if state is None or state.closed:
                for other in [other for other in self._states if other.is_closed()]:
                    del self._states[other]
                state = LoopState([spec.connect() for spec in self._specs])
                self._states[loop] = state
                state.guard = loop.create_task(self._guard(loop, state))
        return state

    async def _guard(self, loop: asyncio.AbstractEventLoop, state: LoopState) -> None:
        """Wait until this loop shuts down (cancellation), then close its clients."""
        try:
            await asyncio.Event().wait()
        finally:
            with self._lock:
                if self._states.get(loop) is state:
                    del self._states[loop]
            await state.aclose()

    async def aclose(self) -> None:
        """Close the clients of every loop.

        Those of the running loop are closed before this returns; other live
        loops close theirs as soon as they run (their guards are cancelled).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            states, self._states = self._states, {}
        waits: list[asyncio.Task[None]] = []
        for state_loop, state in states.items():
            if state.guard is None:
                if state_loop is loop:
                    await state.aclose()
                continue
            cancel_task(state.guard)
            if state_loop is loop:
                waits.append(state.guard)
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)


def cancel_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` from any thread or loop (nothing if its loop has closed)."""
    loop = task.get_loop()
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.cancel()
    else:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)
