"""``TopicRouter``: route MQTT messages to consumers by topic, as ``URLRouter`` does by path.

Theory of operation
-------------------
A :class:`TopicRouter` is the ``"mqtt"`` entry of ``ProtocolTypeRouter``. Its
routes say what each broker connection subscribes to (:meth:`TopicRouter.subscriptions`)
and which consumer handles a message (:meth:`TopicRouter.match`). The MQTT
runtime runs one consumer *instance* per route and set of named captures: with
``topic("sensors/<device>/temp", ...)`` each device gets an instance of its own
(its scope's ``topic_route`` is ``{"args": (), "kwargs": {"device": "d17"}}``),
which handles that device's messages one at a time, in order. Anonymous
wildcards (``+``, ``#``) do not split instances. The first matching route wins.

Called as an ASGI application, the router finds the route named by
``scope["topic_route_index"]`` (set by the runtime) and awaits its
application with the same scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope
from tidings.mqtt._errors import MqttConfigError, TopicError
from tidings.mqtt._settings import GroupToTopic, TopicToGroup
from tidings.mqtt._topics import TopicPattern

__all__ = ["TopicRoute", "TopicRouter", "topic"]


@dataclass(frozen=True)
class TopicRoute:
    """One route: a pattern, the application for it, the subscription QoS and broker."""

    pattern: TopicPattern
    application: ASGIApp
    qos: int
    broker: str


def topic(pattern: str, application: Any, *, qos: int = 1, broker: str = "default") -> TopicRoute:
    """Declare a route, like ``django.urls.path()`` for URLs.

    Args:
        pattern: a topic filter whose levels may be named captures, such as
            ``"sensors/<device>/temp"``; ``+`` and ``#`` are MQTT's wildcards.
        application: ``Consumer.as_asgi()`` (or any ASGI application).
        qos: the maximum QoS to subscribe with (MQTT 5.0 section 3.8.3.1).
        broker: the ``MQTT_BROKERS`` alias to subscribe on.

    Raises:
        TopicError: the pattern is not valid (the message says why).
        ImproperlyConfigured: ``qos`` is not 0, 1 or 2, or ``application`` is not an
            ASGI application (a consumer class instead of ``Consumer.as_asgi()``).
    """
    compiled = TopicPattern.parse(pattern)
    if type(qos) is not int or qos not in (0, 1, 2):
        raise MqttConfigError(f"topic({pattern!r}): qos must be 0, 1 or 2 (got {qos!r}).")
    if not isinstance(broker, str) or not broker:
        raise MqttConfigError(f"topic({pattern!r}): broker must be an MQTT_BROKERS alias.")
    return TopicRoute(compiled, _check_application(application, pattern), qos, broker)


def _check_application(application: Any, pattern: str) -> ASGIApp:
    from tidings.consumer import AsyncConsumer

    if isinstance(application, type) and issubclass(application, AsyncConsumer):
        raise ImproperlyConfigured(
            f"topic({pattern!r}) routes to the consumer class {application.__qualname__}; "
            f"route to {application.__qualname__}.as_asgi() instead."
        )
    if not callable(application):
        raise ImproperlyConfigured(f"topic({pattern!r}) routes to {application!r}, not an app.")
    return application  # type: ignore[no-any-return]


class TopicRouter:
    """Route MQTT messages on their topic.

    Example::

        TopicRouter([
            topic("sensors/<device>/temp", TemperatureConsumer.as_asgi(), qos=1),
            topic("logs/#", LogConsumer.as_asgi(), qos=0),
        ], bridges=[TopicToGroup("sensors/+/temp", "telemetry")])

    Args:
        routes: :func:`topic` results.
        bridges: bridges declared in code, in addition to ``MQTT_BRIDGES``.

    Raises:
        ImproperlyConfigured: a route is not a :func:`topic` result, or a bridge is
            not a ``TopicToGroup``/``GroupToTopic``.
    """

    def __init__(
        self,
        routes: Iterable[TopicRoute],
        *,
        bridges: Iterable[TopicToGroup | GroupToTopic] = (),
    ) -> None:
        self.routes = list(routes)
        for index, route in enumerate(self.routes):
            if not isinstance(route, TopicRoute):
                raise ImproperlyConfigured(
                    f"TopicRouter route {index} is {route!r}; declare routes with "
                    "tidings.mqtt.topic(pattern, Consumer.as_asgi())."
                )
        self.bridges = list(bridges)
        for index, bridge in enumerate(self.bridges):
            if not isinstance(bridge, TopicToGroup | GroupToTopic):
                raise ImproperlyConfigured(
                    f"TopicRouter bridge {index} is {bridge!r}; use TopicToGroup or GroupToTopic."
                )

    def subscriptions(self, broker: str) -> list[tuple[str, int]]:
        """The ``(topic filter, qos)`` pairs the routes need on ``broker``, without repeats."""
        found: dict[str, int] = {}
        for route in self.routes:
            if route.broker == broker:
                found[route.pattern.topic_filter] = max(
                    route.qos, found.get(route.pattern.topic_filter, 0)
                )
        return list(found.items())

    def match(self, broker: str, topic_name: str) -> tuple[int, dict[str, str]] | None:
        """The index of the first route on ``broker`` matching ``topic_name``, and its captures."""
        for index, route in enumerate(self.routes):
            if route.broker != broker:
                continue
            captures = route.pattern.match(topic_name)
            if captures is not None:
                return index, captures
        return None

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> Any:
        index = scope.get("topic_route_index")
        if type(index) is not int or not 0 <= index < len(self.routes):
            raise TopicError(
                "TopicRouter got an 'mqtt' scope without a valid 'topic_route_index'; "
                "MQTT scopes come from the Tidings MQTT runtime."
            )
        return await self.routes[index].application(scope, receive, send)
