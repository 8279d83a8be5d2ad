"""Routing ASGI connections to applications (Channels' ``channels.routing``).

Theory of operation
-------------------
Every router is itself an ASGI application: it looks at the scope, picks an
inner application and awaits it with the same ``receive``/``send``. Routers
nest freely.

* :class:`ProtocolTypeRouter` picks on ``scope["type"]`` (``"http"``,
  ``"websocket"``, ``"channel"``, ...).
* :class:`URLRouter` matches ``scope["path"]`` against Django ``path()`` /
  ``re_path()`` patterns. The outermost URL router strips
  ``scope["root_path"]`` (the mount point, ASGI spec) and the leading ``/``;
  every URL router passes what its pattern did not consume to the inner
  application as ``scope["path_remaining"]``, which a nested URL router
  matches instead of the full path. Captured arguments accumulate in
  ``scope["url_route"] = {"args": (...), "kwargs": {...}}``; inner levels win
  on a name clash, and a pattern's extra ``kwargs`` (the third ``path()``
  argument) are merged in too.
* :class:`ChannelNameRouter` picks on ``scope["channel"]`` for the
  ``"channel"`` scopes that the background worker creates.

Routers never mutate the scope they were given: the inner application gets a
copy with the extra keys. A router returns what its application returned (as
Channels' routers do). When a nested URL router has no route for what is left
of the path, the router around it tries its next route, so
``[path("a/", URLRouter([...])), path("a/b/", app)]`` still reaches ``app``;
only the outermost router raises ``ValueError``. Mistakes that can be seen at construction time
(a consumer class instead of ``Consumer.as_asgi()``, ``include()``) raise
:class:`~django.core.exceptions.ImproperlyConfigured` then, not on the first
connection.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

from asgiref.compatibility import guarantee_single_callable
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import URLPattern, URLResolver
from django.urls.resolvers import RegexPattern, RoutePattern
from django.utils.module_loading import import_string

from tidings._chain import chained_call, start
from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope

__all__ = [
    "ChannelNameRouter",
    "ProtocolTypeRouter",
    "URLRouter",
    "get_default_application",
]


def get_default_application() -> ASGIApp:
    """Import and return the application named by ``settings.ASGI_APPLICATION``.

    Raises:
        ImproperlyConfigured: the setting is missing, is not a dotted path, or
            names a module or attribute that does not exist. Errors raised
            *while* importing the module (a bug in ``asgi.py``) propagate
            unchanged, so their traceback is not hidden.
    """
    dotted = getattr(settings, "ASGI_APPLICATION", None)
    if not isinstance(dotted, str) or "." not in dotted:
        raise ImproperlyConfigured(
            "Cannot find the ASGI_APPLICATION setting: set it to the dotted path of "
            f"your application, e.g. 'myproject.asgi.application' (got {dotted!r})."
        )
    module_path, _, name = dotted.rpartition(".")
    try:
        application = import_string(dotted)
    except ModuleNotFoundError as exc:
        # Only "the named module does not exist" is a settings error; a missing
        # import *inside* the module is the module's bug and must surface as is.
        if exc.name is not None and (module_path + ".").startswith(exc.name + "."):
            raise ImproperlyConfigured(
                f"ASGI_APPLICATION is {dotted!r}, but module {module_path!r} cannot be imported."
            ) from exc
        raise
    except ImportError as exc:
        if isinstance(exc.__cause__, AttributeError):
            raise ImproperlyConfigured(
                f"ASGI_APPLICATION is {dotted!r}, but module {module_path!r} "
                f"has no attribute {name!r}."
            ) from exc
        raise
    if not callable(application):
        raise ImproperlyConfigured(
            f"ASGI_APPLICATION is {dotted!r}, which is not callable: {application!r}."
        )
    return cast(ASGIApp, application)


def _as_application(app: object, where: str) -> ASGIApp:
    """Check one routing target and return it as a single-callable ASGI app."""
    # Imported here: consumer.py imports the layers, routing must stay light.
    from tidings.consumer import AsyncConsumer

    if inspect.isclass(app) and issubclass(app, AsyncConsumer):
        raise ImproperlyConfigured(
            f"{where} routes to the consumer class {app.__qualname__}; "
            f"route to {app.__qualname__}.as_asgi() instead."
        )
    if not callable(app):
        raise ImproperlyConfigured(f"{where} routes to {app!r}, which is not an ASGI application.")
    # Accepts ASGI 2 (double-callable) applications too, as Channels does.
    return cast(ASGIApp, guarantee_single_callable(app))  # type: ignore[no-untyped-call]


class ProtocolTypeRouter:
    """Route a connection on its ``scope["type"]``.

    Args:
        application_mapping: scope type (``"http"``, ``"websocket"``,
            ``"channel"``, ``"lifespan"``...) to ASGI application.

    Raises:
        KeyError: (when called) the scope has no ``type``.
        ValueError: (when called) no application for the scope's type; the
            message names the type and the configured ones.
    """

    def __init__(self, application_mapping: Mapping[str, Any]) -> None:
        self.application_mapping = dict(application_mapping)
        self._routes = {
            scope_type: _as_application(app, f"ProtocolTypeRouter[{scope_type!r}]")
            for scope_type, app in self.application_mapping.items()
        }
        if "mqtt" in self._routes:
            # MQTT has no connections to route: its broker connections start on
            # lifespan startup, around the project's own lifespan app if any.
            from tidings.mqtt import MqttLifespan  # the mqtt extra, only when used

            self._routes["lifespan"] = MqttLifespan(
                self.application_mapping["mqtt"], self._routes.get("lifespan")
            )

    # See tidings._chain: no coroutine per router.
    if TYPE_CHECKING:

        async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> Any: ...

    else:
        __call__ = chained_call

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[Any]:
        scope_type = scope["type"]  # no "type" at all is a KeyError, as in Channels
        try:
            application = self._routes[scope_type]
        except (KeyError, TypeError):
            known = ", ".join(repr(t) for t in self._routes) or "none"
            raise ValueError(
                f"No application configured for scope type {scope_type!r} (configured: {known})."
            ) from None
        return start(application, scope, receive, send, owned=owned)


class _NoRoute(ValueError):
    """A nested URLRouter matched nothing: the router around it tries its next route."""


_Match = tuple[str, tuple[Any, ...], dict[str, Any]]
"""What a Django pattern's ``match`` returns: the rest of the path, args, kwargs."""


