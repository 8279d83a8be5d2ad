"""Cookies and Django sessions in the ASGI scope (Channels' ``sessions`` API).

Theory of operation
-------------------
:class:`CookieMiddleware` parses the request's ``Cookie`` header(s) into
``scope["cookies"]`` (a ``dict[str, str]``) with Django's own parser, so a
cookie reads the same here as in ``request.COOKIES``. Its static helpers
:meth:`~CookieMiddleware.set_cookie` and :meth:`~CookieMiddleware.delete_cookie`
append ``Set-Cookie`` headers to an ``http.response.start`` message using the
rules of Django's ``HttpResponse.set_cookie`` (RFC 6265 attributes, ``expires``
as a datetime turned into ``Max-Age``, ``SameSite`` validation). The header
is written as Channels writes it, ``(b"Set-Cookie", b"name=value; ...")``.

:class:`SessionMiddleware` (inside ``CookieMiddleware``) puts a session store
of ``settings.SESSION_ENGINE`` into ``scope["session"]``, keyed by the
``settings.SESSION_COOKIE_NAME`` cookie. Building a store does no I/O: the
data loads on first access, so an application that never touches the session
never costs a query. For HTTP, the middleware watches the application's
``http.response.start`` and, exactly like Django's ``SessionMiddleware``:

* deletes the session cookie when the request carried one and the session is
  now empty (for example after ``logout``);
* saves the session and (re)sets the cookie when it was modified, or on every
  response with ``SESSION_SAVE_EVERY_REQUEST``, except for 5xx responses;
* adds ``Vary: Cookie`` when the session was accessed or the cookie was
  deleted, so that a shared cache does not hand one user's page to another.

One exception to Django: a response that sets the session cookie carries only
that header, as with Channels' ``SessionMiddleware`` (no ``Vary``).

The save and the expiry lookup happen together in one hop to the database
thread (:func:`tidings.db.database_sync_to_async`), and only when a save is
due. For WebSocket there is no response to piggy-back on, so nothing is saved
automatically: a consumer that changes the session awaits
``database_sync_to_async(scope["session"].save)()`` (or Django's
``scope["session"].asave()``) itself, as Channels documents.

Middleware here passes ``lifespan`` scopes through untouched, so a stack may
wrap a whole application.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Awaitable, Iterable
from http.cookies import SimpleCookie
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.core.exceptions import SuspiciousOperation
from django.http.cookie import parse_cookie
from django.utils.http import http_date

from tidings._chain import start
from tidings._types import ASGIApp, ASGIReceive, ASGISend, Message, Scope
from tidings.db import database_sync_to_async
from tidings.middleware import BaseMiddleware

__all__ = ["CookieMiddleware", "SessionMiddleware", "SessionMiddlewareStack"]

_SAMESITE_VALUES = frozenset({"lax", "none", "strict"})
_DELETED_EXPIRES = "Thu, 01 Jan 1970 00:00:00 GMT"
# Cookie prefixes that browsers only accept with the Secure attribute
# (draft-ietf-httpbis-rfc6265bis, "Cookie Name Prefixes").
_SECURE_PREFIXES = ("__Secure-", "__Host-")
_LIST_SEPARATOR = re.compile(r"\s*,\s*")


class _InvalidSameSite(ValueError, AssertionError):
    """A ``samesite`` other than lax/strict/none.

    A ``ValueError`` as in Django's ``set_cookie``, and an ``AssertionError``
    as Channels' ``assert`` raises, so either ``except`` catches it.
    """


class _SessionDeleted(SessionInterrupted, SuspiciousOperation):
    """The session was deleted while the request ran.

    Django's ``SessionInterrupted``, and the ``SuspiciousOperation`` that
    Channels raises, so either ``except`` catches it.
    """


def _passes_through(scope: Scope) -> bool:
    """Whether a scope carries no request (lifespan): leave it alone."""
    return bool(scope.get("type") == "lifespan")


def _parse_cookie_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Parse every ``Cookie`` request header into one ``{name: value}`` dict.

    Several ``Cookie`` headers (HTTP/2 may split one, RFC 9113 section 8.2.3)
    are joined with ``"; "`` before parsing. Values are decoded as Latin-1,
    as ASGI header bytes are, and parsed with Django's ``parse_cookie``:
    quoted values are unquoted, a pair without ``=`` is kept under the empty
    name, and when a name repeats the last value wins.
    """
    values = [value.decode("latin1") for name, value in headers if name.lower() == b"cookie"]
    if not values:
        return {}
    return parse_cookie("; ".join(values))


