"""The load client of ``soak.py``: one process holding thousands of slots of mixed traffic.

Run by ``soak.py`` as ``python _soak_client.py '<json settings>'``; it talks to its parent
over stdin/stdout: on the line ``stats`` it prints its counters as one JSON object, on
``stop`` (or end of input) it prints them a last time and exits, leaving its sockets to
the kernel.

Each slot is one simulated client of a kind of ``MIX`` (see ``soak.py``'s docstring),
reconnecting for ever; a ticker sends the echo and session messages on each slot's own
schedule and drops ``churn`` of the connections every ``churn_every`` seconds. The
sockets are raw asyncio streams bound to source addresses of their own in 127.0.0.0/8
(as ``_scale_client.py`` does); only the frames and responses needed here are parsed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _scale_client import _masked, _sources  # noqa: E402

__all__ = ["MIX", "SESSION_LIFE", "client_main"]

#: The mix of slots: (kind, share).
MIX = (("echo", 0.40), ("member", 0.40), ("sse", 0.10), ("poll", 0.07), ("wss", 0.03))
SESSION_LIFE = (20.0, 90.0)
#: soak_app's TransportRouter poll_hold (the default).
POLL_HOLD = 25.0
FD_LIMIT = 16384
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Counters:
    """What one client process did; cumulative, printed on ``stats``."""

    def __init__(self) -> None:
        self.c: dict[str, int] = {}
        self.echo_ms: list[float] = []
        self.sockets = 0

    def add(self, key: str, n: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + n

    def report(self, slots: list[Slot]) -> dict[str, Any]:
        trips = sorted(self.echo_ms)
        self.echo_ms = []
        return {
            "counters": dict(sorted(self.c.items())),
            "sockets": self.sockets,
            "live": sum(1 for s in slots if s.live),
            "echo_p99_ms": round(trips[int(0.99 * (len(trips) - 1))], 2) if trips else None,
            "echo_max_ms": round(trips[-1], 2) if trips else None,
        }


COUNT = Counters()
#: The client's ``echo_every`` and ``post_every`` settings.
PERIODS: dict[str, float] = {}


class Slot:
    """One simulated client: reconnects for ever; its connection may be dropped by churn."""

    def __init__(self, kind: str, source: str, port: int) -> None:
        self.kind = kind
        self.source = source
        self.port = port
        self.writer: asyncio.StreamWriter | None = None
        self.live = False
        self.churned = False
        # Echo and session messages: the text we wait for and when it was sent.
        self.pending: tuple[str, float] | None = None
        self.sent = 0
        # Broadcasts: the last number seen on this connection.
        self.last_broadcast = -1
        # Sessions.
        self.sid = ""
        self.cookie = ""
        self.last = 0
        self.cseq = 0
        self.ends_at = 0.0
        self.ending = False
        self.next_at = math.inf
        # Set on each new connection: its first open message says if the session resumed.
        self.fresh = False

    def drop(self, graceful: bool) -> None:
        """End the connection: churn (a session slot then resumes), or abandon a session.

        ``graceful``: a WebSocket close frame (1000) or a FIN first; else a reset.
        """
        writer = self.writer
        if writer is None or not self.live:
            return
        self.churned = True
        COUNT.add(f"churn.{self.kind}")
        if graceful and self.kind in ("echo", "member", "wss"):
            writer.write(_masked(0x8, b"\x03\xe8"))
        if graceful:
            writer.close()
        else:
            writer.transport.abort()


async def _connect(slot: Slot) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((slot.source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", slot.port)), 10)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    except BaseException:
        sock.close()
        raise
    COUNT.sockets += 1
    return reader, writer


def _opened(slot: Slot, writer: asyncio.StreamWriter) -> None:
    slot.writer, slot.live, slot.fresh = writer, True, True
    every = PERIODS["echo_every" if slot.kind == "echo" else "post_every"]
    slot.next_at = time.monotonic() + random.uniform(0, every)


def _closed(writer: asyncio.StreamWriter) -> None:
    COUNT.sockets -= 1
    writer.transport.abort()


def _ended(slot: Slot, writer: asyncio.StreamWriter) -> None:
    """A slot's connection is over; so is its session if the slot was ending it."""
    slot.live, slot.writer, slot.pending = False, None, None
    if slot.ending and slot.sid:
        COUNT.add("session.ended")
        slot.sid = ""
    _closed(writer)


