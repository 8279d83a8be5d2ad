"""Tests of the lean Redis client (``tidings.layers._resp``) against real redis-servers.

Every test talks to a real ``redis-server`` over real sockets: the run's
private one (``redis_url``), or one a test starts itself (a password, a Unix
socket, a paused server), always stopped by PID. A redis-py client
(``admin``) looks at the server from the side: which connections a client
holds (by its ``client_name``), what landed in which database. Every wait is
bounded, so a broken client fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hiredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.layers.test_redis import RedisServer, free_port
from tidings.layers._redis_hosts import COMMAND_RETRIES, DEFAULT_SOCKET_TIMEOUT, parse_hosts
from tidings.layers._resp import RespClient
from tidings.layers.redis import RedisChannelLayer

GUARD = 2.0
"""Seconds any single wait may take before the test fails instead of hanging."""


# -- helpers -------------------------------------------------------------------------


def fresh(kind: str) -> str:
    """A name no other test (or run) uses: for keys and client names."""
    return f"resp-test-{kind}-{secrets.token_hex(4)}"


def packed(*args: object) -> bytes:
    """A command as the client writes it (to compare with its connection set-up)."""
    result: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return result


class Server(RedisServer):
    """A redis-server a test started, on a TCP port or a Unix socket; stopped by PID."""

    def __init__(self, directory: Path, *extra: str, unix: Path | None = None) -> None:
        super().__init__(directory, free_port(), *extra)
        self.unix = unix
        if unix is not None:
            self.port = 0

    def command(self) -> list[str]:
        command = super().command()
        if self.unix is not None:
            command += ["--unixsocket", str(self.unix), "--unixsocketperm", "700"]
        return command

    def answers(self) -> bool:
        if self.unix is None:
            return super().answers()
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.unix))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    stop = RedisServer.kill


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Start redis-servers of this test's own (killed by PID afterwards).

    Their directories are short paths under /tmp, so a Unix socket in one fits
    the 107-byte limit of ``sun_path``.
    """
    started: list[Server] = []
    directories: list[str] = []

    def start(*extra: str, unix: bool = False) -> Server:
        directory = Path(tempfile.mkdtemp(prefix="resp-", dir="/tmp"))
        directories.append(str(directory))
        server = Server(directory, *extra, unix=directory / "redis.sock" if unix else None)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def address(redis_url: str) -> dict[str, Any]:
    """``host``, ``port`` and ``db`` of the run's redis-server, as ``RespClient`` takes them."""
    parts = urlsplit(redis_url)
    db = int(parts.path.strip("/") or 0)
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 6379, "db": db}


