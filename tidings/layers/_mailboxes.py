"""Mailboxes: the queues, groups and expiry rules that both channel layers keep in memory.

Theory of operation
-------------------
:class:`Mailboxes` is the in-process core of the in-memory layer and of a
Redis node's local channels. It never checks names, never serializes and
never copies at the door: its callers (the layers) do that once, before
``put``/``group_put``. What a receiver takes goes through ``copy`` (the
layers pass :func:`isolate`), so receivers never share a mutable object.

State is four dicts guarded by one ``threading.Lock`` (``lock``):

- ``channels``: channel name -> :class:`Mailbox` (a deque of ``(expires_at,
  message)`` and a list of waiting receivers' futures, each made only when
  first needed and dropped by the sweep once found empty);
- ``groups``: group -> {channel: time of the last ``join``};
- ``memberships``: channel -> its group (a set when it has several), the
  reverse index, so that a channel can leave all its groups at once;
- ``direct``: channel -> the non-blocking writer of its consumer's socket
  (see *Direct delivery*).

**Loops and threads.** Nothing is bound to an event loop at construction, so
one instance serves any number of loops, one after another or at once. The
lock is held only for short, non-blocking sections and never across an
``await``. A waiting receiver parks on a future of its own loop; a sender
running in that loop resolves it directly, a sender in another loop or
thread goes through ``call_soon_threadsafe``.

**Cancellation safety.** A future only says "look again"; the message stays
in the deque until the receiver, running again, takes it in the same step
that returns it. A receiver cancelled after it was woken (and so removed
from the waiters) passes the wake-up on to the next waiter if messages
remain, so no message is stranded behind a dead waiter. A waiter whose loop
was closed under it is skipped by the next sender.

``channels`` lists a channel while it holds messages or has a receiver
waiting (the in-memory layer publishes it under Channels' name and shape).

**Bounds.** A channel holds at most ``capacity_of(channel)`` messages; each
expires ``expiry`` seconds after it was put. Expired messages are dropped
whenever their channel is touched, and a sweep, at most once per ``expiry``
seconds and run by the next take or group operation, drops expired messages
of channels nobody touches, empty mailboxes and memberships older than
``group_expiry``. ``put`` leaves the sweep to receivers (as Channels does)
until there are ``SEND_SWEEP_CHANNELS`` mailboxes; past that it sweeps too,
so a flood of sends to channels nobody reads stays bounded.

**Membership rule on expiry** (a constructor parameter, as the two layers
differ). With ``leave_groups_on_expiry=True`` (Channels' in-memory rule) a
channel whose message expired unread leaves all its groups, missing the
``group_put`` that noticed: the spec allows it, and it keeps a consumer that
died without ``group_discard`` from costing a full queue per group for a
day. With False (channels_redis' rule) memberships last until ``leave`` or
``group_expiry``, as Redis still lists them.

**Fan-out.** ``group_put`` is one loop under one lock acquisition: an append
and at most one wake-up per member, no task per member, one shared entry.

**Direct delivery** (a Tidings extension). A group message of type
``websocket.send`` means "send this to the client". A consumer whose socket
is served by the Tidings server registers its socket's non-blocking writer
with :meth:`Mailboxes.set_direct`. ``group_put`` then hands such a message
straight to that writer for every member that is *idle* (its consumer waits
in this event loop and has nothing queued), without waking the consumer.
Ordering is kept (an idle member has nothing before it), and a member that
is busy, slow (the writer returns False) or in another loop gets the
message queued as usual.

Must not be added here: name checks, serialization, Redis, anything that
awaits while holding ``lock``.
"""

from __future__ import annotations

import asyncio
import copy as _copy
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from tidings import _metrics
from tidings.exceptions import ChannelFull
from tidings.layers.base import Message

__all__ = ["SEND_SWEEP_CHANNELS", "Mailbox", "Mailboxes", "isolate"]

SEND_SWEEP_CHANNELS: Final = 1024
"""From this many mailboxes on, a due sweep also runs on ``put``."""

_ATOMS: Final = frozenset({str, bytes, int, float, bool, complex, type(None)})


