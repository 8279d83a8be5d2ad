"""The in-memory channel layer: one process, no server, for development and tests.

Theory of operation
-------------------
State is three dicts guarded by one ``threading.Lock``:

- ``channels``: channel name -> ``_Channel`` (a deque of ``(expires_at,
  message)`` and a deque of waiting receivers' futures);
- ``groups``: group -> {channel: time of the last ``group_add``};
- ``_memberships``: channel -> groups, the reverse index, so that a channel
  whose messages expire unread can leave all its groups at once.

**Loops and threads.** Nothing is bound to an event loop at construction, so
one layer serves any number of loops, one after another or at once (the
classic case: ``async_to_sync(layer.group_send)`` from a sync view runs each
call in a fresh loop while consumers receive in the server's loop). The lock
is held only for short, non-blocking sections and never across an ``await``.
A waiting receiver parks on a future of its own loop; a sender running in
that loop resolves it directly, a sender in another loop or thread goes
through ``call_soon_threadsafe``.

**Cancellation safety.** A future only says "look again"; the message stays
in the deque until the receiver, running again, takes it in the same step
that returns it. A receiver cancelled after it was woken (and so removed
from the waiters) passes the wake-up on to the next waiter if messages
remain, so no message is stranded behind a dead waiter. A waiter whose loop
was closed under it is skipped by the next sender.

**Copies.** Receivers must not see each other's mutations (nor the
sender's). ``copy.deepcopy`` is exact but slow, and copying once per group
member makes ``group_send`` cost O(members x message). Instead the layer
copies a message once when it is sent (a private snapshot, shared by all
group members' queues) and again when a receiver takes it, so each receiver
gets its own copy and copies are only made for messages actually received.
``_isolate`` rebuilds dicts, lists and tuples, copies bytearrays, shares
immutable scalars (``str``, ``bytes``, numbers, ``None``) and falls back to
``copy.deepcopy`` for any other type, so arbitrary objects stay isolated as
they would with ``deepcopy``. A cyclic message raises ``RecursionError``
(no backend that serializes could carry it either).

``channels`` and ``groups`` keep Channels' public names and shapes: a
channel is listed while it holds messages or has a receiver waiting.

**Bounds.** A channel holds at most its capacity of messages; each expires
``expiry`` seconds after it was sent. Expired messages are dropped whenever
their channel is touched, and a sweep, at most once per ``expiry`` seconds
and run by the next receive or group operation, drops expired messages of
channels nobody touches, empty channel records and memberships older than
``group_expiry``. Sends leave the sweep to receivers (as Channels does) until
the layer holds ``SEND_SWEEP_CHANNELS`` channel records; past that they sweep
too, so a flood of sends to channels nobody reads stays bounded even where
nothing receives. A channel whose messages expired unread leaves all its
groups, missing the ``group_send`` that noticed (the spec allows it; it
keeps a consumer that died without ``group_discard`` from costing a full
queue per group for a day).

**Fan-out.** ``group_send`` is one loop under one lock acquisition: an
append and at most one wake-up per member, no task per member.

**Direct delivery** (a Tidings extension). A group message of type
``websocket.send`` (with ``text`` or ``bytes``) means "send this to the
client"; a WebSocket consumer handles it with its ``websocket_send``
handler. A consumer whose socket is served by the Tidings server registers
its socket's non-blocking writer with :meth:`set_direct` when it accepts.
``group_send`` then hands such a message straight to that writer for every
member that is *idle* (its consumer is waiting in this event loop and has
nothing queued), without waking the consumer at all: the server encodes the
frame once per process and writes it to each socket. Ordering is kept (an
idle member has nothing before it), and any member that is busy, slow
(backpressure) or in another loop gets the message queued as usual.

The clock is ``time.monotonic``, read through the ``_clock`` attribute so
that tests can substitute a fake one.
"""

from __future__ import annotations

import asyncio
import copy
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

from tidings.exceptions import ChannelFull
from tidings.layers._names import check_name_prefix
from tidings.layers.base import (
    DEFAULT_CAPACITY,
    DEFAULT_EXPIRY,
    BaseChannelLayer,
    CapacityPattern,
    ChannelSource,
    Message,
    _positive_number,
)

__all__ = ["DEFAULT_GROUP_EXPIRY", "SEND_SWEEP_CHANNELS", "InMemoryChannelLayer"]

DEFAULT_GROUP_EXPIRY: Final[float] = 86400
"""Seconds a group membership lasts after its last ``group_add`` (one day, as in Channels)."""

