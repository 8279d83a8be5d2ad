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
keeps their queues in memory, in an :class:`~tidings.layers.InMemoryChannelLayer`
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
appended to the inbox *list*, and a ``W`` is published when the list was
empty; the node then pops the list in batches until a pop comes back
short. A node that (re)subscribes pops what queued meanwhile first, and
holds what is published during a pop until the popped entries are routed,
so entries from one sender keep their order (see :class:`_Listener`). The
subscription is pinged at every marker check and replaced when it drops
or stops answering; entries Redis had already pushed to a dropped
subscription are lost, as any message in flight may be. Loops on redis-py
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
and are reclaimed. Messages are serialized even between channels of one
node, so they behave the same wherever their reader runs.

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
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidings.exceptions import ChannelFull, ChannelLayerUnavailable
from tidings.layers._names import check_name_prefix
from tidings.layers._redis_codec import Codec, UnreadableMessage
from tidings.layers._redis_hosts import HostClients, HostSpec, jump_hash, parse_hosts
from tidings.layers._redis_loops import LoopClients, LoopState, cancel_task
from tidings.layers._redis_scripts import (
    ENTRY_HEAD,
    GROUP_ADD,
    GROUP_DISCARD,
    GROUP_SEND,
    POP,
    SEND,
    Keys,
    Script,
)
from tidings.layers._resp import RespClient, RespConnection
from tidings.layers.base import (
    DEFAULT_CAPACITY,
    DEFAULT_EXPIRY,
    BaseChannelLayer,
    CapacityPattern,
    ChannelSource,
    Message,
    _positive_int,
    _positive_number,
)
from tidings.layers.inmemory import DEFAULT_GROUP_EXPIRY, InMemoryChannelLayer

__all__ = [
    "DEFAULT_INBOX_CAPACITY",
    "RedisChannelLayer",
    "RedisUnavailable",
    "node_of_channel",
]

logger = logging.getLogger("tidings.layers.redis")

DEFAULT_INBOX_CAPACITY: Final = 1000
"""Unexpired entries a node's inbox may hold (only a stalled or dead node's fills up)."""

MARKER_CHECK_INTERVAL: Final = 10.0
"""Seconds between checks that Redis still holds this node's data."""

MARKER_TTL: Final = 60
"""Seconds a node's marker outlives its last check."""

READER_GRACE: Final = 5.0
"""Seconds past its blocking wait after which a receive loop step counts as failed."""

INBOX_BATCH: Final = 128
"""Inbox entries one pop takes at most."""

BACKOFF_MIN: Final = 0.05
BACKOFF_MAX: Final = 2.0
"""Reconnection delays of a receive loop, doubling from the first to the second."""

_REREGISTER_BATCH: Final = 64
_UNAVAILABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ReadOnlyError,
    TryAgainError,
    OSError,
)
_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")


class RedisUnavailable(ChannelLayerUnavailable):
    """Redis could not be reached (down, restarting, failing over, or the pool stayed full).

    Raised by ``send``, ``group_add``, ``group_discard``, ``group_send``,
    ``flush`` and by ``receive`` on shared channels; ``receive`` on a
    channel of this process keeps waiting while its receive loop reconnects.
    A subclass of :class:`tidings.exceptions.ChannelLayerUnavailable`, which
    backend-neutral code catches.
    """


def node_of_channel(channel: str) -> str:
    """Return the node id of a process-specific channel name (the part before ``!``'s last dot)."""
    return channel[: channel.index("!")].rpartition(".")[2]