class CookieMiddleware(BaseMiddleware):
    """Put the request's cookies into ``scope["cookies"]`` (a ``dict[str, str]``).

    Raises:
        ValueError: the scope has no ``headers`` (and is not ``lifespan``).
    """

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[Any]:
        """Parse the cookies, then start the inner application."""
        if _passes_through(scope):
            return start(self.inner, scope, receive, send, owned=owned)
        if "headers" not in scope:
            raise ValueError(
                "CookieMiddleware was passed a scope without a 'headers' key; "
                "use it only around HTTP or WebSocket applications."
            )
        if self.copy_scope:
            scope, owned = dict(scope), True
        scope["cookies"] = _parse_cookie_headers(scope["headers"])
        return start(self.inner, scope, receive, send, owned=owned)

    @staticmethod
    def set_cookie(
        message: Message,
        key: str,
        value: str = "",
        max_age: float | datetime.timedelta | None = None,
        expires: str | datetime.datetime | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool | None = False,
        httponly: bool | None = False,
        samesite: str | None = "lax",
    ) -> None:
        """Append a ``Set-Cookie`` header to an ``http.response.start`` message.

        The attributes follow Django's ``HttpResponse.set_cookie``: ``expires``
        may be a preformatted string or a datetime (naive means UTC), and a
        datetime is turned into ``Max-Age`` (plus the matching ``Expires``);
        ``max_age`` (seconds or a timedelta) also sets ``Expires``.

        Raises:
            ValueError: ``samesite`` is not ``lax``, ``strict`` or ``none``
                (also an ``AssertionError``, which Channels raises there),
                or both a datetime ``expires`` and ``max_age`` were given.
        """
        cookie: SimpleCookie = SimpleCookie()
        cookie[key] = value
        morsel = cookie[key]
        if isinstance(expires, datetime.datetime):
            if max_age is not None:
                raise ValueError("'expires' and 'max_age' can't be used together.")
            if expires.tzinfo is None or expires.utcoffset() is None:
                expires = expires.replace(tzinfo=datetime.UTC)
            # One extra second, so the Expires date computed back from Max-Age
            # is not a second early after the sub-second part is dropped.
            delta = expires - datetime.datetime.now(tz=datetime.UTC)
            delta += datetime.timedelta(seconds=1)
            max_age = max(0, delta.days * 86400 + delta.seconds)
            expires = None
        if expires:
            morsel["expires"] = expires
        if max_age is not None:
            seconds = (
                max_age.total_seconds() if isinstance(max_age, datetime.timedelta) else max_age
            )
            morsel["max-age"] = int(seconds)
            if not expires:
                morsel["expires"] = http_date(time.time() + seconds)
        if path is not None:
            morsel["path"] = path
        if domain is not None:
            morsel["domain"] = domain
        if secure:
            morsel["secure"] = True
        if httponly:
            morsel["httponly"] = True
        if samesite:
            if samesite.lower() not in _SAMESITE_VALUES:
                raise _InvalidSameSite('samesite must be "lax", "none", or "strict".')
            morsel["samesite"] = samesite
        # Capitalised as Channels writes it (code compares the tuples); header
        # names are case-insensitive on the wire (RFC 9110 section 5.1).
        header = (b"Set-Cookie", morsel.OutputString().encode("latin1"))
        message["headers"] = [*message.get("headers", ()), header]

    @staticmethod
    def delete_cookie(
        message: Message,
        key: str,
        path: str | None = "/",
        domain: str | None = None,
        samesite: str | None = None,
    ) -> None:
        """Append a ``Set-Cookie`` header that makes the browser drop ``key``.

        ``path`` and ``domain`` must match the ones the cookie was set with.
        The cookie is marked ``Secure`` when its name has a ``__Secure-`` or
        ``__Host-`` prefix or ``samesite`` is ``none``, since browsers ignore
        such a cookie without it.
        """
        secure = key.startswith(_SECURE_PREFIXES) or (
            samesite is not None and samesite.lower() == "none"
        )
        CookieMiddleware.set_cookie(
            message,
            key,
            max_age=0,
            expires=_DELETED_EXPIRES,
            path=path,
            domain=domain,
            secure=secure,
            samesite=samesite,
        )


def _add_vary_cookie(message: Message) -> None:
    """Add ``Vary: Cookie`` unless the message already varies on it (or on ``*``)."""
    headers = list(message.get("headers", ()))
    for name, value in headers:
        if name.lower() == b"vary":
            fields = {f.lower() for f in _LIST_SEPARATOR.split(value.decode("latin1").strip())}
            if "cookie" in fields or "*" in fields:
                return
    headers.append((b"vary", b"Cookie"))
    message["headers"] = headers


