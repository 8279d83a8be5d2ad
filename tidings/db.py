"""Calling the Django ORM from async code (Channels' ``tidings.db`` API).

Theory of operation
-------------------
Django's ORM is synchronous and its connections are per thread. Django's
request cycle calls :func:`django.db.close_old_connections` at the start and
at the end of every request so that connections past ``CONN_MAX_AGE``, or
left broken by an error, are not reused. Async code has no request cycle, so
:func:`database_sync_to_async` provides the same hygiene around one call: it
is :func:`asgiref.sync.sync_to_async`, with ``close_old_connections`` run
*in the worker thread*, immediately before and immediately after the wrapped
function. Both clean-ups run inside the same executor job as the function:
one call costs exactly one thread hop, never two or three.

Nothing here runs per message. Only the code you wrap (or decorate) hops to a
thread; a consumer that never touches the database never pays for a hop.
Long-lived async consumers that do touch the ORM should call
:func:`aclose_old_connections` before the first queries after a quiet spell
(for example when woken by a channel-layer event), as Channels documents.

Thread sensitivity is asgiref's: by default (``thread_sensitive=True``) all
wrapped calls run on one shared thread, which is what SQLite and Django's
per-thread connections expect; ``thread_sensitive=False`` runs the call on
the executor's pool (or the ``executor`` you pass).

**Under test.** Django's ``TestCase`` runs each test inside a transaction on
one connection; ``close_old_connections`` would close that connection (its
autocommit differs from the settings'), and the test would fail with "closed
database". So, as Channels' communicators do, the clean-ups here are skipped
while a :mod:`tidings.testing` communicator is sending to or waiting on the
application (:func:`keeping_connections`). Both clean-ups call this module's
``close_old_connections`` by name, so a test may also patch it.

**Sends that wait for the transaction.** :func:`group_send_on_commit` and
:func:`send_on_commit` (and their async twins) hand a channel-layer message to
Django's ``transaction.on_commit``: a write that rolls back sends nothing, one
that commits sends once the commit is done, and outside an atomic block the
send happens at once. Names and messages are checked when the call is made,
so a mistake raises where it was written. The send itself runs where the
commit runs: a thread without an event loop (a sync view, or code inside
:func:`database_sync_to_async`) sends with ``async_to_sync``, which goes back
to the server's loop when there is one; a thread with a running loop gets a
task on that loop. A failed send is logged (logger ``tidings.db``, with the
group or channel name) and never raised: an exception there would stop
Django's other commit hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar, overload

from asgiref.sync import SyncToAsync, async_to_sync, iscoroutinefunction, sync_to_async
from django.db import close_old_connections, transaction

from tidings.exceptions import InvalidChannelLayerError
from tidings.layers import DEFAULT_CHANNEL_LAYER, get_channel_layer
from tidings.layers.base import BaseChannelLayer, Message

__all__ = [
    "DatabaseSyncToAsync",
    "aclose_old_connections",
    "agroup_send_on_commit",
    "asend_on_commit",
    "database_sync_to_async",
    "group_send_on_commit",
    "keeping_connections",
    "send_on_commit",
]

logger = logging.getLogger("tidings.db")

_P = ParamSpec("_P")
_R = TypeVar("_R")


#: How many communicator calls are in progress; while above zero, connections
#: are not closed (see *Under test* above).
_kept_open = 0
_kept_open_lock = threading.Lock()


@contextlib.contextmanager
def keeping_connections() -> Iterator[None]:
    """Skip the clean-ups of this module, in every thread, for the block's duration.

    ``tidings.testing``'s communicators hold it while they talk to the application,
    as Channels' do, so that a ``TestCase``'s connection is not closed under it.
    """
    global _kept_open
    with _kept_open_lock:
        _kept_open += 1
    try:
        yield
    finally:
        with _kept_open_lock:
            _kept_open -= 1


def _close_old_connections() -> None:
    if not _kept_open:
        close_old_connections()


def _closing_connections(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Wrap ``func`` so that old connections are closed before and after it."""

    @functools.wraps(func)
    def call_with_clean_connections(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        _close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            _close_old_connections()

    return call_with_clean_connections


class DatabaseSyncToAsync(SyncToAsync[_P, _R]):
    """A :class:`~asgiref.sync.SyncToAsync` that keeps DB connections healthy.

    Awaiting an instance runs the wrapped function in a worker thread with
    :func:`django.db.close_old_connections` called, in that same thread, just
    before and just after it (the latter also when it raises). Exceptions
    propagate unchanged.

    Used as a decorator on a method, it binds like a function does.

    Args:
        func: a synchronous callable.
        thread_sensitive: run in the single shared thread (the default; what
            Django's per-thread connections need) or in a pool.
        executor: a pool to use; only with ``thread_sensitive=False``.

    Raises:
        TypeError: ``func`` is not callable, or is a coroutine function.
    """

    def __init__(
        self,
        func: Callable[_P, _R],
        thread_sensitive: bool = True,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        # Check here: once wrapped, a coroutine function would look synchronous.
        if (
            not callable(func)
            or iscoroutinefunction(func)
            or iscoroutinefunction(type(func).__call__)
        ):
            raise TypeError("database_sync_to_async can only be applied to sync functions.")
        super().__init__(
            _closing_connections(func), thread_sensitive=thread_sensitive, executor=executor
        )
        bound_to = getattr(func, "__self__", None)
        if bound_to is not None:
            self.__self__ = bound_to


@overload
def database_sync_to_async(
    func: Callable[_P, _R],
    *,
    thread_sensitive: bool = True,
    executor: ThreadPoolExecutor | None = None,
) -> Callable[_P, Coroutine[Any, Any, _R]]: ...


@overload
def database_sync_to_async(
    func: None = None,
    *,
    thread_sensitive: bool = True,
    executor: ThreadPoolExecutor | None = None,
) -> Callable[[Callable[_P, _R]], Callable[_P, Coroutine[Any, Any, _R]]]: ...


def database_sync_to_async(
    func: Callable[_P, _R] | None = None,
    *,
    thread_sensitive: bool = True,
    executor: ThreadPoolExecutor | None = None,
) -> (
    Callable[_P, Coroutine[Any, Any, _R]]
    | Callable[[Callable[_P, _R]], Callable[_P, Coroutine[Any, Any, _R]]]
):
    """Turn a synchronous ORM-using function into an awaitable one.

    The result is a :class:`DatabaseSyncToAsync`, typed as the coroutine
    function it behaves as (so that type checkers bind ``self`` on methods).
    Three spellings work::

        user = await database_sync_to_async(get_user)(user_id)

        @database_sync_to_async
        def get_user(user_id): ...

        @database_sync_to_async(thread_sensitive=False)
        def slow_report(): ...

    Each await is one thread hop, with old connections closed before and
    after the call in that thread (see :class:`DatabaseSyncToAsync`).
    """
    if func is None:

        def decorate(f: Callable[_P, _R]) -> DatabaseSyncToAsync[_P, _R]:
            return DatabaseSyncToAsync(f, thread_sensitive=thread_sensitive, executor=executor)

        return decorate
    return DatabaseSyncToAsync(func, thread_sensitive=thread_sensitive, executor=executor)


async def aclose_old_connections() -> None:
    """Close the database connections that Django would close between requests.

    An async wrapper around :func:`django.db.close_old_connections`, run in
    the thread-sensitive thread where ``database_sync_to_async`` keeps its
    connections. Call it before the first queries after a quiet spell.
    """
    await sync_to_async(_close_old_connections, thread_sensitive=True)()


# -- sends that wait for the transaction -----------------------------------------------

#: Sends running as tasks (commits in a thread with a running loop), kept from the GC.
_sending: set[asyncio.Task[None]] = set()


def _checked_send(
    kind: str, target: str, message: Message, alias: str
) -> Callable[[], Coroutine[Any, Any, None]]:
    """Check the call now; return a coroutine function that sends and logs a failure."""
    layer: BaseChannelLayer | None = get_channel_layer(alias)
    if layer is None:
        raise InvalidChannelLayerError(f"{kind}_on_commit needs a channel layer ({alias!r})")
    BaseChannelLayer.require_message(message)
    if kind == "group_send":
        layer.require_valid_group_name(target)
    else:
        layer.require_valid_channel_name(target)
    # A copy: the caller may reuse its dict before the commit.
    message = dict(message)
    send = getattr(layer, kind)

    async def send_logging_failure() -> None:
        try:
            await send(target, message)
        except Exception:
            logger.exception("%s to %r after the transaction committed failed", kind, target)

    return send_logging_failure


def _send_from_any_thread(send: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``send`` from a commit hook: a task on this thread's loop, else ``async_to_sync``."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        try:
            async_to_sync(send)()
        except Exception:  # no loop to send on: still never break the other hooks
            logger.exception("sending after the transaction committed failed")
        return
    task = loop.create_task(send())
    _sending.add(task)
    task.add_done_callback(_sending.discard)


def _on_commit(send: Callable[[], Coroutine[Any, Any, None]], using: str | None) -> bool:
    """Register ``send`` for the commit of ``using``'s atomic block; False if there is none.

    Reads only the ``in_atomic_block`` flag, never the database: safe in async code.
    """
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        return False
    connection.on_commit(functools.partial(_send_from_any_thread, send))
    return True


def group_send_on_commit(
    group: str,
    message: Message,
    *,
    using: str | None = None,
    alias: str = DEFAULT_CHANNEL_LAYER,
) -> None:
    """``group_send(group, message)`` once the transaction of ``using`` commits.

    Nothing is sent if it rolls back (including a rolled-back savepoint that
    the call was made in); outside an atomic block the message is sent at once.
    A failed send is logged with the group name, not raised.

    Args:
        group: the group name.
        message: the message (copied now).
        using: the database alias (Django's default database by default).
        alias: the ``CHANNEL_LAYERS`` alias.

    Raises:
        TypeError: the group name or the message is not valid.
        InvalidChannelLayerError: the alias has no channel layer.
    """
    send = _checked_send("group_send", group, message, alias)
    if not _on_commit(send, using):
        _send_from_any_thread(send)


def send_on_commit(
    channel: str,
    message: Message,
    *,
    using: str | None = None,
    alias: str = DEFAULT_CHANNEL_LAYER,
) -> None:
    """As :func:`group_send_on_commit`, for one channel (``ChannelFull`` is logged too)."""
    send = _checked_send("send", channel, message, alias)
    if not _on_commit(send, using):
        _send_from_any_thread(send)


async def agroup_send_on_commit(
    group: str,
    message: Message,
    *,
    using: str | None = None,
    alias: str = DEFAULT_CHANNEL_LAYER,
) -> None:
    """The async twin of :func:`group_send_on_commit`, for code on the event loop.

    Inside an atomic block of this thread the send runs as a task on this loop
    after the commit; outside one it is awaited here. A transaction inside
    :func:`database_sync_to_async` is in another thread: call the sync one there.
    """
    send = _checked_send("group_send", group, message, alias)
    if not _on_commit(send, using):
        await send()


async def asend_on_commit(
    channel: str,
    message: Message,
    *,
    using: str | None = None,
    alias: str = DEFAULT_CHANNEL_LAYER,
) -> None:
    """The async twin of :func:`send_on_commit` (see :func:`agroup_send_on_commit`)."""
    send = _checked_send("send", channel, message, alias)
    if not _on_commit(send, using):
        await send()
