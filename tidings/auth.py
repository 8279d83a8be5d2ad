"""Django authentication in the ASGI scope (Channels' ``auth`` API).

Theory of operation
-------------------
:class:`AuthMiddleware` runs inside :class:`~tidings.sessions.SessionMiddleware`
and puts ``scope["user"]``: a :class:`UserLazyObject` that it resolves, before
the inner application runs, with :func:`get_user`. ``get_user`` is Django's
``django.contrib.auth.get_user`` for a scope instead of a request: the user id
and backend come from the session, the user is loaded through the backend,
and the session's auth hash must match the user's current one (so changing
the password logs out every other session). A hash made with one of the
``SECRET_KEY_FALLBACKS`` is accepted and upgraded, as Django does. Anything
else gives ``AnonymousUser`` (a mismatch also flushes the session).

:func:`login` and :func:`logout` mirror Django's functions of those names,
with ``request=None`` in the signals they send. Neither saves the session:
over WebSocket, and in HTTP after the response has started, the consumer
persists it itself::

    await login(self.scope, user)
    await database_sync_to_async(self.scope["session"].save)()

Each of ``get_user``, ``login`` and ``logout`` is one hop to the database
thread; the session loads, the user query, the session flush and the signal
receivers (such as ``update_last_login``) all run there.

Over WebSocket a user stays resolved for the life of the connection; a
long-running consumer can await :func:`get_user` again to notice a logout
made elsewhere.

CSRF: Django's ``login`` rotates the CSRF token. With ``CSRF_USE_SESSIONS``
the secret lives in the session and :func:`login` replaces it. A cookie-held
secret cannot be rotated from here (there may be no response to carry a
cookie); an HTTP view that logs in should rotate it with Django's
``rotate_token`` as usual.

This module imports before Django is set up (an ``asgi.py`` may import it
above ``get_asgi_application()``, as Channels' tutorial does): the user
models, which need the app registry, are imported where they are used.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
    user_logged_in,
    user_logged_out,
)
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError
from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH, CSRF_SESSION_KEY
from django.utils.crypto import constant_time_compare, get_random_string
from django.utils.functional import LazyObject, empty

from tidings._chain import start
from tidings._types import ASGIApp, ASGIReceive, ASGISend, Scope
from tidings.db import database_sync_to_async
from tidings.middleware import BaseMiddleware
from tidings.sessions import CookieMiddleware, SessionMiddleware

__all__ = [
    "AuthMiddleware",
    "AuthMiddlewareStack",
    "UserLazyObject",
    "get_user",
    "login",
    "logout",
]

_NO_SESSION = (
    "Cannot find session in scope. You should wrap your consumer in SessionMiddleware "
    "(SessionMiddlewareStack or AuthMiddlewareStack)."
)

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

    _AnyUser = AbstractBaseUser | AnonymousUser
    _UserLazyBase = LazyObject[_AnyUser]
else:
    _UserLazyBase = LazyObject


def _anonymous_user() -> AnonymousUser:
    """A new ``AnonymousUser`` (its module needs the app registry, so imported here)."""
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()


def _session_of(scope: Scope) -> SessionBase:
    """Return the scope's session, or raise the error that says how to get one."""
    if "session" not in scope:
        raise ValueError(_NO_SESSION)
    session: SessionBase = scope["session"]
    return session


def _user_id_in(session: SessionBase) -> Any:
    """The user's primary key stored in ``session``, as the pk field's Python type.

    Raises:
        KeyError: nobody is logged in.
        ValidationError, ValueError, TypeError: the stored id is malformed.
    """
    return get_user_model()._meta.pk.to_python(session[SESSION_KEY])


def _verified_user(session: SessionBase) -> AbstractBaseUser | None:
    """Django's session check (``get_user``), in the database thread."""
    try:
        user_id = _user_id_in(session)
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValueError, TypeError, ValidationError):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user: AbstractBaseUser | None = load_backend(backend_path).get_user(user_id)
    if user is None or not hasattr(user, "get_session_auth_hash"):
        return user
    session_hash = session.get(HASH_SESSION_KEY)
    current_hash = user.get_session_auth_hash()
    if session_hash and constant_time_compare(session_hash, current_hash):
        return user
    fallback_hashes = getattr(user, "get_session_auth_fallback_hash", None)
    if (
        session_hash
        and fallback_hashes is not None
        and any(constant_time_compare(session_hash, h) for h in fallback_hashes())
    ):
        # Made with a retired SECRET_KEY: still valid, upgrade it (as Django).
        session.cycle_key()
        session[HASH_SESSION_KEY] = current_hash
        return user
    session.flush()
    return None