class _Readers:
    """The receive loops of this node: one task per shard, all in one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = False
        self.ended = 0  # loop tasks that have finished (crashed or cancelled)

    def stopping(self, state: LoopState) -> bool:
        """Whether a loop using ``state`` should end.

        It should after ``close()``, when its event loop is ending, and when its
        task has been cancelled: inside redis-py, Python 3.11's ``asyncio.wait_for``
        (which applies ``socket_timeout``, e.g. to the sentinels) can swallow a
        cancellation (CPython gh-86296), and the loop must not then block for a
        whole wait.
        """
        task = asyncio.current_task()
        return self.stopped or state.closed or (task is not None and task.cancelling() > 0)

    @property
    def running(self) -> bool:
        """Not stopped and no loop task has ended (cheap: kept by done-callbacks)."""
        return not self.stopped and self.ended == 0

    def task_ended(self, task: asyncio.Task[None]) -> None:
        self.ended += 1

    def alive(self) -> bool:
        return self.running and not self.loop.is_closed()


class _Listener:
    """A receive loop's subscription to its node's inbox channel (lean clients only).

    Scripts publish an entry to a node whose inbox list is empty and that
    listens (see ``deliver`` in :mod:`tidings.layers._redis_scripts`), so a
    message costs the node no command: it is routed as it arrives. Otherwise
    the entry is queued on the list and, when the list was empty, a ``W``
    (wake) is published; the loop then pops the list until a pop comes back
    short. Entries published meanwhile are newer than everything queued, so
    they are *held* until the popped ones are routed. A new subscription
    holds from the start: what queued while nobody listened goes first.
    """

    def __init__(self, route: Callable[[bytes], None]) -> None:
        self.route = route
        self.connection: RespConnection | None = None
        self.woken = asyncio.Event()
        self.lost = False
        self.held: list[bytes] | None = []
        self.ponged = True

    def on_push(self, reply: Any) -> None:
        if reply is None:
            self.lost = True
            self.woken.set()
            return
        kind = reply[0]
        if kind == b"message":
            data = reply[2]
            if data == b"W":
                self.woken.set()
            elif self.held is not None:
                self.held.append(data)
            else:
                self.route(data)
        elif kind == b"subscribe":
            self.woken.set()  # pop what queued before
        elif kind == b"pong":
            self.ponged = True

    def release(self) -> None:
        """Route the held entries and stop holding."""
        held, self.held = self.held, None
        for entry in held or ():
            self.route(entry)

    def ping(self) -> None:
        """Check the subscription: drop it if the last ping went unanswered, else ping."""
        if self.connection is None or self.lost:
            return
        if not self.ponged:
            self.connection.abort(RedisTimeoutError("the inbox subscription stopped answering"))
            return
        self.ponged = False
        self.connection.write(b"*1\r\n$4\r\nPING\r\n")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


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
        serializer_format: ``"msgpack"`` (default; carries bytes) or ``"json"``.
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
        self.group_expiry: float = _positive_number("group_expiry", group_expiry)
        if not isinstance(prefix, str) or not prefix or re.search(r"[{}\s]", prefix):
            raise ValueError(f"prefix must be a non-empty str without braces, not {prefix!r}")
        self.prefix = prefix
        self.inbox_capacity = _positive_int("inbox_capacity", inbox_capacity)
        length = _positive_int("random_prefix_length", random_prefix_length)
        if not 8 <= length <= 32:
            raise ValueError(f"random_prefix_length must be between 8 and 32, not {length}")
        self.hosts: list[HostSpec] = parse_hosts(hosts)
        self._codec = Codec(serializer_format, symmetric_encryption_keys)
        self._node = secrets.token_hex(16)[:length]
        # Shards: one per host, or the hash tags of a cluster.
        cluster = self.hosts[0].kind == "cluster"
        self._shard_count = self.hosts[0].shards if cluster else len(self.hosts)
        self._shard_host = [0 if cluster else shard for shard in range(self._shard_count)]
        self._keys = [Keys(prefix, shard) for shard in range(self._shard_count)]
        # Scripts publish entries to listening nodes, except in a cluster (where
        # PUBLISH goes to every node of the cluster).
        self._publish = "" if cluster else "1"
        self._expiry_ms = max(1, round(self.expiry * 1000))
        self._group_expiry_ms = max(1, round(self.group_expiry * 1000))
        self._local = InMemoryChannelLayer(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
        )
        self._lock = threading.Lock()
        self._loops = LoopClients(self.hosts)
        self._readers: _Readers | None = None
        # Memberships of this node's channels: group -> {channel: time.monotonic() of the add}.
        self._memberships: dict[str, dict[str, float]] = {}
        # This node's channels reported full in Redis: channel -> time.monotonic() of the report.
        self._full: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

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
        self.valid_channel_name(channel)
        self.require_message(message)
        payload = self._codec.dumps(message)
        if "!" in channel:
            node = node_of_channel(channel)
            if node == self._node:
                await self._local.send(channel, self._codec.loads(payload))
                return
            shard = self._home_shard(node)
            keys = self._keys[shard]
            body = b"D" + channel.encode() + b" " + self._codec.seal(payload)
            queued = await self._run(
                shard,
                SEND,
                [keys.inbox(node), keys.full(node)],
                [self._expiry_ms, self.inbox_capacity, body, channel, self._publish],
            )
        else:
            queued = await self._send_shared(channel, self._codec.seal(payload))
        if not queued:
            raise ChannelFull(f"channel {channel!r} is full")

    async def _send_shared(self, channel: str, sealed: bytes) -> bool:
        shard = self._shard_of(channel)
        key = self._keys[shard].channel(channel)
        args = [self._expiry_ms, self.get_capacity(channel), sealed, "", ""]
        return bool(await self._run(shard, SEND, [key, key], args))

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
        self.valid_channel_name(channel)
        if "!" not in channel:
            return await self._receive_shared(channel)
        if node_of_channel(channel) != self._node:
            raise ValueError(
                f"channel {channel!r} belongs to another process; only the layer whose "
                "new_channel() made it can receive on it"
            )
        self._ensure_readers()
        message = await self._local.receive(channel)
        if channel in self._full:
            with self._lock:
                self._full.pop(channel, None)
            self._spawn(self._sync_full(channel))
        return message

    def channel_source(self, channel: str) -> ChannelSource:
        """``channel`` as a message source; this node's channels can be polled.

        Raises:
            TypeError: the channel name is not valid.
        """
        self.valid_channel_name(channel)
        if "!" not in channel or node_of_channel(channel) != self._node:
            return ChannelSource(channel, self.receive)
        return ChannelSource(
            channel, self.receive, self._poll, self._local.watch, self._local.unwatch
        )

    def set_direct(self, channel: str, send_now: Callable[[Message], bool] | None) -> None:
        """Direct delivery of ``websocket.send`` group messages to a socket of this node.

        See :meth:`InMemoryChannelLayer.set_direct`; channels of other nodes are ignored.
        """
        if "!" in channel and node_of_channel(channel) == self._node:
            self._local.set_direct(channel, send_now)

    def _poll(self, channel: str) -> Message | None:
        """Non-blocking receive on a channel of this node (see ``channel_source``).

        MessageMux polls before every wait, so this also (re)starts the receive
        loops that will fill the channel.
        """
        self._ensure_readers()
        message = self._local._receive_nowait(channel)
        if message is not None and channel in self._full:
            with self._lock:
                self._full.pop(channel, None)
            self._spawn(self._sync_full(channel))
        return message

    async def _receive_shared(self, channel: str) -> Message:
        shard = self._shard_of(channel)
        key = self._keys[shard].channel(channel)
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (inside redis-py) can swallow a
                # cancellation; never take a message for a cancelled receive.
                raise asyncio.CancelledError
            entries = await self._run(shard, POP, [key], [1])
            if entries:
                try:
                    return self._codec.read(entries[0][ENTRY_HEAD:])
                except UnreadableMessage as exc:
                    self._log_unreadable(channel, exc)
                    continue
            client = self._clients(shard).main
            with self._unavailable(shard):
                await client.blmove(key, key, self._block_timeout(shard), "LEFT", "LEFT")

    async def new_channel(self, prefix: str = "specific") -> str:
        """Return a new channel name of this node, ``"<prefix>.<node>!<random>"``.

        Also starts this node's receive loops if they are not running.

        Raises:
            TypeError: ``prefix`` is not a valid name part, or too long.
        """
        check_name_prefix(prefix)
        name = f"{prefix}.{self._node}!{secrets.token_hex(12)}"
        self.valid_channel_name(name)
        self._ensure_readers()
        return name

    # -- groups -------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``, or refresh the membership's expiry: one script run.

        Raises:
            RedisUnavailable: Redis cannot be reached (the membership is not added).
            TypeError: the group or channel name is not valid.
        """
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        node = node_of_channel(channel) if "!" in channel else ""
        control = b""
        was_member = False
        if node == self._node:
            was_member = self._remember(group, channel)
            await self._local.group_add(group, channel)
        elif node:
            control = f"J{group} {channel}".encode()
        shard = self._shard_of(group)
        try:
            await self._run(
                shard,
                GROUP_ADD,
                self._keys[shard].group(group, node or "-"),
                [
                    channel,
                    node,
                    self._group_expiry_ms,
                    0,
                    0,
                    control,
                    self._expiry_ms,
                    self._publish,
                ],
            )
        except RedisUnavailable:
            if node == self._node and not was_member:
                self._forget(group, channel)
                await self._local.group_discard(group, channel)
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; nothing happens if it is not a member.

        Raises:
            RedisUnavailable: Redis cannot be reached (for this node's channels
                the membership is gone here, and in Redis it expires).
            TypeError: the group or channel name is not valid.
        """
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        node = node_of_channel(channel) if "!" in channel else ""
        control = b""
        if node == self._node:
            self._forget(group, channel)
            await self._local.group_discard(group, channel)
        elif node:
            control = f"L{group} {channel}".encode()
        shard = self._shard_of(group)
        await self._run(
            shard,
            GROUP_DISCARD,
            self._keys[shard].group(group, node or "-"),
            [channel, node, control, self._expiry_ms, self._publish],
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
        self.valid_group_name(group)
        self.require_message(message)
        payload = self._codec.dumps(message)
        if group in self._memberships:
            await self._local.group_send(group, self._codec.loads(payload))
        shard = self._shard_of(group)
        keys = self._keys[shard]
        sealed = self._codec.seal(payload)
        _, shared = await self._run(
            shard,
            GROUP_SEND,
            keys.group(group, "-")[:3],
            [
                self._group_expiry_ms,
                self._expiry_ms,
                self.inbox_capacity,
                b"G" + group.encode() + b" " + sealed,
                self._node,
                keys.inbox(""),
                self._publish,
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
        readers = await self._stop_readers()
        with self._lock:
            self._memberships.clear()
            self._full.clear()
        await self._local.flush()
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self.prefix) + ":{*"
        state = self._loops.get()
        for index, host in enumerate(state.hosts):
            client = host.main
            with self._unavailable(self._shard_host.index(index)):
                batch: list[bytes] = []
                async for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        await client.unlink(*batch)
                        batch = []
                if batch:
                    await client.unlink(*batch)
        if readers is not None:
            self._ensure_readers()

    async def close(self) -> None:
        """Stop the receive loops and close every connection, in every event loop.

        The layer may be used again afterwards; it reconnects on demand.
        """
        await self._stop_readers()
        loop = asyncio.get_running_loop()
        waits = [task for task in self._background if task.get_loop() is loop]
        for task in waits:
            task.cancel()
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        await self._loops.aclose()

    async def _stop_readers(self) -> _Readers | None:
        """Stop this node's receive loops (waiting for them if they run in this loop).

        Returns them if they were running, else ``None``.
        """
        with self._lock:
            readers, self._readers = self._readers, None
        if readers is None or not readers.alive():
            return None
        readers.stopped = True
        for task in readers.tasks:
            cancel_task(task)
        if readers.loop is asyncio.get_running_loop():
            await asyncio.gather(*readers.tasks, return_exceptions=True)
        return readers

    # -- shards, clients and scripts ----------------------------------------

    def _shard_of(self, name: str) -> int:
        return jump_hash(name, self._shard_count)

    def _home_shard(self, node: str) -> int:
        return jump_hash(node, self._shard_count)

    def _block_timeout(self, shard: int) -> float:
        return self.hosts[self._shard_host[shard]].block_timeout

    def _clients(self, shard: int) -> HostClients:
        return self._loops.get().hosts[self._shard_host[shard]]

    @contextlib.contextmanager
    def _unavailable(self, shard: int) -> Iterator[None]:
        """Map redis-py's connection errors to ``RedisUnavailable``."""
        try:
            yield
        except _UNAVAILABLE as exc:
            where = self.hosts[self._shard_host[shard]].describe()
            raise RedisUnavailable(f"Redis at {where} is unavailable: {exc}") from exc

    async def _run(
        self, shard: int, script: Script, keys: Sequence[str], args: Sequence[object]
    ) -> Any:
        """Run ``script`` on ``shard`` (EVALSHA, loading it on NOSCRIPT)."""
        client = self._clients(shard).main
        try:  # (not self._unavailable: this is every send's path, and a try is cheaper)
            return await _evaluate(client, script, keys, args)
        except _UNAVAILABLE as exc:
            where = self.hosts[self._shard_host[shard]].describe()
            raise RedisUnavailable(f"Redis at {where} is unavailable: {exc}") from exc

    # -- this node's state --------------------------------------------------

    def _remember(self, group: str, channel: str) -> bool:
        """Record a membership of this node; return whether it existed."""
        with self._lock:
            members = self._memberships.setdefault(group, {})
            existed = channel in members
            members[channel] = time.monotonic()
            return existed

    def _forget(self, group: str, channel: str) -> None:
        with self._lock:
            members = self._memberships.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._memberships[group]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a best-effort background update in this loop, keeping a reference to it."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sync_full(self, channel: str) -> None:
        """Make the full set in Redis say what ``self._full`` says about ``channel`` now."""
        shard = self._home_shard(self._node)
        key = self._keys[shard].full(self._node)
        try:
            client = self._clients(shard).main
            with self._unavailable(shard):
                if channel in self._full:
                    await client.sadd(key, channel)
                    await client.pexpire(key, self._expiry_ms)
                else:
                    await client.srem(key, channel)
        except RedisUnavailable as exc:
            logger.debug("could not update the full set for %s: %s", channel, exc)

    def _mark_full(self, channel: str) -> None:
        """Report ``channel`` full in Redis (again once half the expiry has passed)."""
        now = time.monotonic()
        with self._lock:
            marked = self._full.get(channel)
            if marked is not None and now - marked < self.expiry / 2:
                return
            self._full[channel] = now
        self._spawn(self._sync_full(channel))

    # -- the receive loops --------------------------------------------------

    def _ensure_readers(self) -> None:
        """Start this node's receive loops in the running loop unless they run somewhere."""
        loop = asyncio.get_running_loop()
        readers = self._readers
        if readers is not None and readers.loop is loop and readers.running:
            return  # the hot path: called for every message received
        with self._lock:
            readers = self._readers
            if readers is not None and readers.alive():
                return
            readers = self._readers = _Readers(loop)
            readers.tasks = [
                loop.create_task(
                    self._read_inbox(shard, readers), name=f"tidings-redis-inbox-{shard}"
                )
                for shard in range(self._shard_count)
            ]
            for task in readers.tasks:
                task.add_done_callback(readers.task_ended)

    async def _read_inbox(self, shard: int, readers: _Readers) -> None:
        """Pop this node's inbox on ``shard`` and route the entries, forever."""
        keys = self._keys[shard]
        inbox, marker = keys.inbox(self._node), keys.marker(self._node)
        where = self.hosts[self._shard_host[shard]].describe()
        block_timeout = self._block_timeout(shard)
        down_since: float | None = None
        delay = BACKOFF_MIN
        next_check = 0.0
        # The run id of the server last talked to (not for a cluster, whose nodes differ).
        identify = self.hosts[self._shard_host[shard]].kind != "cluster"
        server: str | None = None
        unregistered = False  # a registration again that did not finish
        try:
            state = self._loops.get()
        except Exception:  # a client that cannot even be built: a configuration error
            logger.exception("node %s cannot build a Redis client for %s", self._node, where)
            return
        clients = state.hosts[self._shard_host[shard]]
        reader = clients.reader
        drained = False  # the last pop took what there was: wait before popping again
        # The lean client listens on the inbox's channel (see _Listener); redis-py
        # clients wait on the list with BLMOVE.
        listens = isinstance(reader, RespClient) and self._publish == "1"
        listener: _Listener | None = None
        popped = False
        try:
            while not readers.stopping(state):
                try:
                    async with asyncio.timeout(block_timeout + READER_GRACE):
                        if time.monotonic() >= next_check:
                            moved = False
                            if identify and (server is None or down_since is not None):
                                known, server = server, await _run_id(reader)
                                identify = server is not None
                                moved = known is not None and server not in (None, known)
                            if unregistered or moved or not await reader.expire(marker, MARKER_TTL):
                                # The marker first: data lost meanwhile takes it too.
                                unregistered = True
                                await reader.set(marker, b"1", ex=MARKER_TTL)
                                await self._register_again(shard, clients.main)
                                unregistered = False
                            if listener is not None:
                                listener.ping()
                            next_check = time.monotonic() + MARKER_CHECK_INTERVAL
                        if listens:
                            if listener is None or (listener.lost and listener.held is None):
                                if listener is not None:
                                    listener.close()
                                listener = _Listener(self._route)
                                listener.connection = await reader.subscribe(
                                    inbox, listener.on_push
                                )
                            entries = []
                            popped = listener.woken.is_set()
                            if popped:
                                listener.woken.clear()
                                entries = await _evaluate(reader, POP, [inbox], [INBOX_BATCH])
                        elif drained:
                            entries = await _wait_and_pop(reader, inbox, block_timeout)
                        else:
                            entries = await _evaluate(reader, POP, [inbox], [INBOX_BATCH])
                    if down_since is not None:
                        logger.warning(
                            "Redis at %s is reachable again after %.1f s; node %s resumed",
                            where,
                            time.monotonic() - down_since,
                            self._node,
                        )
                        down_since, delay = None, BACKOFF_MIN
                    for entry in entries:
                        self._route(entry)
                    # A short pop means the inbox is empty; a full one, that more may wait.
                    drained = len(entries) < INBOX_BATCH
                    if listener is not None:
                        if popped and not drained:
                            listener.woken.set()  # pop on
                        elif popped:
                            listener.release()  # the list is empty: what was held is next
                        if not listener.woken.is_set():
                            wait = max(0.0, min(block_timeout, next_check - time.monotonic()))
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(listener.woken.wait(), wait)
                except asyncio.CancelledError:
                    raise
                except (*_UNAVAILABLE, RedisUnavailable, TimeoutError) as exc:
                    drained = False
                    if listener is not None:
                        # Start over: subscribe again, then pop what queued meanwhile.
                        listener.release()
                        listener.close()
                        listener = None
                    if readers.stopping(state):
                        return
                    if down_since is None:
                        down_since = time.monotonic()
                        logger.warning(
                            "Redis at %s is unreachable (%s); node %s retrying with backoff",
                            where,
                            exc,
                            self._node,
                        )
                    next_check = 0.0
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, BACKOFF_MAX)
                except Exception:
                    logger.exception("unexpected error in the receive loop of node %s", self._node)
                    await asyncio.sleep(BACKOFF_MAX)
        finally:
            if listener is not None:
                listener.close()

    def _route(self, entry: bytes) -> None:
        """Deliver one inbox entry to this node's queues or memberships (nothing awaits)."""
        kind, rest = entry[ENTRY_HEAD : ENTRY_HEAD + 1], entry[ENTRY_HEAD + 1 :]
        name, _, data = rest.partition(b" ")
        local = self._local
        try:
            if kind == b"G":
                group = name.decode()
                if group in self._memberships:
                    local._group_put(group, self._codec.read(data))
            elif kind == b"D":
                channel = name.decode()
                try:
                    local._put(channel, self._codec.read(data))
                except ChannelFull:
                    self._mark_full(channel)
            elif kind == b"J":
                group, channel = name.decode(), data.decode()
                self._remember(group, channel)
                local._join(group, channel)
            elif kind == b"L":
                group, channel = name.decode(), data.decode()
                self._forget(group, channel)
                local._leave(group, channel)
        except UnreadableMessage as exc:
            shown = name.decode(errors="replace")
            self._log_unreadable(f"group {shown}" if kind == b"G" else shown, exc)
        except Exception:
            logger.exception("node %s dropped an inbox entry it could not read", self._node)

    def _log_unreadable(self, where: str, exc: UnreadableMessage) -> None:
        logger.error("node %s dropped a message for %s: %s", self._node, where, exc)

    async def _register_again(self, shard: int, client: Any) -> None:
        """Register this node's live memberships and full reports on ``shard`` again."""
        now = time.monotonic()
        items: list[tuple[str, str, float]] = []
        with self._lock:
            for group, members in list(self._memberships.items()):
                if self._shard_of(group) != shard:
                    continue
                for channel, added in list(members.items()):
                    age = now - added
                    if age >= self.group_expiry:
                        del members[channel]
                    else:
                        items.append((group, channel, age))
                if not members:
                    del self._memberships[group]
            full = list(self._full) if self._home_shard(self._node) == shard else []
        keys = self._keys[shard]
        for start in range(0, len(items), _REREGISTER_BATCH):
            await asyncio.gather(
                *(
                    _evaluate(
                        client,
                        GROUP_ADD,
                        keys.group(group, "-"),
                        [
                            channel,
                            self._node,
                            self._group_expiry_ms,
                            round(age * 1000),
                            1,
                            b"",
                            0,
                            "",
                        ],
                    )
                    for group, channel, age in items[start : start + _REREGISTER_BATCH]
                )
            )
        if full:
            key = self._keys[shard].full(self._node)
            await client.sadd(key, *full)
            await client.pexpire(key, self._expiry_ms)
        if items:
            logger.info("node %s registered %d memberships again", self._node, len(items))


async def _run_id(client: Any) -> str | None:
    """The run id of the Redis server ``client`` talks to (new at every start).

    ``None`` if the server refuses ``INFO`` (an ACL user without ``@dangerous``):
    the layer then only notices lost data, by its marker.
    """
    try:
        info = await client.info("server")
    except ResponseError:
        return None
    run_id = info.get("run_id")
    return str(run_id) if run_id else None


async def _wait_and_pop(client: Any, inbox: str, timeout: float) -> Any:
    """Wait up to ``timeout`` s for entries in ``inbox``, then pop a batch of them.

    The wait is ``BLMOVE inbox inbox LEFT LEFT``: it moves nothing, so losing
    the connection meanwhile loses nothing. (Loops that listen never wait so.)
    """
    await client.blmove(inbox, inbox, timeout, "LEFT", "LEFT")
    return await _evaluate(client, POP, [inbox], [INBOX_BATCH])


async def _evaluate(
    client: Any, script: Script, keys: Sequence[str], args: Sequence[object]
) -> Any:
    """Run ``script`` with ``EVALSHA``, sending its text once if the server lacks it."""
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script.text, len(keys), *keys, *args)
