"""The channel layer contract every backend implements.

A channel layer moves *messages* (``dict`` objects with a ``"type"`` key, by
convention) between *channels* (named FIFO queues read by one consumer each)
and fans them out to *groups* (named sets of channels). The contract is the
one Channels documents, so code written against ``channels.layers`` runs
unchanged:

- ``send`` never blocks: it enqueues or raises ``ChannelFull``;
- ``receive`` waits for the next message of one channel;
- ``new_channel`` makes a fresh, unguessable process-specific channel name;
- ``group_add``/``group_discard`` are idempotent; ``group_send`` never raises
  ``ChannelFull`` (a full member silently misses the message);
- messages older than ``expiry`` seconds are dropped, never delivered;
- ``flush`` resets the layer (tests), ``close`` releases resources.

One Tidings extension of the contract: ``set_direct(channel, send_now)``, direct
delivery of ``websocket.send`` group messages to a WebSocket consumer's socket.
The WebSocket consumers call it on every layer; the base version does nothing
(messages are queued as usual), and layers that support it override it.

This module holds what all backends share: option checking, name validation
(rules in :mod:`tidings.layers._names`) and per-channel capacity lookup. It
holds no state and no I/O; backends live in their own modules.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeAlias

from tidings.layers._names import (
    MAX_NAME_LENGTH,
    NAME_RULE,
    check_channel_name,
    check_group_name,
    non_local_name,
)
from tidings.layers._options import positive_int, positive_number

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_EXPIRY",
    "BaseChannelLayer",
    "CapacityPattern",
    "ChannelSource",
    "Message",
]

Message: TypeAlias = dict[str, Any]
"""A channel layer message: a dict of serializable values, with a ``"type"`` key by convention."""

CapacityPattern: TypeAlias = str | re.Pattern[str]
"""A key of ``channel_capacity``: a glob (``"http.*"``) or a compiled regex."""

DEFAULT_EXPIRY: float = 60
"""Seconds a message may wait unread (Channels' and channels_redis' default)."""

DEFAULT_CAPACITY: int = 100
"""Messages a channel may hold before ``send`` raises ``ChannelFull`` (Channels' default)."""


class ChannelSource:
    """One layer channel as a message source for a consumer.

    Calling it (``await source()``) receives the next message, as
    ``layer.receive(channel)`` does. When the layer can also be polled,
    ``poll()`` takes a waiting message without blocking (None if there is
    none), ``watch(future)`` resolves the future when a message arrives and
    ``unwatch(future)`` forgets it: :class:`~tidings.utils.MessageMux` then
    waits on this channel and the client with one future instead of a task per
    source, which halves the task switches per delivered message.

    Attributes:
        channel: the channel name.
        poll: None when the layer cannot be polled.

    A layer passes the same ``receive``, ``poll``, ``watch`` and ``unwatch``
    (each taking the channel name first) to all its sources, so a source costs
    one small object per consumer.
    """

    # One per connection of a consumer: it keeps the callables it is given (shared by
    # all the sources of a layer) and makes nothing per channel but itself.
    __slots__ = ("_poll", "_receive", "_unwatch", "_watch", "channel")

    #: ``poll()`` takes a waiting message or returns None; None if not pollable.
    poll: Callable[[], Message | None] | None = None

    def __new__(
        cls,
        channel: str,
        receive: Callable[[str], Awaitable[Message]],
        poll: Callable[[str], Message | None] | None = None,
        watch: Callable[[str, asyncio.Future[None]], None] | None = None,
        unwatch: Callable[[str, asyncio.Future[None]], None] | None = None,
    ) -> ChannelSource:
        # A pollable source is of a subclass whose poll, watch and unwatch are plain
        # methods: a consumer calls them around every message it waits for.
        if poll is not None and cls is ChannelSource:
            cls = _PolledChannelSource
        return object.__new__(cls)

    def __init__(
        self,
        channel: str,
        receive: Callable[[str], Awaitable[Message]],
        poll: Callable[[str], Message | None] | None = None,
        watch: Callable[[str, asyncio.Future[None]], None] | None = None,
        unwatch: Callable[[str, asyncio.Future[None]], None] | None = None,
    ) -> None:
        self.channel = channel
        self._receive = receive
        self._poll = poll
        self._watch = watch
        self._unwatch = unwatch

    def __call__(self) -> Awaitable[Message]:
        return self._receive(self.channel)

    def watch(self, waiter: asyncio.Future[None]) -> None:
        """Resolve ``waiter`` when a message is waiting (only when ``poll`` is set).

        Raises:
            TypeError: this source cannot be polled.
        """
        if self._watch is None:
            raise TypeError(_NOT_POLLED)
        self._watch(self.channel, waiter)

    def unwatch(self, waiter: asyncio.Future[None]) -> None:
        """Forget ``waiter`` (only when ``poll`` is set).

        Raises:
            TypeError: this source cannot be polled.
        """
        if self._unwatch is None:
            raise TypeError(_NOT_POLLED)
        self._unwatch(self.channel, waiter)

    def __repr__(self) -> str:
        return f"<ChannelSource {self.channel!r}{' polled' if self._poll else ''}>"


_NOT_POLLED = "this channel source cannot be polled: await it instead"


class _PolledChannelSource(ChannelSource):
    """A :class:`ChannelSource` of a layer that can be polled (made by its ``__new__``)."""

    __slots__ = ()

    def poll(self) -> Message | None:
        poll = self._poll
        assert poll is not None  # (set: that is what made this class be chosen)
        return poll(self.channel)

    def watch(self, waiter: asyncio.Future[None]) -> None:
        assert self._watch is not None
        self._watch(self.channel, waiter)

    def unwatch(self, waiter: asyncio.Future[None]) -> None:
        assert self._unwatch is not None
        self._unwatch(self.channel, waiter)


class BaseChannelLayer:
    """Base class of Tidings channel layers: shared options, name checks and capacities.

    Args:
        expiry: seconds a message may wait unread before it is dropped.
        capacity: messages a channel may hold; ``send`` raises ``ChannelFull``
            beyond it.
        channel_capacity: per-channel capacities, a mapping of glob patterns
            (``"http.request"``, ``"websocket.*"``) or compiled regular
            expressions to capacities. The first pattern that matches the
            channel name, in mapping order, wins; globs match the whole name,
            regexes match at its start (``re.Pattern.match``).

    Raises:
        ValueError: an option is out of range.
        TypeError: a ``channel_capacity`` key is neither a str nor a compiled regex.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]
    """Optional parts of the contract this layer provides (spec names)."""

    MAX_NAME_LENGTH: ClassVar[int] = MAX_NAME_LENGTH
    """Channel and group names must be shorter than this many characters."""

    invalid_name_error: ClassVar[str] = "{} name " + NAME_RULE
    """The start of every invalid-name ``TypeError``; ``{}`` is ``Channel`` or ``Group``."""

    def __init__(
        self,
        *,
        expiry: float = DEFAULT_EXPIRY,
        capacity: int = DEFAULT_CAPACITY,
        channel_capacity: Mapping[CapacityPattern, int] | None = None,
    ) -> None:
        self.expiry: float = positive_number("expiry", expiry)
        self.capacity: int = positive_int("capacity", capacity)
        self.channel_capacity: list[tuple[re.Pattern[str], int]] = self.compile_capacities(
            channel_capacity or {}
        )

    # -- capacities ---------------------------------------------------------

    @staticmethod
    def compile_capacities(
        channel_capacity: Mapping[CapacityPattern, int] | Iterable[tuple[CapacityPattern, int]],
    ) -> list[tuple[re.Pattern[str], int]]:
        """Turn ``channel_capacity`` into ``(compiled regex, capacity)`` pairs, in order.

        Raises:
            TypeError: a key is neither a str nor a compiled regex.
            ValueError: a capacity is not an int >= 1.
        """
        items = (
            channel_capacity.items() if isinstance(channel_capacity, Mapping) else channel_capacity
        )
        compiled: list[tuple[re.Pattern[str], int]] = []
        for pattern, capacity in items:
            if isinstance(pattern, re.Pattern):
                regex = pattern
            elif isinstance(pattern, str):
                regex = re.compile(fnmatch.translate(pattern))
            else:
                raise TypeError(
                    "channel_capacity keys must be glob strings or compiled regexes, "
                    f"not {type(pattern).__name__}"
                )
            compiled.append((regex, positive_int(f"channel_capacity[{pattern!r}]", capacity)))
        return compiled

    def get_capacity(self, channel: str) -> int:
        """Return how many messages ``channel`` may hold.

        That is the capacity of the first ``channel_capacity`` pattern matching
        the name, else ``capacity``.
        """
        for regex, capacity in self.channel_capacity:
            if regex.match(channel):
                return capacity
        return self.capacity

    # -- names --------------------------------------------------------------

    def match_type_and_length(self, name: object) -> bool:
        """Return whether ``name`` is a ``str`` shorter than ``MAX_NAME_LENGTH``."""
        return isinstance(name, str) and len(name) < self.MAX_NAME_LENGTH

    def require_valid_channel_name(self, name: object, receive: bool = False) -> bool:
        """Return ``True`` if ``name`` is a valid channel name, else raise ``TypeError``.

        Args:
            name: the candidate name.
            receive: also require a process-specific name to end at its ``!``
                (the legacy form of receiving a whole process's channels).

        Raises:
            TypeError: the name breaks a rule; the message starts with
                ``invalid_name_error`` and says which rule.
        """
        check_channel_name(name, receive=receive)
        return True

    def require_valid_group_name(self, name: object) -> bool:
        """Return ``True`` if ``name`` is a valid group name, else raise ``TypeError``.

        Raises:
            TypeError: the name breaks a rule; the message starts with
                ``invalid_name_error`` and says which rule.
        """
        check_group_name(name)
        return True

    def valid_channel_name(self, name: object, receive: bool = False) -> bool:
        """Deprecated (as in Channels 4.2+): use :meth:`require_valid_channel_name`."""
        warnings.warn(
            "valid_channel_name is deprecated, use require_valid_channel_name",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.require_valid_channel_name(name, receive)

    def valid_group_name(self, name: object) -> bool:
        """Deprecated (as in Channels 4.2+): use :meth:`require_valid_group_name`."""
        warnings.warn(
            "valid_group_name is deprecated, use require_valid_group_name",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.require_valid_group_name(name)

    def valid_channel_names(self, names: object, receive: bool = False) -> bool:
        """Return ``True`` if ``names`` is a list or tuple of valid channel names.

        Raises:
            TypeError: ``names`` is not a list or tuple, or one name breaks a rule.
        """
        if not isinstance(names, list | tuple):
            raise TypeError(f"channel names must be a list or tuple, not {type(names).__name__}")
        for name in names:
            check_channel_name(name, receive=receive)
        return True

    def non_local_name(self, name: str) -> str:
        """Return ``name`` up to and including its ``!``, or all of it if it has none."""
        return non_local_name(name)

    @staticmethod
    def require_message(message: object) -> None:
        """Raise ``TypeError`` unless ``message`` is a ``dict`` (the only message type)."""
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")

    # -- the contract -------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        """Put ``message`` on ``channel``.

        Raises:
            ChannelFull: the channel already holds its capacity of messages.
            TypeError: the channel name or the message is not valid.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement send()")

    async def receive(self, channel: str) -> Message:
        """Wait for and return the next message on ``channel``.

        Cancelling a pending ``receive`` loses no message.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement receive()")

    def channel_source(self, channel: str) -> ChannelSource:
        """``channel`` as a message source for a consumer (see :class:`ChannelSource`).

        The base version only receives; layers that can be polled override it.
        """
        return ChannelSource(channel, self.receive)

    def set_direct(self, channel: str, send_now: Callable[[Message], bool] | None) -> None:
        """Offer ``send_now`` to deliver ``websocket.send`` group messages for ``channel``.

        A Tidings extension of the contract (Channels has no such method). A
        WebSocket consumer served by the Tidings server calls it once it has
        accepted, with the ``send_nowait`` of the ``tidings.websocket.direct``
        scope extension, and with None when it ends. ``send_now(message)``
        writes the message to the client at once and returns True, or returns
        False to have it queued as usual.

        The base version ignores it: every message is queued and handled by the
        consumer. Layers that support direct delivery override it (see
        :meth:`InMemoryChannelLayer.set_direct
        <tidings.layers.InMemoryChannelLayer.set_direct>`).
        """
        return None

    async def new_channel(self, prefix: str = "specific") -> str:
        """Return a new, unguessable process-specific channel name starting with ``prefix``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement new_channel()")

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` (again: refreshes the membership's expiry)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement group_add()")

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; do nothing if it is not a member."""
        raise NotImplementedError(f"{type(self).__name__} does not implement group_discard()")

    async def group_send(self, group: str, message: Message) -> None:
        """Send ``message`` to every member of ``group``; full members miss it silently."""
        raise NotImplementedError(f"{type(self).__name__} does not implement group_send()")

    async def flush(self) -> None:
        """Drop every message and every group membership."""
        raise NotImplementedError(f"{type(self).__name__} does not implement flush()")

    async def close(self) -> None:
        """Release the layer's resources (connections); the default has none."""
        return None
