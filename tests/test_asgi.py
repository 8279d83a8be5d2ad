"""The ASGI WebSocket application-side state machine, and the three places that use it.

``test_rule_table`` pins every phase x message type of ``tidings._asgi``. The
conformance tests run the same application scripts against each user of it (the
server over a real socket, a transport session, the transport router), as the
layer conformance suite runs against both layers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tidings._asgi import (
    ACCEPTED,
    CLOSED,
    CONNECTING,
    DENYING,
    PLAIN_REFUSAL,
    RULES,
    Accept,
    ASGIMessageError,
    ASGIWebSocketConnection,
    Close,
    Phase,
    Refusal,
    SendBytes,
    SendText,
    send_payload,
)
from tidings._types import ASGIReceive, ASGISend, Message, Scope

from .server._helpers import serve

ACCEPT: Message = {"type": "websocket.accept"}
CLOSE: Message = {"type": "websocket.close"}
SEND: Message = {"type": "websocket.send", "text": "hi"}
START: Message = {
    "type": "websocket.http.response.start",
    "status": 401,
    "headers": [(b"www-authenticate", b"Bearer")],
}
BODY: Message = {"type": "websocket.http.response.body", "body": b"who?"}
MESSAGES: dict[str, Message] = {
    "accept": ACCEPT,
    "close": CLOSE,
    "send": SEND,
    "start": START,
    "body": BODY,
}
#: How to reach each phase from CONNECTING.
PATHS: dict[Phase, list[Message]] = {
    CONNECTING: [],
    DENYING: [START],
    ACCEPTED: [ACCEPT],
    CLOSED: [ACCEPT, CLOSE],
}
_WHO: tuple[tuple[bytes, bytes], ...] = ((b"www-authenticate", b"Bearer"),)
#: (phase, message) -> (action, next phase) where allowed; everything else is refused.
ALLOWED: dict[tuple[Phase, str], tuple[object, Phase]] = {
    (CONNECTING, "accept"): (Accept(None, ()), ACCEPTED),
    (CONNECTING, "close"): (PLAIN_REFUSAL, CLOSED),
    (CONNECTING, "start"): (None, DENYING),
    (DENYING, "body"): (Refusal(401, _WHO, b"who?"), CLOSED),
    (ACCEPTED, "send"): (SendText("hi"), ACCEPTED),
    (ACCEPTED, "close"): (Close(1000, ""), CLOSED),
    (CLOSED, "close"): (None, CLOSED),
}


def in_phase(phase: Phase, **options: Any) -> ASGIWebSocketConnection:
    ws = ASGIWebSocketConnection(**options)
    for message in PATHS[phase]:
        ws.app_sent(message)
    assert ws.phase is phase
    return ws


# --- the rule table ---------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name)
@pytest.mark.parametrize("name", list(MESSAGES))
def test_rule_table(phase: Phase, name: str) -> None:
    ws = in_phase(phase)
    expected = ALLOWED.get((phase, name))
    assert (name in _types(RULES[phase])) == (expected is not None)
    if expected is not None:
        action, after = expected
        assert ws.app_sent(dict(MESSAGES[name])) == action
        assert ws.phase is after
        return
    with pytest.raises(ASGIMessageError) as info:
        ws.app_sent(dict(MESSAGES[name]))
    error = info.value
    assert isinstance(error, RuntimeError)
    assert error.phase is phase
    assert ws.phase is phase  # an error changes nothing
    assert error.status == (500 if phase in (CONNECTING, DENYING) else None)
    assert error.code == (1011 if phase is ACCEPTED else None)
    assert error.closed == (phase is CLOSED)
    assert "unexpected ASGI message" in str(error)


def _types(rules: Mapping[str, object]) -> set[str]:
    short = {message["type"]: name for name, message in MESSAGES.items()}
    return {short[mtype] for mtype in rules}


def test_accept_and_close_fields() -> None:
    ws = in_phase(CONNECTING)
    action = ws.app_sent(
        {"type": "websocket.accept", "subprotocol": "chat", "headers": [[b"x-a", bytearray(b"1")]]}
    )
    assert action == Accept("chat", ((b"x-a", b"1"),))
    assert ws.app_sent({"type": "websocket.close", "code": 4000, "reason": None}) == Close(4000, "")


def test_send_payload() -> None:
    assert send_payload({"type": "websocket.send", "text": "a", "bytes": None}) == "a"
    assert send_payload({"type": "websocket.send", "bytes": b"b"}) == b"b"
    assert send_payload({"type": "websocket.send", "bytes": bytearray(b"c")}) == b"c"
    ws = in_phase(ACCEPTED)
    assert ws.app_sent({"type": "websocket.send", "bytes": b"d"}) == SendBytes(b"d")


@pytest.mark.parametrize(
    ("phase", "message", "words"),
    [
        (CONNECTING, {"type": "websocket.accept", "subprotocol": b"chat"}, "'subprotocol'"),
        (CONNECTING, {"type": "websocket.accept", "headers": [(b"a", "text")]}, "bytes"),
        (CONNECTING, {"type": "websocket.accept", "headers": [b"abc"]}, "pairs"),
        (CONNECTING, {"type": "websocket.accept", "headers": 5}, "pairs"),
        (CONNECTING, {"type": "websocket.close", "code": "1000"}, "'code'"),
        (CONNECTING, {"type": "websocket.http.response.start", "status": "401"}, "'status'"),
        (CONNECTING, {"type": "websocket.http.response.start", "status": 101}, "'status'"),
        (CONNECTING, {"type": "websocket.http.response.start", "status": True}, "'status'"),
        (DENYING, {"type": "websocket.http.response.body", "body": "text"}, "'body'"),
        (ACCEPTED, {"type": "websocket.send"}, "needs 'text' or 'bytes'"),
        (ACCEPTED, {"type": "websocket.send", "text": "a", "bytes": b"b"}, "both"),
        (ACCEPTED, {"type": "websocket.send", "text": b"a"}, "'text' must be a str"),
        (ACCEPTED, {"type": "websocket.send", "bytes": "a"}, "'bytes' must be bytes"),
        (ACCEPTED, {"type": "websocket.close", "code": 1000.0}, "'code'"),
        (ACCEPTED, {"type": "websocket.close", "reason": b"bye"}, "'reason'"),
    ],
)
def test_malformed_fields(phase: Phase, message: Message, words: str) -> None:
    ws = in_phase(phase)
    with pytest.raises(ASGIMessageError, match=words) as info:
        ws.app_sent(message)
    assert info.value.phase is phase
    assert ws.phase is phase


def test_denial_body_is_collected_or_streamed() -> None:
    more: Message = {"type": "websocket.http.response.body", "body": b"who", "more_body": True}
    ws = in_phase(DENYING)
    assert ws.app_sent(more) is None
    assert ws.phase is DENYING
    assert ws.app_sent({"type": "websocket.http.response.body"}) == Refusal(401, _WHO, b"who")
    ws = in_phase(DENYING, stream_denial=True)
    assert ws.app_sent(more) == Refusal(401, _WHO, b"who", more_body=True)
    assert ws.app_sent(BODY) == Refusal(401, _WHO, b"who?")
    assert ws.phase is CLOSED


# --- conformance: the same scripts against the server, a session and the router ---------------


@dataclass(frozen=True)
class Outcome:
    """What the client saw, and which sends raised a protocol error in the application."""

    status: int  # 101 when accepted
    body: bytes = b""  # of a refusal with the application's own response
    received: tuple[str | bytes, ...] = ()
    code: int | None = None  # the close code, when accepted
    errors: tuple[int, ...] = ()  # indexes of the script's sends that raised RuntimeError


@dataclass
class Script:
    """An application that sends ``messages`` in order, then returns."""

    messages: list[Message]
    errors: list[int] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        assert (await receive())["type"] == "websocket.connect"
        try:
            for index, message in enumerate(self.messages):
                try:
                    await send(dict(message))
                except RuntimeError:
                    self.errors.append(index)
                except OSError:
                    pass  # the connection is over: nothing reaches the client
        finally:
            self.finished.set()


Runner = Callable[[Script], Awaitable[Outcome]]

HELLO: list[Message] = [
    ACCEPT,
    {"type": "websocket.send", "text": "a"},
    {"type": "websocket.send", "bytes": b"b"},
    {"type": "websocket.close", "code": 4000, "reason": "bye"},
]
DENIAL: list[Message] = [
    {**START, "headers": [(b"x-why", b"token")]},
    {"type": "websocket.http.response.body", "body": b"no", "more_body": True},
    {"type": "websocket.http.response.body", "body": b"pe"},
]
#: (script, outcome) pairs every user must agree on (the router: see ``run_router``).
SCRIPTS: dict[str, tuple[list[Message], Outcome]] = {
    "hello": (HELLO, Outcome(101, received=("a", b"b"), code=4000)),
    "close-before-accept": ([CLOSE], Outcome(403)),
    "return-before-accept": ([], Outcome(403)),
    "denial-response": (DENIAL, Outcome(401, body=b"nope")),
    "send-before-accept": ([SEND, CLOSE], Outcome(403, errors=(0,))),
    "body-before-start": ([BODY, CLOSE], Outcome(403, errors=(0,))),
    "accept-twice": (
        [ACCEPT, ACCEPT, SEND],
        Outcome(101, received=("hi",), code=1000, errors=(1,)),
    ),
    "send-neither": (
        [ACCEPT, {"type": "websocket.send"}, SEND],
        Outcome(101, received=("hi",), code=1000, errors=(1,)),
    ),
    "send-after-close": ([ACCEPT, CLOSE, SEND, CLOSE], Outcome(101, code=1000)),
}


async def run_server(script: Script) -> Outcome:
    async with serve(script) as srv:
        url = f"ws://127.0.0.1:{srv.port}/"
        try:
            async with connect(url) as ws:
                received: list[str | bytes] = []
                with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012
                    while True:
                        received.append(await asyncio.wait_for(ws.recv(), 5))
                assert closed.value.rcvd is not None
                code = closed.value.rcvd.code
        except InvalidStatus as exc:
            response = exc.response
            await asyncio.wait_for(script.finished.wait(), 5)
            body = bytes(response.body or b"")
            return Outcome(response.status_code, body=body, errors=tuple(script.errors))
        await asyncio.wait_for(script.finished.wait(), 5)
    return Outcome(101, received=tuple(received), code=code, errors=tuple(script.errors))


class _Owner:
    def session_finished(self, session: object) -> None:
        pass

    def session_gone(self, session: object) -> None:
        pass


async def run_session(script: Script) -> Outcome:
    from tidings.transports._session import Session
    from tidings.transports.config import TransportSettings

    session = Session(
        token="t" * 16, sid="s", user_key=None, settings=TransportSettings(), owner=_Owner()
    )
    session.start(script, {"type": "websocket", "path": "/"})
    decision = await asyncio.wait_for(asyncio.shield(session.decision), 5)
    await asyncio.wait_for(script.finished.wait(), 5)
    assert session.task is not None
    await asyncio.wait_for(session.task, 5)
    errors = tuple(script.errors)
    if not decision.accepted:
        return Outcome(decision.status, body=decision.body, errors=errors)
    received: list[str | bytes] = []
    code = None
    envelopes: list[dict[str, Any]] = []
    attachment = session.attach(0)
    assert attachment is not None
    while batch := await asyncio.wait_for(attachment.next_batch(), 5):
        envelopes += [json.loads(envelope) for envelope in batch]
    for envelope in envelopes:
        if envelope.get("type") == "close":
            code = envelope["code"]
        elif "text" in envelope:
            received.append(envelope["text"])
        else:
            received.append(base64.b64decode(envelope["bytes"]))
    return Outcome(101, received=tuple(received), code=code, errors=errors)


async def run_router(script: Script) -> Outcome:
    """The router only decides: an accept is 501, every error a plain refusal.

    Its stack never sees an error (``TransportRouter`` answers anything but an
    adoption as a refusal), so the outcome keeps the other users' ``errors``.
    """
    from tidings.transports import TransportRouter

    router = TransportRouter({"websocket": script})
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"tidings=poll",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(router(scope, receive, send), 10)
    await router.aclose()
    start, body = sent
    assert start["type"] == "http.response.start"
    status = start["status"]
    if status == 501:
        return Outcome(501)
    plain = (b"content-type", b"text/plain; charset=utf-8") in start["headers"]  # ours
    return Outcome(status, body=b"" if plain else body["body"])


RUNNERS: dict[str, Runner] = {"server": run_server, "session": run_session, "router": run_router}


@pytest.mark.parametrize("name", list(SCRIPTS))
@pytest.mark.parametrize("user", list(RUNNERS))
async def test_conformance(user: str, name: str, django_db: None) -> None:
    messages, expected = SCRIPTS[name]
    script = Script(messages)
    outcome = await RUNNERS[user](script)
    if user == "router":
        if expected.status == 101:
            expected = Outcome(501)
        elif expected.errors:
            expected = Outcome(403)
    assert outcome == expected
