"""The background worker: serve named channel-layer channels with an application.

Theory of operation
-------------------
``manage.py runworker thumbnails emails`` runs a :class:`Worker` for the
channels ``thumbnails`` and ``emails``. Anything in the project can then
``await channel_layer.send("thumbnails", {"type": "resize", ...})`` and a
consumer routed by :class:`~tidings.routing.ChannelNameRouter` handles it.

Per channel, one *runner* task reads the layer and one *application
instance* (scope ``{"type": "channel", "channel": name}``) lives as long as
it keeps working, receiving the channel's messages through its ASGI
``receive``, as Channels' worker does. The runner reads the next message
from the layer only when the instance asks for one (it is awaiting
``receive``) or there is no instance: a worker never holds a message it has
not handed to an application, so stopping it loses nothing that a running
consumer did not already have. One exception: a consumer that also listens
on a layer channel of its own (every ``AsyncConsumer`` with a layer does)
asks for the next worker message while it handles a message from that other
channel; if that handler stops or fails the instance, the one worker message
it had taken is lost with it (see :mod:`tidings.utils`). Messages sent to the
worker channel never hit this case when the consumer's own channel is unused.

Failures stay local:

* an instance that raises is logged (channel, message type, traceback) and
  dropped; the channel's next message starts a new instance;
* an instance that fails before it even reads its first message (a routing
  error, say) costs exactly that message, which is logged as dropped: a
  broken application cannot spin;
* a message that is not a dict with a ``str`` ``"type"`` is logged and dropped.

An error from the channel layer itself is not local: it stops the worker
(after the graceful shutdown below) and :meth:`Worker.arun` re-raises it, so
a process supervisor sees the failure.

**Graceful shutdown** (:meth:`Worker.stop`, SIGINT or SIGTERM under
:meth:`Worker.run`): runners stop reading the layer; each instance finishes
the worker-channel message it is handling, up to ``shutdown_timeout``
seconds, and is then cancelled while it waits for the next one.

Instances cannot ``send`` ASGI messages: a channel scope has no client.
They talk to the world through the channel layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable
from typing import Any, Final

from tidings._types import ASGIApp, Message, Scope
from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import get_channel_layer
from tidings.layers.base import BaseChannelLayer

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "Worker", "run_command", "run_worker"]

logger = logging.getLogger("tidings.worker")

DEFAULT_SHUTDOWN_TIMEOUT: Final[float] = 10.0
"""Seconds an instance may take to finish its current message on shutdown.

