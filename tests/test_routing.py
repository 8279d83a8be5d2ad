"""Tests for tidings.routing: protocol, URL and channel-name routers."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.urls import include, path, re_path, register_converter

import tidings.routing
from tidings.consumer import AsyncConsumer
from tidings.routing import (
    ChannelNameRouter,
    ProtocolTypeRouter,
    URLRouter,
    get_default_application,
)

Scope = dict[str, Any]


class Recorder:
    """An ASGI app that records the scopes it is called with."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(scope)

    @property
    def scope(self) -> Scope:
        assert len(self.scopes) == 1
        return self.scopes[0]


async def _receive() -> dict[str, Any]:
    raise AssertionError("routers must not receive")


async def _send(message: dict[str, Any]) -> None:
    raise AssertionError("routers must not send")


async def call(app: Any, scope: Scope) -> None:
    await app(scope, _receive, _send)


def ws(path_: str, **extra: Any) -> Scope:
    return {"type": "websocket", "path": path_, **extra}


application = Recorder("default")  # for get_default_application
not_an_app = 42


def test_public_names() -> None:
    assert sorted(tidings.routing.__all__) == [
        "ChannelNameRouter",
        "ProtocolTypeRouter",
        "URLRouter",
        "get_default_application",
    ]


# -- ProtocolTypeRouter -------------------------------------------------------


async def test_protocol_type_router_routes_on_type() -> None:
    http, websocket = Recorder(), Recorder()
    router = ProtocolTypeRouter({"http": http, "websocket": websocket})
    await call(router, {"type": "websocket", "path": "/"})
    await call(router, {"type": "http", "path": "/"})
    assert websocket.scope["type"] == "websocket"
    assert http.scope["type"] == "http"


async def test_protocol_type_router_unknown_type_names_type_and_known() -> None:
    router = ProtocolTypeRouter({"http": Recorder(), "websocket": Recorder()})
    with pytest.raises(ValueError, match=r"'lifespan'.*'http', 'websocket'"):
        await call(router, {"type": "lifespan"})


async def test_protocol_type_router_missing_type() -> None:
    """A scope without ``type`` is not a scope: KeyError, as in Channels."""
    router = ProtocolTypeRouter({"http": Recorder()})
    with pytest.raises(KeyError, match="type"):
        await call(router, {})


class Returns:
    """An ASGI app that returns a value (Channels' routers pass it back)."""

    def __init__(self, value: object) -> None:
        self.value = value

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> object:
        return self.value


async def test_routers_return_what_the_application_returns() -> None:
    assert (
        await ProtocolTypeRouter({"http": Returns("h")})({"type": "http"}, _receive, _send) == "h"
    )
    router = URLRouter([path("a/", URLRouter([path("b/", Returns(7))]))])
    assert await router(ws("/a/b/"), _receive, _send) == 7
    channel = ChannelNameRouter({"mail": Returns(None), "thumbs": Returns(3)})
    assert await channel({"type": "channel", "channel": "thumbs"}, _receive, _send) == 3


def test_routers_reject_consumer_class_without_as_asgi() -> None:
    class Consumer(AsyncConsumer):
        pass

    with pytest.raises(ImproperlyConfigured, match=r"Consumer\.as_asgi\(\)"):
        ProtocolTypeRouter({"websocket": Consumer})
    with pytest.raises(ImproperlyConfigured, match=r"as_asgi"):
        URLRouter([path("x/", Consumer)])
    with pytest.raises(ImproperlyConfigured, match=r"as_asgi"):
        ChannelNameRouter({"jobs": Consumer})


def test_routers_reject_non_callables() -> None:
    with pytest.raises(ImproperlyConfigured, match="not an ASGI application"):
        ProtocolTypeRouter({"http": "myapp.asgi"})
    with pytest.raises(ImproperlyConfigured, match="not an ASGI application"):
        ChannelNameRouter({"jobs": None})


