"""Serving static files from the development server and the live test server.

:class:`StaticFilesWrapper` wraps an ASGI application: HTTP requests whose
path is under ``settings.STATIC_URL`` are answered by
``django.contrib.staticfiles`` (its finders, exactly as Django's own
``runserver`` serves them); every other connection, WebSocket and lifespan
included, goes to the wrapped application unchanged.

This is for development and tests only, like Django's static serving: it
reads files in a thread per request and does no caching. Production serves
``collectstatic`` output from a web server or a CDN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope

if TYPE_CHECKING:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

__all__ = ["StaticFilesWrapper"]


class StaticFilesWrapper:
    """An ASGI application that serves ``STATIC_URL`` paths and passes the rest on.

    Args:
        application: the ASGI application that gets every other connection.

    Raises:
        ImproperlyConfigured: ``STATIC_URL`` is not set (Django's message).
    """

    def __init__(self, application: ASGIApp) -> None:
        # Imported here: the handler module reads settings when imported.
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        self.application = application
        # Django's handler serves static paths and hands everything else to the
        # application it wraps; we keep the dispatch here so it is explicit and typed.
        self.static_handler: ASGIStaticFilesHandler = ASGIStaticFilesHandler(cast(Any, application))

    def is_static_path(self, path: str) -> bool:
        """Whether ``path`` is under ``STATIC_URL`` (never true for an absolute STATIC_URL)."""
        return self.static_handler._should_handle(path)

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "http" and self.is_static_path(scope["path"]):
            await self.static_handler(dict(scope), cast(Any, receive), cast(Any, send))
        else:
            await self.application(scope, receive, send)
