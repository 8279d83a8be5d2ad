"""``TransportRouter``: a ``ProtocolTypeRouter`` that also serves session requests.

Theory of operation
-------------------
A request whose query carries ``tidings`` is a *session request* (wire
protocol v1, ``docs/transports.md``): ``ws`` on a WebSocket handshake,
``sse``/``poll`` on GET, ``send``/``close`` on POST. Every other request goes
to the inner router unchanged, so a plain WebSocket reaches its consumer as
before.

For a session request the router builds a WebSocket scope (same path, headers
and client, the ``tidings`` parameters removed from the query string,
``subprotocols: []``, ``transport`` naming the transport) holding a
:class:`SessionHandle`, and runs the ``"websocket"`` application with it:
origin check, cookies, session, auth and URL routing all apply to every
session request. At the bottom, ``ConsumerApplication`` (or :func:`fallback`
around a plain ASGI application) finds the handle and calls
:meth:`SessionHandle.adopt` instead of running; that is where the session
manager resumes a session or starts the consumer of a new one (inside the
middleware's context). Anything the stack does instead is a refusal:
``websocket.close`` or returning is 403, a ``websocket.http.response`` is
passed on, an exception is 500, accepting by itself means the route does not
support sessions (501). Then the transport module serves the request with the
real ``receive``/``send``, or refuses it when the manager opened no session:
429 over ``max_sessions_per_user``; 503 with ``Retry-After`` (the resume
window, rounded up: by then every session that had lost its client has freed
its slot) over ``max_sessions``. A WebSocket handshake gets these statuses
through the ``websocket.http.response`` extension, or 403 without it.

An HTTP GET without ``Origin`` (a same-origin ``EventSource`` or ``fetch``
sends none) gets ``Origin`` built from ``Host`` so that origin validators
accept it, unless ``Sec-Fetch-Site`` says the request is not same-origin, or
there is no fetch metadata and the request carries cookies but not the
header of ``tidings.js``: then it is refused (403) before the stack runs.

Before anything else, a ``sid`` that this deployment did not sign is refused:
``send`` and ``close`` get 404 (no stack, no body read, no layer traffic);
``ws``/``sse``/``poll`` open a new session as without ``sid``. A route the
``"websocket"`` URL router does not know is 404 (logged at debug level).

**Owners.** Authenticated sessions belong to ``str(user.pk)``; anonymous
ones to the browser key cookie (:mod:`~tidings.transports._request`). An
anonymous request that opens a session without that cookie gets a new key
(``set-cookie`` on the response that opens it), so no request without the
cookie can use an anonymous session.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from asgiref.compatibility import guarantee_single_callable
from django.core.exceptions import ImproperlyConfigured

from tidings._asgi import PLAIN_REFUSAL, Accept, ASGIMessageError, ASGIWebSocketConnection, Refusal
from tidings._types import ASGIApp, ASGIReceive, ASGISend, Message, Scope
from tidings.consumer import TRANSPORT_SESSION_KEY
from tidings.routing import ProtocolTypeRouter
from tidings.transports import _http
from tidings.transports import _longpoll as longpoll
from tidings.transports import _sse as sse
from tidings.transports import _websocket as websocket
from tidings.transports._manager import Opening, SessionManager, parse_sid
from tidings.transports._protocol import TRANSPORT_NAMES
from tidings.transports._request import (
    BadRequest,
    SessionRequest,
    browser_cookie,
    browser_key,
    cross_site_without_origin,
    new_browser_key,
    owner_key,
    parse_request,
    session_scope,
    user_key,
)
from tidings.transports.config import TransportSettings

__all__ = ["SessionHandle", "TransportRouter", "fallback"]

logger = logging.getLogger("tidings.transports")

#: Seconds the stack gets to return after a handle was adopted or a refusal sent.
_STACK_EXIT: Final = 5.0
_CLOSE: Final = (b"connection", b"close")
#: The stack accepted a session request itself: a plain ASGI app without ``fallback``.
_NOT_SUPPORTED: Final = Refusal(501)


@dataclass(frozen=True, slots=True)
class _Adopted:
    user: str | None  # the owner key: a user's pk, or a browser key's digest
    opening: Opening | None
    cookie: tuple[bytes, bytes] | None = None  # set-cookie for a new browser key


class SessionHandle:
    """What a session request carries down the stack (``scope[TRANSPORT_SESSION_KEY]``)."""

    def __init__(self, router: TransportRouter, request: SessionRequest) -> None:
        self._router = router
        self._request = request
        self.outcome: asyncio.Future[_Adopted] = asyncio.get_running_loop().create_future()

    async def adopt(self, app: ASGIApp, scope: Scope) -> None:
        """Take over the request at the bottom of the stack, with its final ``scope``.

        For ``ws``, ``sse`` and ``poll`` this resumes the session or starts
        ``app`` (one consumer instance) for a new one, inside the caller's
        context; ``send`` and ``close`` only need the user.

        Raises:
            RuntimeError: the handle was adopted before (two session-capable
                applications nested).
        """
        if self.outcome.done():
            raise RuntimeError("a session request was adopted twice")
        request = self._request
        user = user_key(scope)
        key = browser_key(scope) if user is None else None
        cookie = None
        if user is None and key is None and request.action in TRANSPORT_NAMES:
            key = new_browser_key()
            cookie = browser_cookie(scope, key)
        user = owner_key(user, key)
        opening = None
        try:
            if request.action in TRANSPORT_NAMES:
                manager = await self._router._manager()
                opening = await manager.open(
                    sid=request.sid,
                    last=request.last,
                    app=app,
                    scope=scope,
                    user=user,
                    transport=TRANSPORT_NAMES[request.action],
                )
        except BaseException as exc:
            if not self.outcome.done():
                self.outcome.set_exception(exc)
                self.outcome.exception()
            raise
        self.outcome.set_result(_Adopted(user, opening, cookie))


class fallback:
    """Make a plain ASGI WebSocket application reachable over the session transports.

    ``Consumer.as_asgi()`` applications support sessions by themselves; wrap
    anything else: ``path("ws/feed/", fallback(feed_app))``.
    """

    def __init__(self, application: Any) -> None:
        self.application: ASGIApp = guarantee_single_callable(application)  # type: ignore[no-untyped-call]

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        handle = scope.get(TRANSPORT_SESSION_KEY)
        if handle is not None:
            await handle.adopt(self.application, scope)
            return
        await self.application(scope, receive, send)


class TransportRouter(ProtocolTypeRouter):
    """A :class:`~tidings.routing.ProtocolTypeRouter` that also serves SSE and long-polling.

    Args:
        application_mapping: as for ``ProtocolTypeRouter``; needs ``"websocket"``.
        resume_window, buffer_messages, buffer_bytes, max_post_size, poll_hold,
        sse_heartbeat, max_sessions_per_user, max_sessions, remote_timeout,
        channel_layer_alias:
            the settings of :class:`~tidings.transports.config.TransportSettings`.

    Raises:
        ImproperlyConfigured: no ``"websocket"`` application.
        TypeError, ValueError: a setting is malformed (the message names it).
    """

    def __init__(self, application_mapping: Mapping[str, Any], **settings: Any) -> None:
        super().__init__(application_mapping)
        if "websocket" not in self._routes:
            raise ImproperlyConfigured("TransportRouter needs a 'websocket' application.")
        try:
            self.settings = TransportSettings(**settings)
        except TypeError as exc:
            if "unexpected keyword" in str(exc):
                raise TypeError(f"TransportRouter got an unknown setting: {exc}") from None
            raise
        self._managers: SessionManager | None = None
        self._retry_after = (b"retry-after", b"%d" % math.ceil(self.settings.resume_window))

    async def _manager(self) -> SessionManager:
        manager = self._managers
        if manager is None or manager.loop is not asyncio.get_running_loop():
            manager = self._managers = SessionManager(self.settings, TRANSPORT_SESSION_KEY)
        await manager.start()
        return manager

    async def aclose(self) -> None:
        """End every session of this process (consumers get 1001); for shutdown and tests."""
        manager = self._managers
        if manager is not None and manager.loop is asyncio.get_running_loop():
            self._managers = None
            await manager.aclose()

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        scope_type = scope.get("type")
        if scope_type in ("http", "websocket"):
            try:
                request = parse_request(scope)
            except BadRequest as exc:
                if scope_type == "websocket":
                    await receive()
                await _http.deny(scope, send, exc.status, exc.reason)
                return
            if request is not None:
                await self._session_request(request, scope, receive, send)
                return
        elif scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        async def receive_and_close() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.aclose()
            return message

        if "lifespan" in self._routes:
            await self._routes["lifespan"](scope, receive_and_close, send)
            return
        while True:
            message = await receive_and_close()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _session_request(
        self, request: SessionRequest, scope: Scope, receive: ASGIReceive, send: ASGISend
    ) -> None:
        if scope["type"] == "websocket":
            if (await receive())["type"] != "websocket.connect":
                return
        elif cross_site_without_origin(scope):
            logger.info("Refused %s session request without Origin", scope.get("path", ""))
            await _http.deny(scope, send, 403, "cross-site request without Origin")
            return
        if request.sid is not None and parse_sid(request.sid) is None:
            # Not an id of ours (forged, or signed with another SECRET_KEY). Refused
            # before the stack, the body or the layer: nothing may depend on it.
            if request.action in ("send", "close"):
                await _http.respond(send, 404, b"unknown session\n", headers=[_CLOSE])
                return
            request = replace(request, sid=None)
        handle = SessionHandle(self, request)
        adopted = await self._run_stack(
            session_scope(scope, request, handle, TRANSPORT_SESSION_KEY), handle, scope, send
        )
        if adopted is None:
            return
        if adopted.cookie is not None:
            send = _with_header(send, adopted.cookie)
        try:
            await self._serve(request, adopted, scope, receive, send)
        except _http.ClientGone:
            pass

    async def _serve(
        self,
        request: SessionRequest,
        adopted: _Adopted,
        scope: Scope,
        receive: ASGIReceive,
        send: ASGISend,
    ) -> None:
        action = request.action
        if action in ("send", "close"):
            manager = await self._manager()
            if action == "send":
                await longpoll.serve_send(
                    request.sid, adopted.user, manager, self.settings, scope, receive, send
                )
            else:
                await longpoll.serve_close(request.sid, adopted.user, manager, send)
            return
        opening = adopted.opening
        assert opening is not None
        if opening.status == 429:
            retry = (b"retry-after", b"%d" % (opening.retry_after or 1))
            await _http.deny(scope, send, 429, "too many new sessions", headers=[retry])
        elif opening.status != 200:
            reason = "too many sessions, try again later"
            await _http.deny(scope, send, opening.status, reason, headers=[self._retry_after])
        elif action == "ws":
            await websocket.serve(opening, receive, send, scope, self.settings)
        elif action == "sse":
            await sse.serve(opening, receive, send, scope, self.settings)
        else:
            await longpoll.serve_poll(opening, receive, send, scope, self.settings)

    async def _run_stack(
        self, inner_scope: Scope, handle: SessionHandle, scope: Scope, send: ASGISend
    ) -> _Adopted | None:
        """Run the ``"websocket"`` stack with ``handle``; the adoption, or ``None`` if refused."""
        refusal: asyncio.Future[Refusal] = asyncio.get_running_loop().create_future()
        asgi = ASGIWebSocketConnection()
        over = asyncio.Event()
        connected = False

        async def stack_receive() -> Message:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            await over.wait()
            return {"type": "websocket.disconnect", "code": 1006}

        async def stack_send(message: Message) -> None:
            if refusal.done() or handle.outcome.done():
                return
            try:
                action = asgi.app_sent(message)
            except ASGIMessageError:
                refusal.set_result(PLAIN_REFUSAL)  # anything else before deciding: 403
                return
            if type(action) is Accept:
                logger.error(
                    "%s accepted a session request itself: wrap plain ASGI applications "
                    "with tidings.transports.fallback()",
                    inner_scope.get("path", ""),
                )
                refusal.set_result(_NOT_SUPPORTED)
            elif type(action) is Refusal:
                refusal.set_result(action)

        app = self._routes["websocket"]
        stack: Coroutine[Any, Any, None] = app(inner_scope, stack_receive, stack_send)  # type: ignore[assignment]
        task = asyncio.get_running_loop().create_task(stack)
        waiters: list[asyncio.Future[Any]] = [task, refusal, handle.outcome]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        over.set()
        if not task.done():
            await asyncio.wait([task], timeout=_STACK_EXIT)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        error = None if task.cancelled() else task.exception()
        if _no_route(error):
            # Anyone can ask for any path: not worth more than a debug line.
            logger.debug("Session request to %s: no route", scope.get("path", ""))
            await _http.deny(scope, send, 404, "no such route")
            return None
        if error is not None:
            logger.error("Exception in the websocket stack of a session request", exc_info=error)
        outcome = handle.outcome
        if outcome.done():
            if outcome.exception() is None:
                return outcome.result()
            if error is None:
                logger.error("Session manager failed", exc_info=outcome.exception())
            await _http.deny(scope, send, 500, "internal error")
        elif refusal.done():
            result = refusal.result()
            if result.body is not None:  # the application's own response
                await _http.deny(
                    scope, send, result.status, headers=list(result.headers), body=result.body
                )
            elif result is _NOT_SUPPORTED:
                await _http.deny(scope, send, 501, "this route does not support sessions")
            else:
                logger.info("Session request to %s refused", scope.get("path", ""))
                await _http.deny(scope, send, result.status, "refused")
        elif error is not None:
            await _http.deny(scope, send, 500, "internal error")
        else:
            logger.info("Session request to %s refused (no answer)", scope.get("path", ""))
            await _http.deny(scope, send, 403, "refused")
        return None


def _no_route(error: BaseException | None) -> bool:
    """Whether ``error`` is URLRouter's "No route found" (Channels raises a ValueError too)."""
    return type(error).__name__ in ("ValueError", "_NoRoute") and str(error).startswith(
        "No route found for path"
    )


def _with_header(send: ASGISend, header: tuple[bytes, bytes]) -> ASGISend:
    """``send`` that adds ``header`` to the response start (or the WebSocket accept)."""

    async def sender(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            message = {**message, "headers": [*(message.get("headers") or ()), header]}
        await send(message)

    return sender