async def test_protocol_type_router_accepts_asgi2_double_callable() -> None:
    seen: list[Scope] = []

    class Asgi2App:
        def __init__(self, scope: Scope) -> None:
            seen.append(scope)

        async def __call__(self, receive: Any, send: Any) -> None:
            pass

    await call(ProtocolTypeRouter({"http": Asgi2App}), {"type": "http"})
    assert seen == [{"type": "http"}]


# -- URLRouter ----------------------------------------------------------------


async def test_url_router_path_converters() -> None:
    app = Recorder()
    router = URLRouter([path("rooms/<int:pk>/<slug:name>/", app)])
    await call(router, ws("/rooms/42/the-lobby/"))
    assert app.scope["url_route"] == {"args": (), "kwargs": {"pk": 42, "name": "the-lobby"}}
    assert app.scope["path_remaining"] == ""


async def test_url_router_first_match_wins_and_endpoint_is_anchored() -> None:
    short, long_ = Recorder("short"), Recorder("long")
    router = URLRouter([path("a/", short), path("a/b/", long_)])
    await call(router, ws("/a/b/"))
    assert short.scopes == []
    assert long_.scope["path"] == "/a/b/"


async def test_url_router_re_path_named_and_unnamed_groups() -> None:
    named, unnamed = Recorder(), Recorder()
    router = URLRouter(
        [
            re_path(r"^chat/(?P<room>\w+)/$", named),
            re_path(r"^num/(\d+)/(\d+)/$", unnamed),
        ]
    )
    await call(router, ws("/chat/lobby/"))
    await call(router, ws("/num/1/2/"))
    assert named.scope["url_route"] == {"args": (), "kwargs": {"room": "lobby"}}
    assert unnamed.scope["url_route"] == {"args": ("1", "2"), "kwargs": {}}


async def test_url_router_re_path_without_caret_matches_like_channels() -> None:
    # Channels' tutorial writes re_path(r"ws/chat/(?P<room_name>\w+)/$", ...).
    app = Recorder()
    await call(URLRouter([re_path(r"ws/chat/(?P<room_name>\w+)/$", app)]), ws("/ws/chat/x/"))
    assert app.scope["url_route"]["kwargs"] == {"room_name": "x"}


async def test_url_router_no_match_names_path() -> None:
    router = URLRouter([path("a/", Recorder())])
    with pytest.raises(ValueError, match=r"No route found for path '/nope/'"):
        await call(router, ws("/nope/"))


async def test_url_router_needs_a_path() -> None:
    with pytest.raises(ValueError, match="No 'path' key"):
        await call(URLRouter([path("a/", Recorder())]), {"type": "websocket"})


async def test_url_router_converter_rejection_is_no_match() -> None:
    class Even:
        regex = "[0-9]+"

        def to_python(self, value: str) -> int:
            if int(value) % 2:
                raise ValueError("odd")
            return int(value)

        def to_url(self, value: int) -> str:
            return str(value)

    register_converter(Even, "tidings_test_even")
    even, fallback = Recorder("even"), Recorder("fallback")
    router = URLRouter([path("n/<tidings_test_even:n>/", even), re_path(r"^n/", fallback)])
    await call(router, ws("/n/3/"))
    await call(router, ws("/n/4/"))
    assert [s["path"] for s in even.scopes] == ["/n/4/"]
    assert [s["path"] for s in fallback.scopes] == ["/n/3/"]


async def test_nested_routers_merge_args_and_kwargs() -> None:
    app = Recorder()
    inner = URLRouter([path("rooms/<int:room>/", app)])
    middle = URLRouter([re_path(r"^v(\d+)/", URLRouter([path("", inner)]))])
    router = URLRouter([path("org/<slug:org>/", middle)])
    await call(router, ws("/org/acme/v2/rooms/7/"))
    # Positional args from an unnamed-group regex are dropped by Django when a
    # level has named groups; at each level they accumulate.
    assert app.scope["url_route"] == {"args": ("2",), "kwargs": {"org": "acme", "room": 7}}
    assert app.scope["path"] == "/org/acme/v2/rooms/7/"