Kept well under the 30 s that systemd, Docker and Kubernetes wait between
SIGTERM and SIGKILL, so the worker exits on its own before being killed.
"""


async def _refuse_send(message: Message) -> None:
    raise RuntimeError(
        "A worker's application instance has no client to send ASGI messages to "
        f"(tried to send {message.get('type')!r}); use the channel layer instead."
    )


class _Instance:
    """One application instance of a channel and what the runner knows about it."""

    __slots__ = ("received", "slot", "startup_error", "task", "type_in_hand")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        # Pending while the instance awaits ``receive``.
        self.slot: asyncio.Future[Message] | None = None
        self.received = 0
        self.type_in_hand: object = None
        self.startup_error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    @property
    def waiting(self) -> bool:
        return self.slot is not None and not self.slot.done()

    def settled(self) -> bool:
        """Whether the instance has ended or awaits ``receive``."""
        return self.done or self.waiting


class _ChannelRunner:
    """Feeds one channel's messages to one application instance at a time."""

    def __init__(self, worker: Worker, channel: str) -> None:
        self.worker = worker
        self.channel = channel
        self.scope: Scope = {"type": "channel", "channel": channel}
        self.current: _Instance | None = None
        # Set whenever an instance starts or stops waiting in ``receive``, or ends.
        self._changed = asyncio.Event()
        # True while the runner awaits something that is safe to cancel (it
        # holds no message): only then does shutdown cancel it.
        self.cancellable = True

    def can_take(self) -> bool:
        """Whether a message read now would be taken at once (or start an instance)."""
        current = self.current
        return current is None or current.done or current.waiting

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is re-checked on every state change."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def run(self) -> None:
        """Read the layer and hand each message over, until the worker stops."""
        layer = self.worker.channel_layer
        while not self.worker.stopping:
            self.cancellable = True
            await self.wait_until(self.can_take)
            message = await layer.receive(self.channel)
            self.cancellable = False
            if not isinstance(message.get("type"), str):
                logger.error(
                    "Worker on channel %r dropped a message without a str 'type' (keys: %s)",
                    self.channel,
                    sorted(map(str, message)),
                )
                continue
            await self._hand_over(message)

    async def _hand_over(self, message: Message) -> None:
        started_for_it: _Instance | None = None
        while True:
            instance = self.current
            if instance is None or instance.done:
                if started_for_it is not None:
                    # One log line per lost message, with the application's traceback.
                    logger.error(
                        "Worker on channel %r dropped a message of type %r: the application "
                        "instance started for it ended before reading it",
                        self.channel,
                        message["type"],
                        exc_info=started_for_it.startup_error,
                    )
                    return
                instance = started_for_it = self._start_instance()
            slot = instance.slot
            if slot is not None and not slot.done():
                slot.set_result(message)
                return
            # Starting up, or between two receives (its receive was cancelled).
            await self.wait_until(instance.settled)

    def _start_instance(self) -> _Instance:
        instance = self.current = _Instance()

        async def receive() -> Message:
            slot: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            instance.slot = slot
            self._changed.set()
            try:
                message = await slot
            finally:
                instance.slot = None
                self._changed.set()
            instance.received += 1
            instance.type_in_hand = message.get("type")
            return message

        async def run_instance() -> None:
            await self.worker.application(dict(self.scope), receive, _refuse_send)

        instance.task = asyncio.create_task(run_instance(), name=f"tidings-worker-{self.channel}")
        instance.task.add_done_callback(lambda task: self._instance_done(instance, task))
        return instance

    def _instance_done(self, instance: _Instance, task: asyncio.Task[None]) -> None:
        if instance is self.current:
            self.current = None
        self._changed.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            logger.debug("Application instance for channel %r ended", self.channel)
        elif instance.received:
            logger.error(
                "Application instance for channel %r failed handling a message of type %r; "
                "a new instance will take the next message",
                self.channel,
                instance.type_in_hand,
                exc_info=exc,
            )
        else:
            instance.startup_error = exc  # _hand_over logs it with the message it cost


