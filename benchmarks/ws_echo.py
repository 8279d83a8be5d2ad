#!/usr/bin/env python3
"""WebSocket echo benchmark: Tidings vs uvicorn (websockets-sansio backend) vs granian.

Usage::

    .venv/bin/python benchmarks/ws_echo.py                 # everything (~5 minutes)
    .venv/bin/python benchmarks/ws_echo.py --servers tidings --duration 2   # smoke run

Each server runs one worker with the same plain ASGI echo app (``ws_echo_app.py``),
pinned to core 0 with ``taskset -c 0``; the load client is a separate process pinned to
core 1. The peers are installed from PyPI into ``benchmarks/.venv-peers`` (created here
when missing); Tidings runs from the interpreter running this script.

The client is raw asyncio (uvloop when available) over plain sockets: it sends pre-masked
frames and parses the echoes without a WebSocket library, so the server is what is
measured. It never offers permessage-deflate. Figures:

(a) throughput: 100 connections ping-ponging a 32-byte text message for ``--duration``
    seconds (each connection sends the next message when the echo arrives);
(b) the same with 1 KiB messages;
(c) latency: one connection, round trips for ``--duration`` seconds, p50 and p99;
(d) idle memory: the server's RSS (its whole process tree, from ``/proc/<pid>/status``)
    before and after opening 5,000 idle connections, per connection.

Results are printed with Tidings' ratio to each peer and written to
``benchmarks/results/ws_echo.json``. Every phase has a time limit; only the processes
started here are stopped, by PID.
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

from _peers import (  # noqa: E402
    ROOT,
    free_port,
    peers_python,
    pinned,
    result_header,
    rss_kib,
    stop,
    wait_port,
    write_results,
)

PEER_PACKAGES = ["uvicorn[standard]", "websockets", "granian"]
SERVERS = ("tidings", "uvicorn", "granian")
IDLE_CONNECTIONS = 5000
FD_LIMIT = 16384


# --- the load client (runs in its own process: ``ws_echo.py --client MODE``) --------------

_MASK = b"\x37\xfa\x21\x3d"


def _masked_text_frame(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    masked = bytes(b ^ _MASK[i & 3] for i, b in enumerate(payload))
    return head + _MASK + masked


def _handshake(port: int) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class _Client(asyncio.Protocol):
    """One connection: handshake, then send the frame again each time an echo arrives."""

    def __init__(self, port: int, frame: bytes, ready: asyncio.Future[None]) -> None:
        self.port = port
        self.frame = frame
        self.ready = ready
        self.buf = bytearray()
        self.open = False
        self.running = False
        self.count = 0
        self.sent_at = 0.0
        self.latencies: list[float] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(_handshake(self.port))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during the handshake"))
        self.running = False

    def send(self) -> None:
        assert self.transport is not None
        if self.latencies is not None:
            self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(bytes(buf[:40]).decode("latin-1")))
                return
            del buf[: end + 4]
            self.open = True
            self.ready.set_result(None)
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = int.from_bytes(buf[2:4], "big")
                start = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                start = 10
            if len(buf) < start + n:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[start : start + n])
            del buf[: start + n]
            if opcode in (1, 2):
                if self.latencies is not None:
                    self.latencies.append(time.perf_counter() - self.sent_at)
                self.count += 1
                if self.running:
                    self.send()
            elif opcode == 9 and self.transport is not None:  # answer keepalive pings
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + _MASK + payload)


async def _open(port: int, frame: bytes, n: int, batch: int = 200) -> list[_Client]:
    loop = asyncio.get_running_loop()
    clients: list[_Client] = []
    for start in range(0, n, batch):
        round_: list[_Client] = []
        for _ in range(min(batch, n - start)):
            ready: asyncio.Future[None] = loop.create_future()
            client = _Client(port, frame, ready)
            await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
            round_.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in round_)), 60)
        clients += round_
    return clients


async def _client_main(mode: str, port: int, size: int, conns: int, duration: float) -> None:
    frame = _masked_text_frame(b"x" * size)
    if mode == "throughput":
        clients = await _open(port, frame, conns)
        await asyncio.sleep(0.5)  # let the server settle after the connection burst
        for c in clients:
            c.running = True
            c.send()
        await asyncio.sleep(1.0)  # warm-up
        before = sum(c.count for c in clients)
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        after = sum(c.count for c in clients)
        elapsed = time.perf_counter() - t0
        for c in clients:
            c.running = False
        print(json.dumps({"messages_per_s": (after - before) / elapsed}), flush=True)
    elif mode == "latency":
        [client] = await _open(port, frame, 1)
        client.latencies = []
        client.running = True
        client.send()
        await asyncio.sleep(duration)
        client.running = False
        samples = sorted(client.latencies[100:])  # skip the warm-up
        if not samples:
            raise RuntimeError("no round trips completed")
        print(
            json.dumps(
                {
                    "round_trips": len(samples),
                    "p50_us": statistics.median(samples) * 1e6,
                    "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
                }
            ),
            flush=True,
        )
    elif mode == "idle":
        clients = await _open(port, frame, conns)
        print(json.dumps({"connected": len(clients)}), flush=True)
        # Hold them until the parent has measured (it closes our stdin), at most 60 s.
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), 60)
    for c in locals().get("clients", []):
        if c.transport is not None:
            c.transport.close()


def run_client(ns: argparse.Namespace) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_client_main(ns.client, ns.port, ns.size, ns.conns, ns.duration))
    return 0


# --- the driver ---------------------------------------------------------------------------


def server_command(name: str, port: int) -> list[str]:
    if name == "tidings":
        return [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "ws_echo_app:app",
            "--app-dir",
            str(HERE),
            "--port",
            str(port),
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    peers_bin = peers_python(PEER_PACKAGES).parent
    if name == "uvicorn":
        return [
            str(peers_bin / "uvicorn"),
            "ws_echo_app:app",
            "--app-dir",
            str(HERE),
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets-sansio",  # uvicorn's sans-I/O backend, the one the issue measures
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    if name == "granian":
        return [
            str(peers_bin / "granian"),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--working-dir",
            str(HERE),
            "--log-level",
            "warning",
            "ws_echo_app:app",
        ]
    raise ValueError(name)


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants (granian forks its worker), in KiB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += rss_kib(p)
        except (OSError, RuntimeError):
            pass
    return total


class Served:
    """One server process, pinned to CPU 0, for the duration of a ``with`` block."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Served:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            pinned(server_command(self.name, self.port), 0),
            cwd=str(HERE),
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port, self.proc, timeout=30)
        except RuntimeError:
            stop(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop(self.proc)


def _client_cmd(mode: str, port: int, size: int, conns: int, duration: float) -> list[str]:
    return pinned(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--client",
            mode,
            "--port",
            str(port),
            "--size",
            str(size),
            "--conns",
            str(conns),
            "--duration",
            str(duration),
        ],
        1,
    )


