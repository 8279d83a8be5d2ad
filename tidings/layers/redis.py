"""The Redis channel layer: channels and groups shared by many processes on many hosts.

Configure it as Channels' ``channels_redis`` (whose ``BACKEND`` path is read
as this class)::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "tidings.layers.redis.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]},
        },
    }

Theory of operation
-------------------
Each layer instance is a *node* with a random id. ``new_channel()`` names
channels ``"<prefix>.<node>!<random>"``, so any process can tell from a
channel's name which node reads it.

**Local channels** (those with ``!``) are read only by their node. The node
keeps their queues in memory, in a :class:`~tidings.layers._mailboxes.Mailboxes`
(capacity, expiry, cancellation-safe receives, wake-ups across event loops
and threads), together with the memberships of its channels. A send to a
channel of the sender's own node never touches Redis. A send to another
node's channel is one script run that hands ``D <channel> <payload>`` to
that node's *inbox*. Each node runs one receive loop per shard that routes
its inbox's entries to its local queues.

**Delivery.** A receive loop on the lean client (:mod:`tidings.layers._resp`)
*listens*: it holds a ``SUBSCRIBE`` to a pub/sub channel named like its
inbox key. A script publishes an entry straight to a listening node whose
inbox list is empty, so a message costs that node no command at all.
Otherwise (nobody listens, or entries are already queued) the entry is
appended to the inbox *list*. A node that (re)subscribes pops the list in
batches until a pop comes back short, so what queued meanwhile comes first,
and holds what is published during a pop until the popped entries are routed,
so entries from one sender keep their order (see
:mod:`tidings.layers._redis_node`). The subscription is pinged at every
marker check and replaced when it drops or stops answering; entries Redis
had already pushed to a dropped subscription are lost, as any message in
flight may be. Loops on redis-py
clients (Sentinel, TLS, other redis-py options) and every loop of a Redis
Cluster deployment (whose PUBLISH reaches every cluster node) wait on the
list instead: ``BLMOVE`` then a pop.

**Groups.** Redis holds, per group, the members with the time they were
added (a sorted set, so memberships expire after ``group_expiry``) and the
number of members per node (a hash). ``group_send`` is one script run: it
drops expired memberships and appends one entry ``G <group> <payload>`` to
the inbox of every *other* node that has members; members of the sender's
own node are served in-process. The entry holds the group name, never the
member list: a node resolves the group against the memberships it holds.
Redis and each node agree on those because memberships of a node's channels
change through that node: its own ``group_add``/``group_discard`` update its
memory before Redis, and another node's change to them also queues a
``J``/``L`` entry on the owner's inbox, in the same script. Members that are
shared channels (no ``!``) are returned by the script and sent to, one send
script per member, by the caller.

**Shared channels** (no ``!``, e.g. ``"thumbnails"``) are Redis lists read
by competing workers. ``send`` is one script that drops expired entries,
checks the capacity and appends. ``receive`` pops with a script (dropping
expired entries) and, when the list is empty, waits with
``BLMOVE key key LEFT LEFT``: a rotation of the list onto itself, which
wakes up when an entry arrives but takes nothing, so a receive cancelled
while it waits cannot lose a message.

**Entries** start with their deadline in server milliseconds (see
:mod:`tidings.layers._redis_scripts`); lists get a TTL just past ``expiry``,
so queues that nobody reads vanish. An entry routed into a node's memory
starts a fresh ``expiry`` there (its time in the inbox, normally
milliseconds, is not deducted), and a node's queues drop what expires
unread, so buffers of channels nobody reads stay bounded (``capacity``)
and are reclaimed. A channel whose message expired unread stays in its
groups (channels_redis' rule, a parameter of the mailboxes; the in-memory
layer's differs), as Redis still lists it. Messages are serialized even
between channels of one node, so they behave the same wherever their reader
runs; the decoded message is queued as it is (nobody else holds it) and each
receiver gets its own copy.

**Capacity.** Shared channels: checked in the send script. Local channels:
exact for senders of the same node; a remote sender gets ``ChannelFull``
when the owner has reported the channel full (the owner adds it to a
*full set* when its queue overflows and removes it when it is read again,
so that report lags by one message) or when the owner's inbox holds
``inbox_capacity`` unexpired entries (a stalled or dead node).
``group_send`` never raises ``ChannelFull``.

**Keys.** Every key is ``<prefix>:{<shard>}:<kind>:<name>``; all keys of one
shard share the hash tag ``{<shard>}``, so every script touches a single
Redis Cluster slot. A channel's list lives on the shard of its name, a
group on the shard of the group's name, a node's inbox on every shard (the
shard of the node's name gets the direct sends). Kinds: ``c`` channel list,
``i`` inbox, ``f`` full set, ``gm``/``gn``/``gp`` group members, per-node
counts and shared-channel members, ``alive`` the node's marker.

**Faults.** Commands that cannot reach Redis raise :class:`RedisUnavailable`
after ``COMMAND_RETRIES`` quick retries (about a third of a second). A
receive loop never dies: it logs one warning when its shard becomes
unreachable and one when it is back, retries with capped exponential
backoff, and every ``MARKER_CHECK_INTERVAL`` seconds (and after every
error) refreshes a marker key; a missing marker means the
server lost its data (a restart), and the node then registers again the
memberships and full reports of its live channels, with their original
times. It does the same when, after an error, it finds itself talking to
another server (a new run id): a Sentinel fail-over, whose new master may
lack the old master's last writes (those of the seconds when both were
masters are lost), or a restart that loaded older data.

**Clients.** Plain hosts are served by the lean client of
:mod:`tidings.layers._resp` (one pipelined connection for all commands,
replies parsed by hiredis), others by redis-py (see
:mod:`tidings.layers._redis_hosts`).

**Event loops.** Connections belong to the loop that opened
them, so clients are kept per event loop. A guard task in each loop closes
that loop's clients when the loop shuts down (``asyncio.run`` and
``async_to_sync`` cancel it), so ``async_to_sync(layer.group_send)`` works
call after call. The receive loops run in the loop that first needed them
and move to a new loop when theirs has closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

from tidings import _metrics
from tidings.exceptions import ChannelFull
from tidings.layers._mailboxes import Mailboxes
from tidings.layers._names import check_name_prefix
from tidings.layers._options import positive_int, positive_number
from tidings.layers._redis_codec import Codec, UnreadableMessage
from tidings.layers._redis_hosts import HostSpec, parse_hosts
from tidings.layers._redis_node import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    INBOX_BATCH,
    MARKER_CHECK_INTERVAL,
    MARKER_TTL,
    READER_GRACE,
    NodeReceiver,
    RedisUnavailable,
    node_of_channel,
)
from tidings.layers._redis_scripts import (
    ENTRY_HEAD,
    GROUP_ADD,
    GROUP_DISCARD,
    GROUP_SEND,
    POP,
    SEND,
)
from tidings.layers.base import (
    DEFAULT_CAPACITY,
    DEFAULT_EXPIRY,
    BaseChannelLayer,
    CapacityPattern,
    ChannelSource,
    Message,
)
from tidings.layers.inmemory import DEFAULT_GROUP_EXPIRY

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "DEFAULT_INBOX_CAPACITY",
    "INBOX_BATCH",
    "MARKER_CHECK_INTERVAL",
    "MARKER_TTL",
    "READER_GRACE",
    "RedisChannelLayer",
    "RedisUnavailable",
    "node_of_channel",
]

DEFAULT_INBOX_CAPACITY: Final = 1000
"""Unexpired entries a node's inbox may hold (only a stalled or dead node's fills up)."""

_CHECKED_NAMES: Final = 65536  # checked names remembered, then forgotten all at once

_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")


@_metrics.timed(send="layer_send", group_send="layer_group_send")
class RedisChannelLayer(BaseChannelLayer):
    """A channel layer on Redis: many processes, many hosts, per-node group fan-out.

    Args:
        hosts: the Redis deployments to use; see :mod:`tidings.layers._redis_hosts`
            (URLs, ``(host, port)`` pairs, dicts incl. Sentinel and Cluster).
            Several entries shard the layer. Default ``[("localhost", 6379)]``.
        prefix: prefix of every key, so that layers can share a Redis.
        expiry: seconds a message may wait unread.
        group_expiry: seconds a membership lasts after its last ``group_add``.
        capacity: messages a channel may hold.
        channel_capacity: per-channel capacities by glob or regex (see
            :class:`~tidings.layers.BaseChannelLayer`).
        symmetric_encryption_keys: keys to encrypt message payloads with
            (Fernet; needs the ``cryptography`` package). The first encrypts;
            all decrypt, so keys can be rotated. A message that no key
            decrypts is logged and dropped.
        random_prefix_length: length of the node id in channel names.
        serializer_format: a format of :data:`tidings.layers.serializers.registry`:
            ``"msgpack"`` (default; carries bytes), ``"json"`` or one registered there.
        inbox_capacity: unexpired entries a node's inbox may hold.

    Raises:
        ValueError: an option is out of range or malformed (a subclass,
            ``InvalidChannelLayerError``, when ``cryptography`` is missing).
        TypeError: a ``channel_capacity`` key is neither a glob nor a regex.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        hosts: Sequence[Any] | None = None,
        *,
        prefix: str = "asgi",
        expiry: float = DEFAULT_EXPIRY,
        group_expiry: float = DEFAULT_GROUP_EXPIRY,
        capacity: int = DEFAULT_CAPACITY,
        channel_capacity: Mapping[CapacityPattern, int] | None = None,
        symmetric_encryption_keys: Sequence[str | bytes] | None = None,
        random_prefix_length: int = 12,
        serializer_format: str = "msgpack",
        inbox_capacity: int = DEFAULT_INBOX_CAPACITY,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.group_expiry: float = positive_number("group_expiry", group_expiry)
        if not isinstance(prefix, str) or not prefix or re.search(r"[{}\s]", prefix):
            raise ValueError(f"prefix must be a non-empty str without braces, not {prefix!r}")
        self.prefix = prefix
        self.inbox_capacity = positive_int("inbox_capacity", inbox_capacity)
        length = positive_int("random_prefix_length", random_prefix_length)
        if not 8 <= length <= 32:
            raise ValueError(f"random_prefix_length must be between 8 and 32, not {length}")
        self.hosts: list[HostSpec] = parse_hosts(hosts)
        self._codec = Codec(serializer_format, symmetric_encryption_keys, expiry=self.expiry)
        self._node = secrets.token_hex(16)[:length]
        # This node's queues and memberships (group -> {channel: time of the add}),
        # under channels_redis' rule: a channel whose message expired unread stays
        # in its groups (until group_discard or group_expiry), as Redis lists it there.
        self._mailboxes = Mailboxes(
            expiry=self.expiry,
            group_expiry=self.group_expiry,
            capacity_of=self.get_capacity,
            leave_groups_on_expiry=False,
        )
        # Shared by every polled ChannelSource of this layer (see channel_source): bound
        # methods made once, not four per consumer.
        mailboxes = self._mailboxes
        self._source_calls = (self.receive, self._poll, mailboxes.watch, mailboxes.unwatch)
        # Shards, clients, receive loops and full reports.
        self._receiver = NodeReceiver(
            self._node,
            self.hosts,
            prefix=prefix,
            expiry=self.expiry,
            group_expiry=self.group_expiry,
            codec=self._codec,
            mailboxes=self._mailboxes,
        )
        # Names of this node's channels that receive() has checked (a receive loop
        # calls it per message; the checks cost more than the wait's bookkeeping).
        self._checked: set[str] = set()

    @property
    def node(self) -> str:
        """This layer instance's node id (the process part of its channel names)."""
        return self._node

    # -- channels -----------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        """Put ``message`` on ``channel``: one script run, or none for this node's channels.

        Raises:
            ChannelFull: the channel is full (see the module docstring for
                channels of other processes).
            RedisUnavailable: Redis cannot be reached.
            TypeError: the channel name or the message is not valid.
        """
        self.require_valid_channel_name(channel)
        self.require_message(message)
        payload = self._codec.dumps(message)
        if "!" in channel:
            node = node_of_channel(channel)
            if node == self._node:
                self._mailboxes.put(channel, self._codec.loads(payload))
                return
            shard = self._receiver.home_shard(node)
            keys = self._receiver.keys[shard]
            body = b"D" + channel.encode() + b" " + self._codec.seal(payload)
            queued = await self._receiver.run(
                shard,
                SEND,
                [keys.inbox(node), keys.full(node)],
                [
                    self._receiver.expiry_ms,
                    self.inbox_capacity,
                    body,
                    channel,
                    self._receiver.publish,
                ],
            )
        else:
            queued = await self._send_shared(channel, self._codec.seal(payload))
        if not queued:
            _metrics.channel_full()
            raise ChannelFull(f"channel {channel!r} is full")

    async def _send_shared(self, channel: str, sealed: bytes) -> bool:
        shard = self._receiver.shard_of(channel)
        key = self._receiver.keys[shard].channel(channel)
        args = [self._receiver.expiry_ms, self.get_capacity(channel), sealed, "", ""]
        return bool(await self._receiver.run(shard, SEND, [key, key], args))

    async def receive(self, channel: str) -> Message:
        """Wait for the next message on ``channel`` and return it.

        Channels of this node are read from memory (the node's receive loop
        fills it); shared channels from Redis, each message going to exactly
        one of the competing receivers. Cancelling a waiting receive loses no
        message.

        Raises:
            ValueError: ``channel`` is a process-specific channel of another node.
            RedisUnavailable: Redis cannot be reached (shared channels only).
            TypeError: the channel name is not valid.
        """
        if channel not in self._checked:
            self.require_valid_channel_name(channel)
            if "!" not in channel:
                return await self._receive_shared(channel)
            if node_of_channel(channel) != self._node:
                raise ValueError(
                    f"channel {channel!r} belongs to another process; only the layer whose "
                    "new_channel() made it can receive on it"
                )
            if len(self._checked) >= _CHECKED_NAMES:
                self._checked.clear()
            self._checked.add(channel)
        self._receiver.ensure_readers()
        message = await self._mailboxes.take(channel)
        if channel in self._receiver.full:
            self._receiver.unmark_full(channel)
        return message

    def channel_source(self, channel: str) -> ChannelSource:
        """``channel`` as a message source; this node's channels can be polled.

        Raises:
            TypeError: the channel name is not valid.
        """
        self.require_valid_channel_name(channel)
        if "!" not in channel or node_of_channel(channel) != self._node:
            return ChannelSource(channel, self.receive)
        return ChannelSource(channel, *self._source_calls)

    def set_direct(self, channel: str, send_now: Callable[[Message], bool] | None) -> None:
        """Direct delivery of ``websocket.send`` group messages to a socket of this node.

        See :meth:`InMemoryChannelLayer.set_direct`; channels of other nodes are ignored.
        """
        if "!" in channel and node_of_channel(channel) == self._node:
            self._mailboxes.set_direct(channel, send_now)

    def _poll(self, channel: str) -> Message | None:
        """Non-blocking receive on a channel of this node (see ``channel_source``).

        MessageMux polls before every wait, so this also (re)starts the receive
        loops that will fill the channel.
        """
        self._receiver.ensure_readers()
        message = self._mailboxes.take_nowait(channel)
        if message is not None and channel in self._receiver.full:
            self._receiver.unmark_full(channel)
        return message

    async def _receive_shared(self, channel: str) -> Message:
        shard = self._receiver.shard_of(channel)
        key = self._receiver.keys[shard].channel(channel)
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (inside redis-py) can swallow a
                # cancellation; never take a message for a cancelled receive.
                raise asyncio.CancelledError
            entries = await self._receiver.run(shard, POP, [key], [1])
            if entries:
                try:
                    return self._codec.read(entries[0][ENTRY_HEAD:])
                except UnreadableMessage as exc:
                    self._receiver.log_unreadable(channel, exc)
                    continue
            client = self._receiver.clients(shard).main
            with self._receiver.unavailable(shard):
                await client.blmove(key, key, self._receiver.block_timeout(shard), "LEFT", "LEFT")

    async def new_channel(self, prefix: str = "specific") -> str:
        """Return a new channel name of this node, ``"<prefix>.<node>!<random>"``.

        Also starts this node's receive loops if they are not running.

        Raises:
            TypeError: ``prefix`` is not a valid name part, or too long.
        """
        check_name_prefix(prefix)
        name = f"{prefix}.{self._node}!{secrets.token_hex(12)}"
        self.require_valid_channel_name(name)
        self._receiver.ensure_readers()
        return name

    # -- groups -------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``, or refresh the membership's expiry: one script run.

        Raises:
            RedisUnavailable: Redis cannot be reached (the membership is not added).
            TypeError: the group or channel name is not valid.
        """
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        node = node_of_channel(channel) if "!" in channel else ""
        control = b""
        was_member = False
        if node == self._node:
            was_member = self._mailboxes.join(group, channel)
        elif node:
            control = f"J{group} {channel}".encode()
        shard = self._receiver.shard_of(group)
        try:
            await self._receiver.run(
                shard,
                GROUP_ADD,
                self._receiver.keys[shard].group(group, node or "-"),
                [
                    channel,
                    node,
                    self._receiver.group_expiry_ms,
                    0,
                    0,
                    control,
                    self._receiver.expiry_ms,
                    self._receiver.publish,
                ],
            )
        except RedisUnavailable:
            if node == self._node and not was_member:
                self._mailboxes.leave(group, channel)
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it is not a member.

        Raises:
            RedisUnavailable: Redis cannot be reached (for this node's channels
                the membership is gone here, and in Redis it expires).
            TypeError: the group or channel name is not valid.
        """
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        node = node_of_channel(channel) if "!" in channel else ""
        control = b""
        if node == self._node:
            self._mailboxes.leave(group, channel)
        elif node:
            control = f"L{group} {channel}".encode()
        shard = self._receiver.shard_of(group)
        await self._receiver.run(
            shard,
            GROUP_DISCARD,
            self._receiver.keys[shard].group(group, node or "-"),
            [channel, node, control, self._receiver.expiry_ms, self._receiver.publish],
        )

    async def group_send(self, group: str, message: Message) -> None:
        """Send ``message`` to every member of ``group``; never raises ``ChannelFull``.

        One script run queues one entry per other node with members; this
        node's members get it in-process; members that are shared channels
        cost one more script run each.

        Raises:
            RedisUnavailable: Redis cannot be reached (members in this
                process have received the message).
            TypeError: the group name or the message is not valid.
        """
        self.require_valid_group_name(group)
        self.require_message(message)
        payload = self._codec.dumps(message)
        if group in self._mailboxes.groups:
            self._mailboxes.group_put(group, self._codec.loads(payload))
        shard = self._receiver.shard_of(group)
        keys = self._receiver.keys[shard]
        sealed = self._codec.seal(payload)
        _, shared = await self._receiver.run(
            shard,
            GROUP_SEND,
            keys.group(group, "-")[:3],
            [
                self._receiver.group_expiry_ms,
                self._receiver.expiry_ms,
                self.inbox_capacity,
                b"G" + group.encode() + b" " + sealed,
                self._node,
                keys.inbox(""),
                self._receiver.publish,
            ],
        )
        if shared:
            await asyncio.gather(*(self._send_shared(member.decode(), sealed) for member in shared))

    # -- whole layer --------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key of this layer's prefix, and this node's queues and memberships.

        Keys of other prefixes are left alone. Waiting receivers keep waiting.

        Raises:
            RedisUnavailable: Redis cannot be reached.
        """
        # Stop the receive loops first: one registering memberships again
        # meanwhile would bring back what is being deleted.
        readers = await self._receiver.stop_readers()
        self._receiver.forget_full()
        self._mailboxes.clear()
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ":{*"
        state = self._receiver.loops.get()
        for index, host in enumerate(state.hosts):
            client = host.main
            with self._receiver.unavailable(self._receiver.shard_host.index(index)):
                batch: list[bytes] = []
                async for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        await client.unlink(*batch)
                        batch = []
                if batch:
                    await client.unlink(*batch)
        if readers is not None:
            self._receiver.ensure_readers()

    async def close_pools(self) -> None:
        """Close every connection, in every event loop (channels_redis' method of that name).

        The layer stays usable: receive loops that were running start again
        at once in their event loop, and other connections reopen on demand.
        """
        readers = await self._receiver.stop_readers()
        await self._receiver.loops.aclose()
        if readers is not None:
            if readers.loop is asyncio.get_running_loop():
                self._receiver.ensure_readers()
            else:
                with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                    readers.loop.call_soon_threadsafe(self._receiver.ensure_readers)

    def serialize(self, message: Message) -> bytes:
        """Return ``message`` as the layer stores it in Redis: serialized, then encrypted.

        Raises:
            TypeError: the message holds a value the format cannot carry.
        """
        return self._codec.seal(self._codec.dumps(message))

    def deserialize(self, message: bytes) -> Message:
        """Return the message that :meth:`serialize` turned into ``message``.

        Raises:
            ValueError: no key decrypts it, or it is not a message in this format.
        """
        return self._codec.read(message)

    async def close(self) -> None:
        """Stop the receive loops and close every connection, in every event loop.

        The layer may be used again afterwards; it reconnects on demand.
        """
        await self._receiver.aclose()
