"""One client session: its consumer instance, inbox, resume buffer and attachment.

Theory of operation
-------------------
A :class:`Session` runs one consumer instance (an ASGI WebSocket application)
for as long as the *session* lives, which is longer than any one transport
connection. It plays the server's part towards the consumer:

* ``receive()`` returns ``websocket.connect``, then the client's messages
  (:meth:`Session.push`: the session's :class:`~tidings.transports._inbox.Inbox`
  de-duplicates and orders them by ``cseq``, bounds them, and acknowledges
  them as ``cack``), then ``websocket.disconnect`` once the session is over;
* ``send()`` takes ``websocket.accept`` or a refusal (``websocket.close`` or a
  ``websocket.http.response`` before accepting: :attr:`Session.decision`),
  ``websocket.send`` (each becomes an envelope with the next ``seq``, kept in
  the resume buffer until the client acknowledges it) and ``websocket.close``,
  in the order and with the fields ``tidings._asgi`` checks (an
  ``ASGIMessageError`` otherwise).

States::

    CONNECTING --accept--> OPEN --consumer close/return/error, overflow--> FINISHED
    CONNECTING --refusal/return/error--> FINISHED, removed at once
    OPEN --client close, expiry--> FINISHED, removed at once

A FINISHED session that has a *final* envelope (``{"type": "close"}``: the
consumer closed, failed, or the buffer overflowed) stays resumable until its
resume window passes without a client, so the client still gets what is
buffered and then the close.

**Attachments.** At most one transport connection is attached at a time; a new
:meth:`Session.attach` ends the previous attachment (``end="superseded"``).
An attachment is a cursor into the buffer: :meth:`LocalAttachment.next_batch`
returns the envelopes after it and moves it on. Nothing leaves the buffer
except by acknowledgement, so a batch lost with its connection is sent again
to the next attachment. An attachment of a transport in ``CACK_TRANSPORTS``
also gets the inbox's ``{"cack": n}`` envelopes when they are due (first in
the batch; outside the buffer and the ``seq`` count: a lost one is made good by
the next connection's open envelope). While nothing is attached, a timer of
``resume_window`` runs; when it fires, the consumer gets ``websocket.disconnect``
with 1006 and the session is removed.

**Claiming.** A new session is *unclaimed* until its client comes back: a
second attachment, or any request through its link (``touch``). An
unclaimed session's timer is ``claim_window`` instead (when shorter), so
sessions opened and never used (one client filling ``max_sessions``) go away
in seconds. An opening connection that stayed attached for ``claim_window``
claims it too: a long SSE stream that drops gets the full resume window.

What must not go here: transports (HTTP, SSE, WebSocket framing), the channel
layer, session ids and users (the manager's).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final, Protocol

from tidings import _metrics
from tidings._asgi import (
    Accept,
    ASGIWebSocketConnection,
    Close,
    Refusal,
    SendBytes,
    SendText,
)
from tidings._types import ASGIApp, Message, Scope
from tidings.transports._inbox import Inbox
from tidings.transports._protocol import ClientMessage, close_envelope, encode_message
from tidings.transports.config import TransportSettings

__all__ = [
    "BATCH_BYTES",
    "Attachment",
    "Decision",
    "LocalAttachment",
    "Session",
]

logger = logging.getLogger("tidings.transports")

#: Envelope bytes handed to a transport in one batch (one SSE chunk, one layer message).
BATCH_BYTES: Final = 64 * 1024

CONNECTING: Final = "connecting"
OPEN: Final = "open"
FINISHED: Final = "finished"


@dataclass(frozen=True, slots=True)
class Decision:
    """The consumer's answer to ``websocket.connect``: accept, or an HTTP refusal."""

    accepted: bool
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


REFUSED: Final = Decision(accepted=False, status=403)
FAILED: Final = Decision(accepted=False, status=500)


class Attachment(Protocol):
    """A transport connection's view of a session, local or in another process."""

    @property
    def end(self) -> str | None:
        """Why the attachment is over: ``"superseded"``, ``"closed"``, ``"gone"``, ``None``."""

    async def next_batch(self) -> list[str]:
        """Wait for envelopes after the cursor and return them; ``[]`` once ``end`` is set."""

    def detach(self) -> None:
        """The transport connection is over (the session's resume window starts)."""


class _Owner(Protocol):
    def session_finished(self, session: Session) -> None: ...

    def session_gone(self, session: Session) -> None: ...


class LocalAttachment:
    """A cursor into a session of this process (see the module docstring)."""

    __slots__ = ("_wake", "cacks", "cursor", "end", "session")

    def __init__(self, session: Session, cursor: int, cacks: bool) -> None:
        self.session = session
        self.cursor = cursor
        self.cacks = cacks
        self.end: str | None = None
        self._wake = asyncio.Event()

    async def next_batch(self) -> list[str]:
        """Wait for envelopes after the cursor and return them; ``[]`` once ``end`` is set."""
        while self.end is None:
            batch = self.session._collect(self)
            if batch:
                return batch
            self._wake.clear()
            await self._wake.wait()
        return []

    def detach(self) -> None:
        """The transport connection is over."""
        self.session._detach(self)

    def _finish(self, reason: str) -> None:
        if self.end is None:
            self.end = reason
        self._wake.set()