async def test_nested_router_inner_kwargs_win_and_extra_kwargs_merge() -> None:
    app = Recorder()
    inner = URLRouter([path("<str:name>/", app, {"flavour": "inner"})])
    router = URLRouter([path("<str:name>/", inner, {"extra": 1})])
    await call(router, ws("/outer/inner/"))
    assert app.scope["url_route"]["kwargs"] == {
        "name": "inner",
        "extra": 1,
        "flavour": "inner",
    }


async def test_nested_router_without_a_match_falls_back_to_the_next_route() -> None:
    inner_app, later = Recorder("inner"), Recorder("later")
    router = URLRouter(
        [path("", URLRouter([path("p/", URLRouter([path("x/", inner_app)])), path("p/y/", later)]))]
    )
    await call(router, ws("/p/y/"))
    await call(router, ws("/p/x/"))
    assert [s["path"] for s in later.scopes] == ["/p/y/"]
    assert [s["path"] for s in inner_app.scopes] == ["/p/x/"]
    with pytest.raises(ValueError, match=r"No route found for path '/p/z/'") as info:
        await call(router, ws("/p/z/"))
    assert type(info.value) is ValueError  # the outermost router's own error


async def test_middleware_marked_path_routing_matches_as_a_prefix() -> None:
    app = Recorder()

    def middleware(inner: Any) -> Any:
        async def wrapped(scope: Scope, receive: Any, send: Any) -> Any:
            return await inner(scope, receive, send)

        wrapped._path_routing = True  # type: ignore[attr-defined]
        return wrapped

    router = URLRouter([path("n/<int:n>/", middleware(URLRouter([path("p/<int:p>/", app)])))])
    await call(router, ws("/n/4/p/2/"))
    assert app.scope["url_route"]["kwargs"] == {"n": 4, "p": 2}


async def test_an_application_error_is_not_taken_for_a_missing_route() -> None:
    class Fails:
        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            raise ValueError("the app's own error")

    later = Recorder()
    router = URLRouter([path("p/", URLRouter([path("x/", Fails())])), path("p/x/", later)])
    with pytest.raises(ValueError, match="the app's own error"):
        await call(router, ws("/p/x/"))
    assert later.scopes == []


async def test_nested_router_partial_match_then_inner_no_match() -> None:
    router = URLRouter([path("api/", URLRouter([path("x/", Recorder())]))])
    with pytest.raises(ValueError, match=r"No route found for path '/api/y/'"):
        await call(router, ws("/api/y/"))


def test_url_router_leaves_caller_pattern_untouched() -> None:
    inner = URLRouter([path("x/", Recorder())])
    route = path("api/", inner)
    URLRouter([route])
    # Still an endpoint pattern: Django would not prefix-match it.
    assert route.pattern.match("api/x/") is None


async def test_url_router_does_not_mutate_scope() -> None:
    app = Recorder()
    scope = ws("/a/")
    await call(URLRouter([path("a/", app)]), scope)
    assert scope == ws("/a/")
    assert app.scope is not scope


async def test_url_router_strips_root_path() -> None:
    app = Recorder()
    router = URLRouter([path("ws/<str:room>/", app)])
    await call(router, ws("/prefix/ws/lobby/", root_path="/prefix"))
    await call(router, ws("/prefix/ws/hall/", root_path="/prefix/"))
    assert [s["url_route"]["kwargs"]["room"] for s in app.scopes] == ["lobby", "hall"]


async def test_url_router_path_outside_root_path() -> None:
    router = URLRouter([path("ws/", Recorder())])
    with pytest.raises(ValueError, match=r"outside root_path '/prefix'"):
        await call(router, ws("/ws/", root_path="/prefix"))
    with pytest.raises(ValueError, match="No route found"):
        await call(router, ws("/prefixws/", root_path="/prefix"))


async def test_url_router_root_path_only_strips_at_outermost_level() -> None:
    app = Recorder()
    router = URLRouter([path("a/", URLRouter([path("a/", app)]))])
    await call(router, ws("/a/a/a/", root_path="/a"))
    assert app.scope["path_remaining"] == ""