async def get_user(scope: Scope) -> _AnyUser:
    """Return the user logged in to the scope's session, or ``AnonymousUser``.

    Applies Django's checks: the backend must still be in
    ``AUTHENTICATION_BACKENDS``, the user must exist, and the session's auth
    hash must match ``user.get_session_auth_hash()`` (constant-time compare;
    hashes from ``SECRET_KEY_FALLBACKS`` are accepted and re-keyed). On a hash
    mismatch the session is flushed.

    Raises:
        ValueError: the scope has no session.
    """
    session = _session_of(scope)
    if session.is_empty():
        # No key and no data (no cookie, or an invalid one): nobody can be
        # logged in, so skip the thread hop. Still count it as an access, so
        # that HTTP responses get ``Vary: Cookie`` as when the session loads.
        session.accessed = True
        return _anonymous_user()
    user = await database_sync_to_async(_verified_user)(session)
    return user if user is not None else _anonymous_user()


def _backend_path_for(user: AbstractBaseUser, backend: str | None) -> str:
    """The dotted path of the backend to record for ``user`` (as Django's ``login``)."""
    if backend is not None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a dotted import path string (got {backend!r}).")
        return backend
    user_backend = getattr(user, "backend", None)
    if isinstance(user_backend, str):
        return user_backend
    backends: list[str] = list(settings.AUTHENTICATION_BACKENDS)
    if len(backends) == 1:
        return backends[0]
    raise ValueError(
        "You have multiple authentication backends configured and therefore must "
        "provide the `backend` argument or set the `backend` attribute on the user."
    )


def _log_in(scope: Scope, session: SessionBase, user: AbstractBaseUser, backend: str) -> None:
    """Django's ``login`` on a scope, in the database thread."""
    session_auth_hash = (
        user.get_session_auth_hash() if hasattr(user, "get_session_auth_hash") else ""
    )
    if SESSION_KEY in session:
        try:
            same_user = _user_id_in(session) == user.pk
        except (ValueError, TypeError, ValidationError):
            same_user = False
        if not same_user or (
            session_auth_hash
            and not constant_time_compare(session.get(HASH_SESSION_KEY, ""), session_auth_hash)
        ):
            # Someone else's (or a stale) session: start from a blank one.
            session.flush()
    else:
        # Against session fixation: same data, new key.
        session.cycle_key()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = backend
    session[HASH_SESSION_KEY] = session_auth_hash
    if settings.CSRF_USE_SESSIONS:
        session[CSRF_SESSION_KEY] = get_random_string(
            CSRF_SECRET_LENGTH, allowed_chars=CSRF_ALLOWED_CHARS
        )
    scope["user"] = user
    user_logged_in.send(sender=user.__class__, request=None, user=user)


async def login(scope: Scope, user: AbstractBaseUser | None, backend: str | None = None) -> None:
    """Log ``user`` in to the scope's session, like Django's ``login``.

    Stores the user's id, backend path and session auth hash in the session,
    flushing it first if it belonged to another user (or cycling its key
    otherwise), rotates a session-held CSRF secret, sets ``scope["user"]``
    and sends ``user_logged_in`` (with ``request=None``).

    The session is **not saved**: ``await database_sync_to_async(
    scope["session"].save)()`` afterwards (HTTP responses not yet started are
    saved by ``SessionMiddleware``).

    Args:
        scope: a scope with a ``session`` (inside ``SessionMiddleware``).
        user: the user; ``None`` means ``scope["user"]``.
        backend: dotted path of the authenticating backend; defaults to
            ``user.backend`` (set by ``authenticate()``), or the only entry
            of ``AUTHENTICATION_BACKENDS``.

    Raises:
        ValueError: no session in the scope; no user; several backends and
            none named.
        TypeError: ``backend`` is not a string.
    """
    session = _session_of(scope)
    candidate: Any = user if user is not None else scope.get("user")
    if isinstance(candidate, LazyObject):
        candidate = _unwrap(candidate)
    if candidate is None or getattr(candidate, "is_anonymous", False):
        raise ValueError("User must be passed as an argument or must be present in the scope.")
    backend_path = _backend_path_for(candidate, backend)
    await database_sync_to_async(_log_in)(scope, session, candidate, backend_path)


