"""Small helpers for consumers: waiting on several message sources at once.

Theory of operation
-------------------
A consumer listens on two sources at once: the ASGI ``receive`` callable and
its channel-layer channel. Channels does this by creating a fresh task per
message and waiting for the first one to finish. :class:`MessageMux` does it
with no task at all, and a demand rule:

* a source is called for its next message only after the consumer has
  finished handling the previous message from that same source;
* :meth:`MessageMux.get` first re-arms the source of the message it handed
  out last time, then waits for any source to have a message ready.

So at most one message per source is in flight, nothing is read from a
source while one of its own messages is being handled (a handler that stops
the consumer leaves that source's next message where it was), and messages
are handed out in the order they arrived. Another source's call may be
waiting meanwhile and deliver one message, which ``get`` returns next; if the
consumer stops instead, that one message is dropped. With a single source
``get`` awaits the source directly.

*Pumped sources* (``receive``): the mux calls the source and runs the
coroutine it returns by hand, the way a task would (``_Pump``): each step runs
it to the future it waits on, and that future's done-callback wakes the mux,
which steps it again the next time it looks. So an idle source holds just its
suspended coroutine (no task, no queue, no event), a client message costs one
task switch (the consumer's), and the source's code runs in the consumer's
task (``asyncio.current_task()`` there is the consumer). A source that was
woken is stepped before polled sources are polled, and a re-armed one is
called again only after them, so a client that floods cannot starve the
layer.

*Polled sources.* A source that can be polled (a Tidings layer's
``ChannelSource`` for a process-specific channel: ``poll()`` takes a waiting
message without blocking, ``watch(future)`` resolves a future when one
arrives) is never called: ``get`` polls it, and when nothing is ready waits on
one future that the pumped sources' callbacks and every polled source's
``watch`` can resolve. Polling takes a message only when the consumer asks
for the next one, so the demand rule holds for polled sources too, and a
consumer that stops leaves their messages queued.

A consumer that keeps one mux for the life of a connection calls
``get_or_wait`` itself (a message, or a future to await), so that no coroutine
of ``get`` is kept alive while it is idle; it costs one call per message and
one per wait. The hot path looks at no pump while none is woken, ready or armed,
and at a lone polled source without a loop.

An exception raised by a source is re-raised from ``get``, and that source is
not called again. Closing the mux ends the calls in progress as cancelling
their task would (the future they wait on is cancelled and ``CancelledError``
thrown into them), which relies on the source being cancellation-safe
(``asyncio.Queue`` is, and so are the Tidings server and channel layers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, Literal, Protocol, cast, overload

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

    # One per connection of a consumer: slots, and nothing made before it is needed.
    __slots__ = (
        "_armed",
        "_flagged",
        "_lone",
        "_pending_rearm",
        "_polled",
        "_pumps",
        "_single",
        "_stamp",
        "_waiter",
    )

    def __init__(self, sources: Sequence[MessageSource]) -> None:
        if not sources:
            raise ValueError("MessageMux needs at least one message source")
        self._single: MessageSource | None = sources[0] if len(sources) == 1 else None
        polled: list[_Polled] = []
        pumps: list[_Pump] = []
        if self._single is None:
            for source in sources:
                if getattr(source, "poll", None) is not None:
                    polled.append(cast(_Polled, source))
                else:
                    pumps.append(_Pump(self, source))
        self._polled = tuple(polled)
        # The polled source when there is just one (a consumer's channel): the hot
        # path calls it without a loop (a tuple iterator per loop costs 1 % of a
        # delivered message).
        self._lone: _Polled | None = polled[0] if len(polled) == 1 else None
        self._pumps = tuple(pumps)
        # How many pumps are armed (may be called again): while none is, get_nowait()
        # does not look for them.
        self._armed = len(pumps)
        # The pump whose message ``get`` returned last, not yet re-armed.
        self._pending_rearm: _Pump | None = None
        # Counts deliveries, so ready messages of several pumps go out in arrival order.
        self._stamp = 0
        # How many pumps are woken or hold a result: while none is (a consumer
        # waiting for its client while layer messages flow), get_nowait() looks at
        # no pump at all.
        self._flagged = 0
        self._waiter: asyncio.Future[None] | None = None

    async def __aenter__(self) -> MessageMux:
        # The first calls start at once (as the pump tasks of old did), so what a
        # source has ready now comes before polled sources' messages.
        for pump in self._pumps:
            pump.begin()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the sources' calls in progress (as cancelling them would)."""
        for pump in self._pumps:
            pump.close()
        if self._pumps:
            # Cancelled tasks (the pump tasks of old, Channels' task per source) end on
            # a later turn of the loop, so an application ended a turn after its last
            # send; tests written against that (reading the output before the
            # application's error) keep working.
            await asyncio.sleep(0)

    async def get(self) -> Message:
        """Return the next message from any source.

        Messages of one source come in their order; pumped sources' messages that
        are ready are handed out before polled ones.

        Raises:
            Exception: whatever a source raised while fetching a message.
        """
        if self._single is not None:
            return await self._single()
        while True:
            item = self.get_or_wait()
            if not isinstance(item, asyncio.Future):
                return item
            try:
                await item
            except BaseException:
                self.end_wait(item)
                raise

    def get_nowait(self) -> Message | None:
        """Return the next message if one is ready, else None.

        :meth:`get` without its wait, for a caller that waits itself (a consumer
        does, to keep no coroutine of ``get`` alive while it is idle)::

            while (message := mux.get_nowait()) is None:
                waiter = mux.start_wait()
                try:
                    await waiter
                finally:
                    mux.end_wait(waiter)

        Raises:
            TypeError: the mux has a single source (it can only be awaited).
            Exception: whatever a source raised while fetching a message.
        """
        if self._single is not None:
            raise TypeError("a MessageMux of one source has no get_nowait(): await get()")
        return self.get_or_wait(False)

    @overload
    def get_or_wait(self) -> Message | asyncio.Future[None]: ...
    @overload
    def get_or_wait(self, start: Literal[False]) -> Message | None: ...
    def get_or_wait(self, start: bool = True) -> Message | asyncio.Future[None] | None:
        """Return the next message if one is ready, else a future to wait on.

        The future is :meth:`start_wait`'s, and the next call of this method
        ends that wait (:meth:`end_wait`), so that a consumer's loop is::

            while True:
                item = mux.get_or_wait()
                if isinstance(item, asyncio.Future):
                    try:
                        await item
                    except BaseException:
                        mux.end_wait(item)
                        raise
                else:
                    await handle(item)

        One call per message and one per wait, the least a delivered message
        costs. With ``start=False`` it is :meth:`get_nowait` (None when nothing
        is ready, and a wait begun with :meth:`start_wait` is left alone).

        Raises:
            TypeError: the mux has a single source (it can only be awaited).
            Exception: whatever a source raised while fetching a message.
        """
        if self._single is not None:
            raise TypeError("a MessageMux of one source has no get_or_wait(): await get()")
        lone = self._lone
        if start and (waiter := self._waiter) is not None:
            # end_wait() inlined: the wait the last call began is over.
            self._waiter = None
            if lone is not None:
                lone.unwatch(waiter)
            else:
                self._unwatch_all(waiter)
        if self._pending_rearm is not None:
            self._pending_rearm.armed = True
            self._armed += 1
            self._pending_rearm = None
        # Calls woken since the last look first (in the order they were woken), then
        # polled sources, then new calls: a client that floods cannot starve the layer.
        if self._flagged:
            while (woken := self._first(_WOKEN)) is not None:
                woken.step()
            if self._flagged:
                message = self._take_ready()
                if message is not None:
                    return message
        message = lone.poll() if lone is not None else self._poll_all()
        if message is not None:
            return message
        if self._armed:
            for pump in self._pumps:
                if pump.armed:
                    pump.begin()
            if self._flagged:
                message = self._take_ready()
                if message is not None:
                    return message
        if not start:
            return None
        # start_wait() inlined.
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if lone is not None:
            lone.watch(waiter)
        else:
            for source in self._polled:
                source.watch(waiter)
        return waiter

    def _poll_all(self) -> Message | None:
        for source in self._polled:
            message = source.poll()
            if message is not None:
                return message
        return None

    def _unwatch_all(self, waiter: asyncio.Future[None]) -> None:
        for source in self._polled:
            source.unwatch(waiter)

    def _take_ready(self) -> Message | None:
        ready = self._first(_READY)
        if ready is None:
            return None
        item = ready.item
        ready.item = _NOTHING
        self._flagged -= 1
        if isinstance(item, BaseException):
            # That source failed: it is never called again.
            raise item
        self._pending_rearm = ready
        return cast(Message, item)

    def start_wait(self) -> asyncio.Future[None]:
        """Return a future that resolves when :meth:`get_nowait` may have a message.

        Always pair it with :meth:`end_wait`, whatever happens to the wait.
        """
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        for source in self._polled:
            source.watch(waiter)
        return waiter

    def end_wait(self, waiter: asyncio.Future[None]) -> None:
        """End a wait begun with :meth:`start_wait`."""
        if self._waiter is waiter:
            self._waiter = None
        self._unwatch_all(waiter)

    def _first(self, which: int) -> _Pump | None:
        """The pump that became ``_WOKEN`` or ``_READY`` first, if any is."""
        first: _Pump | None = None
        for pump in self._pumps:
            state = _READY if pump.item is not _NOTHING else _WOKEN if pump.woken else 0
            if state == which and (first is None or pump.stamp < first.stamp):
                first = pump
        return first

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_NOTHING: Final = object()
"""What a pump holds when it holds no message."""
_WOKEN: Final = 1
_READY: Final = 2


