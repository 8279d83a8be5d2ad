"""The load client of ``scale.py``: one process holding thousands of idle WebSockets.

Run by ``scale.py`` as ``python _scale_client.py '<json settings>'``; it talks to its
parent over stdin/stdout, one JSON object (or one word) a line:

1. it opens ``count`` connections to ``port``, at most ``rate`` new ones a second and
   ``inflight`` handshakes at a time, each socket bound to a source address of its own
   range of 127.0.0.0/8 (``IP_BIND_ADDRESS_NO_PORT``, so the port is picked at connect
   time per destination and 28,000 ephemeral ports per source address are plenty);
   then it prints ``{"connected": ..., "failed": ..., "seconds": ...}``;
2. on the line ``ping`` it sends one masked text frame on every connection (at most
   ``inflight`` outstanding) and waits for each answer, then prints the round trips'
   percentiles and how many answered;
3. on ``listen`` (``scale_broadcast.py``) every connection stops answering and starts
   recording the text messages it gets: per distinct payload, how many arrived and when
   the last did (``time.monotonic``, the clock every process of the box shares); it
   prints ``{"listening": <connections>}``. Then ``wait <seq> <seconds>`` waits until
   every connection has the payload that starts with ``<seq> `` (or the time is up)
   and prints ``{"seq": ..., "got": ..., "last": ...}``;
4. on ``close`` or end of input it exits (the kernel closes the sockets).

With ``"ready_text": true`` a connection counts as open only once its first text
message arrives (the broadcast app sends ``ready`` once the consumer joined its group).

The client is deliberately small: one ``asyncio.Protocol`` with ``__slots__`` per
connection, the handshake written as one prebuilt byte string, and only the frames this
benchmark needs parsed (server frames are never masked; pings from the server are
answered with a pong so its keepalive does not close us). Nothing here imports Tidings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
from typing import Any

__all__ = ["main"]

# socket.IP_BIND_ADDRESS_NO_PORT is missing from older Pythons; Linux's value.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_MASK = b"\x12\x34\x56\x78"


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (always masked, RFC 6455 §5.3) for a payload under 126 bytes."""
    masked = bytes(b ^ _MASK[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + _MASK + masked


class _Conn(asyncio.Protocol):
    """One WebSocket: the handshake, then answers to our ping and the server's pings."""

    __slots__ = ("buf", "sent_at", "state", "transport", "waiter")

    def __init__(self, waiter: asyncio.Future[bool]) -> None:
        self.waiter: asyncio.Future[bool] | None = waiter
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = 0  # 0: handshake, 1: open, 2: closed
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(REQUEST)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = 2
        self._settle(False)

    def _settle(self, ok: bool) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.state == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101 "):
                self.buf = b""
                self._settle(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.state = 1
            buf = buf[end + 4 :]
            if not READY_TEXT:
                self._settle(True)
        while len(buf) >= 2:
            size, start = buf[1] & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + size:
                break
            opcode, payload = buf[0] & 0x0F, buf[start : start + size]
            buf = buf[start + size :]
            if opcode == 0x9 and self.transport is not None:  # ping: answer (§5.5.2)
                self.transport.write(_masked(0xA, payload))
            elif opcode == 0x1:
                self._text(payload)
            elif opcode == 0x8:
                self._settle(False)
        self.buf = buf

    def _text(self, payload: bytes) -> None:
        self._settle(True)


class _Listener(_Conn):
    """A connection after ``listen``: records every text message, answers nothing.

    Kept as lean as possible, so the clients are not what limits a broadcast: one
    small unmasked text frame per read (the common case) is recorded without parsing.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if not self.buf and len(data) > 2 and data[0] == 0x81 and len(data) == data[1] + 2:
            payload = data[2:]
            COUNTS[payload] = COUNTS.get(payload, 0) + 1
            LAST[payload] = _monotonic()
            return
        _Conn.data_received(self, data)

    def _text(self, payload: bytes) -> None:
        COUNTS[payload] = COUNTS.get(payload, 0) + 1
        LAST[payload] = _monotonic()


_monotonic = time.monotonic
#: Per distinct text payload received while listening: how many, and when the last came.
COUNTS: dict[bytes, int] = {}
LAST: dict[bytes, float] = {}
READY_TEXT = False
REQUEST = b""


def _request(settings: dict[str, Any]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {settings['path']} HTTP/1.1",
        f"Host: 127.0.0.1:{settings['port']}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Origin: http://127.0.0.1",
    ]
    if settings.get("cookie"):
        lines.append(f"Cookie: {settings['cookie']}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _sources(first: int, count: int) -> list[str]:
    """``count`` source addresses 127.a.b.c, starting at the ``first``-th (never .0/.255)."""
    out: list[str] = []
    n = first
    while len(out) < count:
        a, rest = divmod(n, 254 * 254)
        b, c = divmod(rest, 254)
        out.append(f"127.{a + 1}.{b + 1}.{c + 1}")
        n += 1
    return out


async def _open_one(
    loop: asyncio.AbstractEventLoop, source: str, port: int, timeout: float
) -> _Conn | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
        waiter: asyncio.Future[bool] = loop.create_future()
        _, conn = await loop.create_connection(lambda: _Conn(waiter), sock=sock)
        if await asyncio.wait_for(waiter, timeout):
            return conn
        if conn.transport is not None:
            conn.transport.abort()
    except (TimeoutError, OSError):
        sock.close()
    return None


async def _connect_all(settings: dict[str, Any], conns: list[_Conn]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    count, rate, port = settings["count"], settings["rate"], settings["port"]
    sources = _sources(settings["source_offset"], settings["sources"])
    limit = asyncio.Semaphore(settings["inflight"])
    failed = 0
    started = time.perf_counter()
    deadline = started + settings["timeout"]

    async def one(i: int) -> None:
        nonlocal failed
        try:
            conn = await _open_one(loop, sources[i % len(sources)], port, 30.0)
        finally:
            limit.release()
        if conn is None:
            failed += 1
        else:
            conns.append(conn)

    tasks = set()
    for i in range(count):
        # Pace the starts: connection i starts no earlier than i / rate seconds in.
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0:
            await asyncio.sleep(ahead)
        if time.perf_counter() > deadline:
            failed += count - i
            break
        await limit.acquire()
        task = loop.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=max(1.0, deadline - time.perf_counter() + 30))
    return {
        "connected": len(conns),
        "failed": failed,
        "seconds": time.perf_counter() - started,
    }


async def _ping_all(settings: dict[str, Any], conns: list[_Conn]) -> dict[str, Any]:
    """One text frame on every open connection; the round trip of each answer."""
    loop = asyncio.get_running_loop()
    frame = _masked(0x1, settings["ping"].encode())
    limit = asyncio.Semaphore(settings["inflight"])
    trips: list[float] = []
    lost = 0

    async def one(conn: _Conn) -> None:
        nonlocal lost
        try:
            if conn.state != 1 or conn.transport is None:
                lost += 1
                return
            waiter: asyncio.Future[bool] = loop.create_future()
            conn.waiter = waiter
            sent = time.perf_counter()
            conn.transport.write(frame)
            try:
                ok = await asyncio.wait_for(waiter, 30.0)
            except TimeoutError:
                ok = False
            if ok:
                trips.append(time.perf_counter() - sent)
            else:
                lost += 1
        finally:
            limit.release()

    started = time.perf_counter()
    tasks = []
    for conn in conns:
        await limit.acquire()
        tasks.append(loop.create_task(one(conn)))
    if tasks:
        await asyncio.wait(tasks)
    trips.sort()

    def pct(q: float) -> float:
        return trips[min(len(trips) - 1, int(q * len(trips)))] * 1000 if trips else -1.0

    return {
        "answered": len(trips),
        "lost": lost,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": trips[-1] * 1000 if trips else -1.0,
        "seconds": time.perf_counter() - started,
    }


async def _wait_for(seq: str, seconds: float, conns: list[_Conn]) -> dict[str, Any]:
    """Wait until every connection has the payload starting with ``seq``; say when the last came."""
    prefix = seq.encode() + b" "
    deadline = _monotonic() + seconds
    want = len(conns)
    while True:
        keys = [key for key in COUNTS if key.startswith(prefix)]
        got = sum(COUNTS[key] for key in keys)
        if got >= want or _monotonic() > deadline:
            last = max((LAST[key] for key in keys), default=None)
            return {"seq": seq, "got": got, "last": last}
        await asyncio.sleep(0.002)


async def _run(settings: dict[str, Any]) -> None:
    global REQUEST, READY_TEXT
    REQUEST = _request(settings)
    READY_TEXT = bool(settings.get("ready_text"))
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    print(json.dumps(await _connect_all(settings, conns)), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).strip()
        if line == b"ping":
            print(json.dumps(await _ping_all(settings, conns)), flush=True)
        elif line == b"listen":
            conns[:] = [conn for conn in conns if conn.state == 1]
            for conn in conns:
                conn.__class__ = _Listener
                # uvloop keeps the protocol's bound data_received: hand it the new one.
                assert conn.transport is not None
                conn.transport.set_protocol(conn)
            print(json.dumps({"listening": len(conns)}), flush=True)
        elif line.startswith(b"wait "):
            _, seq, seconds = line.decode().split()
            print(json.dumps(await _wait_for(seq, float(seconds), conns)), flush=True)
        else:  # "close" or end of input
            return


def main() -> None:
    settings = json.loads(sys.argv[1])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
