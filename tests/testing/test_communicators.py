"""Tests for tidings.testing: ApplicationCommunicator, WebsocketCommunicator, HttpCommunicator."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import asgiref.testing
import pytest

import tidings.testing
import tidings.testing.application
import tidings.testing.http
import tidings.testing.websocket
from tidings.testing import ApplicationCommunicator, HttpCommunicator, WebsocketCommunicator

Message = dict[str, Any]
Scope = dict[str, Any]


def test_public_names_and_submodule_paths() -> None:
    assert sorted(tidings.testing.__all__) == [
        "ApplicationCommunicator",
        "ChannelsLiveServerTestCase",
        "HttpCommunicator",
        "TidingsLiveServerTestCase",
        "WebsocketCommunicator",
    ]
    # Channels' submodule paths work too.
    assert tidings.testing.websocket.WebsocketCommunicator is WebsocketCommunicator
    assert tidings.testing.http.HttpCommunicator is HttpCommunicator
    assert tidings.testing.application.ApplicationCommunicator is ApplicationCommunicator


class Scripted:
    """An ASGI app that records its scope and answers from a per-input-type script."""

    def __init__(self, script: dict[str, list[Message]] | None = None) -> None:
        self.script = script or {}
        self.scope: Scope | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scope = scope
        while True:
            message = await receive()
            if message["type"] == "stop":
                return
            if message["type"] == "raise":
                raise ZeroDivisionError("scripted failure")
            for reply in self.script.get(message["type"], []):
                await send(reply)
            if message["type"] == "websocket.disconnect":
                return


# -- ApplicationCommunicator --------------------------------------------------


async def test_send_input_receive_output() -> None:
    communicator = ApplicationCommunicator(Scripted({"ping": [{"type": "pong"}]}), {"type": "x"})
    await communicator.send_input({"type": "ping"})
    assert await communicator.receive_output() == {"type": "pong"}
    await communicator.send_input({"type": "stop"})
    await communicator.wait()
    assert communicator.future.result() is None


async def test_receive_output_timeout_cancels_app() -> None:
    communicator = ApplicationCommunicator(Scripted(), {"type": "x"})
    with pytest.raises(TimeoutError):
        await communicator.receive_output(timeout=0.05)
    assert communicator.future.cancelled()


async def test_receive_output_raises_app_error_without_waiting_for_timeout() -> None:
    communicator = ApplicationCommunicator(Scripted(), {"type": "x"})
    await communicator.send_input({"type": "raise"})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ZeroDivisionError, match="scripted failure"):
        await communicator.receive_output(timeout=5)
    assert loop.time() - started < 1
    # Every later call raises it too.
    with pytest.raises(ZeroDivisionError):
        await communicator.send_input({"type": "ping"})
    with pytest.raises(ZeroDivisionError):
        await communicator.receive_nothing()
    with pytest.raises(ZeroDivisionError):
        communicator.stop()


async def test_receive_output_app_ends_quietly() -> None:
    communicator = ApplicationCommunicator(Scripted({"bye": [{"type": "last"}]}), {"type": "x"})
    await communicator.send_input({"type": "bye"})
    await communicator.send_input({"type": "stop"})
    # A message sent just before the app ended is still delivered...
    assert await communicator.receive_output(timeout=5) == {"type": "last"}
    # ...and then there is nothing more, reported at once.
    with pytest.raises(TimeoutError):
        await communicator.receive_output(timeout=5)


async def test_receive_nothing() -> None:
    communicator = ApplicationCommunicator(Scripted({"ping": [{"type": "pong"}]}), {"type": "x"})
    assert await communicator.receive_nothing(timeout=0.02) is True
    await communicator.send_input({"type": "ping"})
    assert await communicator.receive_nothing(timeout=1) is False
    # The message is left for receive_output.
    assert await communicator.receive_output() == {"type": "pong"}
    communicator.stop()


async def test_wait_cancels_an_app_that_does_not_end() -> None:
    communicator = ApplicationCommunicator(Scripted(), {"type": "x"})
    await communicator.wait(timeout=0.02)
    assert communicator.future.cancelled()


async def test_wait_reraises_app_error() -> None:
    communicator = ApplicationCommunicator(Scripted(), {"type": "x"})
    await communicator.send_input({"type": "raise"})
    with pytest.raises(ZeroDivisionError):
        await communicator.wait()


async def test_stop_before_start_is_a_no_op() -> None:
    ApplicationCommunicator(Scripted(), {"type": "x"}).stop()


test_var: contextvars.ContextVar[str] = contextvars.ContextVar("test_var", default="unset")


async def test_app_runs_in_a_fresh_context() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(test_var.get())

    test_var.set("from the test")
    communicator = ApplicationCommunicator(app, {"type": "x"})
    await communicator.wait()
    assert seen == ["unset"]


async def test_accepts_asgi2_applications() -> None:
    class Asgi2:
        def __init__(self, scope: Scope) -> None:
            self.scope = scope

        async def __call__(self, receive: Any, send: Any) -> None:
            await send({"type": "scope", "scope": self.scope})

    communicator = ApplicationCommunicator(Asgi2, {"type": "x"})
    assert await communicator.receive_output() == {"type": "scope", "scope": {"type": "x"}}


# -- WebsocketCommunicator ----------------------------------------------------


async def test_websocket_scope() -> None:
    app = Scripted()
    communicator = WebsocketCommunicator(
        app,
        "/chat/caf%C3%A9/?token=a%20b&x=1",
        headers=[(b"origin", b"http://example.com")],
        subprotocols=["v1", "v2"],
        spec_version="2.3",
    )
    assert communicator.scope == {
        "type": "websocket",
        "path": "/chat/café/",
        "raw_path": b"/chat/caf%C3%A9/",
        "query_string": b"token=a%20b&x=1",
        "headers": [(b"origin", b"http://example.com")],
        "subprotocols": ["v1", "v2"],
        "spec_version": "2.3",
    }
    minimal = WebsocketCommunicator(app, "/")
    assert minimal.scope == {
        "type": "websocket",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
    }


def test_websocket_path_must_be_str() -> None:
    with pytest.raises(TypeError, match="Expected str"):
        WebsocketCommunicator(Scripted(), b"/")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "result"),
    [
        ({"type": "websocket.accept"}, (True, None)),
        ({"type": "websocket.accept", "subprotocol": "v2"}, (True, "v2")),
        ({"type": "websocket.close"}, (False, 1000)),
        ({"type": "websocket.close", "code": 4003}, (False, 4003)),
    ],
)
async def test_websocket_connect_results(reply: Message, result: tuple[bool, Any]) -> None:
    communicator = WebsocketCommunicator(Scripted({"websocket.connect": [reply]}), "/")
    assert await communicator.connect() == result
    communicator.stop()


@pytest.mark.parametrize(
    ("reply", "headers"),
    [
        ({"type": "websocket.accept", "headers": [[b"foo", b"bar"]]}, [[b"foo", b"bar"]]),
        ({"type": "websocket.accept"}, []),
        ({"type": "websocket.close"}, None),
    ],
)
async def test_websocket_response_headers(reply: Message, headers: Any) -> None:
    communicator = WebsocketCommunicator(Scripted({"websocket.connect": [reply]}), "/")
    assert communicator.response_headers is None
    await communicator.connect()
    assert communicator.response_headers == headers
    communicator.stop()


async def test_websocket_connect_unexpected_reply() -> None:
    app = Scripted({"websocket.connect": [{"type": "websocket.send", "text": "early"}]})
    with pytest.raises(AssertionError, match=r"'websocket\.send'"):
        await WebsocketCommunicator(app, "/").connect()


async def test_websocket_connect_timeout() -> None:
    with pytest.raises(TimeoutError):
        await WebsocketCommunicator(Scripted(), "/").connect(timeout=0.02)


async def test_websocket_send_to_forms() -> None:
    received: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while True:
            received.append(await receive())
            await send({"type": "ack"})

    communicator = WebsocketCommunicator(app, "/")
    await communicator.send_to(text_data="")
    await communicator.send_to(bytes_data=b"\x00")
    await communicator.send_json_to({"k": [1]})
    for _ in range(3):
        assert await communicator.receive_output() == {"type": "ack"}
    assert received == [
        {"type": "websocket.receive", "text": ""},
        {"type": "websocket.receive", "bytes": b"\x00"},
        {"type": "websocket.receive", "text": '{"k": [1]}'},
    ]
    communicator.stop()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ValueError),
        ({"text_data": "a", "bytes_data": b"a"}, ValueError),
        ({"text_data": b"a"}, TypeError),
        ({"bytes_data": "a"}, TypeError),
    ],
)
async def test_websocket_send_to_misuse(kwargs: dict[str, Any], error: type[Exception]) -> None:
    communicator = WebsocketCommunicator(Scripted(), "/")
    with pytest.raises(error):
        await communicator.send_to(**kwargs)
    communicator.stop()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"type": "websocket.send", "text": "hi"}, "hi"),
        ({"type": "websocket.send", "bytes": b"hi"}, b"hi"),
        ({"type": "websocket.send", "text": "hi", "bytes": None}, "hi"),
    ],
)
async def test_websocket_receive_from(reply: Message, expected: str | bytes) -> None:
    communicator = WebsocketCommunicator(Scripted({"go": [reply]}), "/")
    await communicator.send_input({"type": "go"})
    assert await communicator.receive_from() == expected
    communicator.stop()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"type": "websocket.close", "code": 1000}, "Expected type 'websocket.send'"),
        ({"type": "websocket.send"}, "exactly one"),
        ({"type": "websocket.send", "text": "a", "bytes": b"a"}, "exactly one"),
        ({"type": "websocket.send", "text": b"a"}, "not str"),
        ({"type": "websocket.send", "bytes": "a"}, "not bytes"),
    ],
)
async def test_websocket_receive_from_checks(reply: Message, error: str) -> None:
    communicator = WebsocketCommunicator(Scripted({"go": [reply]}), "/")
    await communicator.send_input({"type": "go"})
    with pytest.raises(AssertionError, match=error):
        await communicator.receive_from()
    communicator.stop()


async def test_websocket_receive_json_from() -> None:
    app = Scripted(
        {
            "go": [
                {"type": "websocket.send", "text": '{"a": 1}'},
                {"type": "websocket.send", "bytes": b'{"a": 1}'},
            ]
        }
    )
    communicator = WebsocketCommunicator(app, "/")
    await communicator.send_input({"type": "go"})
    assert await communicator.receive_json_from() == {"a": 1}
    with pytest.raises(AssertionError, match="not a text frame"):
        await communicator.receive_json_from()
    communicator.stop()


async def test_websocket_disconnect_sends_code_and_waits() -> None:
    app = Scripted()
    received: list[Message] = []

    async def recording(scope: Scope, receive: Any, send: Any) -> None:
        async def spy() -> Message:
            message: Message = await receive()
            received.append(message)
            return message

        await app(scope, spy, send)

    communicator = WebsocketCommunicator(recording, "/")
    await communicator.disconnect(code=4002)
    assert received == [{"type": "websocket.disconnect", "code": 4002}]
    assert communicator.future.done()
    assert not communicator.future.cancelled()


# -- HttpCommunicator ---------------------------------------------------------


async def test_http_scope_and_request() -> None:
    received: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "http.response.start", "status": 404})
        await send({"type": "http.response.body", "body": b"no", "more_body": True})
        await send({"type": "http.response.body", "more_body": True})
        await send({"type": "http.response.body", "body": b"pe"})

    communicator = HttpCommunicator(
        app, "post", "/a%20b/?q=1", body=b"payload", headers=[(b"host", b"testserver")]
    )
    assert communicator.scope == {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/a b/",
        "raw_path": b"/a%20b/",
        "query_string": b"q=1",
        "headers": [(b"host", b"testserver")],
    }
    assert await communicator.get_response() == {"status": 404, "headers": [], "body": b"nope"}
    assert received == [{"type": "http.request", "body": b"payload"}]
    # send_request is sent once only.
    await communicator.send_request()
    assert communicator.input_queue.empty()


def test_http_body_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="body must be bytes"):
        HttpCommunicator(Scripted(), "GET", "/", body="text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("replies", "error"),
    [
        ([{"type": "http.response.body", "body": b""}], "Expected 'http.response.start'"),
        (
            [{"type": "http.response.start", "status": 200}, {"type": "http.response.start"}],
            "Expected 'http.response.body'",
        ),
    ],
)
async def test_http_out_of_order_messages(replies: list[Message], error: str) -> None:
    communicator = HttpCommunicator(Scripted({"http.request": replies}), "GET", "/")
    with pytest.raises(AssertionError, match=error):
        await communicator.get_response()
    communicator.stop()


async def test_http_timeout() -> None:
    communicator = HttpCommunicator(Scripted(), "GET", "/")
    with pytest.raises(TimeoutError):
        await communicator.get_response(timeout=0.02)


# -- the same scenarios against asgiref's ApplicationCommunicator ---------------
#
# Each test below runs once with asgiref's class (the reference, which Channels
# re-exports) and once with ours, and asserts the same outcome for both. Where
# ours ends a wait early (the application ended, so nothing can arrive) the
# outcome is still the same; only the elapsed time differs.

COMMUNICATORS = [
    pytest.param(asgiref.testing.ApplicationCommunicator, id="asgiref"),
    pytest.param(ApplicationCommunicator, id="tidings"),
]


@pytest.fixture(params=COMMUNICATORS)
def communicator_class(request: pytest.FixtureRequest) -> Any:
    return request.param


class Relay:
    """Answers ``{"type": "go", "n": i}`` with ``{"n": i}``; may misbehave when cancelled."""

    def __init__(self, on_cancel: str = "propagate") -> None:
        self.on_cancel = on_cancel
        self.cancelled = False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "raise":
                    raise ZeroDivisionError("relay failure")
                if message["type"] == "send then raise":
                    await send({"n": -1})
                    raise ZeroDivisionError("after sending")
                await send({"n": message["n"]})
        except asyncio.CancelledError:
            self.cancelled = True
            if self.on_cancel == "return":
                return
            if self.on_cancel == "raise":
                raise LookupError("raised on cancel") from None
            raise


async def test_parity_concurrent_receive_output_first_in_first_out(
    communicator_class: Any,
) -> None:
    communicator = communicator_class(Relay(), {"type": "x"})
    done_order: list[int] = []
    done = [asyncio.Event() for _ in range(3)]

    async def receive(index: int) -> tuple[int, Message]:
        message = await communicator.receive_output(timeout=5)
        done_order.append(index)
        done[index].set()
        return index, message

    receivers = [asyncio.create_task(receive(i)) for i in range(3)]
    await asyncio.sleep(0)  # all three are waiting, in order
    for n in range(3):
        await communicator.send_input({"type": "go", "n": n})
        # Each waiter is woken by its own message, long before its timeout.
        async with asyncio.timeout(2):
            await done[n].wait()
    results = [await task for task in receivers]
    assert results == [(0, {"n": 0}), (1, {"n": 1}), (2, {"n": 2})]
    assert done_order == [0, 1, 2]
    communicator.stop()


async def test_parity_receive_output_timeout_cancels_the_app(communicator_class: Any) -> None:
    app = Relay()
    communicator = communicator_class(app, {"type": "x"})
    with pytest.raises(TimeoutError):
        await communicator.receive_output(timeout=0.02)
    assert app.cancelled
    assert communicator.future.cancelled()
    # From then on every call reports the cancellation; wait() does not.
    with pytest.raises(asyncio.CancelledError):
        await communicator.send_input({"type": "go", "n": 1})
    with pytest.raises(asyncio.CancelledError):
        await communicator.receive_output(timeout=0.02)
    with pytest.raises(asyncio.CancelledError):
        await communicator.receive_nothing(timeout=0.02)
    with pytest.raises(asyncio.CancelledError):
        communicator.stop()
    communicator.stop(exceptions=False)
    assert await communicator.wait() is None


@pytest.mark.parametrize(("on_cancel", "error"), [("raise", LookupError), ("return", TimeoutError)])
async def test_parity_receive_output_timeout_and_an_app_that_handles_cancel(
    communicator_class: Any, on_cancel: str, error: type[Exception]
) -> None:
    communicator = communicator_class(Relay(on_cancel), {"type": "x"})
    with pytest.raises(error):
        await communicator.receive_output(timeout=0.02)
    assert not communicator.future.cancelled()


async def test_parity_concurrent_waiter_sees_the_cancellation(communicator_class: Any) -> None:
    communicator = communicator_class(Relay(), {"type": "x"})
    patient = asyncio.create_task(communicator.receive_output(timeout=0.3))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await communicator.receive_output(timeout=0.02)
    # The application is gone: the other waiter reports its cancellation.
    with pytest.raises(asyncio.CancelledError):
        await patient


@pytest.mark.parametrize("before", [True, False])
async def test_parity_app_error_is_raised_by_receive_output(
    communicator_class: Any, before: bool
) -> None:
    communicator = communicator_class(Relay(), {"type": "x"})
    if before:
        await communicator.send_input({"type": "raise"})
        await asyncio.sleep(0.01)
        assert communicator.future.done()
    else:
        asyncio.get_running_loop().call_later(
            0.01, communicator.input_queue.put_nowait, {"type": "raise"}
        )
    with pytest.raises(ZeroDivisionError, match="relay failure"):
        await communicator.receive_output(timeout=0.2)


async def test_parity_app_error_beats_a_queued_message(communicator_class: Any) -> None:
    communicator = communicator_class(Relay(), {"type": "x"})
    await communicator.send_input({"type": "send then raise"})
    await asyncio.sleep(0.01)
    assert not communicator.output_queue.empty()
    with pytest.raises(ZeroDivisionError, match="after sending"):
        await communicator.receive_output()
    with pytest.raises(ZeroDivisionError, match="after sending"):
        await communicator.wait()


async def test_parity_app_that_ended_quietly(communicator_class: Any) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"n": 1})

    communicator = communicator_class(app, {"type": "x"})
    assert await communicator.receive_output() == {"n": 1}
    assert communicator.future.done()
    with pytest.raises(TimeoutError):
        await communicator.receive_output(timeout=0.05)
    assert await communicator.receive_nothing(timeout=0.02) is True
    await communicator.send_input({"type": "go", "n": 2})  # nobody reads it; no error
    await communicator.wait()
    communicator.stop()


async def test_parity_cancelling_receive_output_loses_nothing(communicator_class: Any) -> None:
    communicator = communicator_class(Relay(), {"type": "x"})
    waiter = asyncio.create_task(communicator.receive_output(timeout=5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not communicator.future.done()  # the application runs on
    await communicator.send_input({"type": "go", "n": 7})
    assert await communicator.receive_output() == {"n": 7}
    communicator.stop()


@pytest.mark.parametrize("on_cancel", ["propagate", "return"])
async def test_parity_wait_timeout(communicator_class: Any, on_cancel: str) -> None:
    app = Relay(on_cancel)
    communicator = communicator_class(app, {"type": "x"})
    assert await communicator.wait(timeout=0.02) is None
    assert app.cancelled
    assert communicator.future.cancelled() is (on_cancel == "propagate")


async def test_parity_wait_timeout_app_raises_on_cancel(communicator_class: Any) -> None:
    communicator = communicator_class(Relay("raise"), {"type": "x"})
    with pytest.raises(LookupError):
        await communicator.wait(timeout=0.02)


async def test_parity_cancelling_wait_cancels_the_app(communicator_class: Any) -> None:
    app = Relay()
    communicator = communicator_class(app, {"type": "x"})
    waiter = asyncio.create_task(communicator.wait(timeout=5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    # wait() awaits the application's task: the cancellation goes to the
    # application, and wait() returns normally once it has ended.
    assert await waiter is None
    assert app.cancelled
    assert communicator.future.cancelled()


async def test_parity_receive_nothing(communicator_class: Any) -> None:
    communicator = communicator_class(Relay(), {"type": "x"})
    assert await communicator.receive_nothing(timeout=0.02, interval=0.005) is True
    await communicator.send_input({"type": "go", "n": 1})
    assert await communicator.receive_nothing(timeout=0.5) is False
    assert await communicator.receive_output() == {"n": 1}
    communicator.stop()
    await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await communicator.receive_nothing()


async def test_parity_app_is_given_the_queues(communicator_class: Any) -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.extend([receive, send])

    communicator = communicator_class(app, {"type": "x"})
    await communicator.wait()
    assert seen == [communicator.input_queue.get, communicator.output_queue.put]


async def test_websocket_concurrent_receives_are_served_in_order() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            await send({"type": "websocket.send", "text": message["text"]})

    communicator = WebsocketCommunicator(app, "/")
    first = asyncio.create_task(communicator.receive_from(timeout=5))
    second = asyncio.create_task(communicator.receive_json_from(timeout=5))
    third = asyncio.create_task(communicator.receive_output(timeout=5))
    await asyncio.sleep(0)
    await communicator.send_to(text_data="one")
    # The first caller is woken by its frame, long before its timeout.
    async with asyncio.timeout(1):
        assert await first == "one"
    assert not second.done()
    await communicator.send_json_to({"two": 2})
    await communicator.send_to(text_data="three")
    async with asyncio.timeout(1):
        assert await second == {"two": 2}
        assert await third == {"type": "websocket.send", "text": "three"}
    communicator.stop()