def _log_out(scope: Scope, session: SessionBase) -> None:
    """Channels' ``logout`` on a scope, in the database thread."""
    user = scope.get("user")
    if isinstance(user, LazyObject):
        user = _unwrap(user)
    if user is not None and getattr(user, "is_authenticated", True):
        user_logged_out.send(sender=user.__class__, request=None, user=user)
    session.flush()
    if "user" in scope:
        scope["user"] = _anonymous_user()


async def logout(scope: Scope) -> None:
    """Log the scope's user out, like Channels' ``logout``.

    Sends ``user_logged_out`` (``request=None``) when a logged-in user is in
    ``scope["user"]``, and nothing when nobody is (Django's ``logout`` sends
    it with ``user=None`` then); flushes the session (its data is deleted
    and it gets a new key); and sets ``scope["user"]`` to ``AnonymousUser``
    if the scope has a ``"user"``.

    Raises:
        ValueError: the scope has no session.
    """
    session = _session_of(scope)
    await database_sync_to_async(_log_out)(scope, session)


def _unwrap(lazy: LazyObject[Any]) -> Any:
    """The object behind a resolved lazy object, or ``None`` if unresolved."""
    wrapped = lazy._wrapped
    return None if wrapped is empty else wrapped


class UserLazyObject(_UserLazyBase):
    """Stands in for ``scope["user"]`` until :class:`AuthMiddleware` resolves it.

    Attribute access is forwarded to the user. Touching it before it is
    resolved raises ``ValueError``.
    """

    def _setup(self) -> None:
        raise ValueError("Accessing scope user before it is ready.")


class AuthMiddleware(BaseMiddleware):
    """Put the session's user into ``scope["user"]``.

    Must run inside :class:`~tidings.sessions.SessionMiddleware`. For each
    connection it places a :class:`UserLazyObject` in the scope and resolves
    it with :func:`get_user` (one database hop) before calling the inner
    application. A ``scope["user"]`` that an outer middleware already set is
    left alone.

    Raises:
        ValueError: the scope has no ``session``.
    """

    def populate_scope(self, scope: Scope) -> None:
        """Add an unresolved :class:`UserLazyObject` to ``scope`` if it has no user."""
        if "session" not in scope:
            raise ValueError(
                "AuthMiddleware cannot find session in scope. SessionMiddleware must be "
                "above it (use AuthMiddlewareStack)."
            )
        if "user" not in scope:
            scope["user"] = UserLazyObject()

    async def resolve_scope(self, scope: Scope) -> None:
        """Resolve an unresolved ``scope["user"]`` with :func:`get_user`."""
        user = scope.get("user")
        if isinstance(user, UserLazyObject) and user._wrapped is empty:
            user._wrapped = await get_user(scope)

    def _start(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool = False
    ) -> Awaitable[Any]:
        """Resolve the user, then call the inner application."""
        if scope.get("type") == "lifespan":
            return start(self.inner, scope, receive, send, owned=owned)
        if self.copy_scope:
            scope, owned = dict(scope), True
        self.populate_scope(scope)
        return self._resolve_and_call(scope, receive, send, owned)

    async def _resolve_and_call(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, owned: bool
    ) -> Any:
        await self.resolve_scope(scope)
        return await start(self.inner, scope, receive, send, owned=owned)


def AuthMiddlewareStack(inner: ASGIApp) -> ASGIApp:
    """Return ``CookieMiddleware(SessionMiddleware(AuthMiddleware(inner)))``.

    The scope is copied once, by ``CookieMiddleware``; the two inside add their
    keys to that copy (see :attr:`~tidings.middleware.BaseMiddleware.copy_scope`).
    """
    auth = AuthMiddleware(inner)
    auth.copy_scope = False
    session = SessionMiddleware(auth)
    session.copy_scope = False
    return CookieMiddleware(session)
