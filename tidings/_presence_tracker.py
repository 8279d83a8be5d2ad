"""The presence tracker: one per process (per event loop and layer alias), talking to the others.

Theory of operation
-------------------
A tracker is a *node*: it reads a channel of its own (its name is the node id) and
is a member of one layer group, :data:`NODES_GROUP`, which every tracker of the
layer joins. It holds a :class:`~tidings._presence_state.Replica` of every node's
members, its own included, so that listing a topic never leaves the process.

What travels, all as channel-layer messages (so the in-memory layer serves one
process and the Redis layer serves many, with nothing else to run):

- ``presence.delta`` (to the group): this node's joins and leaves of one batch
  window, numbered by a per-node sequence; chunked at :data:`CHUNK` entries;
- ``presence.hb`` (to the group, every ``heartbeat_interval``): "alive, at
  sequence *n*". A node silent for ``timeout`` is dropped by every other node at
  its next sweep (one per heartbeat), so a SIGKILLed process's members are gone
  within ``timeout + heartbeat_interval``;
- ``presence.hello`` (to the group, at start) and ``presence.sync`` (to one
  node): "send me your state"; the answer is ``presence.state`` (to the asking
  node's channel), the node's whole membership at a sequence number, chunked.
  A receiver that sees a sequence gap (a lost delta: group sends skip full
  channels) or a node it has no state of asks for a state, at most once per
  heartbeat interval per node;
- ``presence.bye`` (to the group, when a tracker closes): drop my members now.

Deltas and states change only their sender's entries (see the replica), and a
message naming this node as its sender is ignored, so no message can remove
another node's members. Malformed messages are logged and dropped.

Diffs for consumers are made locally by every node from the changes it applies
and sent, once per topic per batch window, to the local subscribers of that
topic with ``layer.send`` (local channels: no network). A burst of *n* joins
therefore costs one delta per node per window and one diff per subscriber per
window, not *n* messages per subscriber.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from tidings._presence_state import Entry, Meta, Presences, PresenceSettings, Replica, check_meta
from tidings.exceptions import ChannelFull
from tidings.layers import InMemoryChannelLayer
from tidings.layers.base import BaseChannelLayer, Message

__all__ = ["CHUNK", "MAX_KEY_LENGTH", "NODES_GROUP", "Tracker", "connection_id"]

logger = logging.getLogger("tidings.presence")

NODES_GROUP: Final = "tidings-presence.nodes"
"""The layer group every tracker joins."""

CHUNK: Final = 500
"""Entries per delta or state message (keeps each message well under a megabyte)."""

MAX_KEY_LENGTH: Final = 200
"""Longest presence key, in characters."""


def connection_id(channel_name: str) -> str:
    """A connection's public id in metadata: a digest of its channel name, never the name."""
    return hashlib.blake2b(channel_name.encode(), digest_size=8).hexdigest()


@dataclass
class _Peer:
    """What this node knows of another node."""

    last_seen: float
    seq: int = 0
    synced: bool = False
    asked_at: float = float("-inf")
    parts: list[list[Entry]] | None = None  # a state arriving in parts


