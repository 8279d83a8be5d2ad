"""Tests for tidings.middleware.BaseMiddleware."""

from __future__ import annotations

from typing import Any

import pytest

import tidings.middleware
from tidings._types import ASGIReceive, ASGISend, Scope
from tidings.middleware import BaseMiddleware
from tidings.testing import ApplicationCommunicator


def test_public_names() -> None:
    assert tidings.middleware.__all__ == ["BaseMiddleware"]


class _Recorder:
    """An ASGI app that records the scope it gets, adds a key and echoes one message."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self.scopes.append(scope)
        scope["added_by_inner"] = True
        message = await receive()
        await send({"type": "echo", "got": message["type"]})


class _AddsKey(BaseMiddleware):
    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        scope["added_by_middleware"] = "yes"
        await super().__call__(scope, receive, send)


async def test_inner_gets_a_copy_and_messages_flow() -> None:
    inner = _Recorder()
    app = BaseMiddleware(inner)
    assert app.inner is inner
    scope: dict[str, Any] = {"type": "websocket", "path": "/x"}
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "websocket.connect"})
    assert await communicator.receive_output(timeout=5) == {
        "type": "echo",
        "got": "websocket.connect",
    }
    await communicator.wait(timeout=5)
    (seen,) = inner.scopes
    assert seen is not scope
    assert seen["path"] == "/x"
    # What the inner app adds does not leak out to the caller's scope.
    assert "added_by_inner" not in scope


async def test_subclass_additions_reach_the_inner_app() -> None:
    inner = _Recorder()
    communicator = ApplicationCommunicator(_AddsKey(inner), {"type": "http"})
    await communicator.send_input({"type": "http.request"})
    await communicator.receive_output(timeout=5)
    await communicator.wait(timeout=5)
    assert inner.scopes[0]["added_by_middleware"] == "yes"


async def test_inner_exceptions_propagate() -> None:
    class Boom(Exception):
        pass

    async def failing(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        raise Boom

    with pytest.raises(Boom):
        await BaseMiddleware(failing)({"type": "http"}, _never_receive, _discard)


async def _never_receive() -> dict[str, Any]:
    raise AssertionError("not expected to receive")


async def _discard(message: Any) -> None:
    raise AssertionError("not expected to send")


async def test_call_is_a_coroutine_function_for_servers_and_asgiref() -> None:
    import asyncio
    import inspect

    from asgiref.compatibility import is_double_callable

    app = BaseMiddleware(_Recorder())
    assert inspect.iscoroutinefunction(BaseMiddleware.__call__)
    assert asyncio.iscoroutinefunction(app.__call__)
    assert not is_double_callable(app)


async def test_a_chain_keeps_one_coroutine_however_many_links() -> None:
    import sys

    frames: list[int] = []

    async def innermost(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        # Count the coroutines awaiting this one: the stack of a chain of links.
        frame = sys._getframe(1)
        depth = 0
        while frame is not None:
            depth += frame.f_code.co_name in {"chained_call", "__call__", "_start"}
            frame = frame.f_back
        frames.append(depth)
        assert scope["added_by_middleware"] == "yes"

    plain = BaseMiddleware(BaseMiddleware(BaseMiddleware(innermost)))
    await plain({"type": "http", "added_by_middleware": "yes"}, _never_receive, _discard)
    # With a subclass that overrides __call__, its code runs (and keeps its frame).
    mixed = BaseMiddleware(_AddsKey(BaseMiddleware(innermost)))
    await mixed({"type": "http"}, _never_receive, _discard)
    chained, overridden = frames
    assert overridden > chained


async def test_copy_scope_false_adds_to_the_given_scope() -> None:
    seen: list[Scope] = []

    async def inner(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        seen.append(scope)

    app = BaseMiddleware(inner)
    scope: dict[str, Any] = {"type": "websocket"}
    await app(scope, _never_receive, _discard)
    app.copy_scope = False
    await app(scope, _never_receive, _discard)
    copied, given = seen
    assert copied is not scope and copied == scope
    assert given is scope