def _head(slot: Slot, method: str, target: str, extra: str = "", body: bytes = b"") -> bytes:
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: 127.0.0.1:{slot.port}",
        "Origin: http://127.0.0.1",
        "X-Tidings: 1",
    ]
    if slot.cookie:
        lines.append(f"Cookie: {slot.cookie}")
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode() + body


def _target(slot: Slot, action: str) -> str:
    """A session request: a new session, or resuming ``slot.sid`` after ``slot.last``."""
    if slot.sid:
        return f"/ws/?tidings={action}&sid={slot.sid}&last={slot.last}"
    return f"/ws/?tidings={action}"


async def _read_head(slot: Slot, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "set-cookie":
            slot.cookie = value.split(";")[0]
        elif name:
            headers[name] = value
    return status, headers


async def _read_frame(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[int, bytes]:
    """The next data or close frame (server frames are unmasked); pings are answered."""
    while True:
        head = await reader.readexactly(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(size)
        opcode = head[0] & 0x0F
        if opcode == 0x9:
            writer.write(_masked(0xA, payload))
        elif opcode != 0xA:
            return opcode, payload


def _status(kind: str, status: int) -> None:
    COUNT.add(f"status.{kind}.{status}")
    if status >= 500:
        COUNT.add("errors.5xx")


def _got_echo(slot: Slot, text: str) -> None:
    pending = slot.pending
    if pending is not None and pending[0] == text:
        COUNT.add("echo.ok" if slot.kind == "echo" else "session_echo.ok")
        COUNT.echo_ms.append((time.monotonic() - pending[1]) * 1000)
        slot.pending = None


def _got_broadcast(slot: Slot, text: str) -> None:
    number = int(text[1:])
    COUNT.add("broadcast.received")
    if slot.last_broadcast >= 0 and number > slot.last_broadcast + 1:
        COUNT.add("broadcast.missed", number - slot.last_broadcast - 1)
    if number <= slot.last_broadcast:
        COUNT.add("broadcast.duplicated")
    slot.last_broadcast = number


def _got_envelope(slot: Slot, envelope: dict[str, Any]) -> bool:
    """One protocol-v1 message of a session; ``True`` when the session is over."""
    kind = envelope.get("type")
    if kind == "open":
        # Every poll's answer starts with an open message: count the first of a connection.
        fresh, slot.fresh = slot.fresh, False
        if slot.sid and envelope.get("resumed"):
            COUNT.add("session.resumed" if fresh else "session.poll_open")
        elif slot.sid:
            # A new session in place of ours: start its numbering afresh.
            COUNT.add(f"session.not_resumed.{slot.kind}.{'fresh' if fresh else 'same'}")
            slot.last = slot.cseq = 0
            slot.pending = None
        slot.sid = envelope["sid"]
        return False
    if kind == "close":
        COUNT.add("session.closed_by_server" if not slot.ending else "session.closed")
        return True
    seq = envelope.get("seq")
    if seq is None:
        return False  # {"cack": n}
    if seq <= slot.last:
        COUNT.add("session.duplicate")
        return False
    if seq != slot.last + 1:
        COUNT.add("session.gap", seq - slot.last - 1)
    slot.last = seq
    text = envelope.get("text", "")
    COUNT.add("session.messages")
    if text.startswith("b"):
        COUNT.add("broadcast.session_received")
    elif text.startswith("s"):
        _got_echo(slot, text)
    return False


async def _websocket(slot: Slot) -> None:
    """A plain WebSocket (``echo``, ``member``) or a session WebSocket (``wss``)."""
    if slot.kind == "echo":
        target = "/echo/"
    elif slot.kind == "member":
        target = "/ws/"
    else:
        target = _target(slot, "ws")
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    upgrade += f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    reader, writer = await _connect(slot)
    try:
        writer.write(_head(slot, "GET", target, upgrade))
        status, _ = await asyncio.wait_for(_read_head(slot, reader), 15)
        if status != 101:
            _status(slot.kind, status)
            slot.sid = ""  # refused: start afresh
            return
        _opened(slot, writer)
        slot.last_broadcast = -1
        COUNT.add(f"open.{slot.kind}")
        while True:
            opcode, payload = await _read_frame(reader, writer)
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not slot.churned:
                    COUNT.add(f"ws_close.{slot.kind}.{code}")
                return
            text = payload.decode()
            if slot.kind == "echo":
                _got_echo(slot, text)
            elif slot.kind == "member":
                if text != "ready":
                    _got_broadcast(slot, text)
            else:
                if _got_envelope(slot, json.loads(text)):
                    slot.sid = ""
                    return
    finally:
        _ended(slot, writer)


def _chunks(data: bytes) -> tuple[list[bytes], bytes, bool]:
    """Split chunked transfer coding: (chunks complete so far, the rest, ended)."""
    out: list[bytes] = []
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return out, data, False
        size = int(data[:end].split(b";")[0], 16)
        if len(data) < end + 2 + size + 2:
            return out, data, False
        if size == 0:
            return out, b"", True
        out.append(data[end + 2 : end + 2 + size])
        data = data[end + 2 + size + 2 :]


async def _sse(slot: Slot) -> None:
    from tidings.wire.sse import EventStreamParser

    target = _target(slot, "sse")
    reader, writer = await _connect(slot)
    try:
        writer.write(_head(slot, "GET", target, "Accept: text/event-stream\r\n"))
        status, _ = await asyncio.wait_for(_read_head(slot, reader), 15)
        if status != 200:
            _status(slot.kind, status)
            slot.sid = ""
            return
        _opened(slot, writer)
        COUNT.add("open.sse")
        parser, rest = EventStreamParser(), b""
        while True:
            data = await reader.read(65536)
            if not data:
                if not slot.churned:
                    COUNT.add("eof.sse")
                return
            chunks, rest, ended = _chunks(rest + data)
            for chunk in chunks:
                for event in parser.feed(chunk):
                    if _got_envelope(slot, json.loads(event.data)):
                        slot.sid = ""
                        return
            if ended:
                if not slot.churned:
                    COUNT.add("eof.sse")
                return
    finally:
        _ended(slot, writer)


async def _poll(slot: Slot) -> None:
    reader, writer = await _connect(slot)
    _opened(slot, writer)
    try:
        # A session being ended (closed or abandoned) polls no more.
        while not slot.ending and not writer.transport.is_closing():
            target = _target(slot, "poll")
            writer.write(_head(slot, "GET", target))
            try:
                status, headers = await asyncio.wait_for(_read_head(slot, reader), POLL_HOLD + 15)
            except asyncio.IncompleteReadError:
                if not slot.churned:
                    COUNT.add("eof.poll")  # the keep-alive connection ended: reconnect
                return
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if status != 200:
                _status(slot.kind, status)
                slot.sid = ""
                return
            first = not slot.sid
            for envelope in json.loads(body):
                if _got_envelope(slot, envelope):
                    slot.sid = ""
                    return
            if first:
                COUNT.add("open.poll")
    finally:
        _ended(slot, writer)


async def _post(slot: Slot, action: str, messages: list[dict[str, Any]]) -> int:
    """One ``POST ?tidings=<action>`` on a connection of its own; its status (0: failed)."""
    body = json.dumps(messages).encode() if action == "send" else b""
    # The session as it is now: the slot may end it (and forget its id) while we connect.
    target = f"/ws/?tidings={action}&sid={slot.sid}"
    try:
        reader, writer = await _connect(slot)
    except (OSError, TimeoutError):
        COUNT.add("post.connect_failed")
        return 0
    try:
        writer.write(_head(slot, "POST", target, "", body))
        status, headers = await asyncio.wait_for(_read_head(slot, reader), 15)
        await reader.readexactly(int(headers.get("content-length", "0")))
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        COUNT.add(f"post.{action}.failed")
        return 0
    finally:
        _closed(writer)
    COUNT.add(f"post.{action}.{status}")
    if status >= 500:
        COUNT.add("errors.5xx")
    return status


async def _session_tick(slot: Slot, now: float) -> None:
    """A session slot's periodic work: a message and an ack, or the end of the session."""
    if slot.pending is not None and now - slot.pending[1] > 10:
        COUNT.add("session_echo.lost")
        slot.pending = None
    if now >= slot.ends_at and not slot.ending:
        slot.ending = True
        if random.random() < 0.5:
            COUNT.add("session.abandoned")
            slot.sid = ""
            slot.drop(graceful=False)
        elif slot.kind == "wss" and slot.writer is not None:
            slot.writer.write(_masked(0x1, b'{"type": "close"}'))
        elif await _post(slot, "close", []) != 204:
            slot.drop(graceful=True)
        return
    slot.cseq += 1
    text = f"s{slot.cseq}"
    messages: list[dict[str, Any]] = [{"cseq": slot.cseq, "text": text}, {"ack": slot.last}]
    slot.pending = (text, now)
    COUNT.add("session_echo.sent")
    if slot.kind == "wss" and slot.writer is not None:
        slot.writer.write(_masked(0x1, json.dumps(messages).encode()))
    else:
        status = await _post(slot, "send", messages)
        if status != 200:
            slot.pending = None
            slot.cseq -= 1  # not taken: sent again next time


RUNNERS = {"echo": _websocket, "member": _websocket, "wss": _websocket, "sse": _sse, "poll": _poll}


async def _run_slot(slot: Slot, stopping: asyncio.Event) -> None:
    await asyncio.sleep(random.random() * 0.5)
    while not stopping.is_set():
        slot.churned = False
        if slot.kind in ("sse", "poll", "wss") and not slot.sid:
            slot.ending, slot.last, slot.cseq, slot.cookie = False, 0, 0, ""
            slot.ends_at = time.monotonic() + random.uniform(*SESSION_LIFE)
        try:
            await RUNNERS[slot.kind](slot)
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            ValueError,
            RuntimeError,
        ) as exc:
            if not slot.churned:
                COUNT.add(f"fail.{slot.kind}.{type(exc).__name__}")
        await asyncio.sleep(0.2 + random.random())


async def _ticker(slots: list[Slot], settings: dict[str, Any], stopping: asyncio.Event) -> None:
    """Echo messages, session messages and churn, each slot on its own schedule."""
    echo_every, post_every = settings["echo_every"], settings["post_every"]
    churn_every, churn = settings["churn_every"], settings["churn"]
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()
    next_churn = time.monotonic() + churn_every
    while not stopping.is_set():
        await asyncio.sleep(0.25)
        now = time.monotonic()
        for slot in slots:
            if not slot.live or slot.next_at > now:
                continue
            if slot.kind == "echo":
                slot.next_at = now + echo_every
                if slot.pending is not None:
                    if now - slot.pending[1] > 10:
                        COUNT.add("echo.lost")
                        slot.pending = None
                    continue
                text = f"e{slot.sent}"
                slot.sent += 1
                slot.pending = (text, now)
                COUNT.add("echo.sent")
                assert slot.writer is not None
                slot.writer.write(_masked(0x1, text.encode()))
            elif slot.kind != "member" and slot.sid:
                slot.next_at = now + post_every
                task = loop.create_task(_session_tick(slot, now))
                background.add(task)
                task.add_done_callback(background.discard)
        if now >= next_churn:
            next_churn += churn_every
            for slot in random.sample(slots, max(1, round(len(slots) * churn))):
                slot.drop(graceful=random.random() < 0.5)


async def _client(settings: dict[str, Any]) -> None:
    random.seed(settings["seed"])
    PERIODS.update(echo_every=settings["echo_every"], post_every=settings["post_every"])
    sources = _sources(settings["source_offset"], settings["sources"])
    kinds = [kind for kind, share in MIX for _ in range(round(share * settings["count"]))]
    slots = [
        Slot(kind, sources[i % len(sources)], settings["port"]) for i, kind in enumerate(kinds)
    ]
    random.shuffle(slots)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = []
    for start in range(0, len(slots), 100):  # ramp up: 100 slots every 0.5 s
        tasks += [loop.create_task(_run_slot(s, stopping)) for s in slots[start : start + 100]]
        await asyncio.sleep(0.5)
    ticker = loop.create_task(_ticker(slots, settings, stopping))
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).strip()
        if line == b"stats":
            print(json.dumps(COUNT.report(slots)), flush=True)
        else:  # "stop" or end of input: the kernel closes the sockets
            stopping.set()
            ticker.cancel()
            print(json.dumps(COUNT.report(slots)), flush=True)
            return


def client_main(settings: dict[str, Any]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client(settings))
    os._exit(0)  # leave the sockets to the kernel: no slow teardown of thousands of tasks


if __name__ == "__main__":
    client_main(json.loads(sys.argv[1]))