def test_url_router_rejects_include() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^include\(\) is not supported in URLRouter\."):
        URLRouter([path("x/", include("tests.django_urls"))])


def test_url_router_rejects_non_patterns() -> None:
    with pytest.raises(ImproperlyConfigured, match="path\\(\\) or re_path\\(\\)"):
        URLRouter([("x/", Recorder())])  # type: ignore[list-item]


# -- ChannelNameRouter --------------------------------------------------------


async def test_channel_name_router_routes_on_channel() -> None:
    thumbs, mail = Recorder(), Recorder()
    router = ChannelNameRouter({"thumbnails": thumbs, "mail": mail})
    await call(router, {"type": "channel", "channel": "mail"})
    assert mail.scope == {"type": "channel", "channel": "mail"}
    assert thumbs.scopes == []


async def test_channel_name_router_unknown_channel() -> None:
    router = ChannelNameRouter({"mail": Recorder()})
    with pytest.raises(ValueError, match=r"'thumbnails'.*'mail'"):
        await call(router, {"type": "channel", "channel": "thumbnails"})


async def test_channel_name_router_needs_channel_key() -> None:
    with pytest.raises(ValueError, match="without a 'channel' key"):
        await call(ChannelNameRouter({}), {"type": "websocket", "path": "/"})


# -- get_default_application --------------------------------------------------


def test_get_default_application_missing_setting() -> None:
    with pytest.raises(ImproperlyConfigured, match="ASGI_APPLICATION"):
        get_default_application()


@pytest.mark.parametrize("value", ["", "application", 3])
def test_get_default_application_not_a_dotted_path(value: object) -> None:
    with (
        override_settings(ASGI_APPLICATION=value),
        pytest.raises(ImproperlyConfigured, match="ASGI_APPLICATION"),
    ):
        get_default_application()


def test_get_default_application_imports_it() -> None:
    with override_settings(ASGI_APPLICATION="tests.test_routing.application"):
        assert get_default_application() is application


@pytest.mark.parametrize(
    ("dotted", "problem"),
    [
        ("tests.no_such_module.application", "cannot be imported"),
        ("no_such_package_xyz.asgi.application", "cannot be imported"),
        ("tests.test_routing.nope", "has no attribute 'nope'"),
        ("tests.test_routing.not_an_app", "not callable"),
    ],
)
def test_get_default_application_errors_name_the_setting(dotted: str, problem: str) -> None:
    with (
        override_settings(ASGI_APPLICATION=dotted),
        pytest.raises(ImproperlyConfigured, match=f"ASGI_APPLICATION.*{problem}"),
    ):
        get_default_application()


def test_get_default_application_keeps_errors_inside_the_module() -> None:
    with (
        override_settings(ASGI_APPLICATION="tests.worker_project.broken_asgi.application"),
        pytest.raises(ModuleNotFoundError, match="tidings_no_such_module_for_tests"),
    ):
        get_default_application()


async def test_inside_a_middleware_the_router_adds_to_its_copy_not_the_callers() -> None:
    from tidings.middleware import BaseMiddleware

    app = Recorder()
    outer_scope = ws("/room/7/", headers=[])
    stack = BaseMiddleware(URLRouter([path("room/<int:n>/", app)]))
    await call(stack, outer_scope)
    assert "url_route" not in outer_scope and "path_remaining" not in outer_scope
    assert app.scope["url_route"] == {"args": (), "kwargs": {"n": 7}}
    assert app.scope is not outer_scope


async def test_a_failed_nested_try_leaves_nothing_in_the_next_routes_scope() -> None:
    from tidings.middleware import BaseMiddleware

    inner_app, later = Recorder("inner"), Recorder("later")
    router = URLRouter(
        [
            path("<str:first>/", URLRouter([path("x/", inner_app)])),
            path("<str:a>/<str:b>/", later),
        ]
    )
    await call(BaseMiddleware(router), ws("/p/y/"))
    assert later.scope["url_route"] == {"args": (), "kwargs": {"a": "p", "b": "y"}}
    assert later.scope["path_remaining"] == ""
