"""Sessions across processes: ``tidings serve --workers 2`` and two servers sharing Redis.

Real subprocesses, the real Redis layer on the run's private redis-server, fresh
TCP connections per request so that the kernel spreads them over the workers.
Every HTTP response names the process that answered it (``x-pid``, added by
``tests/transports/project/asgi.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.server._helpers import free_port

from ._client import (
    Endpoint,
    last_seq,
    messages,
    msg,
    poll,
    send_items,
    session_ws,
    sse,
    texts,
    ws_next,
)

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.transports.project.asgi:application"
ROOM = "/ws/echo/lobby/"


class Server:
    """One ``tidings serve`` process (with its workers)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", APP, *args],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output.count(text) >= count:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged {count} times; output:\n{self.output}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()


@contextlib.contextmanager
def servers(
    redis_url: str, tmp: Path, *, workers: int, count: int, **env_extra: str
) -> Iterator[list[Endpoint]]:
    """Start ``count`` servers of ``workers`` workers each, sharing one Redis key prefix."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="tests.transports.project.settings",
        TIDINGS_TEST_REDIS_URL=redis_url,
        TIDINGS_TEST_LAYER_PREFIX=f"transports-{secrets.token_hex(4)}",
        TIDINGS_TEST_DB=str(tmp / "db.sqlite3"),
        **env_extra,
    )
    started: list[Server] = []
    endpoints = []
    try:
        for index in range(count):
            port = free_port()
            args = ["--port", str(port), "--workers", str(workers), "--graceful-timeout", "2"]
            server = Server(args, env, tmp / f"server-{index}.log")
            started.append(server)
            endpoints.append(Endpoint(port))
        for server in started:
            server.wait_for("Tidings serving on", count=workers)
        yield endpoints
    finally:
        for server in started:
            server.stop()
        for server in started:
            assert "Traceback" not in server.output, server.output


@contextlib.asynccontextmanager
async def fresh_connections() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that opens a new TCP connection for every request."""
    limits = httpx.Limits(max_keepalive_connections=0)
    headers = {"X-Tidings": "1"}  # as tidings.js
    async with httpx.AsyncClient(timeout=10, limits=limits, headers=headers) as client:
        yield client


async def events_of(client: httpx.AsyncClient, at: Endpoint, sid: str, cseq: int, last: int) -> Any:
    """Ask the consumer of ``sid`` for its lifecycle record (through ``at``)."""
    send = at.url(ROOM, tidings="send", sid=sid)
    assert (await send_items(client, send, [msg(cseq, "events")], at.origin)).status_code == 200
    for _ in range(10):
        got = await poll(client, at.url(ROOM, tidings="poll", sid=sid, last=last))
        assert got[0]["resumed"] is True
        for text in texts(got):
            if text.startswith("{"):
                return json.loads(text)
    raise AssertionError("no answer to 'events'")


async def test_any_worker_serves_any_session(redis_url: str, tmp_path: Path) -> None:
    with servers(redis_url, tmp_path, workers=2, count=1, TIDINGS_TEST_POLL_HOLD="2") as (at,):
        async with fresh_connections() as client:
            sse_pids: set[str] = set()
            post_pids: set[str] = set()
            poll_pids: set[str] = set()
            url = at.url(ROOM, tidings="sse")
            async with sse(client, url) as stream:
                sse_pids.add(stream.response.headers["x-pid"])
                sid = (await stream.next())["sid"]
                got: list[dict[str, Any]] = []
                cseq = 0
                # POSTs land on either worker; the one consumer answers on the stream.
                while len(post_pids) < 2 or cseq < 6:
                    assert cseq < 60, "the kernel never gave a POST to the other worker"
                    cseq += 1
                    send = at.url(ROOM, tidings="send", sid=sid)
                    response = await send_items(client, send, [msg(cseq, f"m{cseq}")], at.origin)
                    assert response.json() == {"cack": cseq}
                    post_pids.add(response.headers["x-pid"])
                    got.append(await stream.next())
                assert texts(got) == [f"m{i}" for i in range(1, cseq + 1)]
            # The stream was cut; polls on either worker resume it.
            first = cseq
            while len(poll_pids) < 2 or cseq < first + 6:
                assert cseq < first + 60, "the kernel never gave a poll to the other worker"
                cseq += 1
                send = at.url(ROOM, tidings="send", sid=sid)
                await send_items(client, send, [msg(cseq, f"m{cseq}")], at.origin)
                while last_seq(got) < cseq:
                    response = await client.get(
                        at.url(ROOM, tidings="poll", sid=sid, last=last_seq(got))
                    )
                    poll_pids.add(response.headers["x-pid"])
                    batch = response.json()
                    assert batch[0]["resumed"] is True and batch[0]["sid"] == sid
                    got += batch[1:]
            assert texts(got) == [f"m{i}" for i in range(1, cseq + 1)]
            assert [m["seq"] for m in messages(got)] == list(range(1, cseq + 1))
            record = await events_of(client, at, sid, cseq + 1, last_seq(got))
            assert record["events"] == [["connect", "sse"]]
            assert str(record["pid"]) in post_pids | poll_pids


