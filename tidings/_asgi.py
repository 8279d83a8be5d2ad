"""The application side of an ASGI WebSocket, as one state machine.

Theory of operation
-------------------
Whatever runs a WebSocket application (the server over a socket, a transport
session over SSE or long-polling, the transport router checking a session
request) must agree on what the application may send, in what order, and
what each message means (ASGI WebSocket spec 2.4, with the
``websocket.http.response`` extension). That agreement lives here, once.

:class:`ASGIWebSocketConnection` takes every message the application sends
(:meth:`~ASGIWebSocketConnection.app_sent`), checks it against the table of
messages each phase allows and the fields the spec gives it, and returns what
it means as a small frozen action, or raises :class:`ASGIMessageError`::

    CONNECTING --websocket.accept--> ACCEPTED --websocket.close--> CLOSED
    CONNECTING --websocket.close (a plain 403)----------------------> CLOSED
    CONNECTING --websocket.http.response.start--> DENYING
    DENYING --websocket.http.response.body (the last one)----------> CLOSED

=================  ===========================================================
phase              allowed messages -> action
=================  ===========================================================
CONNECTING         accept -> Accept; close -> Refusal(403);
                   http.response.start -> None (the response starts)
DENYING            http.response.body -> Refusal (or None while collecting)
ACCEPTED           send -> SendText / SendBytes; close -> Close
CLOSED             close -> None (closing twice is harmless)
=================  ===========================================================

Anything else is an :class:`ASGIMessageError`; it carries what the caller
answers with: an HTTP status while the handshake is undecided (500), a close
code once accepted (1011), or ``closed`` once the application has closed (the
server raises ``ClientDisconnected``, a session drops the message). An error
leaves the phase as it was.

A denial response is *collected* by default: the last body message returns one
:class:`Refusal` with the whole body. ``stream_denial=True`` (the server, which
writes a body as it comes) returns a :class:`Refusal` for every body message
instead, with that message's body and ``more_body``.

The state here is the application's side only: whether the client is still
there is the caller's business. The accepted-phase send is the hot path:
:func:`send_payload` is the one check of a ``websocket.send``, and a caller that
has seen ``phase is ACCEPTED`` may call it directly instead of ``app_sent``.

What must not go here: I/O, framing, header field syntax (``tidings.wire``),
anything that knows about Django or channel layers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tidings._types import Message

__all__ = [
    "ACCEPTED",
    "CLOSED",
    "CONNECTING",
    "DENYING",
    "PLAIN_REFUSAL",
    "RULES",
    "ASGIMessageError",
    "ASGIWebSocketConnection",
    "Accept",
    "Action",
    "Close",
    "Phase",
    "Refusal",
    "SendBytes",
    "SendText",
    "send_payload",
]

Headers = tuple[tuple[bytes, bytes], ...]


class Phase(enum.Enum):
    """Where the application is in the WebSocket's life."""

    CONNECTING = "connecting"  # websocket.connect received, nothing decided
    DENYING = "denying"  # a websocket.http.response is being sent
    ACCEPTED = "accepted"  # websocket.accept sent
    CLOSED = "closed"  # refused, or websocket.close sent after accepting


CONNECTING: Final = Phase.CONNECTING
DENYING: Final = Phase.DENYING
ACCEPTED: Final = Phase.ACCEPTED
CLOSED: Final = Phase.CLOSED


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accept:
    """``websocket.accept``: complete the handshake."""

    subprotocol: str | None = None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """The handshake is refused: an HTTP response instead of the upgrade.

    ``body`` is ``None`` for a plain refusal (``websocket.close`` before
    accepting): the ASGI spec answers it with 403 and an empty body, and the
    response is the caller's own. Otherwise the application sent its own
    response (``websocket.http.response``): ``status``, ``headers`` and
    ``body`` are passed on. ``more_body`` is only ever true with
    ``stream_denial``: more body messages follow.
    """

    status: int = 403
    headers: Headers = ()
    body: bytes | None = None
    more_body: bool = False