class _Route(NamedTuple):
    """One compiled URLRouter entry."""

    pattern: RoutePattern | RegexPattern
    application: ASGIApp
    default_kwargs: dict[str, Any]
    is_router: bool


def _compile_route(route: object, index: int) -> _Route:
    if isinstance(route, URLResolver):
        # The first sentence is Channels' wording, which code and tests match.
        raise ImproperlyConfigured(
            f"include() is not supported in URLRouter. Route {index} uses it; "
            "nest another URLRouter instead: path('prefix/', URLRouter([...]))."
        )
    if not isinstance(route, URLPattern):
        raise ImproperlyConfigured(
            f"URLRouter route {index} is {route!r}; use django.urls.path() or re_path()."
        )
    callback = route.callback
    # ``_path_routing`` marks a prefix-matching target: a URLRouter, or middleware
    # around one that says so (Channels' convention, which its users rely on).
    is_router = getattr(callback, "_path_routing", False) is True
    application = _as_application(callback, f"URLRouter route {route.pattern.describe()}")
    pattern = route.pattern
    if is_router:
        # path() compiles an endpoint pattern (anchored at the end of the string);
        # an inner router needs a prefix match, like include() gets. Build a
        # non-endpoint copy rather than changing the caller's URLPattern
        # (str() of a pattern is its source: the route or the regex).
        if isinstance(pattern, RoutePattern):
            pattern = RoutePattern(str(pattern), pattern.name, is_endpoint=False)
        elif isinstance(pattern, RegexPattern):
            pattern = RegexPattern(str(pattern), pattern.name, is_endpoint=False)
    if not isinstance(pattern, RoutePattern | RegexPattern):
        raise ImproperlyConfigured(
            f"URLRouter route {index} has an unsupported pattern type {type(pattern).__name__}."
        )
    return _Route(pattern, application, dict(route.default_args), is_router)


