"""Drive an ASGI application from a test, message by message.

Theory of operation
-------------------
:class:`ApplicationCommunicator` starts the application as a task on first
use (in an empty :mod:`contextvars` context, as a server would) and connects
it to two :class:`asyncio.Queue`: the application's ``receive`` is
``input_queue.get`` and its ``send`` is ``output_queue.put``. What the test
sends with :meth:`~ApplicationCommunicator.send_input` is what ``receive``
returns; :meth:`~ApplicationCommunicator.receive_output` returns what the
application sent.

The contract is asgiref's ``asgiref.testing.ApplicationCommunicator`` (which
Channels re-exports), kept observable detail for detail:

- every method first re-raises how the application ended, if it has: its
  exception, or :class:`asyncio.CancelledError` if it was cancelled;
- concurrent ``receive_output`` calls are served first in, first out, each as
  soon as a message is there (they wait in the queue's own ``get``);
- a ``receive_output`` that times out cancels the application, waits for it,
  then raises :class:`TimeoutError` (or what the application raised instead);
- ``wait`` awaits the application task itself, so a timeout (or the test
  task being cancelled) cancels the application, and a cancellation is not
  reported: ``wait`` then returns normally.

One addition: a ``receive_output`` that is waiting when the application ends
stops waiting at once, with the outcome it would have had at its timeout
(the application's exception, ``CancelledError``, or ``TimeoutError``),
since nothing can arrive any more.

As Channels' communicators do, sending and receiving suspend the database
connection clean-ups of :mod:`tidings.db`, which would close the connection
that Django's ``TestCase`` keeps inside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Coroutine
from typing import Any, cast

from asgiref.compatibility import guarantee_single_callable

from tidings._types import ASGIApp, Message, Scope
from tidings.db import keeping_connections

__all__ = ["ApplicationCommunicator"]


class ApplicationCommunicator:
    """Run one instance of an ASGI application with a given scope, under test control.

    Args:
        application: the ASGI application (ASGI 2 double-callables are accepted).
        scope: the connection scope to call it with.
    """

    # A class default too: __del__ runs even when a subclass's __init__ raised early.
    _future: asyncio.Task[None] | None = None

    def __init__(self, application: Any, scope: Scope) -> None:
        self._future = None
        self.application: ASGIApp = cast(
            ASGIApp,
            guarantee_single_callable(application),  # type: ignore[no-untyped-call]
        )
        self.scope = scope
        self._input_queue: asyncio.Queue[Message] | None = None
        self._output_queue: asyncio.Queue[Message] | None = None

    # The queues and the task are made on first use, inside the test's event loop.

    @property
    def input_queue(self) -> asyncio.Queue[Message]:
        """Messages waiting for the application's ``receive``."""
        if self._input_queue is None:
            self._input_queue = asyncio.Queue()
        return self._input_queue

    @property
    def output_queue(self) -> asyncio.Queue[Message]:
        """Messages the application has sent and the test has not yet received."""
        if self._output_queue is None:
            self._output_queue = asyncio.Queue()
        return self._output_queue

    @property
    def future(self) -> asyncio.Task[None]:
        """The task running the application (started on first access)."""
        if self._future is None:
            application = cast(
                "Coroutine[Any, Any, None]",
                self.application(self.scope, self.input_queue.get, self.output_queue.put),
            )
            # A fresh context: the application must not see the test's context vars.
            self._future = asyncio.create_task(application, context=contextvars.Context())
        return self._future

    def _raise_if_ended(self) -> None:
        """Re-raise the application's exception, or ``CancelledError`` if it was cancelled."""
        if self.future.done():
            self.future.result()

    async def _cancel_and_wait(self) -> None:
        """Cancel the application if it still runs, and wait until it has ended."""
        future = self.future
        if not future.done():
            future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await future

    async def wait(self, timeout: float | None = 1) -> None:
        """Wait for the application to end; re-raise its exception, if any.

        After ``timeout`` seconds the application is cancelled, and ``wait``
        returns normally once it has ended (check ``future.cancelled()`` to
        tell), as asgiref's does. A cancelled application is not an error here.

        Raises:
            Exception: the application's own exception.
        """
        future = self.future
        try:
            async with asyncio.timeout(timeout):
                # Awaiting the task itself: a timeout that cancels this task
                # cancels the application too, and is then absorbed here.
                with contextlib.suppress(asyncio.CancelledError):
                    await future
        finally:
            await self._cancel_and_wait()

    def stop(self, exceptions: bool = True) -> None:
        """Cancel the application if it is running; else re-raise how it ended.

        Args:
            exceptions: re-raise the application's exception (or
                ``CancelledError``) if it has already ended.
        """
        future = self._future
        if future is None:
            return
        if not future.done():
            future.cancel()
        elif exceptions:
            future.result()

    def __del__(self) -> None:
        try:
            self.stop(exceptions=False)
        except RuntimeError:
            pass  # the event loop is already closed

    async def send_input(self, message: Message) -> None:
        """Give ``message`` to the application's ``receive``.

        Raises:
            Exception: how the application ended, if it has (see the module docstring).
        """
        self._raise_if_ended()
        with keeping_connections():
            await self.input_queue.put(message)

    async def receive_output(self, timeout: float | None = 1) -> Message:
        """Return the next message the application sent, waiting up to ``timeout`` seconds.

        Concurrent calls are served in the order they were made.

        Raises:
            Exception: the application's own exception, if it failed (before
                or during the wait).
            asyncio.CancelledError: the application was cancelled.
            TimeoutError: nothing arrived within ``timeout`` seconds (the
                application is then cancelled), or the application ended
                without sending anything more.
        """
        self._raise_if_ended()
        future = self.future
        queue = self.output_queue
        if not queue.empty():
            # Same as the queue's get() would do, with no timer to set up.
            return queue.get_nowait()
        waiting = True
        app_ended = False
        with keeping_connections():
            try:
                async with asyncio.timeout(timeout) as deadline:

                    def end_wait(_: object) -> None:
                        # Nothing can arrive once the application has ended.
                        nonlocal app_ended
                        if waiting and not deadline.expired():
                            app_ended = True
                            deadline.reschedule(asyncio.get_running_loop().time())

                    future.add_done_callback(end_wait)
                    try:
                        return await queue.get()
                    finally:
                        waiting = False
                        future.remove_done_callback(end_wait)
            except TimeoutError:
                if app_ended and not queue.empty():
                    return queue.get_nowait()
                if future.done():
                    future.result()
                else:
                    await self._cancel_and_wait()
                raise

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> bool:
        """Return whether the application sends nothing for ``timeout`` seconds.

        Polls every ``interval`` seconds; a message that arrives is left in
        the queue for :meth:`receive_output`.

        Raises:
            Exception: how the application ended, if it had before the call.
        """
        self._raise_if_ended()
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.output_queue.empty():
                return False
            await asyncio.sleep(interval)
        return self.output_queue.empty()
