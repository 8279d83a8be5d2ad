"""The base class of Tidings' ASGI middleware (Channels' ``BaseMiddleware``).

A middleware wraps an inner ASGI application and adds keys to the scope
before the inner application sees it. The scope it passes on is always a
shallow *copy* (``dict(scope)``): a middleware never mutates the scope that
its caller owns, so two applications mounted side by side (or two instances
of the same middleware) never see each other's additions.
"""

from __future__ import annotations

from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope

__all__ = ["BaseMiddleware"]


class BaseMiddleware:
    """Base class for ASGI middleware that adds things to the scope.

    Subclasses usually override ``__call__``, copy the scope, add their keys,
    and hand over to ``self.inner``; the base implementation only does the
    copy and the hand-over.

    Args:
        inner: the ASGI application to call with the copied scope.
    """

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """Call the inner application with a shallow copy of ``scope``."""
        scope = dict(scope)
        await self.inner(scope, receive, send)
