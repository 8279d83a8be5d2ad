"""This node's side of the Redis channel layer: its receive loops and what they keep.

:class:`NodeSide` is the half of :class:`~tidings.layers.redis.RedisChannelLayer`
that runs in the background: one receive loop per shard that routes the
node's inbox entries into its memory (listening on the inbox's pub/sub
channel with the lean client, else waiting on the inbox list), the node's
memberships and full-channel reports and their registration again after
Redis lost data, and the mapping of client errors to
:class:`RedisUnavailable`. The theory of operation is in
:mod:`tidings.layers.redis`.
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

from tidings.exceptions import ChannelFull, ChannelLayerUnavailable
from tidings.layers._redis_codec import Codec, UnreadableMessage
from tidings.layers._redis_hosts import HostClients, HostSpec, jump_hash
from tidings.layers._redis_loops import LoopClients, LoopState, cancel_task
from tidings.layers._redis_scripts import ENTRY_HEAD, GROUP_ADD, POP, Keys, Script
from tidings.layers._resp import RespClient, RespConnection
from tidings.layers.inmemory import InMemoryChannelLayer

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "INBOX_BATCH",
    "MARKER_CHECK_INTERVAL",
    "MARKER_TTL",
    "READER_GRACE",
    "NodeSide",
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


class NodeSide:
    """The background half of ``RedisChannelLayer`` (a mixin; see the module docstring)."""

    # Set by RedisChannelLayer.__init__.
    hosts: list[HostSpec]
    expiry: float
    group_expiry: float
    _node: str
    _keys: list[Keys]
    _shard_count: int
    _shard_host: list[int]
    _publish: str
    _expiry_ms: int
    _group_expiry_ms: int
    _local: InMemoryChannelLayer
    _codec: Codec
    _lock: threading.Lock
    _loops: LoopClients
    _readers: _Readers | None
    _memberships: dict[str, dict[str, float]]
    _full: dict[str, float]
    _background: set[asyncio.Task[None]]

    async def _stop_readers(self) -> _Readers | None:
        """Stop this node's receive loops (waiting for them if they run in this loop).

        Returns them if they were running, else ``None``.
        """
        with self._lock:
            readers, self._readers = self._readers, None
        if readers is None or not readers.alive():
            return None
        readers.stop()
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
        """Map the clients' connection errors to ``RedisUnavailable``."""
        try:
            yield
        except _UNAVAILABLE as exc:
            raise self._unavailable_error(shard, exc) from exc

    def _unavailable_error(self, shard: int, exc: Exception) -> RedisUnavailable:
        where = self.hosts[self._shard_host[shard]].describe()
        return RedisUnavailable(f"Redis at {where} is unavailable: {exc}")

    async def _run(
        self, shard: int, script: Script, keys: Sequence[str], args: Sequence[object]
    ) -> Any:
        """Run ``script`` on ``shard`` (EVALSHA, loading it on NOSCRIPT)."""
        client = self._clients(shard).main
        try:  # (not self._unavailable: this is every send's path, and a try is cheaper)
            return await _evaluate(client, script, keys, args)
        except _UNAVAILABLE as exc:
            raise self._unavailable_error(shard, exc) from exc

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
        can_listen = isinstance(reader, RespClient) and self._publish == "1"
        listens = can_listen
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
                        if listener is not None and listener.refused and listener.held is None:
                            logger.warning(
                                "node %s may not subscribe at %s (%s); it waits on its "
                                "inbox list instead (one command more per message)",
                                self._node,
                                where,
                                listener.connection and listener.connection.lost,
                            )
                            listener.close()
                            listens, listener, drained = False, None, False
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
                        if not (listener.woken.is_set() or listener.lost):
                            wait = max(0.0, min(block_timeout, next_check - time.monotonic()))
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(listener.woken.wait(), wait)
                except asyncio.CancelledError:
                    raise
                except (*_UNAVAILABLE, RedisUnavailable, TimeoutError) as exc:
                    drained = False
                    listens = can_listen  # a refused SUBSCRIBE is tried again after an outage
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