class _Pump:
    """One pumped source, its call driven by hand: no task of its own.

    :meth:`begin` calls the source and :meth:`step` runs the coroutine it
    returned up to its next ``await``, as a task would: the coroutine yields the
    future it waits on, and the pump asks that future to call it back when done
    (``add_done_callback(self)``), which wakes the mux; the mux then steps it
    again. When the coroutine returns, the pump holds its message (or the
    exception it raised) until the mux hands it out. So a pump waiting in its
    source holds the source's coroutine and nothing else, and a message from it
    costs one task switch (the consumer's), not two.

    The steps run in the task that calls ``get`` (the consumer's), so inside the
    source ``asyncio.current_task()`` is that task. :meth:`close` ends a call in
    progress as cancelling its task would: the future it waits on is cancelled
    and ``CancelledError`` is thrown into it.
    """

    __slots__ = ("armed", "blocked_on", "coro", "item", "mux", "source", "stamp", "woken")

    def __init__(self, mux: MessageMux, source: MessageSource) -> None:
        self.mux = mux
        self.source = source
        self.armed = True
        self.coro: Coroutine[Any, Any, Message] | None = None
        self.blocked_on: asyncio.Future[Any] | None = None
        self.woken = False
        self.item: object = _NOTHING
        self.stamp = 0

    def begin(self) -> None:
        """Start the next call of the source (the previous message was handled)."""
        if self.armed:
            self.armed = False
            self.mux._armed -= 1
        awaitable = self.source()
        self.coro = (
            awaitable
            if isinstance(awaitable, Coroutine)
            else _await(awaitable)  # any other awaitable: run it inside a coroutine
        )
        self.step()

    def __call__(self, future: object) -> None:
        """The future the call waits on is done (or a bare ``yield`` is over)."""
        self.blocked_on = None
        self.woken = True
        mux = self.mux
        mux._flagged += 1
        mux._stamp += 1
        self.stamp = mux._stamp
        mux._wake()

    def step(self) -> None:
        """Run the call up to its next wait; keep its result if it returned."""
        coro = self.coro
        assert coro is not None
        if self.woken:
            self.woken = False
            self.mux._flagged -= 1
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            self._finish(stop.value)
            return
        except Exception as exc:
            self._finish(exc)
            return
        except BaseException:
            self.coro = None
            raise
        self._park(coro, yielded)

    def _park(self, coro: Coroutine[Any, Any, Message], yielded: object) -> None:
        loop = asyncio.get_running_loop()
        if yielded is None:
            # A bare yield (``await asyncio.sleep(0)``): again on the next loop turn.
            loop.call_soon(self, None)
            return
        if getattr(yielded, "_asyncio_future_blocking", False):
            future = cast("asyncio.Future[Any]", yielded)
            if future.get_loop() is loop:
                future._asyncio_future_blocking = False
                future.add_done_callback(self)
                self.blocked_on = future
                return
        # What a task does with anything else: the call fails.
        self.close()  # (nothing to wait for: it awaited nothing we could cancel)
        self._finish(RuntimeError(f"message source awaited {yielded!r}, not a future of its loop"))

    def _finish(self, item: Message | BaseException) -> None:
        self.coro = None
        self.item = item
        mux = self.mux
        mux._flagged += 1
        mux._stamp += 1
        self.stamp = mux._stamp

    def close(self) -> bool:
        """End the call in progress, if any, as cancelling its task would; say if any."""
        coro, self.coro = self.coro, None
        if coro is None:
            return False
        future, self.blocked_on = self.blocked_on, None
        if future is not None:
            future.remove_done_callback(self)
            future.cancel()
        try:
            coro.throw(asyncio.CancelledError())
        except (asyncio.CancelledError, StopIteration):
            return True
        except Exception:
            return True  # what the source raised on its way out no longer matters
        try:
            coro.close()  # it awaited again after the cancellation: stop it for good
        except RuntimeError:
            pass
        return True


async def _await(awaitable: Awaitable[Message]) -> Message:
    return await awaitable


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
