"""The in-memory channel layer: one process, no server, for development and tests.

Theory of operation
-------------------
A thin :class:`~tidings.layers.BaseChannelLayer` over one
:class:`~tidings.layers._mailboxes.Mailboxes` (queues, groups, memberships,
expiry, direct delivery: its module docstring tells how they work), under
Channels' membership rule: a channel whose messages expire unread leaves all
its groups. This module checks names and messages and makes the copies.

Nothing is bound to an event loop at construction, so one layer serves any
number of loops, one after another or at once (the classic case:
``async_to_sync(layer.group_send)`` from a sync view runs each call in a
fresh loop while consumers receive in the server's loop), and threads.

**Copies.** Receivers must not see each other's mutations (nor the
sender's). ``copy.deepcopy`` is exact but slow, and copying once per group
member makes ``group_send`` cost O(members x message). Instead the layer
copies a message once when it is sent (a private snapshot, shared by all
group members' queues) and again when a receiver takes it, so each receiver
gets its own copy and copies are only made for messages actually received.
:func:`~tidings.layers._mailboxes.isolate` rebuilds dicts, lists and tuples,
copies bytearrays, shares immutable scalars (``str``, ``bytes``, numbers,
``None``) and falls back to ``copy.deepcopy`` for any other type, so
arbitrary objects stay isolated as they would with ``deepcopy``. A cyclic
message raises ``RecursionError`` (no backend that serializes could carry it
either).

``channels`` and ``groups`` keep Channels' public names and shapes (they are
the mailboxes' own dicts): a channel is listed while it holds messages or
has a receiver waiting; a group maps each member to the time of its last
``group_add``.

**Bounds.** A channel holds at most its capacity of messages; each expires
``expiry`` seconds after it was sent; memberships last ``group_expiry``
seconds after their last ``group_add``. Sends leave sweeping to receivers
(as Channels does) until the layer holds ``SEND_SWEEP_CHANNELS`` channel
records.

**Direct delivery** (a Tidings extension): see :meth:`InMemoryChannelLayer.set_direct`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from typing import Final

from tidings import _metrics
from tidings.layers._mailboxes import SEND_SWEEP_CHANNELS, Mailbox, Mailboxes, isolate
from tidings.layers._names import check_name_prefix
from tidings.layers._options import positive_number
from tidings.layers.base import (
    DEFAULT_CAPACITY,
    DEFAULT_EXPIRY,
    BaseChannelLayer,
    CapacityPattern,
    ChannelSource,
    Message,
)

__all__ = ["DEFAULT_GROUP_EXPIRY", "SEND_SWEEP_CHANNELS", "InMemoryChannelLayer"]

DEFAULT_GROUP_EXPIRY: Final[float] = 86400
"""Seconds a group membership lasts after its last ``group_add`` (one day, as in Channels)."""


@_metrics.timed(send="layer_send", group_send="layer_group_send")
class InMemoryChannelLayer(BaseChannelLayer):
    """A channel layer that lives in this process's memory.

    Messages reach only consumers of the same process: use it for development,
    tests and single-process deployments, and the Redis layer for anything
    else. Safe to share between event loops and threads of one process.

    Args:
        expiry: seconds a message may wait unread before it is dropped.
        group_expiry: seconds a group membership lasts after its last ``group_add``.
        capacity: messages a channel may hold before ``send`` raises ``ChannelFull``.
        channel_capacity: per-channel capacities by glob or regex; see
            :class:`~tidings.layers.BaseChannelLayer`.

    Raises:
        ValueError: an option is out of range.
    """

    def __init__(
        self,
        *,
        expiry: float = DEFAULT_EXPIRY,
        group_expiry: float = DEFAULT_GROUP_EXPIRY,
        capacity: int = DEFAULT_CAPACITY,
        channel_capacity: Mapping[CapacityPattern, int] | None = None,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.group_expiry: float = positive_number("group_expiry", group_expiry)
        self._mailboxes = Mailboxes(
            expiry=self.expiry,
            group_expiry=self.group_expiry,
            capacity_of=self.get_capacity,
            leave_groups_on_expiry=True,
        )
        # Shared by every polled ChannelSource of this layer (see channel_source).
        mailboxes = self._mailboxes
        self._source_calls = (
            self.receive,
            mailboxes.take_nowait,
            mailboxes.watch,
            mailboxes.unwatch,
        )
        # Names this layer makes share one random "process" part, as a
        # multi-process layer's names do; the local part is per channel.
        self._process_part = secrets.token_hex(6)

    @property
    def channels(self) -> dict[str, Mailbox]:
        """Channel name -> its queue and waiting receivers (Channels' attribute)."""
        return self._mailboxes.channels

    @property
    def groups(self) -> dict[str, dict[str, float]]:
        """Group -> {channel: time of its last ``group_add``} (Channels' attribute)."""
        return self._mailboxes.groups

    # -- channels -----------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        """Put ``message`` on ``channel``.

        Raises:
            ChannelFull: the channel holds its capacity of unexpired messages.
            TypeError: the channel name or the message is not valid.
        """
        self.require_valid_channel_name(channel)
        self.require_message(message)
        self._mailboxes.put(channel, isolate(message))

    async def receive(self, channel: str) -> Message:
        """Wait for the next message on ``channel`` and return a private copy of it.

        Several receivers of one channel each get different messages, in FIFO
        order of their wake-ups. Cancelling a waiting ``receive`` loses no message.

        Raises:
            TypeError: the channel name is not valid.
        """
        self.require_valid_channel_name(channel)
        return await self._mailboxes.take(channel)

    def receive_nowait(self, channel: str) -> Message | None:
        """Take the next message of ``channel`` if one is waiting, else return None.

        The non-blocking half of :meth:`receive`, for a consumer that waits on
        several sources with one future (see :meth:`watch`).

        Raises:
            TypeError: the channel name is not valid.
        """
        self.require_valid_channel_name(channel)
        return self._mailboxes.take_nowait(channel)

    def watch(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """Resolve ``waiter`` (with None) when a message arrives on ``channel``.

        Use only on a channel with a single reader (a process-specific one), then
        :meth:`receive_nowait` to take the message, and :meth:`unwatch` when the
        wait ends for any reason. A message already waiting resolves it at once.
        """
        self._mailboxes.watch(channel, waiter)

    def unwatch(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """Forget ``waiter`` registered by :meth:`watch` (a no-op once it was woken)."""
        self._mailboxes.unwatch(channel, waiter)

    def set_direct(self, channel: str, send_now: Callable[[Message], bool] | None) -> None:
        """Let ``group_send`` hand ``websocket.send`` messages for ``channel`` to ``send_now``.

        A Tidings extension for broadcasts. A group message of type
        ``websocket.send`` (with ``text`` or ``bytes``) means "send this to the
        client"; a WebSocket consumer handles it with its ``websocket_send``
        handler. A consumer whose socket is served by the Tidings server
        registers its socket's non-blocking writer here when it accepts.
        ``group_send`` then hands such a message straight to that writer for
        every member that is *idle* (its consumer is waiting in this event loop
        and has nothing queued), without waking the consumer at all: the server
        encodes the frame once per process and writes it to each socket.
        Ordering is kept, and any member that is busy, slow or in another loop
        gets the message queued as usual.

        ``send_now(message)`` writes the message to the member's socket at once
        and returns True, or returns False to have it queued as usual. None
        removes the registration.
        """
        self._mailboxes.set_direct(channel, send_now)

    def channel_source(self, channel: str) -> ChannelSource:
        """``channel`` as a message source that :class:`~tidings.utils.MessageMux` can poll."""
        if "!" not in channel:
            return super().channel_source(channel)
        self.require_valid_channel_name(channel)
        return ChannelSource(channel, *self._source_calls)

    async def new_channel(self, prefix: str = "specific") -> str:
        """Return a new process-specific channel name, ``"<prefix>.<process>!<random>"``.

        The local part is 96 random bits from :mod:`secrets`, so names can be
        neither guessed nor repeated.

        Raises:
            TypeError: ``prefix`` is not a valid name part, or too long.
        """
        check_name_prefix(prefix)
        name = f"{prefix}.{self._process_part}!{secrets.token_hex(12)}"
        self.require_valid_channel_name(name)
        return name

    # -- groups -------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``, or refresh its membership's expiry.

        Raises:
            TypeError: the group or channel name is not valid.
        """
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._mailboxes.join(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it is not a member.

        Raises:
            TypeError: the group or channel name is not valid.
        """
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._mailboxes.leave(group, channel)

    async def group_send(self, group: str, message: Message) -> None:
        """Send ``message`` to every member of ``group``.

        Members whose channel is full miss the message silently; memberships
        older than ``group_expiry`` are dropped on the way. Never raises
        ``ChannelFull``.

        Raises:
            TypeError: the group name or the message is not valid.
        """
        self.require_valid_group_name(group)
        self.require_message(message)
        self._mailboxes.group_put(group, isolate(message))

    # -- whole layer --------------------------------------------------------

    async def flush(self) -> None:
        """Drop every message and every group; waiting receivers keep waiting."""
        self._mailboxes.clear()
