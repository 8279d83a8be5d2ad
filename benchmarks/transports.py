#!/usr/bin/env python3
"""Push to many clients over SSE and long-polling, next to WebSocket, in the same run.

Usage::

    .venv/bin/python benchmarks/transports.py                       # 1,000 clients each
    .venv/bin/python benchmarks/transports.py --clients 100 --count 20   # smoke run

For each transport (``websocket``: a plain WebSocket, no session; ``ws-session``: the
session WebSocket of ``tidings.transports``; ``sse``; ``longpoll``) a fresh ``tidings
serve`` (one worker, pinned to core 0) runs ``transports_app.py``. A load process
(pinned to core 1, raw asyncio sockets, no HTTP or WebSocket library) opens
``--clients`` clients, waits until each consumer has joined the group, then asks the
server for ``--count`` ``group_send`` calls ``--gap`` seconds apart. Each message carries
its send time; the client notes when it parsed it. Reported per transport: deliveries
per second (all deliveries over the time from the first send to the last delivery),
p50 and p99 delivery latency, and messages lost or duplicated. Results go to
``benchmarks/results/transports.json``. The target of issue 6: SSE within 2x of
WebSocket. Only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _peers import ROOT, free_port, pinned, result_header, stop, wait_port, write_results  # noqa: E402

TRANSPORTS = ("websocket", "ws-session", "sse", "longpoll")
FD_LIMIT = 16384
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# --- the load client --------------------------------------------------------------------


class Client:
    """One client: connects, then records (number, send ns, receive ns) per message."""

    def __init__(self, port: int, transport: str) -> None:
        self.port = port
        self.transport = transport
        self.ready = asyncio.Event()
        self.got: list[tuple[int, int, int]] = []
        self.done = asyncio.Event()
        self.count = 0

    def _text(self, text: str) -> None:
        if text == "ready":
            self.ready.set()
            return
        number, sent = text.split()
        self.got.append((int(number), int(sent), time.time_ns()))
        if len(self.got) >= self.count:
            self.done.set()

    def _envelope(self, raw: str | bytes) -> None:
        envelope = json.loads(raw)
        if "text" in envelope:
            self._text(envelope["text"])

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            if self.transport in ("websocket", "ws-session"):
                await self._websocket(reader, writer)
            elif self.transport == "sse":
                await self._sse(reader, writer)
            else:
                await self._longpoll(reader, writer)
        finally:
            writer.close()

    def _get(self, writer: asyncio.StreamWriter, target: str, extra: str = "") -> None:
        # X-Tidings, as tidings.js sends it: session requests carrying cookies need it.
        head = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nX-Tidings: 1\r\n{extra}\r\n"
        )
        writer.write(head.encode())

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = self.transport == "ws-session"
        upgrade = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
        upgrade += "Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n"
        self._get(writer, "/ws/?tidings=ws" if session else "/ws/", upgrade)
        await reader.readuntil(b"\r\n\r\n")
        while True:
            head = await reader.readexactly(2)
            length = head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(length)
            if head[0] & 0x0F != 1:
                continue  # pings: the run is shorter than the ping interval anyway
            if session:
                self._envelope(payload)
            else:
                self._text(payload.decode())

    async def _sse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from tidings.wire.sse import EventStreamParser

        self._get(writer, "/ws/?tidings=sse")
        await reader.readuntil(b"\r\n\r\n")
        parser = EventStreamParser()
        while True:  # chunked transfer coding
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            for event in parser.feed(chunk[:-2]):
                self._envelope(event.data)
            if size == 0:
                return

    async def _longpoll(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sid, last, cookie = "", 0, ""
        while True:
            query = f"&sid={sid}&last={last}" if sid else ""
            self._get(writer, f"/ws/?tidings=poll{query}", cookie)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line.lower().startswith(b"set-cookie:"):
                    # The anonymous session's binding cookie: every later poll sends it.
                    pair = line.split(b":", 1)[1].split(b";")[0].strip().decode()
                    cookie = f"Cookie: {pair}\r\n"
            for envelope in json.loads(await reader.readexactly(length)):
                if envelope.get("type") == "open":
                    sid = envelope["sid"]
                elif "text" in envelope:
                    last = envelope["seq"]
                    self._text(envelope["text"])


async def _broadcast(port: int, count: int, gap: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    target = f"/broadcast/?count={count}&gap={gap}"
    writer.write(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def load(transport: str, port: int, clients: int, count: int, gap: float) -> dict[str, Any]:
    everyone = [Client(port, transport) for _ in range(clients)]
    for client in everyone:
        client.count = count
    tasks = []
    for start in range(0, clients, 100):  # open in waves: no SYN flood of the backlog
        tasks += [asyncio.create_task(c.run()) for c in everyone[start : start + 100]]
        await asyncio.wait_for(
            asyncio.gather(*(c.ready.wait() for c in everyone[start : start + 100])), 30
        )
    trigger = asyncio.create_task(_broadcast(port, count, gap))
    timeout = 30 + count * gap * 4
    done, _ = await asyncio.wait(
        [asyncio.create_task(c.done.wait()) for c in everyone], timeout=timeout
    )
    for task in tasks:
        task.cancel()
    trigger.cancel()
    await asyncio.gather(*tasks, trigger, return_exceptions=True)
    deliveries = [(sent, got) for c in everyone for _, sent, got in c.got]
    expected = clients * count
    duplicated = sum(len(c.got) - len({n for n, _, _ in c.got}) for c in everyone)
    first = min(sent for sent, _ in deliveries)
    last = max(got for _, got in deliveries)
    latencies = sorted((got - sent) / 1e6 for sent, got in deliveries)
    return {
        "transport": transport,
        "clients": clients,
        "messages_per_client": count,
        "deliveries": len(deliveries),
        "lost": expected - len(deliveries) + duplicated,
        "duplicated": duplicated,
        "deliveries_per_s": round(len(deliveries) / ((last - first) / 1e9)),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "clients_done": len(done),
    }


def client_main(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(load(args.client, args.port, args.clients, args.count, args.gap))
    print(json.dumps(result))


# --- the driver -------------------------------------------------------------------------


def run_one(transport: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server_cmd = [
        sys.executable, "-m", "tidings", "serve", "transports_app:application",
        "--app-dir", str(HERE), "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(pinned(server_cmd, 0), cwd=ROOT, env=env)
    try:
        wait_port(port, server)
        client_cmd = [
            sys.executable, __file__, "--client", transport, "--port", str(port),
            "--clients", str(args.clients), "--count", str(args.count), "--gap", str(args.gap),
        ]  # fmt: skip
        out = subprocess.run(
            pinned(client_cmd, 1), env=env, check=True, capture_output=True, text=True, timeout=300
        )
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--count", type=int, default=100, help="messages per client")
    parser.add_argument("--gap", type=float, default=0.01, help="seconds between group_sends")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    results = []
    for transport in args.transports.split(","):
        result = run_one(transport, args)
        results.append(result)
        print(
            f"{transport:>10}: {result['deliveries_per_s']:>8,} deliveries/s  "
            f"p50 {result['p50_ms']:>7.2f} ms  p99 {result['p99_ms']:>8.2f} ms  "
            f"lost {result['lost']}",
            flush=True,
        )
    settings = {"clients": args.clients, "count": args.count, "gap": args.gap}
    path = write_results({**result_header("transports"), "settings": settings, "results": results})
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
