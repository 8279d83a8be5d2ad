"""This node's side of the Redis channel layer: its receive loops and what they keep.

:class:`NodeReceiver`, which :class:`~tidings.layers.redis.RedisChannelLayer`
composes, holds the shards' keys and clients and runs in the background:
one receive loop per shard (:class:`_InboxReader`) that routes the node's
inbox entries into its mailboxes (listening on the inbox's pub/sub channel
with the lean client, else waiting on the inbox list), the node's
full-channel reports, the registration again of its memberships after Redis
lost data, and the mapping of client errors to :class:`RedisUnavailable`.
The theory of operation is in :mod:`tidings.layers.redis`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, Final

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

from tidings import _metrics
from tidings.exceptions import ChannelFull, ChannelLayerUnavailable
from tidings.layers._mailboxes import Mailboxes
from tidings.layers._redis_codec import Codec, UnreadableMessage
from tidings.layers._redis_hosts import HostClients, HostSpec, jump_hash
from tidings.layers._redis_loops import LoopClients, LoopState, cancel_task
from tidings.layers._redis_scripts import ENTRY_HEAD, GROUP_ADD, POP, Keys, Script
from tidings.layers._resp import RespClient, RespConnection

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "INBOX_BATCH",
    "MARKER_CHECK_INTERVAL",
    "MARKER_TTL",
    "READER_GRACE",
    "NodeReceiver",
    "RedisUnavailable",
    "node_of_channel",
]

logger = logging.getLogger("tidings.layers.redis")

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


class RedisUnavailable(ChannelLayerUnavailable):
    """Redis could not be reached (down, restarting, failing over, or the pool stayed full).

    Raised by ``send``, ``group_add``, ``group_discard``, ``group_send``,
    ``flush`` and by ``receive`` on shared channels; ``receive`` on a
    channel of this process keeps waiting while its receive loop reconnects.
    A subclass of :class:`tidings.exceptions.ChannelLayerUnavailable`, which
    backend-neutral code catches.
    """

    __module__ = "tidings.layers.redis"  # where users import it from


def node_of_channel(channel: str) -> str:
    """Return the node id of a process-specific channel name (the part before ``!``'s last dot)."""
    return channel[: channel.index("!")].rpartition(".")[2]


class _Readers:
    """The receive loops of this node: one task per shard, all in one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = False
        # Not stopped and no loop task has ended (crashed or cancelled): an attribute,
        # kept by stop() and the tasks' done-callbacks, as it is read per message.
        self.running = True

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

    def stop(self) -> None:
        self.stopped = True
        self.running = False

    def task_ended(self, task: asyncio.Task[None]) -> None:
        self.running = False

    def alive(self) -> bool:
        return self.running and not self.loop.is_closed()


class _Listener:
    """A receive loop's subscription to its node's inbox channel (lean clients only).

    Scripts publish an entry to a node whose inbox list is empty and that
    listens (see ``deliver`` in :mod:`tidings.layers._redis_scripts`), so a
    message costs the node no command: it is routed as it arrives. Otherwise
    (nobody listened) the entry is queued on the list, which a new
    subscription pops until a pop comes back short. Entries published
    meanwhile are newer than everything queued, so they are *held* until the
    popped ones are routed: a subscription holds from the start.
    """

    def __init__(self, route: Callable[[bytes], None]) -> None:
        self.route = route
        self.connection: RespConnection | None = None
        self.woken = asyncio.Event()
        self.lost = False
        self.held: list[bytes] | None = []
        self.ponged = True
        self.refused = False  # Redis refused the SUBSCRIBE: don't listen, wait on the list

    def on_push(self, reply: Any) -> None:
        if reply is None:
            self.lost = True
            self.woken.set()
            return
        if type(reply) is not list or not reply:
            # An error reply: SUBSCRIBE refused (an ACL user without access to pub/sub
            # channels). The loop then waits on the list instead (see ``refused``).
            self.refused = True
            if self.connection is not None:
                self.connection.abort(RedisConnectionError(f"SUBSCRIBE refused: {reply}"))
            return
        kind = reply[0]
        if kind == b"message":
            data = reply[2]
            if self.held is not None:
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


class NodeReceiver:
    """This node's side of the Redis layer, which ``RedisChannelLayer`` composes.

    It owns the shards' keys and clients, the receive loops that route the
    node's inbox entries into its :class:`~tidings.layers._mailboxes.Mailboxes`,
    the full-channel reports and the registration again after Redis lost data.

    Args:
        node_id: this node's id (the process part of its channel names).
        hosts: the parsed Redis deployments (one shard per host, or a cluster's).
        prefix: prefix of every key.
        expiry: seconds a message may wait unread.
        group_expiry: seconds a membership lasts after its last ``group_add``.
        codec: the layer's serializer and encryption.
        mailboxes: this node's queues and memberships.
    """

    def __init__(
        self,
        node_id: str,
        hosts: list[HostSpec],
        *,
        prefix: str,
        expiry: float,
        group_expiry: float,
        codec: Codec,
        mailboxes: Mailboxes,
    ) -> None:
        self.id = node_id
        self.hosts = hosts
        # Shards: one per host, or the hash tags of a cluster.
        cluster = hosts[0].kind == "cluster"
        self.shard_count = hosts[0].shards if cluster else len(hosts)
        self.shard_host = [0 if cluster else shard for shard in range(self.shard_count)]
        self.keys = [Keys(prefix, shard) for shard in range(self.shard_count)]
        # Scripts publish entries to listening nodes, except in a cluster (where
        # PUBLISH goes to every node of the cluster).
        self.publish = "" if cluster else "1"
        self.expiry = expiry
        self.expiry_ms = max(1, round(expiry * 1000))
        self.group_expiry_ms = max(1, round(group_expiry * 1000))
        self.codec = codec
        self.mailboxes = mailboxes
        self.loops = LoopClients(hosts)
        self.lock = threading.Lock()
        self.readers: _Readers | None = None
        # This node's channels reported full in Redis: channel -> time.monotonic() of the report.
        self.full: dict[str, float] = {}
        self.background: set[asyncio.Task[None]] = set()

    async def stop_readers(self) -> _Readers | None:
        """Stop this node's receive loops (waiting for them if they run in this loop).

        Returns them if they were running, else ``None``.
        """
        with self.lock:
            readers, self.readers = self.readers, None
        if readers is None or not readers.alive():
            return None
        readers.stop()
        for task in readers.tasks:
            cancel_task(task)
        if readers.loop is asyncio.get_running_loop():
            await asyncio.gather(*readers.tasks, return_exceptions=True)
        return readers

    # -- shards, clients and scripts ----------------------------------------

    def shard_of(self, name: str) -> int:
        return jump_hash(name, self.shard_count)

    def home_shard(self, node: str) -> int:
        return jump_hash(node, self.shard_count)

    def block_timeout(self, shard: int) -> float:
        return self.hosts[self.shard_host[shard]].block_timeout

    def clients(self, shard: int) -> HostClients:
        return self.loops.get().hosts[self.shard_host[shard]]

    @contextlib.contextmanager
    def unavailable(self, shard: int) -> Iterator[None]:
        """Map the clients' connection errors to ``RedisUnavailable``."""
        try:
            yield
        except _UNAVAILABLE as exc:
            raise self.unavailable_error(shard, exc) from exc

    def unavailable_error(self, shard: int, exc: Exception) -> RedisUnavailable:
        where = self.hosts[self.shard_host[shard]].describe()
        return RedisUnavailable(f"Redis at {where} is unavailable: {exc}")

    async def run(
        self, shard: int, script: Script, keys: Sequence[str], args: Sequence[object]
    ) -> Any:
        """Run ``script`` on ``shard`` (EVALSHA, loading it on NOSCRIPT)."""
        client = self.clients(shard).main
        try:  # (not self.unavailable: this is every send's path, and a try is cheaper)
            return await _evaluate(client, script, keys, args)
        except _UNAVAILABLE as exc:
            raise self.unavailable_error(shard, exc) from exc

    # -- this node's state --------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a best-effort background update in this loop, keeping a reference to it."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def sync_full(self, channel: str) -> None:
        """Make the full set in Redis say what ``self.full`` says about ``channel`` now."""
        shard = self.home_shard(self.id)
        key = self.keys[shard].full(self.id)
        try:
            client = self.clients(shard).main
            with self.unavailable(shard):
                if channel in self.full:
                    await client.sadd(key, channel)
                    await client.pexpire(key, self.expiry_ms)
                else:
                    await client.srem(key, channel)
        except RedisUnavailable as exc:
            logger.debug("could not update the full set for %s: %s", channel, exc)

    def mark_full(self, channel: str) -> None:
        """Report ``channel`` full in Redis (again once half the expiry has passed)."""
        now = time.monotonic()
        with self.lock:
            marked = self.full.get(channel)
            if marked is not None and now - marked < self.expiry / 2:
                return
            self.full[channel] = now
        self.spawn(self.sync_full(channel))

    def unmark_full(self, channel: str) -> None:
        """A message of ``channel`` was read: withdraw its full report from Redis."""
        with self.lock:
            self.full.pop(channel, None)
        self.spawn(self.sync_full(channel))

    def forget_full(self) -> None:
        """Forget every full report (``flush`` deletes them in Redis)."""
        with self.lock:
            self.full.clear()

    async def aclose(self) -> None:
        """Stop the receive loops and this loop's background updates; close every client."""
        await self.stop_readers()
        loop = asyncio.get_running_loop()
        waits = [task for task in self.background if task.get_loop() is loop]
        for task in waits:
            task.cancel()
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        await self.loops.aclose()

    # -- the receive loops --------------------------------------------------

    def ensure_readers(self) -> None:
        """Start this node's receive loops in the running loop unless they run somewhere."""
        loop = asyncio.get_running_loop()
        readers = self.readers
        if readers is not None and readers.loop is loop and readers.running:
            return  # the hot path: called for every message received
        with self.lock:
            readers = self.readers
            if readers is not None and readers.alive():
                return
            readers = self.readers = _Readers(loop)
            readers.tasks = [
                loop.create_task(
                    self.read_inbox(shard, readers), name=f"tidings-redis-inbox-{shard}"
                )
                for shard in range(self.shard_count)
            ]
            for task in readers.tasks:
                task.add_done_callback(readers.task_ended)

    async def read_inbox(self, shard: int, readers: _Readers) -> None:
        """Pop this node's inbox on ``shard`` and route the entries, forever."""
        try:
            state = self.loops.get()
        except Exception:  # a client that cannot even be built: a configuration error
            where = self.hosts[self.shard_host[shard]].describe()
            logger.exception("node %s cannot build a Redis client for %s", self.id, where)
            return
        await _InboxReader(self, shard, readers, state).run()

    def route(self, entry: bytes) -> None:
        """Deliver one inbox entry to this node's queues or memberships (nothing awaits)."""
        kind, rest = entry[ENTRY_HEAD : ENTRY_HEAD + 1], entry[ENTRY_HEAD + 1 :]
        name, _, data = rest.partition(b" ")
        mailboxes = self.mailboxes
        try:
            if kind == b"G":
                group = name.decode()
                if group in mailboxes.groups:
                    mailboxes.group_put(group, self.codec.read(data))
            elif kind == b"D":
                channel = name.decode()
                try:
                    mailboxes.put(channel, self.codec.read(data))
                except ChannelFull:
                    self.mark_full(channel)
            elif kind == b"J":
                mailboxes.join(name.decode(), data.decode())
            elif kind == b"L":
                mailboxes.leave(name.decode(), data.decode())
        except UnreadableMessage as exc:
            shown = name.decode(errors="replace")
            self.log_unreadable(f"group {shown}" if kind == b"G" else shown, exc)
        except Exception:
            logger.exception("node %s dropped an inbox entry it could not read", self.id)

    def log_unreadable(self, where: str, exc: UnreadableMessage) -> None:
        logger.error("node %s dropped a message for %s: %s", self.id, where, exc)

    async def register_again(self, shard: int, client: Any) -> None:
        """Register this node's live memberships and full reports on ``shard`` again."""
        items = [
            item for item in self.mailboxes.live_memberships() if self.shard_of(item[0]) == shard
        ]
        with self.lock:
            full = list(self.full) if self.home_shard(self.id) == shard else []
        keys = self.keys[shard]
        for start in range(0, len(items), _REREGISTER_BATCH):
            await asyncio.gather(
                *(
                    _evaluate(
                        client,
                        GROUP_ADD,
                        keys.group(group, "-"),
                        [
                            channel,
                            self.id,
                            self.group_expiry_ms,
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
            key = self.keys[shard].full(self.id)
            await client.sadd(key, *full)
            await client.pexpire(key, self.expiry_ms)
        if items:
            logger.info("node %s registered %d memberships again", self.id, len(items))


class _InboxReader:
    """One shard's receive loop: takes this node's inbox entries and routes them.

    It listens on the inbox's pub/sub channel with the lean client (see
    :class:`_Listener`), else waits on the inbox list with ``BLMOVE``; every
    ``MARKER_CHECK_INTERVAL`` it checks that Redis still holds the node's
    data; on errors it backs off and starts over (see :meth:`recover`).
    """

    def __init__(self, side: NodeReceiver, shard: int, readers: _Readers, state: LoopState) -> None:
        self.side = side
        self.shard = shard
        self.readers = readers
        self.state = state
        host = side.hosts[side.shard_host[shard]]
        keys = side.keys[shard]
        self.inbox, self.marker = keys.inbox(side.id), keys.marker(side.id)
        self.where = host.describe()
        self.block_timeout = host.block_timeout
        self.clients = state.hosts[side.shard_host[shard]]
        self.reader = self.clients.reader
        self.down_since: float | None = None
        self.delay = BACKOFF_MIN
        self.next_check = 0.0
        # The run id of the server last talked to (not for a cluster, whose nodes differ).
        self.identify = host.kind != "cluster"
        self.server: str | None = None
        self.unregistered = False  # a registration again that did not finish
        self.drained = False  # the last pop took what there was: wait before popping again
        # The lean client listens on the inbox's channel (see _Listener); redis-py
        # clients wait on the list with BLMOVE.
        self.can_listen = isinstance(self.reader, RespClient) and side.publish == "1"
        self.listens = self.can_listen
        self.listener: _Listener | None = None
        self.popped = False

    async def run(self) -> None:
        """Take and route entries until the node stops reading."""
        try:
            while not self.readers.stopping(self.state):
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except (*_UNAVAILABLE, RedisUnavailable, TimeoutError) as exc:
                    if not await self.recover(exc):
                        return
                except Exception:
                    logger.exception(
                        "unexpected error in the receive loop of node %s", self.side.id
                    )
                    await asyncio.sleep(BACKOFF_MAX)
        finally:
            if self.listener is not None:
                self.listener.close()

    async def step(self) -> None:
        """Check the marker when due, take a batch of entries, route them, maybe wait."""
        async with asyncio.timeout(self.block_timeout + READER_GRACE):
            if time.monotonic() >= self.next_check:
                await self.check_marker()
            self.stop_listening_if_refused()
            entries = await self.fetch()
        if self.down_since is not None:
            if (m := _metrics.ACTIVE) is not None:
                m.redis_reconnects += 1
            logger.warning(
                "Redis at %s is reachable again after %.1f s; node %s resumed",
                self.where,
                time.monotonic() - self.down_since,
                self.side.id,
            )
            self.down_since, self.delay = None, BACKOFF_MIN
        route = self.side.route
        for entry in entries:
            route(entry)
        # A short pop means the inbox is empty; a full one, that more may wait.
        self.drained = len(entries) < INBOX_BATCH
        if self.listener is not None:
            await self.listen(self.listener)

    async def check_marker(self) -> None:
        """Register the node again if Redis lost its data or is another server now."""
        reader = self.reader
        moved = False
        if self.identify and (self.server is None or self.down_since is not None):
            known, self.server = self.server, await _run_id(reader)
            self.identify = self.server is not None
            moved = known is not None and self.server not in (None, known)
        if self.unregistered or moved or not await reader.expire(self.marker, MARKER_TTL):
            # The marker first: data lost meanwhile takes it too.
            self.unregistered = True
            await reader.set(self.marker, b"1", ex=MARKER_TTL)
            await self.side.register_again(self.shard, self.clients.main)
            self.unregistered = False
        if self.listener is not None:
            self.listener.ping()
        self.next_check = time.monotonic() + MARKER_CHECK_INTERVAL

    def stop_listening_if_refused(self) -> None:
        """Wait on the list from now on if Redis refused the subscription."""
        listener = self.listener
        if listener is None or not listener.refused or listener.held is not None:
            return
        logger.warning(
            "node %s may not subscribe at %s (%s); it waits on its "
            "inbox list instead (one command more per message)",
            self.side.id,
            self.where,
            listener.connection and listener.connection.lost,
        )
        listener.close()
        self.listens, self.listener, self.drained = False, None, False

    async def fetch(self) -> Any:
        """Take the next batch of entries: popped when woken, or after a wait on the list."""
        if self.listens:
            listener = self.listener
            if listener is None or (listener.lost and listener.held is None):
                if listener is not None:
                    listener.close()
                listener = self.listener = _Listener(self.side.route)
                listener.connection = await self.reader.subscribe(self.inbox, listener.on_push)
            self.popped = listener.woken.is_set()
            if not self.popped:
                return []
            listener.woken.clear()
        elif self.drained:
            return await _wait_and_pop(self.reader, self.inbox, self.block_timeout)
        return await _evaluate(self.reader, POP, [self.inbox], [INBOX_BATCH])

    async def listen(self, listener: _Listener) -> None:
        """After a batch: pop on, release what was held, or wait for a wake-up."""
        if self.popped and not self.drained:
            listener.woken.set()  # pop on
        elif self.popped:
            listener.release()  # the list is empty: what was held is next
        if not (listener.woken.is_set() or listener.lost):
            wait = max(0.0, min(self.block_timeout, self.next_check - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.woken.wait(), wait)

    async def recover(self, exc: Exception) -> bool:
        """Start over after ``exc``, with backoff; return False if the loop should end."""
        self.drained = False
        self.listens = self.can_listen  # a refused SUBSCRIBE is tried again after an outage
        if self.listener is not None:
            # Start over: subscribe again, then pop what queued meanwhile.
            self.listener.release()
            self.listener.close()
            self.listener = None
        if self.readers.stopping(self.state):
            return False
        if self.down_since is None:
            self.down_since = time.monotonic()
            if (m := _metrics.ACTIVE) is not None:
                m.redis_outages += 1
            logger.warning(
                "Redis at %s is unreachable (%s); node %s retrying with backoff",
                self.where,
                _reason(exc),
                self.side.id,
            )
        self.next_check = 0.0
        await asyncio.sleep(self.delay * (0.5 + random.random()))
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return True


def _reason(exc: BaseException) -> str:
    """What to log for ``exc``: its message, or its class for those without one
    (a ``TimeoutError`` from ``asyncio.timeout`` has none)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
