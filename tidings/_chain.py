"""Calling the next application of a chain of Tidings ASGI objects without a frame per link.

Theory of operation
-------------------
A connection's ASGI call goes through a chain of objects (router, middleware,
URL router, consumer application) and each ``async def __call__`` that awaits
the next one keeps a suspended coroutine (a few hundred bytes) for as long as
the connection lives. Most links have nothing to do after the call, so they
need no frame of their own.

A class takes part by defining ``_start(scope, receive, send)``, which does the
link's work and *returns* the awaitable of the next application instead of
awaiting it, and by setting ``__call__ = chained_call`` (an ``async def``, so
that servers and asgiref still see a coroutine function, ASGI 3). When one
such object calls the next with :func:`start`, and the next one's class still
uses ``chained_call``, its ``_start`` runs directly: one frame for the whole
run of links. A subclass that overrides ``__call__`` is called as usual, so its
code always runs.

``owned=True`` tells the next link that the scope it gets is a copy made for
it, that nobody else holds or reads again: a link that adds keys may then add
them in place instead of copying the scope once more (a scope copy is a few
hundred bytes per connection). A link that copied the scope passes its copy on
as owned; one that only passes the scope on passes on what it was told;
``chained_call`` (a call from outside) says False.

Exceptions from a ``_start`` are raised by :func:`start` itself rather than when
the result is awaited; callers that ``await start(...)`` see no difference.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, cast

from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope

__all__ = ["Chained", "chained_call", "start"]


class Chained(Protocol):
    """An ASGI object whose ``__call__`` is :func:`chained_call`."""

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[Any]: ...


async def chained_call(self: Chained, scope: Scope, receive: ASGIReceive, send: ASGISend) -> Any:
    """The ``__call__`` of a chained class: run ``_start`` and await what it returns."""
    return await self._start(scope, receive, send)


def start(
    app: ASGIApp, scope: Scope, receive: ASGIReceive, send: ASGISend, *, owned: bool = False
) -> Awaitable[Any]:
    """Begin calling ``app``: its ``_start`` if it is chained, else ``app(...)`` itself."""
    if type(app).__call__ is chained_call:
        return cast(Chained, app)._start(scope, receive, send, owned)
    return app(scope, receive, send)