async def test_two_servers_share_sessions_through_redis(redis_url: str, tmp_path: Path) -> None:
    with servers(redis_url, tmp_path, workers=1, count=2, TIDINGS_TEST_POLL_HOLD="2") as (a, b):
        async with fresh_connections() as client:
            got: list[dict[str, Any]] = []
            # Opened over WebSocket on A, cut while the consumer sends.
            async with session_ws(a.ws_url(ROOM, tidings="ws"), a.origin, jar=client.cookies) as ws:
                sid = (await ws_next(ws))["sid"]
                await ws.send(json.dumps(msg(1, "count 300 0.01")))
                got += [await ws_next(ws) for _ in range(20)]
                ws.transport.abort()
            # Resumed over WebSocket on B: A's consumer goes on, B relays.
            url = b.ws_url(ROOM, tidings="ws", sid=sid, last=last_seq(got))
            async with session_ws(url, b.origin, jar=client.cookies) as ws:
                opened = await ws_next(ws)
                assert opened["resumed"] is True and opened["cack"] == 1
                got += [await ws_next(ws) for _ in range(30)]
                await ws.send(json.dumps({"ack": last_seq(got)}))
                await ws.send(json.dumps(msg(2, "via B")))  # answered after the count
                got += [await ws_next(ws) for _ in range(30)]
                ws.transport.abort()
            # Then SSE on B, polls alternating between A and B.
            url = b.url(ROOM, tidings="sse", sid=sid, last=last_seq(got))
            async with sse(client, url) as stream:
                opened = await stream.next()
                assert opened["resumed"] is True and opened["cack"] in (1, 2)
                if opened["cack"] == 1:
                    # The abort beat message 2 on its way from B to A: resend it, as a
                    # client does with what the open message does not acknowledge.
                    send = b.url(ROOM, tidings="send", sid=sid)
                    response = await send_items(client, send, [msg(2, "via B")], b.origin)
                    assert response.json() == {"cack": 2}
                got += [await stream.next() for _ in range(50)]
            turn = 0
            while len(texts(got)) < 301:
                at = (a, b)[turn % 2]
                turn += 1
                batch = await poll(
                    client, at.url(ROOM, tidings="poll", sid=sid, last=last_seq(got))
                )
                assert batch[0]["resumed"] is True
                got += batch[1:]
            numbers = [t for t in texts(got) if t != "via B"]
            assert numbers == [str(i) for i in range(300)]
            assert [m["seq"] for m in messages(got)] == list(range(1, 302))
            # Client messages through either server, in order, exactly once.
            for cseq in range(3, 9):
                at = (a, b)[cseq % 2]
                send = at.url(ROOM, tidings="send", sid=sid)
                response = await send_items(
                    client, send, [msg(cseq - 1, "dup"), msg(cseq, f"c{cseq}")], at.origin
                )
                assert response.json() == {"cack": cseq}
            while len(texts(got)) < 307:
                batch = await poll(client, b.url(ROOM, tidings="poll", sid=sid, last=last_seq(got)))
                got += batch[1:]
            assert texts(got)[-6:] == [f"c{i}" for i in range(3, 9)]
            record = await events_of(client, b, sid, 9, last_seq(got))
            assert record["events"] == [["connect", "websocket"]]
            # A forged token with A's port, asked through B: a new session, at once.
            token, _, port = sid.partition(".")
            forged = ("x" if token[0] != "x" else "y") + token[1:] + "." + port
            started = time.monotonic()
            fresh = await poll(client, b.url(ROOM, tidings="poll", sid=forged))
            assert fresh[0]["resumed"] is False and time.monotonic() - started < 1.5
            send = b.url(ROOM, tidings="send", sid=forged)
            assert (await send_items(client, send, [], b.origin)).status_code == 404
            # Closing through B ends the session on A.
            close = b.url(ROOM, tidings="close", sid=sid)
            assert (await client.post(close, headers={"Origin": b.origin})).status_code == 204
            send = a.url(ROOM, tidings="send", sid=sid)
            assert (await send_items(client, send, [], a.origin)).status_code == 404
