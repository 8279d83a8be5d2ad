"""Drive an ASGI application from a test, message by message.

Theory of operation
-------------------
:class:`ApplicationCommunicator` starts the application as a task on first
use (in an empty :mod:`contextvars` context, as a server would) and connects
it to two queues: what the test sends with :meth:`~ApplicationCommunicator.send_input`
is what the application's ``receive`` returns, and what the application
``send``s is what :meth:`~ApplicationCommunicator.receive_output` returns.

The API is asgiref's ``asgiref.testing.ApplicationCommunicator`` (which
Channels re-exports), with type hints. Whenever the application has already
ended with an exception, every method re-raises it, so a failing consumer
fails the test with its own traceback rather than with a timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any, cast

from asgiref.compatibility import guarantee_single_callable

from tidings._types import ASGIApp, Message, Scope

__all__ = ["ApplicationCommunicator"]


class ApplicationCommunicator:
    """Run one instance of an ASGI application with a given scope, under test control.

    Args:
        application: the ASGI application (ASGI 2 double-callables are accepted).
        scope: the connection scope to call it with.
    """

    def __init__(self, application: Any, scope: Scope) -> None:
        self.application: ASGIApp = cast(
            ASGIApp,
            guarantee_single_callable(application),  # type: ignore[no-untyped-call]
        )
        self.scope = scope
        self._future: asyncio.Task[None] | None = None
        self._input_queue: asyncio.Queue[Message] | None = None
        self._output_queue: asyncio.Queue[Message] | None = None
        self._output_waiter: asyncio.Future[None] | None = None

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
            # A fresh context: the application must not see the test's context vars.
            self._future = asyncio.create_task(self._run(), context=contextvars.Context())
        return self._future

    async def _run(self) -> None:
        await self.application(self.scope, self.input_queue.get, self._put_output)

    async def _put_output(self, message: Message) -> None:
        self.output_queue.put_nowait(message)
        self._wake_output()

    def _wake_output(self, _: object = None) -> None:
        waiter = self._output_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _raise_if_failed(self) -> None:
        if self.future.done() and not self.future.cancelled():
            self.future.result()

    async def _cancel_and_wait(self) -> None:
        if not self.future.done():
            self.future.cancel()
            try:
                await self.future
            except asyncio.CancelledError:
                pass

    async def wait(self, timeout: float = 1) -> None:
        """Wait for the application to end by itself; re-raise its exception, if any.

        If it is still running after ``timeout`` seconds it is cancelled and
        ``wait`` returns normally, as asgiref's does (check ``future.cancelled()``
        to tell the two apart).
        """
        try:
            done, _ = await asyncio.wait({self.future}, timeout=timeout)
        finally:
            if not self.future.done():
                self.future.cancel()
        if not done:
            await self._cancel_and_wait()
            return
        self._raise_if_failed()

    def stop(self, exceptions: bool = True) -> None:
        """Cancel the application if it is running; else re-raise its exception."""
        future = self._future
        if future is None:
            return
        if not future.done():
            future.cancel()
        elif exceptions and not future.cancelled():
            future.result()

    def __del__(self) -> None:
        if getattr(self, "_future", None) is None:
            return  # never started (or __init__ failed)
        try:
            self.stop(exceptions=False)
        except RuntimeError:
            pass  # the event loop is already closed

    async def send_input(self, message: Message) -> None:
        """Give ``message`` to the application's ``receive``."""
        self._raise_if_failed()
        await self.input_queue.put(message)

    async def receive_output(self, timeout: float = 1) -> Message:
        """Return the next message the application sent.

        Returns as soon as a message is there; if the application ends
        without sending one, raises at once instead of waiting out the timeout.

        Raises:
            Exception: the application's own exception, if it failed.
            TimeoutError: nothing arrived within ``timeout`` seconds (the
                application is then cancelled) or the application ended
                without sending anything more.
        """
        self._raise_if_failed()
        queue = self.output_queue
        if queue.empty():
            # Wait for the app's next send or its end, without a task per call:
            # test suites call this once per message.
            future = self.future
            waiter = self._output_waiter = asyncio.get_running_loop().create_future()
            future.add_done_callback(self._wake_output)
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                pass
            finally:
                future.remove_done_callback(self._wake_output)
                self._output_waiter = None
        if not queue.empty():
            return queue.get_nowait()
        self._raise_if_failed()
        await self._cancel_and_wait()
        raise TimeoutError("the application sent no message")

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> bool:
        """Return whether the application sends nothing for ``timeout`` seconds.

        Polls every ``interval`` seconds; a message that arrives is left in
        the queue for :meth:`receive_output`.
        """
        self._raise_if_failed()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.output_queue.empty():
                return False
            await asyncio.sleep(interval)
        return self.output_queue.empty()