#: ``websocket.close`` before ``websocket.accept``.
PLAIN_REFUSAL: Final = Refusal()


@dataclass(frozen=True, slots=True)
class SendText:
    """``websocket.send`` with ``text``."""

    text: str


@dataclass(frozen=True, slots=True)
class SendBytes:
    """``websocket.send`` with ``bytes``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """``websocket.close`` after accepting: start the closing handshake."""

    code: int = 1000
    reason: str = ""


Action = Accept | Refusal | SendText | SendBytes | Close


class ASGIMessageError(RuntimeError):
    """The application sent a message that is malformed or not allowed in ``phase``.

    Attributes:
        phase: the phase the message arrived in (unchanged by it).
        status: the HTTP status to answer with while the handshake is undecided
            (500), else ``None``.
        code: the close code to close with once accepted (1011), else ``None``.
        closed: the application had already closed: nothing goes to the client.
    """

    def __init__(self, text: str, phase: Phase) -> None:
        super().__init__(text)
        self.phase = phase
        self.status: int | None = 500 if phase is CONNECTING or phase is DENYING else None
        self.code: int | None = 1011 if phase is ACCEPTED else None
        self.closed = phase is CLOSED


# -- field checks ----------------------------------------------------------------------------

_BYTES_LIKE: Final = (bytes, bytearray, memoryview)


def send_payload(message: Message) -> str | bytes:
    """The payload of a ``websocket.send``: exactly one of ``text`` (str) and ``bytes``.

    Raises:
        ASGIMessageError: neither or both are set, or one has the wrong type.
    """
    text = message.get("text")
    if text is not None:
        if (type(text) is str or isinstance(text, str)) and message.get("bytes") is None:
            return text
        raise _field_error(message)
    data = message.get("bytes")
    if type(data) is bytes:
        return data
    if isinstance(data, _BYTES_LIKE):
        return bytes(data)
    raise _field_error(message)


def _field_error(message: Message) -> ASGIMessageError:
    text, data = message.get("text"), message.get("bytes")
    if text is not None and data is not None:
        why = "has both 'text' and 'bytes'"
    elif text is not None:
        why = "'text' must be a str"
    elif data is not None:
        why = "'bytes' must be bytes"
    else:
        why = "needs 'text' or 'bytes'"
    return ASGIMessageError(f"websocket.send {why}", ACCEPTED)


def _headers(message: Message, phase: Phase) -> Headers:
    """The ``headers`` of an accept or response start: pairs of byte strings."""
    raw = message.get("headers")
    if raw is None:
        return ()
    mtype = message["type"]
    try:
        pairs = [(name, value) for name, value in raw]
    except (TypeError, ValueError):
        raise ASGIMessageError(f"{mtype} 'headers' must be (name, value) pairs", phase) from None
    headers = []
    for name, value in pairs:
        if not isinstance(name, _BYTES_LIKE) or not isinstance(value, _BYTES_LIKE):
            raise ASGIMessageError(f"{mtype} header names and values must be bytes", phase)
        headers.append((bytes(name), bytes(value)))
    return tuple(headers)


# -- the rules -------------------------------------------------------------------------------

_Rule = Callable[["ASGIWebSocketConnection", Message], "Action | None"]


def _accept(ws: ASGIWebSocketConnection, message: Message) -> Accept:
    subprotocol = message.get("subprotocol")
    if subprotocol is not None and not isinstance(subprotocol, str):
        raise ASGIMessageError("websocket.accept 'subprotocol' must be a str or None", CONNECTING)
    headers = _headers(message, CONNECTING)
    ws.phase = ACCEPTED
    return Accept(subprotocol, headers)


def _close_fields(message: Message, phase: Phase) -> Close:
    code = message.get("code")
    reason = message.get("reason")
    if code is None:
        code = 1000
    elif type(code) is not int:
        raise ASGIMessageError("websocket.close 'code' must be an int", phase)
    if reason is None:
        reason = ""
    elif not isinstance(reason, str):
        raise ASGIMessageError("websocket.close 'reason' must be a str", phase)
    return Close(code, reason)


def _refuse(ws: ASGIWebSocketConnection, message: Message) -> Refusal:
    _close_fields(message, CONNECTING)  # checked, then ignored (ASGI spec)
    ws.phase = CLOSED
    return PLAIN_REFUSAL


def _close(ws: ASGIWebSocketConnection, message: Message) -> Close:
    close = _close_fields(message, ACCEPTED)
    ws.phase = CLOSED
    return close


def _close_again(ws: ASGIWebSocketConnection, message: Message) -> None:
    return None


def _response_start(ws: ASGIWebSocketConnection, message: Message) -> None:
    status = message.get("status")
    if type(status) is not int or not 200 <= status <= 599:
        raise ASGIMessageError(
            f"websocket.http.response.start 'status' must be an int from 200 to 599, "
            f"not {status!r}",
            CONNECTING,
        )
    ws._denial = Refusal(status, _headers(message, CONNECTING), b"")
    ws._chunks = []
    ws.phase = DENYING
    return None


def _response_body(ws: ASGIWebSocketConnection, message: Message) -> Refusal | None:
    body = message.get("body", b"")
    if not isinstance(body, _BYTES_LIKE):
        raise ASGIMessageError("websocket.http.response.body 'body' must be bytes", DENYING)
    body = bytes(body)
    more = bool(message.get("more_body", False))
    denial = ws._denial
    assert denial is not None
    if not more:
        ws.phase = CLOSED
    if ws.stream_denial:
        return Refusal(denial.status, denial.headers, body, more)
    assert ws._chunks is not None  # set by _response_start
    ws._chunks.append(body)
    if more:
        return None
    return Refusal(denial.status, denial.headers, b"".join(ws._chunks))


def _send(ws: ASGIWebSocketConnection, message: Message) -> SendText | SendBytes:
    payload = send_payload(message)
    return SendText(payload) if isinstance(payload, str) else SendBytes(payload)


#: What each phase allows, and the rule that turns each allowed message into an action.
RULES: Final[dict[Phase, dict[str, _Rule]]] = {
    CONNECTING: {
        "websocket.accept": _accept,
        "websocket.close": _refuse,
        "websocket.http.response.start": _response_start,
    },
    DENYING: {"websocket.http.response.body": _response_body},
    ACCEPTED: {"websocket.send": _send, "websocket.close": _close},
    CLOSED: {"websocket.close": _close_again},
}

_WHERE: Final = {
    CONNECTING: "before websocket.accept",
    DENYING: "after websocket.http.response.start",
    ACCEPTED: "after websocket.accept",
    CLOSED: "after the WebSocket was closed",
}


class ASGIWebSocketConnection:
    """The application side of one ASGI WebSocket (see the module docstring).

    Args:
        stream_denial: return a :class:`Refusal` for every
            ``websocket.http.response.body`` instead of collecting the body.
    """

    __slots__ = ("_chunks", "_denial", "phase", "stream_denial")

    def __init__(self, *, stream_denial: bool = False) -> None:
        self.phase = CONNECTING
        self.stream_denial = stream_denial
        self._denial: Refusal | None = None  # status and headers of a response in progress
        self._chunks: list[bytes] | None = None  # a denial response's body, when buffered

    def app_sent(self, message: Message) -> Action | None:
        """Check a message the application sent and return what it means.

        Returns:
            The action to carry out, or ``None`` when there is nothing to do yet
            (a response start, a body being collected, a repeated close).

        Raises:
            ASGIMessageError: the message is not allowed now, or malformed.
        """
        mtype = message["type"]
        rule = RULES[self.phase].get(mtype)
        if rule is None:
            raise ASGIMessageError(
                f"unexpected ASGI message {mtype!r} {_WHERE[self.phase]}", self.phase
            )
        return rule(self, message)
