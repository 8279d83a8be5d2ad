"""Long-polling and the POST requests: ``poll`` (GET), ``send`` and ``close`` (POST).

Theory of operation
-------------------
``GET ?tidings=poll`` attaches to the session like an SSE stream, but answers
once: ``200`` with a JSON array that starts with the open envelope, then the
first batch of envelopes after ``last``. If there is none yet it waits up to
``poll_hold`` seconds for one (a poll that opens a new session does not wait:
it returns the open envelope and whatever the consumer already sent). Then it
detaches, which starts the resume window; the next poll (with ``last`` set to
the highest ``seq`` received, which also acknowledges) re-attaches. A batch
whose response is lost is sent again, since only acknowledgements free the
buffer.

``POST ?tidings=send`` carries a JSON array of client items (messages,
``ack``, ``close``), at most ``max_post_size`` bytes: a larger
``Content-Length`` is refused before reading, a chunked body as soon as it
passes the limit (413, and the connection closes so the rest is not read).
The answer is ``{"cack": N}`` (so no ``{"cack": n}`` envelope is due for
these messages on an attached SSE stream); 404 if the session is unknown (expired,
another owner's, forged), 400 if the body is not protocol v1, 503 if the
process owning the session did not answer. The messages are pushed without
waiting for the consumer: what does not fit in its inbox is not taken (the
client resends from ``cack + 1``), and when nothing new fits the answer is
429 with ``Retry-After`` at once. A session of this process that is surely
unknown or full is refused before the body is read (and the connection
closes, so the unread body is not taken for the next request).

``POST ?tidings=close`` ends the session (the consumer gets 1000) and answers
204, also for a session that is already gone.
"""

from __future__ import annotations

import asyncio

from tidings import _metrics
from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.transports._http import (
    race,
    read_body,
    refuse,
    respond,
    respond_json,
    until_disconnect,
)
from tidings.transports._inbox import InboxFull
from tidings.transports._manager import Opening, SessionManager
from tidings.transports._protocol import ProtocolError, parse_post_body
from tidings.transports._remote import RemoteTimeout
from tidings.transports._session import Attachment
from tidings.transports._sse import until_shutdown
from tidings.transports.config import TransportSettings

__all__ = ["serve_close", "serve_poll", "serve_send"]

_CLOSE = [(b"connection", b"close")]
#: Seconds a client waits after a 429 to a POST: a consumer takes messages in
#: far less, and the client's outbox keeps them meanwhile.
_FULL_RETRY_AFTER = b"1"


async def serve_poll(
    opening: Opening,
    receive: ASGIReceive,
    send: ASGISend,
    scope: Scope,
    settings: TransportSettings,
) -> None:
    """Serve one long-poll GET for the session ``opening`` attached to."""
    attachment = opening.attachment
    assert attachment is not None
    try:
        decision = await opening.decision()
        if not decision.accepted:
            await refuse(scope, send, decision)
            return
        hold = 0.0 if opening.session is not None else settings.poll_hold
        batch: list[str] = []
        answered = False

        async def wait() -> None:
            nonlocal answered
            batch.extend(await _next(attachment, hold))
            answered = True

        async def shutdown() -> None:
            # At a server shutdown a session of this process ends and wait() gets
            # its close envelope; a poll of another process's session is answered
            # at once (the client polls again, reaching a process that serves).
            nonlocal answered
            await until_shutdown(scope, attachment)
            answered = True

        if (m := _metrics.ACTIVE) is not None:
            m.open_longpoll += 1
        try:
            await race(wait(), until_disconnect(receive), shutdown())
        finally:
            if m is not None:
                m.open_longpoll -= 1
        if not answered:
            return  # the client left while we held the request
        body = "[" + ",".join([opening.envelope("longpoll"), *batch]) + "]"
        await respond(
            send, 200, body.encode(), content_type=b"application/json", headers=decision.headers
        )
    finally:
        attachment.detach()


async def _next(attachment: Attachment, hold: float) -> list[str]:
    """The next batch, waiting at most ``hold`` seconds (``0``: only what is there now)."""
    try:
        async with asyncio.timeout(hold):
            return await attachment.next_batch()
    except TimeoutError:
        return []


async def serve_send(
    sid: str | None,
    user: str | None,
    manager: SessionManager,
    settings: TransportSettings,
    scope: Scope,
    receive: ASGIReceive,
    send: ASGISend,
) -> None:
    """Serve ``POST ?tidings=send``."""
    link = None if sid is None else manager.find(sid, user)
    if link is None:
        await respond(send, 404, b"unknown session\n", headers=_CLOSE)
        return
    if link.full():
        await _busy(send, _CLOSE)
        return
    limit = settings.max_post_size
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        _metrics.hit("max_post_size")
        await respond(send, 413, b"body over max_post_size\n", headers=_CLOSE)
        return
    body = await read_body(receive, limit)
    if body is None:
        _metrics.hit("max_post_size")
        await respond(send, 413, b"body over max_post_size\n", headers=_CLOSE)
        return
    try:
        batch = parse_post_body(body)
    except ProtocolError as exc:
        await respond(send, 400, f"{exc}\n".encode())
        return
    del body
    full = False
    try:
        try:
            cack = await link.push(batch.messages, answered=True, wait=False)
        except InboxFull:
            cack, full = 0, True
        if cack is None:
            await respond(send, 404, b"unknown session\n")
            return
        if batch.ack is not None:
            await link.ack(batch.ack)
        if batch.close:
            await link.close()
    except RemoteTimeout:
        await respond(send, 503, b"the session's process did not answer\n")
        return
    if full:
        await _busy(send)
        return
    await respond_json(send, 200, {"cack": cack})


async def _busy(send: ASGISend, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    _metrics.hit("inbox")
    head = [(b"retry-after", _FULL_RETRY_AFTER), *(headers or [])]
    await respond(send, 429, b"the consumer is busy, retry later\n", headers=head)


async def serve_close(
    sid: str | None, user: str | None, manager: SessionManager, send: ASGISend
) -> None:
    """Serve ``POST ?tidings=close``."""
    link = None if sid is None else manager.find(sid, user)
    if link is not None:
        try:
            await link.close()
        except RemoteTimeout:
            await respond(send, 503, b"the session's process did not answer\n")
            return
    await respond(send, 204)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