def client(
    mode: str, port: int, *, size: int = 32, conns: int = 1, duration: float = 0.0
) -> dict[str, Any]:
    out = subprocess.run(
        _client_cmd(mode, port, size, conns, duration),
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client {mode} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def idle_memory(served: Served, conns: int) -> dict[str, Any]:
    assert served.proc is not None
    client("throughput", served.port, conns=1, duration=0.2)  # warm imports and caches
    time.sleep(0.5)
    before = tree_rss_kib(served.proc.pid)
    proc = subprocess.Popen(
        _client_cmd("idle", served.port, 32, conns, 0.0),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"idle client failed:\n{proc.stderr.read()[-2000:]}")
        connected = json.loads(line)["connected"]
        time.sleep(1.0)  # let the server finish any per-connection work
        after = tree_rss_kib(served.proc.pid)
        proc.stdin.write("done\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return {
        "connections": connected,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / connected,
    }


def bench_once(name: str, duration: float, idle: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Served(name) as served:
        r = client("throughput", served.port, size=32, conns=100, duration=duration)
        result["echo_32B_msgs_per_s"] = r["messages_per_s"]
        r = client("throughput", served.port, size=1024, conns=100, duration=duration)
        result["echo_1KiB_msgs_per_s"] = r["messages_per_s"]
        r = client("latency", served.port, size=32, duration=min(duration, 4.0))
        result["rtt_p50_us"] = r["p50_us"]
        result["rtt_p99_us"] = r["p99_us"]
    if idle:
        with Served(name) as served:
            result["idle_kib_per_connection"] = idle_memory(served, idle)["kib_per_connection"]
    print(
        f"  {name:8} (a) 32 B {result['echo_32B_msgs_per_s']:>9,.0f} msg/s"
        f"  (b) 1 KiB {result['echo_1KiB_msgs_per_s']:>9,.0f} msg/s"
        f"  (c) RTT p50 {result['rtt_p50_us']:.0f} us p99 {result['rtt_p99_us']:.0f} us"
        + (
            f"  (d) {result['idle_kib_per_connection']:.1f} KiB/conn"
            if "idle_kib_per_connection" in result
            else ""
        ),
        flush=True,
    )
    return result


# For each figure: True when higher is better.
FIGURES = {
    "echo_32B_msgs_per_s": True,
    "echo_1KiB_msgs_per_s": True,
    "rtt_p50_us": False,
    "rtt_p99_us": False,
    "idle_kib_per_connection": False,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma list of servers")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument(
        "--idle", type=int, default=IDLE_CONNECTIONS, help="idle connections for (d); 0 skips"
    )
    parser.add_argument(
        "--client", choices=("throughput", "latency", "idle"), help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--conns", type=int, default=1, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.client:
        return run_client(ns)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))  # servers inherit
    names = [n.strip() for n in ns.servers.split(",") if n.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if any(n != "tidings" for n in names):
        peers_python(PEER_PACKAGES)
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for round_no in range(ns.rounds):
        print(f"round {round_no + 1}/{ns.rounds}", flush=True)
        for name in names if round_no % 2 == 0 else list(reversed(names)):
            rounds[name].append(bench_once(name, ns.duration, ns.idle))
    summary = {
        name: {
            figure: statistics.median(r[figure] for r in runs)
            for figure in FIGURES
            if all(figure in r for r in runs)
        }
        for name, runs in rounds.items()
    }
    ratios: dict[str, dict[str, float]] = {}
    if "tidings" in summary:
        ours = summary["tidings"]
        for peer in (n for n in names if n != "tidings"):
            theirs = summary[peer]
            # > 1 means Tidings is better on that figure.
            ratios[peer] = {
                figure: (ours[figure] / theirs[figure] if higher else theirs[figure] / ours[figure])
                for figure, higher in FIGURES.items()
                if figure in ours and figure in theirs and ours[figure] > 0 and theirs[figure] > 0
            }
    print()
    for name, figures in summary.items():
        print(f"{name:8} " + "  ".join(f"{k} {v:,.1f}" for k, v in figures.items()))
    for peer, ratio in ratios.items():
        print(
            f"tidings vs {peer} (>1: tidings better): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items())
        )
    payload = {
        **result_header("ws_echo"),
        "method": "server pinned to CPU 0, raw asyncio client pinned to CPU 1; "
        f"(a)/(b) 100 connections ping-ponging for {ns.duration:g} s, (c) 1 connection, "
        f"(d) {ns.idle} idle connections; median of {ns.rounds} alternating rounds",
        "results": summary,
        "ratios": ratios,
        "rounds": rounds,
    }
    out = write_results(payload)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
