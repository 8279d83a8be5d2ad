"""The base class of Tidings' ASGI middleware (Channels' ``BaseMiddleware``).

A middleware wraps an inner ASGI application and adds keys to the scope
before the inner application sees it. The scope it passes on is a shallow
*copy* (``dict(scope)``): a middleware never mutates the scope that its
caller owns, so two applications mounted side by side (or two instances of
the same middleware) never see each other's additions.

One copy per stack is enough, though: ``SessionMiddlewareStack`` and
``AuthMiddlewareStack`` clear :attr:`BaseMiddleware.copy_scope` on the
middleware inside their outermost one, which adds its keys to the copy that
the outermost one made and that nobody else uses. A scope copy is a few
hundred bytes per connection, held for as long as the connection lives.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from tidings._chain import chained_call, start
from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope

__all__ = ["BaseMiddleware"]


class BaseMiddleware:
    """Base class for ASGI middleware that adds things to the scope.

    Subclasses usually override ``__call__``, copy the scope, add their keys,
    and hand over to ``self.inner``; the base implementation only does the
    copy and the hand-over.

    Args:
        inner: the ASGI application to call with the copied scope.

    Attributes:
        copy_scope: whether to copy the scope before adding to it (a Tidings
            extension). True unless the caller is known to pass a copy of its
            own that it never uses again, as inside the middleware stacks.
    """

    copy_scope: bool = True

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    # ``await middleware(scope, receive, send)`` calls the inner application with a
    # shallow copy of ``scope``; a chain of Tidings middleware keeps no coroutine
    # per link while the connection lives (``tidings._chain``). Subclasses may
    # override ``__call__`` as usual and ``await super().__call__(...)``.
    if TYPE_CHECKING:

        async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None: ...

    else:
        __call__ = chained_call

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[Any]:
        if self.copy_scope:
            scope, owned = dict(scope), True
        return start(self.inner, scope, receive, send, owned=owned)
