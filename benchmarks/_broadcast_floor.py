"""The floor of a broadcast: one ``transport.write`` per socket, and nothing else.

Run by ``scale_broadcast.py`` (variant ``floor``) as::

    python _broadcast_floor.py <port> <workers> <redis port> <channel>

It stands in for ``tidings serve`` with the least a broadcast server must do, so that the
two are measured the same way (same clients, same sender, same CPU accounting): a
listening socket shared by ``workers`` forked processes (as ``tidings serve --workers``
does), a canned WebSocket handshake (RFC 6455 §4.2.2: the ``101`` with the accept key)
followed by a ``ready`` text frame, and one Redis ``SUBSCRIBE`` per process. Each
published payload is framed once (a server text frame, §5.2) and written to every open
connection of the process with one ``transport.write``: no channel layer, no group,
no consumer, no checks. What ``tidings serve`` spends per delivery above this is the
price of being a server; what this spends is the kernel's send (on loopback, also the
receiving side's TCP work, which runs in the sender's system time) plus the event
loop's write call.

Nothing here imports Tidings. Pings, closes and anything else the clients send are
ignored (they send nothing during a broadcast run).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import sys

__all__ = ["main"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
_READY = b"\x81\x05ready"


def _frame(payload: bytes) -> bytes:
    """An unmasked FIN text frame of ``payload`` (under 126 bytes here)."""
    return bytes((0x81, len(payload))) + payload


class _Client(asyncio.Protocol):
    """One client: answer its handshake, then only ever be written to."""

    __slots__ = ("buf", "transport")

    def __init__(self) -> None:
        self.buf: bytes | None = b""  # None once the handshake is answered
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        global ACCEPTED
        ACCEPTED += 1
        if ACCEPTED == MAX_CONNECTIONS and SERVER:
            # As tidings serve's --max-connections: stay under this process's open-files
            # cap; the other processes, which share the listening socket, take the rest.
            SERVER[0].close()

    def data_received(self, data: bytes) -> None:
        if self.buf is None:
            return  # open: nothing the client sends matters here
        buf = self.buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        key = b""
        for line in buf[:end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + _READY
        )
        self.buf = None
        OPEN[self.transport] = None

    def connection_lost(self, exc: Exception | None) -> None:
        OPEN.pop(self.transport, None)  # type: ignore[arg-type]


#: The open connections of this process (a dict: ordered, and removal is O(1)).
OPEN: dict[asyncio.Transport, None] = {}
#: Connections accepted by this process, and how many it may accept (then it stops
#: listening; one process may hold at most 20,000 open files here).
ACCEPTED = 0
MAX_CONNECTIONS = 19_500
SERVER: list[asyncio.AbstractServer] = []


class _Subscriber(asyncio.Protocol):
    """A Redis ``SUBSCRIBE``; every ``message`` push is written to every client."""

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        name = self.channel
        transport.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        # Pushes are arrays of three bulk strings; the payload is the last one.
        while True:
            head = b"*3\r\n$7\r\nmessage\r\n"
            start = buf.find(head)
            if start < 0:
                break
            rest = buf[start + len(head) :]
            parts = rest.split(b"\r\n", 3)  # $len, channel, $len, payload...
            if len(parts) < 4:
                break
            size = int(parts[2][1:])
            if len(parts[3]) < size + 2:
                break
            payload = parts[3][:size]
            frame = _frame(payload)
            for transport in OPEN:
                transport.write(frame)
            buf = parts[3][size + 2 :]
        self.buf = buf


async def _serve(sock: socket.socket, redis_port: int, channel: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Client, sock=sock, backlog=4096)
    SERVER.append(server)
    await loop.create_connection(lambda: _Subscriber(channel), "127.0.0.1", redis_port)
    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.set_result, None)
    await stopping
    server.close()


def main() -> None:
    port, workers, redis_port, channel = sys.argv[1:5]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(port)))
    sock.listen(4096)
    sock.setblocking(False)
    children = []
    for _ in range(int(workers)):
        pid = os.fork()
        if pid == 0:
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            asyncio.run(_serve(sock, int(redis_port), channel.encode()))
            os._exit(0)
        children.append(pid)
    sock.close()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    for child in children:
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
