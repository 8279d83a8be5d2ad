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

When the server starts a graceful shutdown (the ``tidings.shutdown`` extension:
``{"event": asyncio.Event}``), ``until_shutdown`` ends a session of this process
at once, as lifespan shutdown would (the consumer gets 1001, the stream the
close envelope, then it ends), so an open stream does not hold the shutdown for
``--graceful-timeout``. A stream attached to another process's session just ends:
the client resumes there.

Client messages do not come this way: they are POSTs (``longpoll.serve_send``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from tidings import _metrics
from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.transports._http import race, refuse, until_disconnect
from tidings.transports._manager import SHUTDOWN_GRACE, Opening
from tidings.transports._protocol import envelope_seq
from tidings.transports._session import Attachment, LocalAttachment
from tidings.transports.config import TransportSettings
from tidings.wire.sse import encode_comment, encode_event

__all__ = ["HEADERS", "encode_batch", "serve", "until_shutdown"]

#: Response headers of every event stream.
HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_HEARTBEAT: Final = encode_comment()
#: Sessions ending for a shutdown (held so the tasks are not collected mid-way).
_ENDING: set[asyncio.Task[None]] = set()


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
        if (m := _metrics.ACTIVE) is not None:
            m.open_sse += 1
        try:
            await race(
                _stream(attachment, send, settings.sse_heartbeat),
                until_disconnect(receive),
                until_shutdown(scope, attachment),
            )
        finally:
            if m is not None:
                m.open_sse -= 1
        with contextlib.suppress(OSError):  # the client left: nothing to end
            await send({"type": "http.response.body", "body": b""})
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


async def until_shutdown(scope: Scope, attachment: Attachment) -> None:
    """Return once the server shuts down if the session lives elsewhere; else end it.

    Without the server's ``tidings.shutdown`` extension this waits forever. A
    session of this process ends as at lifespan shutdown (the consumer gets 1001
    and the attachment the close envelope); this coroutine then waits on, so
    the transport ends its response in order after that envelope.
    """
    extension = (scope.get("extensions") or {}).get("tidings.shutdown") or {}
    event = extension.get("event")
    if isinstance(event, asyncio.Event):
        await event.wait()
        if not isinstance(attachment, LocalAttachment):
            return
        task = asyncio.get_running_loop().create_task(attachment.session.shutdown(SHUTDOWN_GRACE))
        _ENDING.add(task)
        task.add_done_callback(_ENDING.discard)
    await asyncio.get_running_loop().create_future()  # until the race is over