@pytest.fixture
async def make_client(address: dict[str, Any]) -> AsyncIterator[Callable[..., RespClient]]:
    """Build ``RespClient``s on the run's redis-server; all are closed afterwards."""
    made: list[RespClient] = []

    def make(**options: Any) -> RespClient:
        client = RespClient(**{**address, **options})
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    """A redis-py client of the run's redis-server, to look from the side."""
    client = Redis.from_url(redis_url)
    await client.ping()
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(admin: Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = fresh("key")
    yield value
    keys = [key async for key in admin.scan_iter(match=f"{value}*", count=1000)]
    if keys:
        await admin.unlink(*keys)


async def connections(admin: Redis, name: str) -> list[dict[str, Any]]:
    """The server's client entries of the connections named ``name``."""
    return [entry for entry in await admin.client_list() if entry.get("name") == name]


async def wait_for_connections(
    admin: Redis, name: str, count: int, *, command: str | None = None
) -> list[dict[str, Any]]:
    """Wait until exactly ``count`` connections are named ``name`` (running ``command``)."""
    deadline = time.monotonic() + GUARD
    while True:
        found = [
            entry
            for entry in await connections(admin, name)
            if command is None or entry.get("cmd") == command
        ]
        if len(found) == count:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: {len(found)} connections, not {count}: {found}")
        await asyncio.sleep(0.01)


async def settled(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    """Wait (bounded) until ``task`` is done, whatever its outcome."""
    await asyncio.wait({task}, timeout=GUARD)
    assert task.done(), "the command neither answered nor failed in time"
    return task


# -- 1. pipelining -------------------------------------------------------------------


async def test_concurrent_commands_pipeline_on_one_connection(
    make_client: Callable[..., RespClient], admin: Redis, prefix: str
) -> None:
    """A thousand concurrent callers each get their own reply, over one new connection.

    Payloads of varied sizes make replies span and share socket reads, so a
    reply matched to the wrong caller shows as a wrong echo.
    """
    name = fresh("pipeline")
    client = make_client(client_name=name)
    before = int((await admin.info("stats"))["total_connections_received"])

    async def echo(n: int) -> bytes:
        reply: bytes = await client.execute("ECHO", f"caller-{n}-" + "x" * (n % 97))
        return reply

    replies = await asyncio.wait_for(asyncio.gather(*(echo(n) for n in range(1000))), GUARD)
    assert replies == [f"caller-{n}-".encode() + b"x" * (n % 97) for n in range(1000)]

    counts = await asyncio.wait_for(
        asyncio.gather(*(client.execute("INCR", f"{prefix}:counter") for _ in range(1000))),
        GUARD,
    )
    assert sorted(counts) == list(range(1, 1001))
    assert await admin.get(f"{prefix}:counter") == b"1000"

    after = int((await admin.info("stats"))["total_connections_received"])
    assert after - before == 1
    assert len(await connections(admin, name)) == 1


# -- 2. error replies ----------------------------------------------------------------


async def test_error_replies_raise_redis_py_exceptions_and_keep_the_connection(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    """NOSCRIPT and WRONGTYPE raise redis-py's classes; the same connection goes on."""
    client = make_client()
    connection_id = await client.execute("CLIENT", "ID")

    with pytest.raises(NoScriptError):
        await asyncio.wait_for(client.evalsha("0" * 40, 0), GUARD)

    await client.set(f"{prefix}:text", b"not a list")
    with pytest.raises(ResponseError) as caught:
        await asyncio.wait_for(client.execute("LPUSH", f"{prefix}:text", "x"), GUARD)
    assert type(caught.value) is ResponseError
    assert str(caught.value).startswith("WRONGTYPE")

    assert await client.execute("ECHO", "after") == b"after"
    assert await client.execute("CLIENT", "ID") == connection_id


async def test_an_error_in_a_burst_fails_only_its_own_caller(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    """An error reply among pipelined commands goes to its caller; the neighbours get theirs."""
    client = make_client()
    await client.set(f"{prefix}:text", b"v")
    results = await asyncio.wait_for(
        asyncio.gather(
            client.execute("ECHO", "before"),
            client.execute("LPUSH", f"{prefix}:text", "x"),
            client.execute("ECHO", "after"),
            return_exceptions=True,
        ),
        GUARD,
    )
    assert results[0] == b"before"
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"after"


# -- 3. AUTH and SELECT --------------------------------------------------------------


async def test_password_and_database(start_server: Callable[..., Server]) -> None:
    """The right password connects and ``db`` selects; a wrong or missing one is refused."""
    server = start_server("--requirepass", "s3cret")
    key = fresh("db3")
    good = RespClient(host="127.0.0.1", port=server.port, password="s3cret", db=3)
    wrong = RespClient(host="127.0.0.1", port=server.port, password="nope", retries=0)
    anonymous = RespClient(host="127.0.0.1", port=server.port, retries=0)
    db3 = Redis(port=server.port, password="s3cret", db=3)
    db0 = Redis(port=server.port, password="s3cret", db=0)
    try:
        assert await asyncio.wait_for(good.set(key, b"in db 3"), GUARD)
        assert await db3.get(key) == b"in db 3"
        assert await db0.exists(key) == 0

        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(wrong.execute("PING"), GUARD)
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(anonymous.execute("PING"), GUARD)
    finally:
        for client in (good, wrong, anonymous):
            await client.aclose()
        for admin in (db3, db0):
            await admin.aclose()


async def test_acl_user(start_server: Callable[..., Server]) -> None:
    """``username`` and ``password`` log in as an ACL user; a wrong password is refused."""
    server = start_server()
    admin = Redis(port=server.port)
    user = RespClient(host="127.0.0.1", port=server.port, username="alice", password="alice-pw")
    wrong = RespClient(
        host="127.0.0.1", port=server.port, username="alice", password="nope", retries=0
    )
    try:
        await admin.acl_setuser(
            "alice", enabled=True, passwords=["+alice-pw"], keys=["*"], commands=["+@all"]
        )
        assert await asyncio.wait_for(user.execute("ACL", "WHOAMI"), GUARD) == b"alice"
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(wrong.execute("PING"), GUARD)
    finally:
        for client in (user, wrong):
            await client.aclose()
        await admin.aclose()


# -- 4. Unix socket ------------------------------------------------------------------


async def test_unix_socket_client_and_layer(start_server: Callable[..., Server]) -> None:
    """``path=`` talks over a Unix socket, and a layer on ``unix://`` delivers between nodes."""
    server = start_server(unix=True)
    assert server.unix is not None
    path = str(server.unix)
    client = RespClient(path=path)
    admin = Redis(unix_socket_path=path)
    prefix = fresh("unix")
    sender = RedisChannelLayer([f"unix://{path}"], prefix=prefix)
    receiver = RedisChannelLayer([f"unix://{path}"], prefix=prefix)
    try:
        assert await asyncio.wait_for(client.set(f"{prefix}:k", b"over unix"), GUARD)
        assert await admin.get(f"{prefix}:k") == b"over unix"

        channel = await receiver.new_channel()
        await sender.send(channel, {"type": "hello", "n": 1})
        message = await asyncio.wait_for(receiver.receive(channel), GUARD)
        assert message == {"type": "hello", "n": 1}
    finally:
        for layer in (sender, receiver):
            await layer.flush()
            await layer.close()
        await client.aclose()
        await admin.aclose()


# -- 5. a connection dropped with a command in flight --------------------------------


@pytest.mark.parametrize("connection", ["shared", "blocking"])
async def test_dropped_connection_fails_the_command_once(
    connection: str, make_client: Callable[..., RespClient], admin: Redis, prefix: str
) -> None:
    """A command whose connection dies fails with ConnectionError and is not sent again.

    The proof that it was not sent again: no connection comes back by itself,
    and an element pushed afterwards stays in the list the command waited on.
    The next command reconnects and works.
    """
    name = fresh("dropped")
    client = make_client(client_name=name)
    key = f"{prefix}:list"
    if connection == "shared":
        task = asyncio.create_task(client.execute("BLPOP", key, 5))
    else:
        task = asyncio.create_task(client.execute_blocking(5, "BLPOP", key, 5))
    (entry,) = await wait_for_connections(admin, name, 1, command="blpop")
    started = time.monotonic()
    await admin.client_kill_filter(_id=entry["id"])

    await settled(task)
    assert time.monotonic() - started < 1.0
    with pytest.raises(RedisConnectionError):
        task.result()

    await admin.rpush(key, "kept")
    await asyncio.sleep(0.1)  # a resent BLPOP would take it now
    assert await admin.lrange(key, 0, -1) == [b"kept"]
    assert await connections(admin, name) == []

    if connection == "shared":
        assert await asyncio.wait_for(client.execute("LPOP", key), GUARD) == b"kept"
    else:
        reply = await asyncio.wait_for(client.execute_blocking(1, "BLPOP", key, 1), GUARD)
        assert reply == [key.encode(), b"kept"]
    assert len(await connections(admin, name)) == 1


# -- 6. reply timeout ----------------------------------------------------------------


async def test_reply_timeout_drops_the_connection(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    """A reply later than ``socket_timeout`` raises TimeoutError then; a new connection follows."""
    client = make_client(socket_timeout=0.2)
    first_id = await asyncio.wait_for(client.execute("CLIENT", "ID"), GUARD)

    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        await asyncio.wait_for(client.execute("BLPOP", f"{prefix}:missing", 2), GUARD)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 0.6

    assert await asyncio.wait_for(client.execute("ECHO", "next"), GUARD) == b"next"
    assert await client.execute("CLIENT", "ID") != first_id


async def test_blocking_commands_may_wait_beyond_socket_timeout(
    make_client: Callable[..., RespClient], prefix: str
) -> None:
    """``execute_blocking``'s wait is allowed on top of ``socket_timeout``."""
    client = make_client(socket_timeout=0.2)
    started = time.monotonic()
    reply = await asyncio.wait_for(
        client.execute_blocking(0.6, "BLPOP", f"{prefix}:missing", 0.6), GUARD
    )
    assert reply is None
    assert time.monotonic() - started >= 0.55


async def test_reply_timeout_after_an_early_blocking_reply(
    make_client: Callable[..., RespClient], admin: Redis, prefix: str
) -> None:
    """A blocking command answered early does not stretch the next command's timeout.

    A 2 s wait with a 2 s allowance, ended at once by data, arms the
    connection's timer for its own deadline. The next command on that
    connection (``max_blocking=1`` makes it the same one), held by Redis for
    1 s with no allowance, must still time out after ``socket_timeout``
    (0.2 s), as it does on a fresh connection (the test above).
    """
    client = make_client(socket_timeout=0.2, max_blocking=1)
    key = f"{prefix}:list"
    wait = asyncio.create_task(client.execute_blocking(2, "BLPOP", key, 2))
    await asyncio.sleep(0.05)
    await admin.rpush(key, "v")
    assert (await settled(wait)).result() == [key.encode(), b"v"]

    started = time.monotonic()
    task = asyncio.create_task(client.execute_blocking(0, "BLPOP", f"{prefix}:missing", 1))
    await settled(task)
    elapsed = time.monotonic() - started
    assert isinstance(task.exception(), RedisTimeoutError), (
        f"no timeout: {task.result()!r} after {elapsed:.2f} s"
    )
    assert elapsed < 0.6


# -- 7. nothing listens --------------------------------------------------------------


async def test_no_server_retries_with_backoff_then_fails() -> None:
    """With nothing listening, ``retries`` attempts back off before ConnectionError."""
    port = free_port()
    retrying = RespClient(host="127.0.0.1", port=port, retries=2)
    at_once = RespClient(host="127.0.0.1", port=port, retries=0, max_blocking=1)
    try:
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="Error connecting"):
            await asyncio.wait_for(retrying.execute("PING"), GUARD)
        assert 0.05 < time.monotonic() - started < 2.0

        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="Error connecting"):
            await asyncio.wait_for(at_once.execute("PING"), GUARD)
        assert time.monotonic() - started < 0.05

        # A blocking command fails the same way, and gives its pool slot back.
        for _ in range(2):
            with pytest.raises(RedisConnectionError, match="Error connecting"):
                await asyncio.wait_for(at_once.execute_blocking(1, "BLPOP", "k", 1), GUARD)
    finally:
        await retrying.aclose()
        await at_once.aclose()


# -- 8. cancellation -----------------------------------------------------------------


async def test_cancelled_command_keeps_the_reply_order(
    make_client: Callable[..., RespClient], admin: Redis, prefix: str
) -> None:
    """A caller cancelled in flight skips its reply; the commands after it get their own."""
    client = make_client()
    key = f"{prefix}:list"
    cancelled = asyncio.create_task(client.execute("BLPOP", key, 1))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    later = [asyncio.create_task(client.execute("ECHO", f"later-{n}")) for n in range(5)]
    await admin.rpush(key, "v")  # ends the BLPOP at once: its reply comes first

    started = time.monotonic()
    replies = await asyncio.wait_for(asyncio.gather(*later), GUARD)
    assert replies == [f"later-{n}".encode() for n in range(5)]
    assert time.monotonic() - started < 0.5
    assert cancelled.cancelled()
    assert await admin.llen(key) == 0  # Redis ran the BLPOP; only its caller left
    assert await client.execute("ECHO", "still") == b"still"


async def test_cancelled_blocking_command_closes_its_connection(
    make_client: Callable[..., RespClient], admin: Redis, prefix: str
) -> None:
    """A cancelled ``execute_blocking`` closes its connection and gives back its pool slot."""
    name = fresh("cancel-blocking")
    client = make_client(client_name=name, max_blocking=1, pool_timeout=0.3)
    key = f"{prefix}:list"
    task = asyncio.create_task(client.execute_blocking(2, "BLPOP", key, 2))
    await wait_for_connections(admin, name, 1, command="blpop")
    task.cancel()
    await wait_for_connections(admin, name, 0)

    await admin.rpush(key, "v")
    reply = await asyncio.wait_for(client.execute_blocking(1, "BLPOP", key, 1), GUARD)
    assert reply == [key.encode(), b"v"]


# -- 9. the blocking pool ------------------------------------------------------------


async def test_blocking_pool_limit(make_client: Callable[..., RespClient], prefix: str) -> None:
    """With ``max_blocking`` waits running, one more fails after ``pool_timeout``."""
    client = make_client(max_blocking=2, pool_timeout=0.2)
    key = f"{prefix}:missing"
    running = [
        asyncio.create_task(client.execute_blocking(0.6, "BLPOP", key, 0.6)) for _ in range(2)
    ]
    await asyncio.sleep(0)  # both take their slot
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match="no connection for a blocking command"):
        await asyncio.wait_for(client.execute_blocking(0.6, "BLPOP", key, 0.6), GUARD)
    assert 0.15 <= time.monotonic() - started < 0.5
    assert await asyncio.wait_for(asyncio.gather(*running), GUARD) == [None, None]


# -- 11. aclose ----------------------------------------------------------------------


async def test_aclose_closes_every_connection_and_the_client_reopens(
    make_client: Callable[..., RespClient], admin: Redis, prefix: str
) -> None:
    """``aclose()`` closes the shared and blocking connections; commands in flight fail."""
    name = fresh("aclose")
    client = make_client(client_name=name)
    key = f"{prefix}:missing"
    await asyncio.wait_for(client.execute("PING"), GUARD)
    in_flight = [
        asyncio.create_task(client.execute("BLPOP", key, 1.5)),
        asyncio.create_task(client.execute_blocking(1.5, "BLPOP", key, 1.5)),
        asyncio.create_task(client.execute_blocking(1.5, "BLPOP", key, 1.5)),
    ]
    await wait_for_connections(admin, name, 3, command="blpop")

    await client.aclose()
    for task in in_flight:
        with pytest.raises(RedisConnectionError):
            (await settled(task)).result()
    await wait_for_connections(admin, name, 0)

    assert await asyncio.wait_for(client.execute("ECHO", "again"), GUARD) == b"again"
    await admin.rpush(key, "v")
    reply = await asyncio.wait_for(client.execute_blocking(1, "BLPOP", key, 1), GUARD)
    assert reply == [key.encode(), b"v"]
    await wait_for_connections(admin, name, 2)


async def test_aclose_while_connecting_fails_the_waiters_with_connection_error(
    start_server: Callable[..., Server],
) -> None:
    """A command waiting for its connection when ``aclose()`` runs fails with ConnectionError.

    Its caller was not cancelled, so it must not see ``CancelledError`` (code
    that stops on cancellation would stop). The server is paused so the
    connection's set-up (``CLIENT SETNAME``) is still waiting for its reply.
    """
    server = start_server()
    admin = Redis(port=server.port)
    client = RespClient(host="127.0.0.1", port=server.port, client_name=fresh("closing"))
    try:
        await admin.client_pause(500, all=True)
        task = asyncio.create_task(client.execute("PING"))
        await asyncio.sleep(0.1)
        await client.aclose()
        await settled(task)
        assert not task.cancelled(), "aclose() cancelled a caller that waited to connect"
        assert isinstance(task.exception(), RedisConnectionError)
    finally:
        await client.aclose()
        await admin.aclose()


# -- subscribe mode ------------------------------------------------------------------


async def test_subscribe_pushes_every_reply_and_says_when_lost(
    make_client: Callable[..., RespClient], admin: Redis
) -> None:
    """A subscribed connection hands confirmations, messages and pongs to ``on_push``.

    Losing the connection pushes ``None``; ``aclose()`` closes it with the rest.
    """
    name = fresh("subscribe")
    client = make_client(client_name=name)
    channel = fresh("channel")
    pushes: asyncio.Queue[Any] = asyncio.Queue()
    connection = await asyncio.wait_for(client.subscribe(channel, pushes.put_nowait), GUARD)

    async def next_push() -> Any:
        return await asyncio.wait_for(pushes.get(), GUARD)

    assert await next_push() == [b"subscribe", channel.encode(), 1]
    assert await admin.publish(channel, b"hello") == 1
    assert await next_push() == [b"message", channel.encode(), b"hello"]
    connection.write(packed("PING"))
    assert await next_push() == [b"pong", b""]

    (entry,) = await wait_for_connections(admin, name, 1)
    await admin.client_kill_filter(_id=entry["id"])
    assert await next_push() is None
    assert not connection.usable

    await asyncio.wait_for(client.subscribe(channel, pushes.put_nowait), GUARD)
    assert await next_push() == [b"subscribe", channel.encode(), 1]
    await client.aclose()
    assert await next_push() is None
    await wait_for_connections(admin, name, 0)


# -- 12. which client HostSpec.connect() builds ---------------------------------------

URL = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    "host",
    [
        URL,
        ("127.0.0.1", 1),
        {"address": URL, "password": "x", "db": 2, "socket_timeout": 3},
        "unix:///tmp/x.sock",
    ],
    ids=["url", "pair", "dict", "unix"],
)
async def test_connect_builds_lean_clients_for_plain_hosts(host: object) -> None:
    """Plain hosts get a ``RespClient`` pair; the reader neither retries nor times out."""
    clients = parse_hosts([host])[0].connect()
    try:
        main, reader = clients.main, clients.reader
        assert isinstance(main, RespClient)
        assert isinstance(reader, RespClient)
        assert main is not reader
        assert (main._retries, reader._retries) == (COMMAND_RETRIES, 0)
        assert reader._timeout is None
        if isinstance(host, dict):
            assert main._timeout == 3.0
            for client in (main, reader):
                assert packed("AUTH", "x") in client._setup
                assert packed("SELECT", 2) in client._setup
        else:
            assert main._timeout == DEFAULT_SOCKET_TIMEOUT
        if host == "unix:///tmp/x.sock":
            assert (main._path, reader._path) == ("/tmp/x.sock", "/tmp/x.sock")
        else:
            assert (main._host, main._port, main._path) == ("127.0.0.1", 1, None)
    finally:
        await clients.aclose()


async def test_connect_carries_retry_and_pool_options_over() -> None:
    """``retry``, ``socket_connect_timeout``, ``max_connections`` and ``pool_timeout`` apply."""
    host = {
        "address": URL,
        "retry": Retry(NoBackoff(), 5),
        "socket_connect_timeout": 0.5,
        "client_name": "named",
        "max_connections": 7,
        "pool_timeout": 1.5,
    }
    clients = parse_hosts([host])[0].connect()
    try:
        main, reader = clients.main, clients.reader
        assert isinstance(main, RespClient)
        assert isinstance(reader, RespClient)
        assert (main._retries, reader._retries) == (5, 0)
        assert (main._connect_timeout, reader._connect_timeout) == (0.5, 0.5)
        assert main._pool_timeout == 1.5
        assert main._blocking._value == 7
        assert packed("CLIENT", "SETNAME", "named") in main._setup
    finally:
        await clients.aclose()


@pytest.mark.parametrize(
    "host",
    [
        "rediss://127.0.0.1:1/0",
        {"address": URL, "health_check_interval": 30},
        "redis://127.0.0.1:1/0?health_check_interval=30",
        {"address": URL, "decode_responses": True},
        {"sentinels": [("127.0.0.1", 1)], "master_name": "primary"},
    ],
    ids=["tls", "dict-option", "url-option", "decode", "sentinel"],
)
async def test_connect_builds_redis_py_clients_for_the_rest(host: object) -> None:
    """TLS, Sentinel and options the lean client lacks go through redis-py."""
    clients = parse_hosts([host])[0].connect()
    try:
        assert isinstance(clients.main, Redis)
        assert isinstance(clients.reader, Redis)
    finally:
        await clients.aclose()


# -- 13. info and scan_iter ----------------------------------------------------------


async def test_info_server(make_client: Callable[..., RespClient], admin: Redis) -> None:
    """``info("server")`` parses INFO into a dict of strings, run id included."""
    info = await asyncio.wait_for(make_client().info("server"), GUARD)
    assert info["run_id"] == (await admin.info("server"))["run_id"]
    assert info["tcp_port"] == str((await admin.info("server"))["tcp_port"])


async def test_scan_iter_walks_every_page(
    make_client: Callable[..., RespClient], admin: Redis, prefix: str
) -> None:
    """``scan_iter`` follows the cursor over many pages and yields every matching key."""
    expected = {f"{prefix}:{n}".encode() for n in range(2500)}
    await admin.mset(dict.fromkeys(expected, b"1"))
    await admin.set(f"other-{prefix}", b"1")  # outside the pattern
    try:
        client = make_client()

        async def collect() -> list[bytes]:
            return [key async for key in client.scan_iter(match=f"{prefix}:*", count=100)]

        found = await asyncio.wait_for(collect(), GUARD)
        assert set(found) == expected
    finally:
        await admin.unlink(f"other-{prefix}")