SEND_SWEEP_CHANNELS: Final = 1024
"""From this many channel records on, a due sweep also runs on ``send``."""

_ATOMS: Final = frozenset({str, bytes, int, float, bool, complex, type(None)})


def _isolate(value: Any) -> Any:
    """Return a copy of ``value`` that shares nothing mutable with it (see module docstring)."""
    cls = type(value)
    if cls is dict:
        return {k: (v if type(v) in _ATOMS else _isolate(v)) for k, v in value.items()}
    if cls in _ATOMS:
        return value
    if cls is list:
        return [v if type(v) in _ATOMS else _isolate(v) for v in value]
    if cls is tuple:
        return tuple(v if type(v) in _ATOMS else _isolate(v) for v in value)
    if cls is bytearray:
        return bytearray(value)
    return copy.deepcopy(value)


def _notify(waiter: asyncio.Future[None]) -> None:
    """Wake ``waiter`` unless it is already done (cancelled meanwhile)."""
    if not waiter.done():
        waiter.set_result(None)


class _Channel:
    """One channel's queued messages and waiting receivers."""

    __slots__ = ("capacity", "queue", "waiters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue: deque[tuple[float, Message]] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()


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

    _leave_groups_on_expiry: ClassVar[bool] = True
    """Channels' rule: a channel whose message expired unread leaves its groups.

    The Redis layer keeps its local queues in a subclass that sets it False
    (channels_redis' rule: memberships last until discarded or expired).
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
        self.group_expiry: float = _positive_number("group_expiry", group_expiry)
        self._clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self.channels: dict[str, _Channel] = {}
        self.groups: dict[str, dict[str, float]] = {}
        self._memberships: dict[str, set[str]] = {}
        self._next_sweep = -math.inf
        # channel -> send_now of a WebSocket consumer's socket (see set_direct).
        self._direct: dict[str, Callable[[Message], bool]] = {}
        # Names this layer makes share one random "process" part, as a
        # multi-process layer's names do; the local part is per channel.
        self._process_part = secrets.token_hex(6)

    # -- channels -----------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        """Put ``message`` on ``channel``.

        Raises:
            ChannelFull: the channel holds its capacity of unexpired messages.
            TypeError: the channel name or the message is not valid.
        """
        self.require_valid_channel_name(channel)
        self.require_message(message)
        self._put(channel, _isolate(message))

    def _put(self, channel: str, snapshot: Message) -> None:
        """``send`` of a checked name and a message nobody else holds (no await inside)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            now = self._clock()
            if len(self.channels) >= SEND_SWEEP_CHANNELS:
                self._maybe_sweep(now)
            record = self.channels.get(channel)
            if record is None:
                record = self.channels[channel] = _Channel(self.get_capacity(channel))
            elif self._drop_expired(record, now):
                self._leave_groups(channel)
            if len(record.queue) >= record.capacity:
                raise ChannelFull(f"channel {channel!r} is full ({record.capacity} messages)")
            record.queue.append((now + self.expiry, snapshot))
            if record.waiters:
                self._wake_one(record, loop)

    async def receive(self, channel: str) -> Message:
        """Wait for the next message on ``channel`` and return a private copy of it.

        Several receivers of one channel each get different messages, in FIFO
        order of their wake-ups. Cancelling a waiting ``receive`` loses no message.

        Raises:
            TypeError: the channel name is not valid.
        """
        self.require_valid_channel_name(channel)
        return await self._receive(channel)

    async def _receive(self, channel: str) -> Message:
        """``receive`` of a checked name."""
        loop = asyncio.get_running_loop()
        record: _Channel | None = None
        while True:
            with self._lock:
                now = self._clock()
                self._maybe_sweep(now)
                woken_on, record = record, self.channels.get(channel)
                if record is None and woken_on is not None and woken_on.queue:
                    # The record this receiver waited on was taken out of ``channels``
                    # (by code reaching into it, as Channels' tests do) after a message
                    # arrived: the message is still there, so put the record back.
                    record = self.channels[channel] = woken_on
                if record is None:
                    record = self.channels[channel] = _Channel(self.get_capacity(channel))
                else:
                    if self._drop_expired(record, now):
                        self._leave_groups(channel)
                    if record.queue:
                        _, snapshot = record.queue.popleft()
                        if not record.queue and not record.waiters:
                            del self.channels[channel]
                        break
                waiter: asyncio.Future[None] = loop.create_future()
                record.waiters.append(waiter)
            clean_up = True
            try:
                await waiter
                clean_up = False
            except GeneratorExit:
                # Closed without being cancelled: the garbage collector is
                # finalising a receive whose loop is gone. That can happen
                # while this very thread holds the lock, so take no lock;
                # _wake_one already discards waiters of closed loops.
                clean_up = False
                raise
            finally:
                if clean_up:
                    with self._lock:
                        self._abandon(channel, record, waiter, loop)
        received: Message = _isolate(snapshot)
        return received

    def receive_nowait(self, channel: str) -> Message | None:
        """Take the next message of ``channel`` if one is waiting, else return None.

        The non-blocking half of :meth:`receive`, for a consumer that waits on
        several sources with one future (see :meth:`watch`).

        Raises:
            TypeError: the channel name is not valid.
        """
        self.require_valid_channel_name(channel)
        return self._receive_nowait(channel)

    def _receive_nowait(self, channel: str) -> Message | None:
        """``receive_nowait`` without the name check (the caller checked it once)."""
        with self._lock:
            # Polled before every wait of every consumer: the cheap tests come inline.
            now = self._clock()
            if now >= self._next_sweep:
                self._maybe_sweep(now)
            record = self.channels.get(channel)
            if record is None:
                return None
            queue = record.queue
            if not queue:
                return None
            if queue[0][0] <= now and self._drop_expired(record, now):
                self._leave_groups(channel)
                if not queue:
                    return None
            _, snapshot = queue.popleft()
            # The record stays even when empty: its reader (a MessageMux) watches it
            # again at once, and making it anew each message cost more than the rest
            # of this call. unwatch() or the sweep reclaims it once nobody waits.
        received: Message = _isolate(snapshot)
        return received

    def watch(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """Resolve ``waiter`` (with None) when a message arrives on ``channel``.

        Use only on a channel with a single reader (a process-specific one), then
        :meth:`receive_nowait` to take the message, and :meth:`unwatch` when the
        wait ends for any reason. A message already waiting resolves it at once.
        """
        with self._lock:
            record = self.channels.get(channel)
            if record is None:
                record = self.channels[channel] = _Channel(self.get_capacity(channel))
            if record.queue:
                if not waiter.done():
                    waiter.set_result(None)
                return
            record.waiters.append(waiter)

    def unwatch(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """Forget ``waiter`` registered by :meth:`watch` (a no-op once it was woken)."""
        with self._lock:
            record = self.channels.get(channel)
            if record is None:
                return
            waiters = record.waiters
            # Membership test first: a failed deque.remove() formats the future's repr.
            if waiters and waiters[-1] is waiter:
                waiters.pop()
            elif waiter in waiters:
                waiters.remove(waiter)
            if not record.queue and not waiters:
                del self.channels[channel]

    def set_direct(self, channel: str, send_now: Callable[[Message], bool] | None) -> None:
        """Let ``group_send`` hand ``websocket.send`` messages for ``channel`` to ``send_now``.

        A Tidings extension for broadcasts (see the module docstring, *Direct
        delivery*): ``send_now(message)`` writes the message to the member's
        socket at once and returns True, or returns False to have it queued as
        usual. None removes the registration.
        """
        with self._lock:
            if send_now is None:
                self._direct.pop(channel, None)
            else:
                self._direct[channel] = send_now

    def channel_source(self, channel: str) -> ChannelSource:
        """``channel`` as a message source that :class:`~tidings.utils.MessageMux` can poll."""
        if "!" not in channel:
            return super().channel_source(channel)
        self.require_valid_channel_name(channel)
        return ChannelSource(channel, self.receive, self._receive_nowait, self.watch, self.unwatch)

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
        self._join(group, channel)

    def _join(self, group: str, channel: str) -> None:
        """``group_add`` of checked names (no await inside)."""
        with self._lock:
            now = self._clock()
            self._maybe_sweep(now)
            self.groups.setdefault(group, {})[channel] = now
            self._memberships.setdefault(channel, set()).add(group)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it is not a member.

        Raises:
            TypeError: the group or channel name is not valid.
        """
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._leave(group, channel)

    def _leave(self, group: str, channel: str) -> None:
        """``group_discard`` of checked names (no await inside)."""
        with self._lock:
            self._remove_membership(group, channel)

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
        self._group_put(group, _isolate(message))

    def _group_put(self, group: str, snapshot: Message) -> None:
        """``group_send`` of a checked name and a message nobody else holds (no await inside)."""
        loop = asyncio.get_running_loop()
        direct = self._direct if self._direct and snapshot.get("type") == "websocket.send" else None
        handed: list[tuple[_Channel, Callable[[Message], bool]]] = []
        with self._lock:
            now = self._clock()
            self._maybe_sweep(now)
            members = self.groups.get(group)
            if not members:
                return
            channels = self.channels
            joined_after = now - self.group_expiry
            entry = (now + self.expiry, snapshot)
            stale: list[str] = []
            expired: list[str] = []
            for channel, joined in members.items():
                if joined <= joined_after:
                    stale.append(channel)
                    continue
                record = channels.get(channel)
                if record is None:
                    record = channels[channel] = _Channel(self.get_capacity(channel))
                elif record.queue and record.queue[0][0] <= now:
                    self._drop_expired(record, now)
                    if self._leave_groups_on_expiry:
                        expired.append(channel)
                        continue
                if direct is not None and not record.queue and record.waiters:
                    # An idle member (its consumer waits in this loop, nothing queued):
                    # its socket can take the message directly, after the lock.
                    send_now = direct.get(channel)
                    waiter = record.waiters[0]
                    if send_now is not None and waiter.get_loop() is loop and not waiter.done():
                        handed.append((record, send_now))
                        continue
                self._offer(record, entry, loop)
            for channel in stale:
                self._remove_membership(group, channel)
            for channel in expired:
                self._leave_groups(channel)
        for record, send_now in handed:
            if not send_now(snapshot):
                # The socket could not take it now (slow client, closing): queue it as
                # usual; the consumer's websocket_send handler will send it.
                with self._lock:
                    self._offer(record, entry, loop)

    # -- whole layer --------------------------------------------------------

    async def flush(self) -> None:
        """Drop every message and every group; waiting receivers keep waiting."""
        with self._lock:
            self.groups.clear()
            self._memberships.clear()
            for channel, record in list(self.channels.items()):
                record.queue.clear()
                if not record.waiters:
                    del self.channels[channel]

    # -- internals (call with self._lock held) ------------------------------

    def _offer(
        self, record: _Channel, entry: tuple[float, Message], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Queue a group message's ``entry`` unless the channel is full (it then misses it)."""
        if len(record.queue) < record.capacity:
            record.queue.append(entry)
            if record.waiters:
                self._wake_one(record, loop)

    def _wake_one(self, record: _Channel, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the first live waiter of ``record``, removing it from the waiters."""
        while record.waiters:
            waiter = record.waiters.popleft()
            if waiter.done():
                continue
            waiter_loop = waiter.get_loop()
            if waiter_loop is loop:
                waiter.set_result(None)
                return
            try:
                waiter_loop.call_soon_threadsafe(_notify, waiter)
            except RuntimeError:
                continue  # its loop is closed: that receiver is gone
            return

    def _abandon(
        self,
        channel: str,
        record: _Channel,
        waiter: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Clean up after a receiver that stopped waiting without taking a message."""
        try:
            record.waiters.remove(waiter)
        except ValueError:
            # A sender had already chosen this waiter: hand its wake-up on.
            if record.queue:
                self._wake_one(record, loop)
        if not record.queue and not record.waiters and self.channels.get(channel) is record:
            del self.channels[channel]

    def _drop_expired(self, record: _Channel, now: float) -> bool:
        """Drop the expired messages at the head of ``record``; return whether there were any."""
        queue = record.queue
        if not queue or queue[0][0] > now:
            return False
        while queue and queue[0][0] <= now:
            queue.popleft()
        return True

    def _leave_groups(self, channel: str) -> None:
        """Remove ``channel`` from every group it belongs to (if expiry does that)."""
        if not self._leave_groups_on_expiry:
            return
        for group in self._memberships.pop(channel, ()):
            members = self.groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self.groups[group]

    def _remove_membership(self, group: str, channel: str) -> None:
        """Remove one membership from both indexes."""
        members = self.groups.get(group)
        if members is not None and members.pop(channel, None) is not None and not members:
            del self.groups[group]
        groups = self._memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._memberships[channel]

    def _maybe_sweep(self, now: float) -> None:
        """At most once per ``expiry`` seconds, drop what expired anywhere in the layer."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.expiry
        expired: list[str] = []
        for channel, record in list(self.channels.items()):
            if self._drop_expired(record, now):
                expired.append(channel)
            if not record.queue and not record.waiters:
                del self.channels[channel]
        for channel in expired:
            self._leave_groups(channel)
        joined_after = now - self.group_expiry
        for group, members in list(self.groups.items()):
            for channel, joined in list(members.items()):
                if joined <= joined_after:
                    self._remove_membership(group, channel)