def isolate(value: Any) -> Any:
    """Return a copy of ``value`` that shares nothing mutable with it.

    Rebuilds dicts, lists and tuples, copies bytearrays, shares immutable
    scalars (``str``, ``bytes``, numbers, ``None``) and falls back to
    ``copy.deepcopy`` for any other type. A cyclic value raises ``RecursionError``.
    """
    cls = type(value)
    if cls is dict:
        return {k: (v if type(v) in _ATOMS else isolate(v)) for k, v in value.items()}
    if cls in _ATOMS:
        return value
    if cls is list:
        return [v if type(v) in _ATOMS else isolate(v) for v in value]
    if cls is tuple:
        return tuple(v if type(v) in _ATOMS else isolate(v) for v in value)
    if cls is bytearray:
        return bytearray(value)
    return _copy.deepcopy(value)


def _notify(waiter: asyncio.Future[None]) -> None:
    """Wake ``waiter`` unless it is already done (cancelled meanwhile)."""
    if not waiter.done():
        waiter.set_result(None)


class Mailbox:
    """One channel's queued messages and waiting receivers.

    There is one per idle consumer (its reader waits here), so both containers
    are made only when needed: ``queue`` is None until a message comes,
    ``waiters`` None until someone waits. The hot paths (a consumer reading
    group messages) keep them once emptied, since making them anew for every
    message cost about 3 % of a delivered message's instructions; the sweep
    drops those it finds empty. Waiters are a list (most mailboxes have one
    reader; a deque costs ten times as much).
    """

    __slots__ = ("capacity", "queue", "waiters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue: deque[tuple[float, Message]] | None = None
        self.waiters: list[asyncio.Future[None]] | None = None

    def size(self) -> int:
        """How many messages are queued."""
        return 0 if self.queue is None else len(self.queue)

    def push(self, entry: tuple[float, Message]) -> None:
        """Queue ``entry`` (the caller checked the capacity)."""
        if self.queue is None:
            self.queue = deque()
        self.queue.append(entry)

    def pop(self) -> tuple[float, Message]:
        """Take the first queued entry (there must be one)."""
        assert self.queue is not None
        entry = self.queue.popleft()
        if not self.queue:
            self.queue = None
        return entry

    def add_waiter(self, waiter: asyncio.Future[None]) -> None:
        if self.waiters is None:
            self.waiters = [waiter]
        else:
            self.waiters.append(waiter)

    def next_waiter(self) -> asyncio.Future[None] | None:
        """Remove and return the first waiter, or None if nobody waits."""
        waiters = self.waiters
        if not waiters:
            return None
        waiter = waiters.pop(0)
        if not waiters:
            self.waiters = None
        return waiter

    def remove_waiter(self, waiter: asyncio.Future[None]) -> bool:
        """Forget ``waiter``; return whether it was waiting."""
        waiters = self.waiters
        if not waiters:
            return False
        # Identity first (the usual case, the last one in): a failed list.remove()
        # would compare futures with ==, and index() formats nothing either way.
        if waiters[-1] is waiter:
            waiters.pop()
        else:
            for index, other in enumerate(waiters):
                if other is waiter:
                    del waiters[index]
                    break
            else:
                return False
        if not waiters:
            self.waiters = None
        return True


class Mailboxes:
    """Channel queues, groups, memberships and direct senders of one process.

    Args:
        expiry: seconds a message may wait unread.
        group_expiry: seconds a membership lasts after its last ``join``.
        capacity_of: the capacity of a channel, by name (read when its mailbox is made).
        leave_groups_on_expiry: the membership rule (see the module docstring).
        copy: applied to every message a receiver takes.
        clock: the monotonic clock (tests pass a fake one); also the ``clock`` attribute.
    """

    def __init__(
        self,
        *,
        expiry: float,
        group_expiry: float,
        capacity_of: Callable[[str], int],
        leave_groups_on_expiry: bool,
        copy: Callable[[Message], Message] = isolate,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.expiry = expiry
        self.group_expiry = group_expiry
        self.capacity_of = capacity_of
        self.leave_groups_on_expiry = leave_groups_on_expiry
        self.copy = copy
        self.clock = clock
        self.lock = threading.Lock()
        self.channels: dict[str, Mailbox] = {}
        self.groups: dict[str, dict[str, float]] = {}
        # channel -> its group, or a set of them when there are several (one set per
        # channel would cost 200 bytes for every consumer in a single room).
        self.memberships: dict[str, str | set[str]] = {}
        self.direct: dict[str, Callable[[Message], bool]] = {}
        self.next_sweep = -math.inf
        """When the next sweep is due (on ``clock``)."""

    # -- channels -----------------------------------------------------------

    def put(self, channel: str, snapshot: Message) -> None:
        """Queue ``snapshot`` (a message nobody else holds) on ``channel``; call in a loop.

        Raises:
            ChannelFull: the channel holds its capacity of unexpired messages.
        """
        loop = asyncio.get_running_loop()
        with self.lock:
            now = self.clock()
            if len(self.channels) >= SEND_SWEEP_CHANNELS:
                self._maybe_sweep(now)
            record = self.channels.get(channel)
            if record is None:
                record = self.channels[channel] = Mailbox(self.capacity_of(channel))
            elif self._drop_expired(record, now):
                self._leave_groups(channel)
            if record.size() >= record.capacity:
                _metrics.channel_full()
                raise ChannelFull(f"channel {channel!r} is full ({record.capacity} messages)")
            record.push((now + self.expiry, snapshot))
            if record.waiters:
                self._wake_one(record, loop)

    async def take(self, channel: str) -> Message:
        """Wait for the next message on ``channel`` and return ``copy`` of it.

        Several receivers of one channel each get different messages, in FIFO
        order of their wake-ups. Cancelling a waiting ``take`` loses no message.
        """
        loop = asyncio.get_running_loop()
        record: Mailbox | None = None
        while True:
            with self.lock:
                now = self.clock()
                self._maybe_sweep(now)
                woken_on, record = record, self.channels.get(channel)
                if record is None and woken_on is not None and woken_on.queue:
                    # The mailbox this receiver waited on was taken out of ``channels``
                    # (by code reaching into it, as Channels' tests do) after a message
                    # arrived: the message is still there, so put the mailbox back.
                    record = self.channels[channel] = woken_on
                if record is None:
                    record = self.channels[channel] = Mailbox(self.capacity_of(channel))
                else:
                    if self._drop_expired(record, now):
                        self._leave_groups(channel)
                    if record.queue:
                        deadline, snapshot = record.pop()
                        if (m := _metrics.ACTIVE) is not None:  # seconds it was queued
                            m.layer_receive.observe(now + self.expiry - deadline)
                        if not record.queue and not record.waiters:
                            del self.channels[channel]
                        break
                waiter: asyncio.Future[None] = loop.create_future()
                record.add_waiter(waiter)
            clean_up = True
            try:
                await waiter
                clean_up = False
            except GeneratorExit:
                # Closed without being cancelled: the garbage collector is
                # finalising a take whose loop is gone. That can happen while
                # this very thread holds the lock, so take no lock; _wake_one
                # already discards waiters of closed loops.
                clean_up = False
                raise
            finally:
                if clean_up:
                    with self.lock:
                        self._abandon(channel, record, waiter, loop)
        return self.copy(snapshot)

    def take_nowait(self, channel: str) -> Message | None:
        """Take ``copy`` of the next message of ``channel`` if one is waiting, else None."""
        with self.lock:
            # Polled before every wait of every consumer: the cheap tests come inline.
            now = self.clock()
            if now >= self.next_sweep:
                self._maybe_sweep(now)
            record = self.channels.get(channel)
            if record is None:
                return None
            queue = record.queue
            if not queue:
                return None
            if queue[0][0] <= now and self._drop_expired(record, now):
                self._leave_groups(channel)
                queue = record.queue
                if not queue:
                    return None
            # Mailbox.pop() inlined (this runs for every message a consumer reads).
            deadline, snapshot = queue.popleft()
            # An emptied queue stays (making a deque per message costs more than the
            # rest of this call); the sweep drops it if it stays empty.
            if (m := _metrics.ACTIVE) is not None:  # seconds it was queued
                m.layer_receive.observe(now + self.expiry - deadline)
            # The mailbox stays even when empty: its reader (a MessageMux) watches it
            # again at once, and making it anew each message cost more than the rest
            # of this call. unwatch() or the sweep reclaims it once nobody waits.
        return self.copy(snapshot)

    def watch(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """Resolve ``waiter`` (with None) when a message arrives on ``channel``.

        For a channel with a single reader, which then calls :meth:`take_nowait`,
        and :meth:`unwatch` when the wait ends. A waiting message resolves it at once.
        """
        with self.lock:
            record = self.channels.get(channel)
            if record is None:
                record = self.channels[channel] = Mailbox(self.capacity_of(channel))
            if record.queue:
                if not waiter.done():
                    waiter.set_result(None)
                return
            # Mailbox.add_waiter() inlined (once per wait of every consumer).
            waiters = record.waiters
            if waiters is None:
                record.waiters = [waiter]
            else:
                waiters.append(waiter)

    def unwatch(self, channel: str, waiter: asyncio.Future[None]) -> None:
        """Forget ``waiter`` registered by :meth:`watch` (a no-op once it was woken)."""
        with self.lock:
            record = self.channels.get(channel)
            if record is None:
                return
            if record.waiters:  # (else a sender took it already: the usual case)
                record.remove_waiter(waiter)
            if not record.queue and not record.waiters:
                del self.channels[channel]

    def set_direct(self, channel: str, send_now: Callable[[Message], bool] | None) -> None:
        """Let ``group_put`` hand ``websocket.send`` messages for ``channel`` to ``send_now``.

        ``send_now(message)`` writes the message at once and returns True, or
        returns False to have it queued as usual. None removes the registration.
        """
        with self.lock:
            if send_now is None:
                self.direct.pop(channel, None)
            else:
                self.direct[channel] = send_now

    # -- groups -------------------------------------------------------------

    def join(self, group: str, channel: str) -> bool:
        """Add ``channel`` to ``group`` or refresh its membership; return whether it existed."""
        with self.lock:
            now = self.clock()
            self._maybe_sweep(now)
            members = self.groups.setdefault(group, {})
            existed = channel in members
            members[channel] = now
            groups = self.memberships.get(channel)
            if groups is None:
                self.memberships[channel] = group
            elif isinstance(groups, set):
                groups.add(group)
            elif groups != group:
                self.memberships[channel] = {groups, group}
            return existed

    def leave(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it is not a member."""
        with self.lock:
            self._remove_membership(group, channel)

    def group_put(self, group: str, snapshot: Message) -> None:
        """Queue ``snapshot`` (nobody else holds it) for every member of ``group``; in a loop.

        Members whose channel is full miss it silently; memberships older than
        ``group_expiry`` are dropped on the way. Idle members with a direct
        sender get it through that sender, after the lock.
        """
        loop = asyncio.get_running_loop()
        direct = self.direct if self.direct and snapshot.get("type") == "websocket.send" else None
        with self.lock:
            now = self.clock()
            self._maybe_sweep(now)
            members = self.groups.get(group)
            if not members:
                return
            entry = (now + self.expiry, snapshot)
            records: list[Mailbox] = []
            senders: list[Callable[[Message], bool]] = []
            self._fan_out(group, members, entry, now, direct, loop, records, senders)
        direct_sent = len(senders)
        for record, send_now in zip(records, senders, strict=True):
            if not send_now(snapshot):
                # The socket could not take it now (slow client, closing): queue it as
                # usual; the consumer's websocket_send handler will send it.
                direct_sent -= 1
                with self.lock:
                    self._offer(record, entry, loop)
        if (m := _metrics.ACTIVE) is not None:
            m.group_fanout.observe(len(members))
            m.direct_deliveries += direct_sent

    def _fan_out(
        self,
        group: str,
        members: dict[str, float],
        entry: tuple[float, Message],
        now: float,
        direct: dict[str, Callable[[Message], bool]] | None,
        loop: asyncio.AbstractEventLoop,
        records: list[Mailbox],
        senders: list[Callable[[Message], bool]],
    ) -> None:
        """Under the lock: queue ``entry`` for ``members``, but for the idle direct ones.

        Those go to ``records`` and their writers to ``senders``, at the same index: two
        lists, not a list of pairs, as a pair per member is an object to allocate and
        free, and thousands of them per broadcast set off the garbage collector's full
        collections (each a pass over every object of the process).
        """
        channels = self.channels
        joined_after = now - self.group_expiry
        leave_on_expiry = self.leave_groups_on_expiry
        stale: list[str] = []
        expired: list[str] = []
        for channel, joined in members.items():
            if joined <= joined_after:
                stale.append(channel)
                continue
            record = channels.get(channel)
            if record is None:
                record = channels[channel] = Mailbox(self.capacity_of(channel))
            elif record.queue and record.queue[0][0] <= now:
                self._drop_expired(record, now)
                if leave_on_expiry:
                    expired.append(channel)
                    continue
            if direct is not None and not record.queue and record.waiters:
                # An idle member (its consumer waits in this loop, nothing queued):
                # its socket can take the message directly, after the lock.
                send_now = direct.get(channel)
                waiter = record.waiters[0]  # (not None: tested just above)
                if send_now is not None and waiter.get_loop() is loop and not waiter.done():
                    records.append(record)
                    senders.append(send_now)
                    continue
            self._offer(record, entry, loop)
        for channel in stale:
            self._remove_membership(group, channel)
        for channel in expired:
            self._leave_groups(channel)

    def live_memberships(self) -> list[tuple[str, str, float]]:
        """Drop memberships past ``group_expiry``; list the rest as ``(group, channel, age)``."""
        with self.lock:
            now = self.clock()
            self._drop_stale_memberships(now)
            return [
                (group, channel, now - joined)
                for group, members in self.groups.items()
                for channel, joined in members.items()
            ]

    def clear(self) -> None:
        """Drop every message and every membership; waiting receivers keep waiting."""
        with self.lock:
            self.groups.clear()
            self.memberships.clear()
            for channel, record in list(self.channels.items()):
                record.queue = None
                if not record.waiters:
                    del self.channels[channel]

    # -- internals (call with self.lock held) -------------------------------

    def _offer(
        self, record: Mailbox, entry: tuple[float, Message], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Queue a group message's ``entry`` unless the channel is full (it then misses it)."""
        # Mailbox.size() and push() inlined: this runs for every member of a group.
        queue = record.queue
        if queue is None:
            if record.capacity < 1:
                return
            queue = record.queue = deque()
        elif len(queue) >= record.capacity:
            return
        queue.append(entry)
        if record.waiters:
            self._wake_one(record, loop)

    def _wake_one(self, record: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the first live waiter of ``record``, removing it from the waiters."""
        waiters = record.waiters
        while waiters:
            # Mailbox.next_waiter() inlined (most mailboxes have one waiter); the
            # emptied list is kept for the next wait (the sweep drops it).
            waiter = waiters.pop(0)
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
        record: Mailbox,
        waiter: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Clean up after a receiver that stopped waiting without taking a message."""
        if not record.remove_waiter(waiter) and record.queue:
            # A sender had already chosen this waiter: hand its wake-up on.
            self._wake_one(record, loop)
        if not record.queue and not record.waiters and self.channels.get(channel) is record:
            del self.channels[channel]

    def _drop_expired(self, record: Mailbox, now: float) -> bool:
        """Drop the expired messages at the head of ``record``; return whether there were any."""
        queue = record.queue
        if not queue or queue[0][0] > now:
            return False
        while queue and queue[0][0] <= now:
            queue.popleft()
        if not queue:
            record.queue = None
        return True

    def _leave_groups(self, channel: str) -> None:
        """Remove ``channel`` from every group it belongs to (if the rule says so)."""
        if not self.leave_groups_on_expiry:
            return
        groups = self.memberships.pop(channel, ())
        for group in (groups,) if isinstance(groups, str) else groups:
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
        groups = self.memberships.get(channel)
        if groups == group:
            del self.memberships[channel]
        elif isinstance(groups, set):
            groups.discard(group)
            if len(groups) == 1:
                self.memberships[channel] = groups.pop()

    def _drop_stale_memberships(self, now: float) -> None:
        """Drop memberships older than ``group_expiry``."""
        joined_after = now - self.group_expiry
        for group, members in list(self.groups.items()):
            for channel, joined in list(members.items()):
                if joined <= joined_after:
                    self._remove_membership(group, channel)

    def _maybe_sweep(self, now: float) -> None:
        """At most once per ``expiry`` seconds, drop what expired anywhere."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + self.expiry
        expired: list[str] = []
        for channel, record in list(self.channels.items()):
            if self._drop_expired(record, now):
                expired.append(channel)
            if not record.queue and not record.waiters:
                del self.channels[channel]
                continue
            # Containers kept for the next message (see take_nowait and _wake_one)
            # are dropped once a sweep finds them still empty.
            if record.queue is not None and not record.queue:
                record.queue = None
            if record.waiters is not None and not record.waiters:
                record.waiters = None
        for channel in expired:
            self._leave_groups(channel)
        self._drop_stale_memberships(now)