def _save_session(session: SessionBase) -> tuple[int | None, str | None]:
    """Save ``session``; return the cookie's ``(max_age, expires)``.

    Runs in the database thread: reading the expiry may load the session,
    and saving writes it.

    Raises:
        SessionInterrupted: the session was deleted while the request ran
            (for example by a concurrent logout), as in Django; it is also a
            ``SuspiciousOperation``, which Channels raises.
    """
    max_age: int | None = None
    expires: str | None = None
    if not session.get_expire_at_browser_close():
        max_age = session.get_expiry_age()
        expires = http_date(time.time() + max_age)
    try:
        session.save()
    except UpdateError:
        raise _SessionDeleted(
            "The request's session was deleted before the request completed. "
            "The user may have logged out in a concurrent request, for example."
        )
    return max_age, expires


class SessionMiddleware(BaseMiddleware):
    """Put a Django session into ``scope["session"]``; persist it on HTTP responses.

    Must run inside :class:`CookieMiddleware`. The session is an instance of
    ``SessionStore`` from ``settings.SESSION_ENGINE`` for the key in the
    ``settings.SESSION_COOKIE_NAME`` cookie (a new, empty session when there
    is none); it loads its data lazily. Settings are read per connection.

    HTTP responses save the session and set or delete the cookie as Django's
    ``SessionMiddleware`` does (see the module docstring). WebSocket sessions
    are never saved automatically: call ``save()`` from the consumer.

    A scope that already holds a ``"session"`` is passed on unchanged.

    Raises:
        ValueError: the scope has no ``cookies`` (no ``CookieMiddleware``).
    """

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[Any]:
        """Attach the session, then start the inner application."""
        if _passes_through(scope) or "session" in scope:
            return start(self.inner, scope, receive, send, owned=owned)
        if "cookies" not in scope:
            raise ValueError(
                "No cookies in scope: SessionMiddleware must run inside CookieMiddleware "
                "(use SessionMiddlewareStack or AuthMiddlewareStack)."
            )
        cookie_name: str = settings.SESSION_COOKIE_NAME
        session_key: str | None = scope["cookies"].get(cookie_name)
        store_class: type[SessionBase] = import_module(settings.SESSION_ENGINE).SessionStore
        session = store_class(session_key)
        if self.copy_scope:
            scope, owned = dict(scope), True
        scope["session"] = session
        if scope.get("type") == "http":
            send = self._saving_send(session, send, had_cookie=cookie_name in scope["cookies"])
        return start(self.inner, scope, receive, send, owned=owned)

    def _saving_send(self, session: SessionBase, send: ASGISend, *, had_cookie: bool) -> ASGISend:
        """``send`` that persists ``session`` on ``http.response.start`` (HTTP only)."""

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                await self._persist(session, message, had_cookie=had_cookie)
            await send(message)

        return send_with_session

    @staticmethod
    async def _persist(session: SessionBase, message: Message, *, had_cookie: bool) -> None:
        """Save ``session`` if due and add the cookie headers to ``message``."""
        # These reads touch no storage: accessed/modified are flags, and an
        # unloaded session with a valid key is known not to be empty.
        accessed = session.accessed
        modified = session.modified
        empty = session.is_empty()
        if had_cookie and empty:
            CookieMiddleware.delete_cookie(
                message,
                settings.SESSION_COOKIE_NAME,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
            _add_vary_cookie(message)
            return
        save_due = (modified or settings.SESSION_SAVE_EVERY_REQUEST) and not empty
        if save_due and int(message.get("status", 200)) < 500:
            max_age, expires = await database_sync_to_async(_save_session)(session)
            CookieMiddleware.set_cookie(
                message,
                settings.SESSION_COOKIE_NAME,
                session.session_key or "",
                max_age=max_age,
                expires=expires,
                domain=settings.SESSION_COOKIE_DOMAIN,
                path=settings.SESSION_COOKIE_PATH,
                secure=settings.SESSION_COOKIE_SECURE or None,
                httponly=settings.SESSION_COOKIE_HTTPONLY or None,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
        elif accessed:
            _add_vary_cookie(message)


def SessionMiddlewareStack(inner: ASGIApp) -> ASGIApp:
    """Return ``CookieMiddleware(SessionMiddleware(inner))``.

    The scope is copied once, by ``CookieMiddleware``; ``SessionMiddleware``
    adds its key to that copy (see :attr:`~tidings.middleware.BaseMiddleware.copy_scope`).
    """
    session = SessionMiddleware(inner)
    session.copy_scope = False
    return CookieMiddleware(session)