class Worker:
    """Serve channel-layer channels with an ASGI application (usually a ``ChannelNameRouter``).

    Args:
        application: the ASGI application; it is called with the scope
            ``{"type": "channel", "channel": name}``.
        channels: the channel names to read (non-empty; no duplicates).
        channel_layer: the layer to read them from.
        shutdown_timeout: seconds each instance may take to finish its
            current message when the worker stops.

    Raises:
        ValueError: no channels, or a duplicate.
        TypeError: a channel name is not valid for the layer.
    """

    def __init__(
        self,
        application: ASGIApp,
        channels: Iterable[str],
        channel_layer: BaseChannelLayer,
        *,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.application = application
        self.channels = list(channels)
        self.channel_layer = channel_layer
        self.shutdown_timeout = shutdown_timeout
        if not self.channels:
            raise ValueError("A worker needs at least one channel name.")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"Duplicate channel names in {self.channels!r}.")
        for name in self.channels:
            channel_layer.require_valid_channel_name(name, receive=True)
        self.stopping = False
        self._stop_requested: asyncio.Event | None = None

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (safe to call more than once)."""
        self.stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def arun(self) -> None:
        """Serve until :meth:`stop` is called (or the task is cancelled).

        Raises:
            Exception: an error from the channel layer, after shutting down.
        """
        self._stop_requested = asyncio.Event()
        if self.stopping:
            return
        async with _mqtt_runtime(self.application):
            runners = [_ChannelRunner(self, name) for name in self.channels]
            tasks = [
                asyncio.create_task(runner.run(), name=f"tidings-worker-read-{runner.channel}")
                for runner in runners
            ]
            stop_waiter = asyncio.create_task(self._stop_requested.wait())
            try:
                await asyncio.wait([stop_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.stop()
                stop_waiter.cancel()
                await self._shut_down(runners, tasks)
        for task in tasks:
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error

    async def _shut_down(
        self, runners: list[_ChannelRunner], tasks: list[asyncio.Task[None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        # 1. Stop reading the layer. A runner that holds a message finishes
        #    handing it over, then sees ``stopping`` and returns.
        for runner, task in zip(runners, tasks, strict=True):
            if runner.cancellable:
                task.cancel()
        await self._wait_then_cancel(tasks, deadline - loop.time())
        # 2. Let each instance finish its message: wait until it asks for the
        #    next one or ends (``can_take``), then cancel whatever still runs.
        waits = [asyncio.create_task(runner.wait_until(runner.can_take)) for runner in runners]
        busy = await self._wait_then_cancel(waits, deadline - loop.time())
        if busy:
            logger.warning(
                "Worker shutdown: %d application instance(s) still busy after %.1f s; cancelling",
                busy,
                self.shutdown_timeout,
            )
        instances = [
            runner.current.task
            for runner in runners
            if runner.current is not None and runner.current.task is not None
        ]
        for task in instances:
            task.cancel()
        await asyncio.gather(*instances, return_exceptions=True)

    @staticmethod
    async def _wait_then_cancel(tasks: list[asyncio.Task[Any]], seconds: float) -> int:
        """Wait up to ``seconds`` for ``tasks``; cancel and reap the rest; return how many."""
        _, pending = await asyncio.wait(tasks, timeout=max(seconds, 0))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(pending)

    def run(self, *, on_started: Callable[[], object] | None = None) -> None:
        """Run the worker in a new event loop until SIGINT or SIGTERM, then shut down.

        Args:
            on_started: called once the signal handlers are in place (a
                signal from then on shuts the worker down gracefully).
        """
        asyncio.run(self._run_with_signals(on_started))

    async def _run_with_signals(self, on_started: Callable[[], object] | None) -> None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, self.stop)
        try:
            if on_started is not None:
                on_started()
            await self.arun()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)


def _mqtt_runtime(application: object) -> contextlib.AbstractAsyncContextManager[object]:
    """The MQTT runtime of a ``ProtocolTypeRouter`` with an ``"mqtt"`` entry, else nothing.

    Workers run the project's MQTT consumers and bridges too (``docs/mqtt.md``).
    """
    mapping = getattr(application, "application_mapping", None)
    if not isinstance(mapping, dict) or "mqtt" not in mapping:
        return contextlib.nullcontext()
    from tidings.mqtt import running  # the mqtt extra, only when used

    return running(mapping["mqtt"])


def run_worker(
    application: Any,
    channels: Iterable[str],
    *,
    layer_alias: str = "default",
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
) -> None:
    """Run a :class:`Worker` for ``channels`` on the layer ``layer_alias`` until a signal.

    ``manage.py runworker`` and ``tidings worker`` run the same worker through
    :func:`run_command`, which reports these errors instead of raising them.

    Raises:
        InvalidChannelLayerError: the alias is not configured, or
            ``CHANNEL_LAYERS`` is empty.
        ValueError, TypeError: bad channel names (see :class:`Worker`).
    """
    worker = Worker(application, channels, _layer(layer_alias), shutdown_timeout=shutdown_timeout)
    worker.run(on_started=lambda: logger.info("Running worker for channels %s", worker.channels))


def _layer(alias: str) -> BaseChannelLayer:
    """The channel layer ``alias`` names.

    Raises:
        InvalidChannelLayerError: the alias is not configured (the message names it), or
            ``CHANNEL_LAYERS`` is empty.
    """
    try:
        layer = get_channel_layer(alias)
    except InvalidChannelLayerError as exc:
        raise InvalidChannelLayerError(f"channel layer {alias!r}: {exc}") from exc
    if layer is None:
        raise InvalidChannelLayerError("no channel layer is configured (CHANNEL_LAYERS is empty)")
    return layer


# -- the front door of ``tidings worker`` and ``manage.py runworker`` ------------------------


def run_command(
    application: ASGIApp,
    channels: Iterable[str],
    *,
    layer_alias: str,
    announce: Callable[[str], object],
    fail: Callable[[str], int],
) -> int:
    """Run a worker for a command line; return its exit status.

    The one front door of ``tidings worker`` (``tidings.cli``) and ``manage.py
    runworker``: each gets the application its own way, then calls this. A
    configuration mistake (an unknown layer alias, an empty ``CHANNEL_LAYERS``, a bad
    channel name) is handed to ``fail`` as one sentence, and what ``fail`` returns (or
    raises) ends the command. Once signals are handled, ``announce`` gets the line
    saying what runs. An error of the layer while running propagates with its traceback.

    Returns:
        0 once a signal stopped the worker, else what ``fail`` returned.
    """
    try:
        worker = Worker(application, channels, _layer(layer_alias))
    except (TypeError, ValueError) as exc:  # InvalidChannelLayerError is a ValueError
        return fail(str(exc))
    worker.run(
        on_started=lambda: announce(
            f"Running worker for channels {', '.join(worker.channels)} "
            f"on channel layer {layer_alias!r}"
        )
    )
    return 0
