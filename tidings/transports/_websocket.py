"""The session WebSocket transport: ``?tidings=ws``, envelopes in text frames.

Theory of operation
-------------------
The handshake is answered only once the session is settled: for a new
session, when its consumer accepts (a refusal answers the handshake with 403
or the consumer's own ``websocket.http.response``); a resumed session is
accepted at once. The first frame is the open envelope, then one text frame
per envelope as the attachment yields them, and ``{}`` (a heartbeat the client
ignores) after ``sse_heartbeat`` seconds without one: a browser cannot see the
server's WebSocket pings, so ``tidings.js`` needs a frame to tell a live but
quiet session from a host that vanished without closing (its ``idleTimeout``).
Client frames are JSON items (``cseq`` messages, ``ack``, ``{"type": "close"}``),
each handed to the session's :class:`~tidings.transports._manager.Link`; pushing
waits while the consumer's inbox is full, so reading from the socket waits too.

Closing codes of this transport (the session's own end is the close
envelope, sent before): 1000 after the session ended, ``SUPERSEDED`` (4001)
when a newer connection of the same session took over, 1003 for a binary
frame, 1007 for a frame that is not protocol v1, 1013 when the process
owning the session did not answer. A client closing the socket only
detaches: the session waits for it for ``resume_window``.
"""

from __future__ import annotations

import asyncio
from typing import Final

from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.transports._http import race, refuse
from tidings.transports._manager import Link, Opening
from tidings.transports._protocol import ProtocolError, parse_frame
from tidings.transports._remote import RemoteTimeout
from tidings.transports._session import Attachment
from tidings.transports.config import TransportSettings

__all__ = ["SUPERSEDED", "serve"]

#: Close code (private range, RFC 6455 section 7.4.2) of a connection replaced
#: by a newer one of the same session.
SUPERSEDED: Final = 4001

_HEARTBEAT: Final = {"type": "websocket.send", "text": "{}"}


async def serve(
    opening: Opening,
    receive: ASGIReceive,
    send: ASGISend,
    scope: Scope,
    settings: TransportSettings,
) -> None:
    """Serve one session WebSocket (its ``websocket.connect`` was already received)."""
    attachment = opening.attachment
    link = opening.link
    assert attachment is not None and link is not None
    try:
        decision = await opening.decision()
        if not decision.accepted:
            await refuse(scope, send, decision)
            return
        await send({"type": "websocket.accept", "headers": decision.headers})
        await send({"type": "websocket.send", "text": opening.envelope("websocket")})
        await race(_write(attachment, send, settings.sse_heartbeat), _read(link, receive, send))
    finally:
        attachment.detach()


async def _write(attachment: Attachment, send: ASGISend, heartbeat: float) -> None:
    while True:
        try:
            async with asyncio.timeout(heartbeat):
                batch = await attachment.next_batch()
        except TimeoutError:
            await send(_HEARTBEAT)
            continue
        if not batch:
            break
        for envelope in batch:
            await send({"type": "websocket.send", "text": envelope})
    if attachment.end == "superseded":
        await _close(send, SUPERSEDED, "replaced by a newer connection")
    elif attachment.end == "owner silent":  # the owning process died (see _remote)
        await _close(send, 1013, "session unreachable, try again")
    else:
        await _close(send, 1000, "session ended")


async def _read(link: Link, receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        message = await receive()
        mtype = message["type"]
        if mtype == "websocket.disconnect":
            return
        if mtype != "websocket.receive":
            continue
        text = message.get("text")
        if text is None:
            await _close(send, 1003, "binary frames are not protocol v1")
            return
        try:
            batch = parse_frame(text)
        except ProtocolError as exc:
            await _close(send, 1007, str(exc)[:100])
            return
        try:
            if batch.messages and await link.push(batch.messages) is None:
                await _close(send, 1000, "session ended")
                return
            if batch.ack is not None:
                await link.ack(batch.ack)
            if batch.close:
                await link.close()
        except RemoteTimeout:
            await _close(send, 1013, "session unreachable, try again")
            return


async def _close(send: ASGISend, code: int, reason: str) -> None:
    await send({"type": "websocket.close", "code": code, "reason": reason})
