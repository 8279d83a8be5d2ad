"""Consumers: ASGI applications that dispatch messages to methods by type.

Theory of operation
-------------------
A consumer *class* describes behaviour; ``Consumer.as_asgi(**initkwargs)``
returns the ASGI application, which creates one consumer *instance* per
connection (per scope) and awaits it.

An instance, when called with ``(scope, receive, send)``:

1. gets its channel layer (``channel_layer_alias``, ``"default"``); if there
   is one, it creates a channel of its own (``self.channel_name``) so that
   other code can ``send``/``group_send`` to it;
2. reads messages from the ASGI ``receive`` *and* from its layer channel
   (``self.channel_receive``) with one :class:`~tidings.utils.MessageMux`,
   handling one message at a time, in arrival order. Nothing more is read
   from a source while a handler for one of *its* messages runs; the other
   source may deliver one message meanwhile, which is handled next (or lost
   with the instance if the handler stops it: the instance's own channel
   has no other reader anyway);
3. dispatches each message to the method named after its type, with dots
   replaced by underscores: ``"websocket.connect"`` calls
   ``websocket_connect(message)``, a layer message ``{"type": "chat.message"}``
   calls ``chat_message(message)``;
4. ends when a handler raises :class:`~tidings.exceptions.StopConsumer`
   (a signal, not an error). A handler whose ``send`` failed because the
   client is gone (the server raises an ``OSError`` subclass, as the ASGI
   spec asks; Tidings' is ``ClientDisconnected``) ends there, and the
   instance goes on: the server's ``websocket.disconnect`` (``http.disconnect``)
   comes next, so ``disconnect()`` and other clean-up run, as under Daphne,
   which drops such sends. Any other exception propagates out of the ASGI
   application: the server logs it and closes the connection (WebSocket close
   code 1011, or a 500 if no response started). Groups joined through
   :meth:`AsyncConsumer.join_group` (which the generic consumers' ``groups``
   attribute uses) are left in every case, including errors and cancellation.

:class:`SyncConsumer` runs each handler in a worker thread (the one shared
thread-sensitive thread, so Django's per-thread database connections behave)
with :func:`tidings.db.database_sync_to_async`: one thread hop per message,
with the stale-connection clean-up done in that same hop. Its ``send`` is
synchronous and hops back to the event loop for each call. Handler lookup and
message-type validation happen on the event loop, so a message without a
handler costs no hop.

``tidings.transports.TransportRouter`` runs consumers for sessions that
outlive one connection (SSE, long-polling, resumable WebSockets): it puts a
handle under :data:`TRANSPORT_SESSION_KEY` in the scope, and
:class:`ConsumerApplication` then hands the instance to that handle instead
of running it for the request (see ``docs/transports.md``).

Handler names come from message types, so any public method whose name a
message type can spell is reachable by whoever can send to the consumer's
channel; the layer is trusted, clients never choose a layer message's type.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from asgiref.sync import async_to_sync, iscoroutinefunction

from tidings._chain import chained_call
from tidings._types import WEBSOCKET_DIRECT, ASGIReceive, ASGISend, Message, Scope
from tidings.db import database_sync_to_async
from tidings.exceptions import InvalidChannelLayerError, StopConsumer
from tidings.layers import get_channel_layer
from tidings.layers.base import BaseChannelLayer
from tidings.utils import MessageMux, MessageSource

__all__ = ["AsyncConsumer", "ConsumerApplication", "SyncConsumer", "get_handler_name"]

logger = logging.getLogger("tidings.consumer")

#: Scope key of the session handle that ``tidings.transports.TransportRouter``
#: puts in the scope of SSE, long-polling and session-WebSocket requests. A
#: consumer application that finds it calls ``await handle.adopt(app, scope)``
#: instead of running: the session manager runs the instance for the session.
TRANSPORT_SESSION_KEY: Final = "tidings.transport_session"


def get_handler_name(message: Message) -> str:
    """Return the method name that handles ``message``: its type with ``.`` → ``_``.

    Raises:
        ValueError: the message has no ``type``, the type is not a ``str``, or
            it starts with an underscore (handlers are never private methods).
    """
    if "type" not in message:
        raise ValueError("Incoming message has no 'type' key.")
    message_type = message["type"]
    if not isinstance(message_type, str):
        raise ValueError(f"Incoming message type must be a str, not {type(message_type).__name__}.")
    handler_name = message_type.replace(".", "_")
    if handler_name.startswith("_"):
        # Channels' wording, which tests match on.
        raise ValueError(f"Malformed type in message (leading underscore): {message_type!r}")
    return handler_name


class ConsumerApplication:
    """The ASGI application returned by ``Consumer.as_asgi()``.

    Each call creates a new consumer instance with ``consumer_initkwargs`` and
    runs it for that one scope.

    Attributes:
        consumer_class: the consumer class.
        consumer_initkwargs: the keyword arguments given to ``as_asgi()``.
    """

    # asgiref's guarantee_single_callable(): this is an ASGI 3 (single-callable) app.
    _asgi_single_callable = True

    def __init__(self, consumer_class: type[AsyncConsumer], initkwargs: dict[str, Any]) -> None:
        self.consumer_class = consumer_class
        self.consumer_initkwargs = initkwargs
        self.__name__ = consumer_class.__name__
        self.__qualname__ = consumer_class.__qualname__
        self.__doc__ = consumer_class.__doc__
        self.__module__ = consumer_class.__module__

    # See tidings._chain: no coroutine of its own per connection.
    if TYPE_CHECKING:

        async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None: ...

    else:
        __call__ = chained_call

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[None]:
        handle = scope.get(TRANSPORT_SESSION_KEY)
        if handle is not None:
            # A session request of tidings.transports.TransportRouter: its session
            # manager runs the instance, which outlives this one HTTP request.
            adopted: Awaitable[None] = handle.adopt(self.run_instance, scope)
            return adopted
        return self.run_instance(scope, receive, send)

    def run_instance(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> Awaitable[None]:
        """Create a consumer instance; return the awaitable that runs it for ``scope``."""
        return self.consumer_class(**self.consumer_initkwargs)(scope, receive, send)

    def __repr__(self) -> str:
        return f"<ConsumerApplication {self.consumer_class.__qualname__}>"


class AsyncConsumer:
    """Base consumer: handlers are ``async def`` methods named after message types.

    Attributes:
        channel_layer_alias: which ``CHANNEL_LAYERS`` entry to use.
        scope: the connection scope (set when the instance starts).
        channel_layer: the layer, or ``None`` if the alias has none.
        channel_name: this instance's layer channel (only with a layer).
        channel_receive: coroutine function reading that channel (only with a layer).
        base_send: the ASGI ``send`` callable.
    """

    channel_layer_alias: str = "default"

    scope: Scope
    channel_layer: BaseChannelLayer | None
    channel_name: str
    channel_receive: MessageSource
    base_send: ASGISend

    def __init__(self, **initkwargs: Any) -> None:
        """Set each keyword argument as an instance attribute.

        Raises:
            TypeError: a keyword names no attribute of the class (a typo would
                otherwise be silently ignored).
        """
        for key, value in initkwargs.items():
            if not hasattr(type(self), key):
                raise TypeError(
                    f"{type(self).__name__}.as_asgi() got {key!r}, which is not an attribute "
                    "of the class; only existing class attributes can be overridden."
                )
            setattr(self, key, value)

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> ConsumerApplication:
        """Return an ASGI application that runs a new instance per connection.

        Args:
            initkwargs: passed to the constructor of every instance; the base
                constructor sets them as attributes (see :meth:`__init__`).
        """
        return ConsumerApplication(cls, dict(initkwargs))

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """Run this instance for one connection until ``StopConsumer``."""
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        # This frame lives as long as the connection: it keeps no locals it doesn't need.
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = self._channel_source(self.channel_layer)
            mux = MessageMux((receive, self.channel_receive))
        else:
            mux = MessageMux((receive,))
        del receive
        try:
            async with mux:
                if self.channel_layer is None:
                    while True:
                        try:
                            await self.dispatch(await mux.get())
                        except OSError:
                            if not self._client_gone:
                                raise
                while True:
                    # mux.get() inlined: its coroutine would live as long as the wait.
                    item = mux.get_or_wait()
                    if isinstance(item, asyncio.Future):
                        try:
                            await item
                        except BaseException:
                            mux.end_wait(item)
                            raise
                    else:
                        try:
                            await self.dispatch(item)
                        except OSError:
                            # The client left while the handler sent (see the module
                            # docstring): its disconnect message is next.
                            if not self._client_gone:
                                raise
                    del item  # not kept while idle (the mux holds the future)
        except StopConsumer:
            pass
        finally:
            if self._direct_set and self.channel_layer is not None:
                self.channel_layer.set_direct(self.channel_name, None)
            await self._leave_groups_at_exit()

    _direct_set = False
    #: A send to the client raised (an OSError: the client is gone).
    _client_gone = False
    #: Groups joined with join_group(), to leave at the end; made on the first join.
    _joined_groups: list[str] | None = None

    def _channel_source(self, layer: BaseChannelLayer) -> MessageSource:
        make_source = getattr(layer, "channel_source", None)
        if make_source is not None:
            source: MessageSource = make_source(self.channel_name)
            return source
        return functools.partial(layer.receive, self.channel_name)

    def _allow_direct_sends(self) -> None:
        """Let the layer write group ``websocket.send`` messages straight to the socket.

        Called once the connection is accepted. Only when the scope offers the
        ``tidings.websocket.direct`` extension (``tidings._types.WebSocketDirect``)
        for the very ``send`` this consumer was given (no middleware wraps it);
        the layer decides what to do with it (:meth:`BaseChannelLayer.set_direct
        <tidings.layers.BaseChannelLayer.set_direct>`: nothing, unless it
        supports direct delivery).
        """
        layer = self.channel_layer
        if layer is None or self._direct_set:
            return
        direct = (self.scope.get("extensions") or {}).get(WEBSOCKET_DIRECT)
        if direct is None:
            return
        send_now = direct["send_nowait"]
        # A bound method of the server's connection: only usable if our ``send`` is
        # that connection's own, unwrapped (a wrapper must see every message).
        owner = getattr(send_now, "__self__", None)
        if owner is None or owner is not getattr(self.base_send, "__self__", None):
            return
        layer.set_direct(self.channel_name, send_now)
        self._direct_set = True

    async def dispatch(self, message: Message) -> None:
        """Call the handler named after ``message["type"]``.

        Raises:
            ValueError: the type is malformed (see :func:`get_handler_name`) or
                this consumer has no handler for it.
        """
        await self._find_handler(message)(message)

    def _find_handler(self, message: Message) -> Callable[[Message], Any]:
        handler: Callable[[Message], Any] | None = getattr(self, get_handler_name(message), None)
        if handler is None or not callable(handler):
            raise ValueError(f"No handler for message type {message['type']!r}.")
        return handler

    async def send(self, message: Message) -> None:
        """Send an ASGI message to the client (through the server).

        Raises:
            OSError: the client is gone (the server's subclass of it, e.g.
                ``ClientDisconnected``). A handler may catch it; if it does not,
                the instance still gets the disconnect message that follows.
        """
        try:
            await self.base_send(message)
        except OSError:
            self._client_gone = True
            raise

    # -- group membership that survives errors -------------------------------

    def _require_layer(self) -> BaseChannelLayer:
        if self.channel_layer is None:
            raise InvalidChannelLayerError(
                f"{type(self).__name__} uses groups, but channel layer "
                f"{self.channel_layer_alias!r} is not configured (CHANNEL_LAYERS)."
            )
        return self.channel_layer

    async def join_group(self, group: str) -> None:
        """Add this instance's channel to ``group``; it is left again when the instance ends.

        Raises:
            InvalidChannelLayerError: there is no channel layer.
        """
        await self._require_layer().group_add(group, self.channel_name)
        if self._joined_groups is None:
            self._joined_groups = [group]
        elif group not in self._joined_groups:
            self._joined_groups.append(group)

    async def leave_group(self, group: str) -> None:
        """Remove this instance's channel from ``group`` (idempotent).

        Raises:
            InvalidChannelLayerError: there is no channel layer.
        """
        await self._require_layer().group_discard(group, self.channel_name)
        if self._joined_groups is not None and group in self._joined_groups:
            self._joined_groups.remove(group)

    async def _leave_groups_at_exit(self) -> None:
        # Must not replace the exception that is ending the instance: a layer
        # failure here is logged, and the memberships expire on their own.
        try:
            await self._leave_all_groups()
        except Exception:
            logger.exception(
                "%s could not leave groups %s when it ended",
                type(self).__name__,
                self._joined_groups,
            )

    async def _leave_all_groups(self) -> None:
        while self._joined_groups:
            await self.leave_group(self._joined_groups[-1])
        self._joined_groups = None


class SyncConsumer(AsyncConsumer):
    """Consumer whose handlers are plain ``def`` methods, run in a worker thread.

    ``send`` is synchronous. The channel layer is the same (async) object as
    for :class:`AsyncConsumer`; call it from handlers with
    ``async_to_sync(self.channel_layer.group_send)(...)``, as in Channels.
    """

    async def dispatch(self, message: Message) -> None:
        """Run the handler for ``message`` in the thread-sensitive worker thread.

        Raises:
            ValueError: as :meth:`AsyncConsumer.dispatch`, raised before any hop.
        """
        handler = self._find_handler(message)
        if iscoroutinefunction(handler):
            raise TypeError(
                f"{type(self).__name__}.{handler.__name__} is async, but {type(self).__name__} "
                "is a SyncConsumer; make the handler a plain def or use AsyncConsumer."
            )
        # One hop per message; database_sync_to_async also closes stale DB
        # connections in that same hop, as Channels' SyncConsumer does.
        await database_sync_to_async(handler)(message)

    def send(self, message: Message) -> None:  # type: ignore[override]
        """Send an ASGI message to the client; call it from a handler (a worker thread)."""
        async_to_sync(self._send_from_loop)(message)

    async def _send_from_loop(self, message: Message) -> None:
        # A coroutine function for async_to_sync, whatever callable the server gave.
        try:
            await self.base_send(message)
        except OSError:
            self._client_gone = True
            raise
