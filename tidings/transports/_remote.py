"""Reaching a session that lives in another process, through the channel layer.

Theory of operation
-------------------
Each process's session manager reads one process-local layer channel, its
*port*; a session id ends with the port of the process that owns the
session. A request that lands on another process becomes layer messages to
that port (all of type ``MESSAGE_TYPE``, told apart by ``op``):

* request/reply: ``{"op": <op>, "rid", "reply": <our port>, "token", "user", ...}``
  answered by ``{"op": "reply", "rid", "ok", ...}`` within ``remote_timeout``
  (:class:`RemoteTimeout` otherwise). Ops: ``attach`` (``last``, ``aid``,
  ``cacks``), ``push`` (client messages, ``answered``), ``close``.
  Fire-and-forget: ``ack``, ``detach``, ``alive``.
* streams: after a successful ``attach`` the owner sends the envelopes for that
  attachment as ``{"op": "batch", "aid", "envs"}`` to the requester's port,
  and ``{"op": "end", "aid", "reason"}`` when the attachment ends (a newer
  connection took over, or the session closed). A layer channel is FIFO per
  sender, so the reply comes before the first batch.

The owner checks the token and the user on every request, exactly as for a
local one. A requester answers nothing about sessions itself: unknown,
foreign user and timeout all look the same to it.

**Liveness.** A requester sends ``alive`` for its open streams every
``KEEPALIVE`` seconds; the owner drops a stream not heard from for three
times that (its requester died), which starts the session's resume window.
The owner sends ``alive`` for the streams it serves likewise, and a requester
ends a stream not heard from for three times that (the owner died with its
sessions): the client's connection ends, its resume finds no owner, and it is
told so (a new session) instead of waiting on a stream nothing will ever feed.
If forwarding fails (the requester's channel is full), the owner drops the
stream too; the client reconnects and resumes from what it acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict, deque
from typing import Any, Final, Protocol

from tidings._types import Message
from tidings.layers.base import BaseChannelLayer
from tidings.transports._inbox import InboxFull
from tidings.transports._protocol import ClientMessage, layer_messages
from tidings.transports._session import LocalAttachment, Session
from tidings.transports.errors import TransportError

__all__ = [
    "KEEPALIVE",
    "MESSAGE_TYPE",
    "RemoteAttachment",
    "RemoteHub",
    "RemoteLink",
    "RemoteTimeout",
]

logger = logging.getLogger("tidings.transports")

MESSAGE_TYPE: Final = "tidings.transports"
#: Seconds between ``alive`` messages of a remote stream; silent for 3x this, it is dropped.
KEEPALIVE: Final = 5.0


class RemoteTimeout(TransportError):
    """The process that owns a session did not answer in time (or could not be reached)."""


class _Sessions(Protocol):
    def lookup(self, token: str, user: str | None) -> Session | None: ...


class RemoteAttachment:
    """Requester side of an attachment to a session in another process."""

    def __init__(self, hub: RemoteHub, owner: str, aid: str) -> None:
        self.owner = owner
        self.aid = aid
        self.end: str | None = None
        self._hub = hub
        self._queue: deque[list[str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._detached = False
        self.heard = asyncio.get_running_loop().time()  # the owner's last sign of life

    async def next_batch(self) -> list[str]:
        """Wait for the next batch the owner forwards; ``[]`` once the stream ended."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.end is not None:
                return []
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def detach(self) -> None:
        """The transport connection is over: tell the owner (once)."""
        if self._detached:
            return
        self._detached = True
        self._hub._streams.pop(self.aid, None)
        if self.end is None:
            self.end = "detached"
            self._hub.tell(self.owner, "detach", aid=self.aid)

    def _deliver(self, envelopes: list[str]) -> None:
        self._queue.append(envelopes)
        self._wake()

    def _ended(self, reason: str) -> None:
        if self.end is None:
            self.end = reason
        self._hub._streams.pop(self.aid, None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class RemoteLink:
    """Requester side of ``push``/``ack``/``close`` for a session in another process."""

    def __init__(self, hub: RemoteHub, owner: str, token: str, user: str | None) -> None:
        self._hub = hub
        self._owner = owner
        self._fields: dict[str, Any] = {"token": token, "user": user}

    async def push(
        self, messages: list[ClientMessage], *, answered: bool = False, wait: bool = True
    ) -> int | None:
        """Queue messages for the consumer; ``cack``, or ``None`` if the session is unknown.

        Raises:
            RemoteTimeout: the owner did not answer.
            InboxFull: ``wait`` is false and the consumer's inbox had no room.
        """
        items = [m.to_layer() for m in messages]
        reply = await self._hub.request(
            self._owner, "push", messages=items, answered=answered, wait=wait, **self._fields
        )
        if reply.get("full"):
            raise InboxFull()
        return int(reply["cack"]) if reply.get("ok") else None

    def full(self) -> bool:
        """Unknown here: the owner tells when pushing."""
        return False

    async def ack(self, seq: int) -> None:
        """Acknowledge envelopes up to ``seq`` (no answer awaited)."""
        self._hub.tell(self._owner, "ack", seq=seq, **self._fields)

    async def close(self) -> bool:
        """End the session; ``False`` if it is unknown.

        Raises:
            RemoteTimeout: the owner did not answer.
        """
        reply = await self._hub.request(self._owner, "close", **self._fields)
        return bool(reply.get("ok"))


class _Served:
    """Owner side of a remote attachment: forwards its batches to the requester."""

    def __init__(self, hub: RemoteHub, attachment: LocalAttachment, reply: str, aid: str) -> None:
        self.hub = hub
        self.attachment = attachment
        self.reply = reply
        self.aid = aid
        self.heard = asyncio.get_running_loop().time()
        self.task: asyncio.Task[None] | None = None
        self.stopped = False

    def start(self) -> None:
        if self.stopped:
            self.attachment.detach()
            self.hub._served.pop(self.aid, None)
        else:
            self.task = self.hub._spawn(self._pump())

    def stop(self) -> None:
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
            # A task cancelled before its first step never runs its ``finally``: detach
            # here too (detaching twice is harmless), or the session stays attached and
            # never expires.
            self.attachment.detach()
            self.hub._served.pop(self.aid, None)

    async def _pump(self) -> None:
        hub = self.hub
        try:
            while True:
                batch = await self.attachment.next_batch()
                if not batch:
                    end = {"op": "end", "aid": self.aid, "reason": self.attachment.end}
                    await hub.layer.send(self.reply, {"type": MESSAGE_TYPE, **end})
                    return
                message = {"type": MESSAGE_TYPE, "op": "batch", "aid": self.aid, "envs": batch}
                await hub.layer.send(self.reply, message)
        except Exception as exc:
            logger.warning(
                "Session %s: cannot forward to %s (%r); dropping that connection",
                self.attachment.session.label,
                self.reply,
                exc,
            )
        finally:
            self.attachment.detach()
            hub._served.pop(self.aid, None)


class RemoteHub:
    """The layer side of one session manager: requests out, requests in, streams.

    Args:
        layer: the channel layer.
        port: this manager's channel (the end of the session ids it makes).
        timeout: seconds to wait for a reply.
        sessions: looks up this process's sessions for requests from others.
    """

    def __init__(
        self, layer: BaseChannelLayer, port: str, *, timeout: float, sessions: _Sessions
    ) -> None:
        self.layer = layer
        self.port = port
        self.timeout = timeout
        self._sessions = sessions
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._streams: dict[str, RemoteAttachment] = {}
        self._served: dict[str, _Served] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start reading the port and sending keep-alives."""
        self._spawn(self._listen())
        self._spawn(self._keepalive())

    async def aclose(self) -> None:
        """Stop every task of the hub."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- requester side -------------------------------------------------------------------

    async def request(self, owner: str, op: str, **fields: Any) -> Message:
        """Send a request to ``owner`` and wait for its reply.

        Raises:
            RemoteTimeout: no reply within ``timeout``, or the layer refused the send.
        """
        rid = secrets.token_hex(8)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        message = {"type": MESSAGE_TYPE, "op": op, "rid": rid, "reply": self.port, **fields}
        try:
            await self.layer.send(owner, message)
            async with asyncio.timeout(self.timeout):
                return await future
        except Exception as exc:
            logger.info("No answer from session owner %s to %r: %r", owner, op, exc)
            raise RemoteTimeout(op) from exc
        finally:
            self._pending.pop(rid, None)

    def tell(self, owner: str, op: str, **fields: Any) -> None:
        """Send a message to ``owner`` without waiting for an answer."""
        self._spawn(self._tell(owner, {"type": MESSAGE_TYPE, "op": op, **fields}))

    async def _tell(self, channel: str, message: dict[str, Any]) -> None:
        await self._send(channel, message)

    async def _send(self, channel: str, message: dict[str, Any]) -> bool:
        try:
            await self.layer.send(channel, message)
        except Exception as exc:
            logger.info("Could not send %r to %s: %r", message.get("op"), channel, exc)
            return False
        return True

    async def attach(
        self, owner: str, token: str, user: str | None, last: int, *, cacks: bool
    ) -> tuple[RemoteAttachment, int, int] | None:
        """Attach to a session of ``owner``; the stream, its ``seq`` and ``cack``, or ``None``."""
        aid = secrets.token_hex(8)
        stream = self._streams[aid] = RemoteAttachment(self, owner, aid)
        fields = {"token": token, "user": user, "last": last, "aid": aid, "cacks": cacks}
        try:
            reply = await self.request(owner, "attach", **fields)
        except RemoteTimeout:
            stream.detach()
            return None
        if not reply.get("ok"):
            self._streams.pop(aid, None)
            return None
        return stream, int(reply["seq"]), int(reply["cack"])

    # -- dispatch -------------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.port)
            except Exception as exc:
                logger.warning(
                    "Session port %s: layer receive failed (%r); retrying", self.port, exc
                )
                await asyncio.sleep(1.0)
                continue
            try:
                self._dispatch(message)
            except Exception:
                logger.exception(
                    "Session port %s: malformed message %r", self.port, message.get("op")
                )

    def _dispatch(self, message: Message) -> None:
        op = message.get("op")
        if op == "reply":
            future = self._pending.get(message["rid"])
            if future is not None and not future.done():
                future.set_result(message)
        elif op == "batch":
            stream = self._streams.get(message["aid"])
            if stream is not None:
                stream._deliver(list(message["envs"]))
        elif op == "end":
            stream = self._streams.get(message["aid"])
            if stream is not None:
                stream._ended(str(message["reason"]))
        elif op == "alive":  # from a requester for streams we serve, or from their owner
            now = asyncio.get_running_loop().time()
            for aid in message["aids"]:
                served = self._served.get(aid)
                if served is not None:
                    served.heard = now
                stream = self._streams.get(aid)
                if stream is not None:
                    stream.heard = now
        elif op == "detach":
            served = self._served.pop(message["aid"], None)
            if served is not None:
                served.stop()
        elif op in ("attach", "push", "ack", "close"):
            self._spawn(self._serve(op, message))
        else:
            logger.warning("Session port %s: unknown op %r", self.port, op)

    async def _serve(self, op: str, message: Message) -> None:
        session = self._sessions.lookup(message["token"], message["user"])
        if op == "ack":
            if session is not None:
                session.ack(int(message["seq"]))
                session.touch()
            return
        reply: dict[str, Any] = {"ok": session is not None}
        served = None
        if session is not None:
            if op == "attach":
                cacks = bool(message.get("cacks"))
                attachment = session.attach(int(message["last"]), cacks=cacks)
                if attachment is None:
                    reply["ok"] = False
                else:
                    served = _Served(self, attachment, message["reply"], message["aid"])
                    self._served[served.aid] = served
                    reply.update(seq=session.seq, cack=session.cack)
            elif op == "push":
                session.touch()
                answered = bool(message.get("answered"))
                wait = bool(message.get("wait", True))
                items = layer_messages(message["messages"])
                try:
                    reply["cack"] = await session.push(items, answered=answered, wait=wait)
                except InboxFull:
                    reply["full"] = True
            elif op == "close":
                session.close_by_client()
        answer = {"type": MESSAGE_TYPE, "op": "reply", "rid": message["rid"], **reply}
        sent = await self._send(message["reply"], answer)
        if served is not None:
            if not sent:
                served.stop()
            served.start()

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEPALIVE)
            by_peer: dict[str, list[str]] = defaultdict(list)  # owners and requesters
            for stream in self._streams.values():
                by_peer[stream.owner].append(stream.aid)
            for served in self._served.values():
                by_peer[served.reply].append(served.aid)
            for peer, aids in by_peer.items():
                self.tell(peer, "alive", aids=aids)
            deadline = loop.time() - 3 * KEEPALIVE
            for stream in list(self._streams.values()):
                if stream.heard < deadline:
                    logger.info(
                        "Session owner %s silent; ending the connection relayed to it",
                        stream.owner,
                    )
                    stream._ended("owner silent")
            for served in list(self._served.values()):
                if served.heard < deadline:
                    logger.info(
                        "Session %s: no keep-alive from %s; dropping that connection",
                        served.attachment.session.label,
                        served.reply,
                    )
                    served.stop()
