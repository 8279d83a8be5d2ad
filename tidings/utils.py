"""Small helpers for consumers: waiting on several message sources at once.

Theory of operation
-------------------
A consumer listens on two sources at once: the ASGI ``receive`` callable and
its channel-layer channel. Channels does this by creating a fresh task per
message and waiting for the first one to finish. :class:`MessageMux` does it
with one long-lived *pump* task per source, created once, and a demand rule:

* a pump fetches the next message from its source only after the consumer
  has finished handling the previous message from that same source;
* :meth:`MessageMux.get` first re-arms the source of the message it handed
  out last time, then waits for any source to have a message ready.

So at most one message per source is in flight, nothing is read from a
source while one of its own messages is being handled (a handler that stops
the consumer leaves that source's next message where it was), and messages
are handed out in the order they arrived. Another source's pump may be
waiting in that source meanwhile and deliver one message, which ``get``
returns next; if the consumer stops instead, that one message is dropped.
With a single source there are no pump tasks at all: ``get`` awaits the
source directly.

*Polled sources.* A source that can be polled (a Tidings layer's
``ChannelSource`` for a process-specific channel: ``poll()`` takes a waiting
message without blocking, ``watch(future)`` resolves a future when one
arrives) gets no pump: ``get`` polls it, and when nothing is ready waits on
one future that the pumps and every polled source's ``watch`` can resolve.
A layer message then costs one task switch (the consumer's) instead of three
(pump wake, consumer wake, pump re-arm), which is most of the cost of a
group message fanned out to many local consumers. Polling takes a message
only when the consumer asks for the next one, so the demand rule holds for
polled sources too, and a consumer that stops leaves their messages queued.

An exception raised by a source is re-raised from ``get``. Closing the mux
cancels the pumps and waits for them; a pump cancelled inside its source's
``receive`` relies on that source being cancellation-safe (``asyncio.Queue``
is, and so are the Tidings channel layers).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

from tidings._types import Message

__all__ = ["MessageMux", "MessageSource", "await_many_dispatch"]

#: A zero-argument coroutine function returning one message (ASGI ``receive``).
MessageSource = Callable[[], Awaitable[Message]]


class MessageMux:
    """Wait on several message sources at once without a task per message.

    Use it as an async context manager so the pumps are always cleaned up::

        async with MessageMux([receive, channel_receive]) as mux:
            while True:
                message = await mux.get()
                await handle(message)

    Args:
        sources: zero-argument async callables, each returning one message.
            A source with a non-None ``poll`` attribute (a
            :class:`~tidings.layers.ChannelSource` of a Tidings layer) is
            polled instead of pumped: see the module docstring.
    """

    def __init__(self, sources: Sequence[MessageSource]) -> None:
        if not sources:
            raise ValueError("MessageMux needs at least one message source")
        self._sources = list(sources)
        self._polled: list[_Polled] = []
        self._pumped: list[int] = []
        if len(self._sources) > 1:
            for index, source in enumerate(self._sources):
                if getattr(source, "poll", None) is not None:
                    self._polled.append(cast(_Polled, source))
                else:
                    self._pumped.append(index)
        # Index of the source whose message ``get`` returned last, not yet re-armed.
        self._pending_rearm: int | None = None
        self._ready: collections.deque[tuple[int, Message | BaseException]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._demand = [asyncio.Event() for _ in self._sources]
        self._pumps: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> MessageMux:
        for index in self._pumped:
            self._demand[index].set()
            self._pumps.append(asyncio.create_task(self._pump(index)))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the pumps and wait until they have stopped."""
        pumps, self._pumps = self._pumps, []
        for pump in pumps:
            pump.cancel()
        if pumps:
            # return_exceptions: the pumps' CancelledError is expected. If *we* are
            # cancelled while waiting, gather raises CancelledError here as it should.
            await asyncio.gather(*pumps, return_exceptions=True)

    async def get(self) -> Message:
        """Return the next message from any source.

        Messages of one source come in their order; pumped sources' messages that
        are ready are handed out before polled ones.

        Raises:
            Exception: whatever a source raised while fetching a message.
        """
        if len(self._sources) == 1:
            return await self._sources[0]()
        if self._pending_rearm is not None:
            self._demand[self._pending_rearm].set()
            self._pending_rearm = None
        polled = self._polled
        while True:
            if self._ready:
                index, item = self._ready.popleft()
                if isinstance(item, BaseException):
                    # The failed pump has exited; don't re-arm it.
                    raise item
                self._pending_rearm = index
                return item
            for source in polled:
                message = source.poll()
                if message is not None:
                    return message
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                for source in polled:
                    source.watch(waiter)
                await waiter
            finally:
                self._waiter = None
                for source in polled:
                    source.unwatch(waiter)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _pump(self, index: int) -> None:
        source = self._sources[index]
        demand = self._demand[index]
        while True:
            await demand.wait()
            demand.clear()
            try:
                message = await source()
            except Exception as exc:
                self._ready.append((index, exc))
                self._wake()
                return
            self._ready.append((index, message))
            self._wake()


class _Polled(Protocol):
    """A source that can also be polled (``ChannelSource`` of a Tidings layer)."""

    def __call__(self) -> Awaitable[Message]: ...
    def poll(self) -> Message | None: ...
    def watch(self, waiter: asyncio.Future[None]) -> None: ...
    def unwatch(self, waiter: asyncio.Future[None]) -> None: ...


async def await_many_dispatch(
    consumer_callables: Sequence[MessageSource],
    dispatch: Callable[[Message], Awaitable[None]],
) -> None:
    """Feed messages from several sources to ``dispatch``, one at a time, forever.

    Channels' helper of the same name, built on :class:`MessageMux`: each
    message is dispatched (and awaited) before the next one from the same
    source is read. Returns only by an exception from a source or from
    ``dispatch`` (for example :class:`~tidings.exceptions.StopConsumer`).
    """
    async with MessageMux(consumer_callables) as mux:
        while True:
            await dispatch(await mux.get())
