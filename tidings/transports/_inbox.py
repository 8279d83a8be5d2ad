"""Client messages on their way to a session's consumer, and their acknowledgement.

Theory of operation
-------------------
An :class:`Inbox` belongs to one session. :meth:`Inbox.push` takes client
messages in ``cseq`` order: one at or below ``cack`` is a duplicate and is
dropped, one past ``cack + 1`` (a gap) stops the batch (the client resends
from ``cack + 1``). At most ``INBOX_LIMIT`` messages and ``INBOX_BYTES``
bytes wait for the consumer (one message of any size when none waits, so
that a message the transport let through always gets in). Then a WebSocket
push waits for room, which is the back-pressure (the socket is read later;
it holds one frame meanwhile). A POST push (``wait=False``) never waits: it
takes what fits and stops there (the client resends the rest from ``cack +
1``), or raises :class:`InboxFull` when nothing new fits, which the POST
answers with 429 at once. So no request body is held while the consumer is
slow, and what one session keeps for its consumer is bounded. :meth:`Inbox.get` is the consumer's
``receive()``: the messages in order, then, once :meth:`Inbox.close` was
called, the disconnect message (what was queued before still comes first).

**Acknowledged** means *taken into the inbox*: ``cack`` is the ``cseq`` of the
last message taken. From then on the message reaches the consumer exactly once,
whatever happens to the client's connections (a resend is dropped as a
duplicate); only the end of the process loses it (sessions live in memory).

**Telling the client.** ``told`` is the highest ``cack`` the client has been
sent: in an ``open`` envelope (:meth:`Inbox.told_up_to` when a transport
attaches), in the answer to a POST (``push(..., answered=True)``), or in a
``{"cack": n}`` envelope (:meth:`Inbox.report`). When ``cack`` passes ``told``
a report becomes *due* ``CACK_DELAY`` seconds later, or at once when
``CACK_EVERY`` messages are untold (not for an answered push: its answer is
about to tell); ``on_due`` then wakes the attached transport, which takes the
envelope with :meth:`Inbox.report`. So a chatty WebSocket client gets one small
frame per ``CACK_EVERY`` messages or per ``CACK_DELAY``, whichever comes first,
and a client whose POSTs are answered quickly gets none.

What must not go here: the resume buffer, attachments, transports.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

from tidings._types import Message
from tidings.transports._protocol import ClientMessage, cack_envelope
from tidings.transports.errors import TransportError

__all__ = ["CACK_DELAY", "CACK_EVERY", "INBOX_BYTES", "INBOX_LIMIT", "Inbox", "InboxFull"]

#: Client messages waiting for the consumer before pushing waits (the WebSocket
#: server's default ``--ws-max-queue`` is 32 too).
INBOX_LIMIT: Final = 32
#: Bytes of client messages (text or decoded bytes) waiting for the consumer:
#: the default ``max_post_size`` and WebSocket message size (issue 13: POSTs
#: that waited for a slow consumer held 1.1 GiB).
INBOX_BYTES: Final = 1024 * 1024


class InboxFull(TransportError):
    """A push that must not wait found no room for its next new message."""


#: Seconds from the first untold acknowledgement to its ``{"cack": n}``: the
#: client's default ``ackDelay`` (200 ms) the other way round; a client's outbox
#: is no bigger than what it sends in this time.
CACK_DELAY: Final = 0.2
#: Untold acknowledgements that make a ``{"cack": n}`` due at once (the client's
#: default ``ackEvery`` is 50 too): one frame per 50 messages at most.
CACK_EVERY: Final = 50


class Inbox:
    """One session's client messages and ``cack`` (see the module docstring).

    Args:
        on_due: called when a ``{"cack": n}`` envelope became due.
    """

    def __init__(self, on_due: Callable[[], None]) -> None:
        self.cack = 0
        self.told = 0
        self.due = False
        self._on_due = on_due
        self._messages: deque[tuple[Message, int]] = deque()
        self._bytes = 0
        self._end: Message | None = None
        self._receiver: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None

    # -- the consumer's side --------------------------------------------------------------

    def put(self, message: Message) -> None:
        """Queue a message of the server's own (``websocket.connect``), without limit."""
        self._messages.append((message, 0))
        _wake(self._receiver)

    async def get(self) -> Message:
        """The next message for the consumer; the disconnect message once closed and empty."""
        while True:
            if self._messages:
                message, size = self._messages.popleft()
                self._bytes -= size
                _wake(self._room)
                return message
            if self._end is not None:
                return self._end
            waiter = self._receiver = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._receiver = None

    def close(self, disconnect: Message) -> None:
        """The session is over: ``get()`` ends with ``disconnect``, pushing takes no more."""
        if self._end is None:
            self._end = disconnect
        _wake(self._receiver)
        _wake(self._room)
        self._cancel_timer()

    # -- the client's side ----------------------------------------------------------------

    def full(self) -> bool:
        """Whether no client message fits now."""
        return len(self._messages) >= INBOX_LIMIT or self._bytes >= INBOX_BYTES

    def _fits(self, size: int) -> bool:
        if not self._messages:
            return True
        return len(self._messages) < INBOX_LIMIT and self._bytes + size <= INBOX_BYTES

    async def push(
        self, messages: list[ClientMessage], *, answered: bool = False, wait: bool = True
    ) -> int:
        """Take client messages in ``cseq`` order; return ``cack``.

        Args:
            messages: the client's messages, as sent.
            answered: the caller tells the client the returned ``cack`` itself
                (the answer to a POST), so no ``{"cack": n}`` is needed for it.
            wait: wait for room; else take what fits now and stop there.

        Raises:
            InboxFull: ``wait`` is false and not one new message fitted.
        """
        if not wait and self._lock.locked():
            raise InboxFull()  # a waiting push holds it: there is no room
        async with self._lock:
            took = refused = False
            for item in messages:
                if item.cseq <= self.cack:
                    continue
                if item.cseq != self.cack + 1:
                    break
                size = item.size
                while not self._fits(size) and self._end is None:
                    if not wait:
                        refused = True
                        break
                    room = self._room = asyncio.get_running_loop().create_future()
                    await room
                if refused or self._end is not None:
                    break
                self._messages.append((item.asgi(), size))
                self._bytes += size
                self.cack = item.cseq
                took = True
                _wake(self._receiver)
                self._untold(count=not answered)
            if answered:
                self.told_up_to(self.cack)
        if refused and not took:
            raise InboxFull()
        return self.cack

    def told_up_to(self, cack: int) -> None:
        """The client has been sent ``cack`` (an open envelope, a POST answer)."""
        if cack > self.told:
            self.told = cack
        if self.cack <= self.told:
            self.due = False
            self._cancel_timer()

    def report(self) -> str | None:
        """The ``{"cack": n}`` envelope if one is due (it then counts as told), else ``None``."""
        if not self.due or self.cack <= self.told:
            return None
        self.told_up_to(self.cack)
        return cack_envelope(self.cack)

    # -- internals ------------------------------------------------------------------------

    def _untold(self, *, count: bool) -> None:
        if self.due or self._end is not None:
            return
        if count and self.cack - self.told >= CACK_EVERY:
            self._make_due()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(CACK_DELAY, self._make_due)

    def _make_due(self) -> None:
        self._cancel_timer()
        if self.cack > self.told:
            self.due = True
            self._on_due()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