class Tracker:
    """One node of the presence replica set, on one layer and one event loop.

    Start it with :meth:`start`; every public coroutine waits for that. See the
    module docstring for the protocol.
    """

    def __init__(self, layer: BaseChannelLayer, settings: PresenceSettings) -> None:
        self.layer = layer
        self.settings = settings
        self.node = ""
        self.replica = Replica()
        self.loop = asyncio.get_running_loop()
        self._peers: dict[str, _Peer] = {}
        # In one process (in-memory layer), the other nodes whose states we wait for.
        self._expected: set[str] | None = None
        self._seq = 0
        self._local: dict[tuple[str, str], str] = {}  # (topic, channel) -> ref
        self._outbound: dict[str, Entry | None] = {}  # ref -> join, or None for a leave
        self._subscribers: dict[str, set[str]] = {}  # topic -> local channels
        self._ready = asyncio.Event()
        self._started: asyncio.Task[None] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life -----------------------------------------------------------------------

    async def start(self) -> None:
        """Join the nodes' group and say hello (once; later calls wait for the first)."""
        if self._started is None:
            self._started = self.loop.create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        self.node = await self.layer.new_channel("presence")
        await self.layer.group_add(NODES_GROUP, self.node)
        self._spawn(self._receive_loop())
        self._spawn(self._heartbeat_loop())
        await self.layer.group_send(NODES_GROUP, {"type": "presence.hello", "node": self.node})
        if isinstance(self.layer, InMemoryChannelLayer):
            # One process: the other nodes (other event loops) are known, and answer
            # at once; with none, as in most deployments, there is nothing to wait for.
            self._expected = set(self.layer.groups.get(NODES_GROUP, ())) - {self.node}
            self._check_ready()
        # Across processes nobody knows how many nodes there are (a node's own list
        # may be behind), so a new node waits the whole SYNC_WAIT; states that come
        # later still arrive, as joins in the subscribers' diffs.
        self.loop.call_later(self.settings.sync_wait, self._ready.set)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Leave: tell the other nodes to drop this node's members, stop the tasks."""
        if self._started is None or not self._started.done() or self._started.exception():
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for task in [*self._tasks]:
            task.cancel()
        try:
            await self.layer.group_send(NODES_GROUP, {"type": "presence.bye", "node": self.node})
            await self.layer.group_discard(NODES_GROUP, self.node)
        except Exception:
            logger.warning("presence node %s could not say goodbye", self.node, exc_info=True)

    def abandon(self) -> None:
        """Stop the tasks from any thread (settings changed; the loop may be gone)."""
        if self.loop.is_closed():
            return
        for task in [*self._tasks]:
            self.loop.call_soon_threadsafe(task.cancel)

    async def ready(self) -> None:
        """Wait until this node has (or gave up waiting for) the other nodes' states."""
        await self.start()
        await self._ready.wait()

    # -- local members --------------------------------------------------------------

    async def track(self, topic: str, key: str, channel_name: str, meta: object) -> Meta:
        """Track ``channel_name`` in ``topic`` under ``key``; again: new meta, new ref.

        Returns:
            the connection's full metadata (with ``ref``, ``conn`` and ``joined_at``).

        Raises:
            TypeError: a bad topic, key, channel name or meta.
            ValueError: meta over the size limit, or with a reserved key.
        """
        self.layer.require_valid_group_name(topic)
        self.layer.require_valid_channel_name(channel_name)
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            raise TypeError(
                f"a presence key must be a non-empty str of at most {MAX_KEY_LENGTH} "
                f"characters, not {type(key).__name__} {str(key)[:40]!r}"
            )
        full = check_meta(meta, self.settings.max_meta_bytes)
        await self.start()
        self._untrack_now(topic, channel_name)
        ref = secrets.token_urlsafe(12)
        full.update(ref=ref, conn=connection_id(channel_name), joined_at=time.time())
        self.replica.join(self.node, topic, key, ref, full)
        self._local[topic, channel_name] = ref
        self._outbound[ref] = (topic, key, ref, full)
        self._schedule_flush()
        return full

    async def untrack(self, topic: str, channel_name: str) -> bool:
        """Stop tracking ``channel_name`` in ``topic``; False if it was not tracked here."""
        await self.start()
        return self._untrack_now(topic, channel_name)

    async def untrack_channel(self, channel_name: str, topics: list[str]) -> None:
        """Untrack ``channel_name`` from ``topics`` and stop its diffs (a consumer ending)."""
        await self.start()
        for topic in topics:
            self._untrack_now(topic, channel_name)
            self.unsubscribe(topic, channel_name)

    def _untrack_now(self, topic: str, channel_name: str) -> bool:
        ref = self._local.pop((topic, channel_name), None)
        if ref is None:
            return False
        self.replica.leave(self.node, ref)
        if self._outbound.pop(ref, None) is None:
            self._outbound[ref] = None
        self._schedule_flush()
        return True

    async def subscribe(self, topic: str, channel_name: str) -> Presences:
        """Send ``presence.diff`` messages of ``topic`` to ``channel_name``; return the list."""
        self.layer.require_valid_group_name(topic)
        self.layer.require_valid_channel_name(channel_name)
        await self.ready()
        self._subscribers.setdefault(topic, set()).add(channel_name)
        return self.replica.list(topic)

    def unsubscribe(self, topic: str, channel_name: str) -> None:
        """Stop the diffs of ``topic`` to ``channel_name``."""
        channels = self._subscribers.get(topic)
        if channels is not None:
            channels.discard(channel_name)
            if not channels:
                del self._subscribers[topic]

    async def list(self, topic: str) -> Presences:
        """The members of ``topic`` on every node."""
        self.layer.require_valid_group_name(topic)
        await self.ready()
        return self.replica.list(topic)

    async def topics(self) -> dict[str, int]:
        """Every topic with members, with its number of keys."""
        await self.ready()
        return self.replica.topics()

    # -- batching -------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_later(self.settings.batch_window, self._spawn_flush)

    def _spawn_flush(self) -> None:
        self._flush_handle = None
        self._spawn(self._flush())

    async def _flush(self) -> None:
        await self._publish()
        for topic, diff in self.replica.take_diffs().items():
            channels = self._subscribers.get(topic)
            if channels:
                message = diff.as_message(topic)
                for channel in [*channels]:
                    await self._send_quietly(channel, message)

    async def _send_quietly(self, channel: str, message: Message) -> None:
        try:
            await self.layer.send(channel, message)
        except ChannelFull:
            logger.debug("presence diff for %s dropped: channel full", channel)
        except Exception:
            logger.warning("presence message to %s failed", channel, exc_info=True)

    async def _publish(self) -> None:
        """Send this node's pending joins and leaves as numbered deltas."""
        async with self._send_lock:
            pending, self._outbound = [*self._outbound.items()], {}
            for start in range(0, len(pending), CHUNK):
                chunk = pending[start : start + CHUNK]
                self._seq += 1
                delta = {
                    "type": "presence.delta",
                    "node": self.node,
                    "seq": self._seq,
                    "joins": [list(entry) for _, entry in chunk if entry is not None],
                    "leaves": [ref for ref, entry in chunk if entry is None],
                }
                try:
                    await self.layer.group_send(NODES_GROUP, delta)
                except Exception:  # the others see the gap and ask for a state
                    logger.warning("presence delta %d not sent", self._seq, exc_info=True)

    # -- the other nodes ------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            async with self._send_lock:
                try:
                    await self.layer.group_add(NODES_GROUP, self.node)
                    beat = {"type": "presence.hb", "node": self.node, "seq": self._seq}
                    await self.layer.group_send(NODES_GROUP, beat)
                except Exception:
                    logger.warning("presence heartbeat not sent", exc_info=True)
            self._sweep()

    def _sweep(self) -> None:
        """Drop the members of every node silent for longer than ``timeout``."""
        silent_since = self.loop.time() - self.settings.timeout
        for node, peer in [*self._peers.items()]:
            if peer.last_seen < silent_since:
                logger.info("presence node %s silent: dropping its members", node)
                self._forget(node)
                # Its membership would outlive it until group_expiry, and every group
                # send would still write to it. A node only paused re-joins at its
                # next heartbeat, and is asked for its state again.
                self._spawn(self._discard(node))

    async def _discard(self, node: str) -> None:
        try:
            await self.layer.group_discard(NODES_GROUP, node)
        except Exception:
            logger.warning("presence node %s not removed from the group", node, exc_info=True)

    def _forget(self, node: str) -> None:
        del self._peers[node]
        if self._expected is not None:
            self._expected.discard(node)
        if self.replica.drop_node(node):
            self._schedule_flush()
        self._check_ready()

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.node)
            except Exception:  # the layer's trouble: keep the node alive, try again
                logger.warning("presence node %s could not receive", self.node, exc_info=True)
                await asyncio.sleep(self.settings.heartbeat_interval)
                continue
            try:
                self._handle(message)
            except (KeyError, TypeError, ValueError, AttributeError):
                logger.warning("malformed presence message dropped: %.200r", message)

    def _handle(self, message: Message) -> None:
        node = message["node"]
        if not isinstance(node, str) or node == self.node:
            return
        handler = self._handlers.get(message["type"])
        if handler is None:
            raise ValueError("unknown presence message type")
        peer = self._peers.get(node)
        if peer is None:
            if message["type"] == "presence.bye":
                return
            self.layer.require_valid_channel_name(node)
            peer = self._peers[node] = _Peer(last_seen=self.loop.time())
        peer.last_seen = self.loop.time()
        handler(self, node, peer, message)

    def _on_hello(self, node: str, peer: _Peer, message: Message) -> None:
        peer.synced = True  # a new node has no members yet
        self._send_state(node)

    def _on_sync(self, node: str, peer: _Peer, message: Message) -> None:
        self._send_state(node)

    def _on_bye(self, node: str, peer: _Peer, message: Message) -> None:
        self._forget(node)

    def _on_heartbeat(self, node: str, peer: _Peer, message: Message) -> None:
        seq = _int(message["seq"])
        if not peer.synced and seq == 0:
            peer.synced = True
        elif not peer.synced or seq != peer.seq:
            self._ask_for_state(node, peer)

    def _on_delta(self, node: str, peer: _Peer, message: Message) -> None:
        seq = _int(message["seq"])
        if peer.synced and seq <= peer.seq:
            return  # already applied (it came with a state)
        if not peer.synced or seq != peer.seq + 1:
            self._ask_for_state(node, peer)
        leaves, joins = _refs(message["leaves"]), _entries(message["joins"])
        for ref in leaves:
            self.replica.leave(node, ref)
        for topic, key, ref, meta in joins:
            self.replica.join(node, topic, key, ref, meta)
        peer.seq = max(peer.seq, seq)
        self._schedule_flush()

    def _on_state(self, node: str, peer: _Peer, message: Message) -> None:
        seq, entries = _int(message["seq"]), _entries(message["entries"])
        if _int(message["part"]) == 0 or peer.parts is None:
            peer.parts = []
        peer.parts.append(entries)
        if _int(message["part"]) + 1 < _int(message["parts"]):
            return
        parts, peer.parts = peer.parts, None
        if seq < peer.seq and peer.synced:
            return  # older than deltas already applied
        self.replica.replace_node(node, [entry for part in parts for entry in part])
        peer.seq, peer.synced = seq, True
        if self._expected is not None:
            self._expected.discard(node)
        self._schedule_flush()
        self._check_ready()

    _handlers: Final[dict[str, Callable[[Tracker, str, _Peer, Message], None]]] = {
        "presence.hello": _on_hello,
        "presence.sync": _on_sync,
        "presence.bye": _on_bye,
        "presence.hb": _on_heartbeat,
        "presence.delta": _on_delta,
        "presence.state": _on_state,
    }

    def _check_ready(self) -> None:
        if self._expected is not None and not self._expected:
            self._ready.set()

    def _ask_for_state(self, node: str, peer: _Peer) -> None:
        now = self.loop.time()
        if now - peer.asked_at < self.settings.heartbeat_interval:
            return
        peer.asked_at = now
        self._spawn(self._send_quietly(node, {"type": "presence.sync", "node": self.node}))

    def _send_state(self, node: str) -> None:
        self._spawn(self._state_to(node))

    async def _state_to(self, node: str) -> None:
        await self._publish()  # so that the state's sequence number covers everything
        async with self._send_lock:
            entries = self.replica.entries_of(self.node)
            parts = max(1, -(-len(entries) // CHUNK))
            for part in range(parts):
                chunk = entries[part * CHUNK : (part + 1) * CHUNK]
                state = {
                    "type": "presence.state",
                    "node": self.node,
                    "seq": self._seq,
                    "part": part,
                    "parts": parts,
                    "entries": [list(entry) for entry in chunk],
                }
                await self._send_quietly(node, state)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an int")
    return value


def _refs(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(ref, str) for ref in value):
        raise TypeError("not a list of refs")
    return value


def _entries(value: object) -> list[Entry]:
    if not isinstance(value, list):
        raise TypeError("not a list of entries")
    entries: list[Entry] = []
    for item in value:
        topic, key, ref, meta = item
        if not (isinstance(topic, str) and isinstance(key, str) and isinstance(ref, str)):
            raise TypeError("bad entry")
        if not isinstance(meta, dict):
            raise TypeError("bad meta")
        entries.append((topic, key, ref, meta))
    return entries
