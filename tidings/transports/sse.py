"""The SSE transport: ``GET ?tidings=sse`` answers a ``text/event-stream`` of envelopes.

Theory of operation
-------------------
After the consumer of a new session accepted (a resumed one was accepted
long ago), the response starts with ``200`` and the headers that keep the
stream flowing through proxies: ``cache-control: no-cache`` (no caching or
transformation) and ``x-accel-buffering: no`` (nginx passes it unbuffered).
The first event is the open envelope, without ``id``; then every batch the
attachment yields becomes one body chunk of events, ``id: <seq>`` on each
message event so that ``EventSource`` sends ``Last-Event-ID`` when it
reconnects. After ``sse_heartbeat`` seconds without an event a comment line
goes out. The stream ends when the session closes (after the close envelope),
when a newer connection of the session takes over, or when the client leaves
(``http.disconnect``); in every case the attachment is detached, which starts
the session's resume window.

Client messages do not come this way: they are POSTs (``longpoll.serve_send``).
"""

from __future__ import annotations

import asyncio
from typing import Final

from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.transports._http import race, refuse, until_disconnect
from tidings.transports.config import TransportSettings
from tidings.transports.manager import Opening
from tidings.transports.protocol import envelope_seq
from tidings.transports.session import Attachment
from tidings.wire.sse import encode_comment, encode_event

__all__ = ["HEADERS", "encode_batch", "serve"]

#: Response headers of every event stream.
HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_HEARTBEAT: Final = encode_comment()


def encode_batch(batch: list[str]) -> bytes:
    """One body chunk: an SSE event per envelope, with ``id: <seq>`` on messages."""
    return b"".join(encode_event(envelope, event_id=envelope_seq(envelope)) for envelope in batch)


async def serve(
    opening: Opening,
    receive: ASGIReceive,
    send: ASGISend,
    scope: Scope,
    settings: TransportSettings,
) -> None:
    """Serve one SSE request for the session ``opening`` attached to."""
    attachment = opening.attachment
    assert attachment is not None
    try:
        decision = await opening.decision()
        if not decision.accepted:
            await refuse(scope, send, decision)
            return
        headers = [*HEADERS, *decision.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        first = encode_event(opening.envelope("sse"))
        await send({"type": "http.response.body", "body": first, "more_body": True})
        await race(_stream(attachment, send, settings.sse_heartbeat), until_disconnect(receive))
    finally:
        attachment.detach()


async def _stream(attachment: Attachment, send: ASGISend, heartbeat: float) -> None:
    while True:
        try:
            async with asyncio.timeout(heartbeat):
                batch = await attachment.next_batch()
        except TimeoutError:
            await send({"type": "http.response.body", "body": _HEARTBEAT, "more_body": True})
            continue
        if not batch:
            break
        await send({"type": "http.response.body", "body": encode_batch(batch), "more_body": True})
    await send({"type": "http.response.body", "body": b""})