class Session:
    """One session and its consumer instance (see the module docstring).

    Args:
        token: the secret part of the session id (the manager's key).
        sid: the whole session id, as the client knows it.
        user_key: ``str(user.pk)`` of the user who opened it, ``None`` if anonymous.
        settings: the router's limits.
        owner: told when the session finishes and when it is removed.
    """

    def __init__(
        self,
        *,
        token: str,
        sid: str,
        user_key: str | None,
        settings: TransportSettings,
        owner: _Owner,
    ) -> None:
        self.token = token
        self.sid = sid
        self.user_key = user_key
        self.label = token[:6]  # enough to follow a session in the logs, useless to an attacker
        self.state = CONNECTING
        self.seq = 0
        self.acked = 0
        self.inbox = Inbox(self._cack_due)
        self.gone = False
        self.decision: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self._settings = settings
        self._owner = owner
        self._buffer: deque[tuple[int, str, int]] = deque()
        self._bytes = 0
        self._final: str | None = None
        self._attachment: LocalAttachment | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._asgi = ASGIWebSocketConnection()  # what the consumer may send now
        self.claimed = False
        self._attached_at: float | None = None

    # -- the consumer ---------------------------------------------------------------------

    def start(self, app: ASGIApp, scope: Scope) -> None:
        """Run the consumer instance ``app`` for this session, from now on."""
        self.inbox.put({"type": "websocket.connect"})
        self.task = asyncio.get_running_loop().create_task(self._run(app, scope))

    async def _run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.inbox.get, self._send)
        except asyncio.CancelledError:
            if self.state == CONNECTING:
                self._refuse(Decision(False, 503))
            raise
        except Exception as exc:
            if self.state == CONNECTING:
                _metrics.app_raised("session")
                logger.error(
                    "Consumer of session %s failed before accepting", self.label, exc_info=exc
                )
                self._refuse(FAILED)
            else:
                _metrics.app_raised("session")
                logger.error("Consumer of session %s failed", self.label, exc_info=exc)
                self._finish(1011, "internal error", final=True)
        else:
            if self.state == CONNECTING:
                self._refuse(REFUSED)  # returning without an answer is a refusal
            else:
                self._finish(1000, "", final=True)

    async def _send(self, message: Message) -> None:
        if self.state == FINISHED:
            # The session is over (refused, closed, gone, expired, overflow): like a
            # network that loses what is sent to a peer that left.
            logger.debug("Session %s is over; dropped %s", self.label, message["type"])
            return
        action = self._asgi.app_sent(message)
        if action is not None:
            self._ON_ACTION[type(action)](self, action)

    # -- actions (tidings._asgi), one method each -------------------------------------------

    def _on_accept(self, action: Accept) -> None:
        self.state = OPEN
        _decide(self.decision, Decision(accepted=True, headers=list(action.headers)))

    def _on_refusal(self, action: Refusal) -> None:
        headers = list(action.headers)
        self._refuse(Decision(False, action.status, headers, action.body or b""))

    def _on_close(self, action: Close) -> None:
        self._finish(action.code, action.reason, final=True)

    def _on_send(self, action: SendText | SendBytes) -> None:
        self._append(action.text if isinstance(action, SendText) else action.data)

    _ON_ACTION: Final[dict[type, Callable[[Session, Any], None]]] = {
        Accept: _on_accept,
        Refusal: _on_refusal,
        Close: _on_close,
        SendText: _on_send,
        SendBytes: _on_send,
    }

    def _append(self, data: str | bytes) -> None:
        seq = self.seq + 1
        text = encode_message(seq, data)
        try:
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise RuntimeError("websocket.send text is not valid Unicode") from None
        settings = self._settings
        if (
            len(self._buffer) >= settings.buffer_messages
            or self._bytes + size > settings.buffer_bytes
        ):
            logger.warning(
                "Session %s: resume buffer full (%d messages, %d bytes not acknowledged); "
                "ending it with 1013",
                self.label,
                len(self._buffer),
                self._bytes,
            )
            _metrics.hit("buffer_messages")
            self._finish(1013, "resume buffer full", final=True)
            return
        self.seq = seq
        self._buffer.append((seq, text, size))
        self._bytes += size
        if self._attachment is not None:
            self._attachment._wake.set()

    # -- the client -----------------------------------------------------------------------

    @property
    def cack(self) -> int:
        """The ``cseq`` of the last client message taken (acknowledged)."""
        return self.inbox.cack

    async def push(
        self, messages: list[ClientMessage], *, answered: bool = False, wait: bool = True
    ) -> int:
        """Queue client messages for the consumer; return ``cack`` (see :meth:`Inbox.push`).

        Raises:
            InboxFull: ``wait`` is false and there was no room.
        """
        return await self.inbox.push(messages, answered=answered, wait=wait)

    def ack(self, seq: int) -> None:
        """The client has every envelope up to ``seq``: free them."""
        seq = min(seq, self.seq)
        if seq <= self.acked:
            return
        buffer = self._buffer
        while buffer and buffer[0][0] <= seq:
            self._bytes -= buffer.popleft()[2]
        self.acked = seq

    def attach(self, last: int, *, cacks: bool = False) -> LocalAttachment | None:
        """Attach a transport connection whose client has everything up to ``last``.

        Its open envelope tells ``cack`` (read it now); with ``cacks`` its
        batches also carry the ``{"cack": n}`` envelopes that become due.
        Returns ``None`` when continuity cannot be kept: the session is gone,
        or the messages after ``last`` are no longer (or never were) buffered.
        """
        if self.gone or not self.acked <= last <= self.seq:
            return None
        self.ack(last)
        if self._attached_at is not None:
            self.claimed = True  # the client came back
        self._attached_at = asyncio.get_running_loop().time()
        if self._attachment is not None:
            self._attachment._finish("superseded")
        self._cancel_expiry()
        self.inbox.told_up_to(self.inbox.cack)
        attachment = self._attachment = LocalAttachment(self, last, cacks)
        return attachment

    def touch(self) -> None:
        """A request for this session arrived: restart the resume window if detached."""
        self.claimed = True
        if self._attachment is None and not self.gone:
            self._schedule_expiry()

    def close_by_client(self) -> None:
        """The client ended the session: the consumer gets ``websocket.disconnect`` 1000."""
        logger.info("Session %s closed by the client", self.label)
        self._finish(1000, "", final=False)
        self.remove()

    def abandon(self) -> None:
        """Give up on a session whose consumer never decided (the consumer gets 1006)."""
        if self.state == CONNECTING:
            logger.warning("Session %s: the consumer did not accept or refuse in time", self.label)
            self._refuse(Decision(False, 503))

    # -- internals ------------------------------------------------------------------------

    def _collect(self, attachment: LocalAttachment) -> list[str]:
        start = max(attachment.cursor, self.acked)
        batch: list[str] = []
        size = 0
        for _seq, text, n in islice(self._buffer, start - self.acked, None):
            batch.append(text)
            size += n
            if size >= BATCH_BYTES:
                break
        attachment.cursor = start + len(batch)
        if attachment.cursor == self.seq and self._final is not None:
            batch.append(self._final)
            attachment.end = "closed"
        report = self.inbox.report() if attachment.cacks else None
        return batch if report is None else [report, *batch]

    def _cack_due(self) -> None:
        attachment = self._attachment
        if attachment is not None and attachment.cacks:
            attachment._wake.set()

    def _detach(self, attachment: LocalAttachment) -> None:
        attachment._finish("detached")
        if self._attachment is attachment:
            self._attachment = None
            started = self._attached_at
            now = asyncio.get_running_loop().time()
            if started is not None and now - started >= self._settings.claim_window:
                self.claimed = True
            if not self.gone:
                self._schedule_expiry()

    def _refuse(self, decision: Decision) -> None:
        _decide(self.decision, decision)
        self._finish(1006, "", final=False)
        self.remove()

    def _finish(self, code: int, reason: str, *, final: bool) -> None:
        if self.state == FINISHED:
            return
        self.state = FINISHED
        self.inbox.close({"type": "websocket.disconnect", "code": code, "reason": reason})
        if final:
            self._final = close_envelope(code, reason)
            if self._attachment is not None:
                self._attachment._wake.set()
        self._owner.session_finished(self)

    def _schedule_expiry(self) -> None:
        self._cancel_expiry()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(self._window(), self._expire)

    def _window(self) -> float:
        settings = self._settings
        if self.claimed:
            return settings.resume_window
        return min(settings.claim_window, settings.resume_window)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        if (m := _metrics.ACTIVE) is not None:
            m.sessions["expired"] += 1
        if self.state != FINISHED:
            logger.info(
                "Session %s expired: no client for %g s; the consumer gets 1006",
                self.label,
                self._window(),
            )
        self._finish(1006, "resume window expired", final=False)
        self.remove()

    def remove(self) -> None:
        """Forget the session: end any attachment, stop the timer, tell the owner."""
        if self.gone:
            return
        self.gone = True
        self._cancel_expiry()
        if self._attachment is not None:
            self._attachment._finish("gone")
            self._attachment = None
        self._owner.session_gone(self)

    async def shutdown(self, timeout: float) -> None:
        """End the session for a server shutdown (1001) and wait for its consumer.

        An attached client gets the close envelope (do not resume here).
        """
        self._finish(1001, "server shutting down", final=True)
        task = self.task
        if task is not None and not task.done():
            done, _ = await asyncio.wait([task], timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # let an attached transport take the close envelope
        self.remove()


def _decide(future: asyncio.Future[Decision], decision: Decision) -> None:
    if not future.done():
        future.set_result(decision)
