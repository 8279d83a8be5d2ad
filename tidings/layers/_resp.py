"""A lean Redis client on asyncio for the layer's hot commands (RESP2, hiredis parser).

Why not redis-py here: its asyncio client spends over 100 µs of Python per
command on a small VM (pool checkout and release, a timeout context, the
retry wrapper, reply callbacks), and a channel layer pays that on every
``send`` and every pass of its receive loop. This client pays about a tenth:

- **One multiplexed connection** per host and event loop carries every
  non-blocking command. Commands of concurrent callers are written as they
  come and their replies matched in order (RESP replies are FIFO), so they
  pipeline without a pool and without waiting for each other; a burst of
  a thousand ``group_add`` calls is a thousand writes on one socket, not a
  thousand connections.
- **Blocking commands** (``BLMOVE``) get dedicated connections, at most
  ``max_connections`` at a time (further callers wait up to
  ``pool_timeout``). A blocking command that is cancelled or fails closes
  its connection, which may still be parked in Redis.
- **At most once.** A command whose connection breaks after it was written
  fails with ``ConnectionError`` and is never sent again: it may have run
  (redis-py would retry it, and a ``send`` could then arrive twice). A
  command issued while no connection is up connects first, retrying
  ``retries`` times with backoff (50 ms doubling, capped at 200 ms, jittered).
- **Timeouts.** A reply that takes longer than ``socket_timeout`` (plus the
  block time of a blocking command) marks the connection dead: it is
  closed and every command waiting on it fails with ``TimeoutError``. One
  timer per connection watches the oldest outstanding command, so a command
  costs no timer of its own.

Errors are redis-py's exception classes (``redis.exceptions``), so the layer
maps them to ``RedisUnavailable`` in one place whichever client served.

The layer uses this client for plain hosts (``redis://``, ``unix://``, a
``(host, port)`` pair, or a dict whose options are among ``LEAN_OPTIONS``);
Sentinel, Cluster, TLS and other redis-py options go through redis-py (see
:mod:`tidings.layers._redis_hosts`).
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, cast

import hiredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["LEAN_OPTIONS", "RespClient", "RespConnection"]

LEAN_OPTIONS: Final = frozenset(
    {
        "db",
        "username",
        "password",
        "client_name",
        "socket_timeout",
        "socket_connect_timeout",
        "decode_responses",
        "retry",
    }
)
"""Host options this client understands; any other sends a host through redis-py."""

# hiredis packs str, bytes, int and float arguments (its stub is narrower than that).
_pack: Final[Callable[[tuple[object, ...]], bytes]] = cast(Any, hiredis.pack_command)
_RETRY_BASE: Final = 0.05
_RETRY_CAP: Final = 0.2
_ERRORS: Final[dict[str, type[Exception]]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "NOPERM": NoPermissionError,
}


def _reply_error(reply: Exception) -> Exception:
    """The redis-py exception for an error reply (its first word is the kind)."""
    text = str(reply)
    kind = text.split(" ", 1)[0]
    if kind in ("WRONGPASS", "NOAUTH") or text.startswith("ERR invalid password"):
        return AuthenticationError(text)
    return _ERRORS.get(kind, ResponseError)(text)


class RespConnection(asyncio.Protocol):
    """One connection to Redis: commands written in order, replies matched in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        # (future, deadline) of every command written and not yet answered, oldest first.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.lost: Exception | None = None
        # Subscribe mode: every reply goes here (None once the connection is lost).
        self.on_push: Callable[[Any], None] | None = None

    @property
    def usable(self) -> bool:
        """Connected and not failed."""
        return self.lost is None and self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if self.on_push is not None:
                self.on_push(reply)
                continue
            if not waiting:
                self.abort(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiting.popleft()[0]
            if future.done():
                continue  # its caller was cancelled; the reply keeps the order
            if type(reply) is hiredis.ReplyError:
                future.set_exception(_reply_error(reply))
            else:
                future.set_result(reply)

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._fail(RedisConnectionError(f"Connection closed by server{reason}"))

    def send(self, command: bytes, *, allowance: float = 0.0) -> asyncio.Future[Any]:
        """Write one packed command; the future gets its reply.

        ``allowance`` is time the reply may take beyond ``socket_timeout``
        (a blocking command's wait).
        """
        if self.lost is not None:
            raise self.lost
        assert self._transport is not None
        deadline = 0.0
        if self._timeout is not None:
            deadline = self._loop.time() + self._timeout + allowance
            if self._waiting:  # no reply can overtake an earlier one
                deadline = max(deadline, self._waiting[-1][1])
            timer = self._timer
            if timer is None or deadline < timer.when():
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(deadline, self._check_deadline)
        future = self._loop.create_future()
        self._waiting.append((future, deadline))
        self._transport.write(command)
        return future

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._waiting or self.lost is not None:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.abort(RedisTimeoutError(f"Redis did not answer within {self._timeout} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def abort(self, exc: Exception) -> None:
        """Drop the connection; every waiting command fails with ``exc``."""
        self._fail(exc)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(RedisConnectionError("Connection closed by the client"))
        if self._transport is not None:
            self._transport.close()

    def write(self, command: bytes) -> None:
        """Write a packed command whose reply nobody waits for (subscribe mode)."""
        if self.lost is not None:
            raise self.lost
        assert self._transport is not None
        self._transport.write(command)

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
            if self.on_push is not None:
                self.on_push(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(self.lost)


class RespClient:
    """The commands the Redis layer uses, on one host, in one event loop.

    Method names and results follow redis-py's ``Redis`` for the same
    commands, so the layer can call either client.

    Args:
        host, port: a TCP address; or
        path: a Unix socket.
        db, username, password, client_name: sent after connecting.
        socket_timeout: seconds a reply may take (``None``: no limit).
        connect_timeout: seconds a connection attempt may take.
        retries: connection attempts after the first, for commands not yet written.
        max_blocking: dedicated connections for blocking commands at a time.
        pool_timeout: seconds a blocking command waits for one of them.
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        socket_timeout: float | None = 10.0,
        connect_timeout: float | None = None,
        retries: int = 3,
        max_blocking: int = 64,
        pool_timeout: float = 20.0,
    ) -> None:
        self._host, self._port, self._path = host or "localhost", port, path
        self._setup: list[bytes] = []
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._setup.append(_pack(auth))
        if db:
            self._setup.append(_pack(("SELECT", db)))
        if client_name:
            self._setup.append(_pack(("CLIENT", "SETNAME", client_name)))
        self._timeout = socket_timeout
        self._connect_timeout = connect_timeout if connect_timeout is not None else socket_timeout
        self._retries = retries
        self._pool_timeout = pool_timeout
        self._shared: RespConnection | None = None
        self._connecting: asyncio.Task[RespConnection] | None = None
        self._idle: list[RespConnection] = []
        self._all: set[RespConnection] = set()
        self._blocking = asyncio.Semaphore(max_blocking)

    # -- connections -------------------------------------------------------------

    async def _open(self) -> RespConnection:
        """Open and set up one connection, retrying failed attempts with backoff."""
        loop = asyncio.get_running_loop()
        delay = _RETRY_BASE
        for attempt in range(self._retries + 1):
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if self._path is not None:
                        _, connection = await loop.create_unix_connection(
                            lambda: RespConnection(loop, self._timeout), self._path
                        )
                    else:
                        _, connection = await loop.create_connection(
                            lambda: RespConnection(loop, self._timeout),
                            self._host,
                            self._port,
                        )
            except (OSError, TimeoutError) as exc:
                if attempt == self._retries:
                    where = self._path or f"{self._host}:{self._port}"
                    kind = (
                        RedisTimeoutError if isinstance(exc, TimeoutError) else RedisConnectionError
                    )
                    raise kind(f"Error connecting to {where}: {exc or 'timed out'}") from exc
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _RETRY_CAP)
                continue
            self._all.add(connection)
            try:
                for command in self._setup:
                    await connection.send(command)
            except BaseException:
                self._discard(connection)
                raise
            return connection
        raise AssertionError("unreachable")

    def _discard(self, connection: RespConnection) -> None:
        connection.close()
        self._all.discard(connection)

    async def _shared_connection(self) -> RespConnection:
        """The multiplexed connection, (re)connected once for all callers that need it."""
        connection = self._shared
        if connection is not None and connection.usable:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(self._connected)
        # A caller cancelled while it waits leaves the attempt to the others.
        attempt = self._connecting
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if attempt.cancelled() and current is not None and not current.cancelling():
                # aclose() stopped the attempt; this caller itself was not cancelled.
                raise RedisConnectionError("Connection closed by the client") from None
            raise

    def _connected(self, task: asyncio.Task[RespConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return  # the waiters get the error; retrieved here so it is never "unhandled"
        if self._shared is not None:
            self._discard(self._shared)
        self._shared = task.result()

    async def execute(self, *args: object) -> Any:
        """Run one non-blocking command on the multiplexed connection and return its reply."""
        command = _pack(args)
        connection = self._shared
        if connection is None or not connection.usable:
            connection = await self._shared_connection()
        return await connection.send(command)

    async def execute_blocking(self, timeout: float, *args: object) -> Any:
        """Run a blocking command (``timeout``: its wait in Redis) on a dedicated connection."""
        command = _pack(args)
        try:
            async with asyncio.timeout(self._pool_timeout):
                await self._blocking.acquire()
        except TimeoutError:
            raise RedisConnectionError(
                f"no connection for a blocking command within {self._pool_timeout} s"
            ) from None
        try:
            while self._idle:
                connection = self._idle.pop()
                if connection.usable:
                    break
                self._all.discard(connection)
            else:
                connection = await self._open()
            try:
                reply = await connection.send(command, allowance=timeout)
            except BaseException:
                # Cancelled or failed while Redis may still hold it blocked: never reuse.
                self._discard(connection)
                raise
            self._idle.append(connection)
            return reply
        finally:
            self._blocking.release()

    async def subscribe(self, channel: str, on_push: Callable[[Any], None]) -> RespConnection:
        """Open a connection subscribed to ``channel``; every reply on it goes to ``on_push``.

        RESP2 pushes are lists: ``[b"subscribe", channel, count]`` confirms,
        ``[b"message", channel, data]`` delivers, ``[b"pong", b""]`` answers
        a ``PING`` written with ``RespConnection.write``. ``on_push(None)``
        says the connection is lost. ``aclose()`` closes it too.
        """
        connection = await self._open()
        connection.on_push = on_push
        connection.write(_pack(("SUBSCRIBE", channel)))
        return connection

    async def aclose(self) -> None:
        """Close every connection; commands in flight fail. The client may be used again."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self._connecting = None
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()
        self._shared = None
        await asyncio.sleep(0)  # let the transports close

    # -- the commands the layer uses (redis-py's names and results) --------------

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: object) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, script: str, numkeys: int, *keys_and_args: object) -> Any:
        return await self.execute("EVAL", script, numkeys, *keys_and_args)

    async def blmove(
        self, first: str, second: str, timeout: float, src: str = "LEFT", dest: str = "RIGHT"
    ) -> Any:
        return await self.execute_blocking(timeout, "BLMOVE", first, second, src, dest, timeout)

    async def expire(self, key: str, seconds: int) -> bool:
        return bool(await self.execute("EXPIRE", key, seconds))

    async def pexpire(self, key: str, milliseconds: int) -> bool:
        return bool(await self.execute("PEXPIRE", key, milliseconds))

    async def set(self, key: str, value: bytes | str, *, ex: int | None = None) -> bool:
        args: tuple[object, ...] = (
            ("SET", key, value) if ex is None else ("SET", key, value, "EX", ex)
        )
        return bool(await self.execute(*args) == b"OK")

    async def sadd(self, key: str, *members: object) -> int:
        result: int = await self.execute("SADD", key, *members)
        return result

    async def srem(self, key: str, *members: object) -> int:
        result: int = await self.execute("SREM", key, *members)
        return result

    async def unlink(self, *keys: object) -> int:
        result: int = await self.execute("UNLINK", *keys)
        return result

    async def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as a dict of strings (only what the layer reads)."""
        text = (await self.execute("INFO", section)).decode(errors="replace")
        fields: dict[str, str] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value
        return fields

    async def scan_iter(self, *, match: str, count: int = 1000) -> AsyncIterator[bytes]:
        cursor: bytes | int = 0
        while True:
            cursor, keys = await self.execute("SCAN", cursor, "MATCH", match, "COUNT", count)
            for key in keys:
                yield key
            if cursor in (b"0", 0):
                return