class URLRouter:
    """Route a connection on its URL path, with Django's ``path()``/``re_path()``.

    Example::

        URLRouter([
            path("ws/chat/<str:room>/", ChatConsumer.as_asgi()),
            path("api/", URLRouter([re_path(r"^v(?P<version>\\d+)/$", ApiConsumer.as_asgi())])),
        ])

    Patterns are written without a leading ``/`` (as in Django URLconfs).
    ``path()`` converters apply (``<int:pk>`` arrives as an ``int``). The
    consumer finds the captures in ``scope["url_route"]["args"]`` and
    ``["kwargs"]``.

    Args:
        routes: ``URLPattern`` objects from ``path()`` or ``re_path()``; a
            pattern whose view is another :class:`URLRouter` (or an application
            with a true ``_path_routing`` attribute, such as middleware around
            a URLRouter) matches as a prefix.

    Raises:
        ImproperlyConfigured: (at construction) a route is not a ``path()`` /
            ``re_path()`` result, uses ``include()``, or routes to a consumer
            class instead of ``Consumer.as_asgi()``.
        ValueError: (when called) the scope has no ``path``, or no route matches;
            the message names the path.
    """

    #: Routes to this router match as a prefix (see ``_compile_route``).
    _path_routing: ClassVar[bool] = True

    def __init__(self, routes: Iterable[URLPattern | URLResolver]) -> None:
        self.routes = list(routes)
        self._compiled = [_compile_route(route, i) for i, route in enumerate(self.routes)]

    # See tidings._chain: no coroutine per router.
    if TYPE_CHECKING:

        async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> Any: ...

    else:
        __call__ = chained_call

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[Any]:
        path = self._path_to_match(scope)
        found = self._match(path, 0)
        if found is None:
            raise self._no_route(scope)
        route, _, match = found
        if route.is_router:
            # A nested router may find nothing only once awaited: keep a frame to
            # try the next routes then.
            return self._try_routes(scope, receive, send, path, found)
        if owned:
            # A copy made for this router alone: add to it rather than copy it again.
            scope.update(self._route_keys(scope, route, match))
        else:
            scope = dict(scope, **self._route_keys(scope, route, match))
        return start(route.application, scope, receive, send, owned=True)

    async def _try_routes(
        self,
        scope: Scope,
        receive: ASGIReceive,
        send: ASGISend,
        path: str,
        found: tuple[_Route, int, _Match] | None,
    ) -> Any:
        while found is not None:
            route, index, match = found
            try:
                # A fresh copy each try: the next route must see the scope as it came.
                inner_scope = dict(scope, **self._route_keys(scope, route, match))
                return await start(route.application, inner_scope, receive, send, owned=True)
            except _NoRoute:
                pass  # a router nested in this route matched nothing: try the next
            found = self._match(path, index + 1)
        raise self._no_route(scope)

    def _match(self, path: str, first: int) -> tuple[_Route, int, _Match] | None:
        """The first route from index ``first`` on that matches ``path``."""
        for index in range(first, len(self._compiled)):
            route = self._compiled[index]
            match = route.pattern.match(path)
            if match is not None:
                return route, index, match
        return None

    @staticmethod
    def _route_keys(scope: Scope, route: _Route, match: _Match) -> dict[str, Any]:
        """The keys this router adds to the scope: ``path_remaining`` and ``url_route``."""
        remaining, args, kwargs = match
        outer = scope.get("url_route")
        if outer or route.default_kwargs:
            outer = outer or {}
            args = tuple(outer.get("args", ())) + tuple(args)
            kwargs = {**outer.get("kwargs", {}), **kwargs, **route.default_kwargs}
        # (Else the match's own fresh tuple and dict: one dict less per connection.)
        url_route = {"args": tuple(args), "kwargs": kwargs}
        return {"path_remaining": remaining, "url_route": url_route}

    @staticmethod
    def _no_route(scope: Scope) -> ValueError:
        message = f"No route found for path {scope.get('path')!r}."
        if isinstance(scope.get("path_remaining"), str):
            return _NoRoute(message)
        return ValueError(message)

    @staticmethod
    def _path_to_match(scope: Scope) -> str:
        remaining = scope.get("path_remaining")
        if isinstance(remaining, str):
            return remaining
        path = scope.get("path")
        if not isinstance(path, str):
            raise ValueError("No 'path' key in the connection scope; cannot route URLs.")
        root_path = scope.get("root_path") or ""
        if root_path:
            if path != root_path and not path.startswith(root_path.rstrip("/") + "/"):
                raise ValueError(
                    f"No route found for path {path!r} (outside root_path {root_path!r})."
                )
            path = path[len(root_path.rstrip("/")) :]
        return path.removeprefix("/")


class ChannelNameRouter:
    """Route ``"channel"`` scopes (from the worker) on ``scope["channel"]``.

    Args:
        application_mapping: channel name to ASGI application.

    Raises:
        ValueError: (when called) the scope has no ``channel`` key, or no
            application is configured for that channel; the message names it.
    """

    def __init__(self, application_mapping: Mapping[str, Any]) -> None:
        self.application_mapping = dict(application_mapping)
        self._routes = {
            channel: _as_application(app, f"ChannelNameRouter[{channel!r}]")
            for channel, app in self.application_mapping.items()
        }

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> Any:
        if "channel" not in scope:
            raise ValueError(
                "ChannelNameRouter got a scope without a 'channel' key; "
                "route only 'channel' scopes to it (ProtocolTypeRouter({'channel': ...}))."
            )
        channel = scope["channel"]
        application = self._routes.get(channel)
        if application is None:
            known = ", ".join(repr(c) for c in self._routes) or "none"
            raise ValueError(
                f"No application configured for channel name {channel!r} (configured: {known})."
            )
        return await application(scope, receive, send)
