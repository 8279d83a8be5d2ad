"""Same-run A/B of two revisions of Tidings in CPU instructions, not seconds.

``ab.py`` times two revisions with wrk and an echo client; on a shared VM its rounds
swing by 15 % or more, which hides a regression of a few percent. This script counts
what the server process executes instead, with valgrind's callgrind: the count is the
same from run to run for the same code and load, whatever else the machine is doing::

    python benchmarks/ab_instructions.py BEFORE [AFTER] [--only http|ws|broadcast]

For each revision (checked out as ``ab.py`` does) and each load, the server runs under
``valgrind --tool=callgrind --instr-atstart=no`` (one worker, access log off,
``PYTHONHASHSEED=0``). A warm-up load runs uninstrumented; then ``callgrind_control``
switches counting on, the measured load runs, and a dump gives the instructions the
server executed for it (the kernel's work is not counted; uvloop's and the C speedups'
is). The loads:

* ``http``: one keep-alive connection, ``--requests`` sequential GETs of
  ``apps.py:hello``; reported per request;
* ``ws``: one connection to ``ws_echo_app.py``, ``--messages`` sequential 32-byte text
  echoes, no compression; reported per message;
* ``broadcast``: ``--members`` WebSocket clients of ``broadcast_app.py`` on a
  ``redis-server`` of this script's own; ``--sends`` ``group_send`` calls of a
  ``bench.message`` event (forwarded by each member's handler), each waited for until
  every member has it; reported per delivered message;
* ``direct``: the same with ``websocket.send`` group messages, which the layer writes
  to idle members' sockets itself (the direct path of ``docs/websocket.md``).

Printed per load: instructions per unit before and after, and before/after (above 1:
after executes fewer instructions; this is the speed ratio when the time is CPU-bound).
The result goes to ``benchmarks/results/ab_instructions-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import ROOT, free_port, result_header, stop, wait_port, write_results
from ab import checkout

HERE = ROOT / "benchmarks"
STARTUP_TIMEOUT = 300.0  # seconds: imports run under valgrind, 20 to 50 times slower


# -- the server under callgrind -----------------------------------------------------------


class Counted:
    """``tidings serve`` of one revision under callgrind, counting switched on and off."""

    def __init__(self, tree: Path, app: str, port: int, out: Path, env: dict[str, str]) -> None:
        python = Path(sys.executable)  # the venv's interpreter (not a shell shim)
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        cmd += [f"--callgrind-out-file={out}", str(python), "-m", "tidings", "serve", app]
        cmd += ["--app-dir", str(HERE), "--port", str(port), "--lifespan", "off"]
        cmd += ["--no-access-log", "--log-level", "warning", "--workers", "1"]
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(tree)}
        environ |= {"PYTHONHASHSEED": "0", **env}
        self.out = out
        self.proc = subprocess.Popen(
            cmd, env=environ, cwd=tempfile.gettempdir(), stderr=subprocess.DEVNULL
        )
        wait_port(port, self.proc, timeout=STARTUP_TIMEOUT)

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)], check=True, capture_output=True
        )

    def measure(self, load: Callable[[], None]) -> int:
        """Instructions the server executed while ``load`` ran."""
        self.control("--instr=on")
        load()
        self.control("--dump")
        dumps = sorted(self.out.parent.glob(self.out.name + ".*"))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        match = re.search(r"^totals:\s+(\d+)", dumps[-1].read_text(), re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no totals in {dumps[-1]}")
        return int(match.group(1))

    def close(self) -> None:
        stop(self.proc)


# -- loads (run in this process, natively) ------------------------------------------------


def http_load(port: int, requests: int) -> None:
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buffer = b""
        for _ in range(requests):
            sock.sendall(request)
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    match = re.search(rb"(?i)content-length:\s*(\d+)", buffer[:head_end])
                    if match is None:
                        raise RuntimeError("response without Content-Length")
                    end = head_end + 4 + int(match.group(1))
                    if len(buffer) >= end:
                        buffer = buffer[end:]
                        break
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buffer += chunk


def ws_load(port: int, messages: int) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
        for n in range(messages):
            text = f"{n:032d}"
            ws.send(text)
            if ws.recv() != text:
                raise RuntimeError("echo mismatch")


class Members:
    """``members`` WebSocket clients in a loop thread of their own, joined to the group."""

    def __init__(self, port: int, members: int) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = port
        self.members = members
        self.conns: list[Any] = self.run(self._connect())

    def run(self, coro: Any, timeout: float = 600.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> list[Any]:
        from websockets.asyncio.client import connect

        conns = []
        for _ in range(self.members):
            ws = await connect(f"ws://127.0.0.1:{self.port}/", compression=None)
            if await ws.recv() != "ready":
                raise RuntimeError("member not ready")
            conns.append(ws)
        return conns

    async def _expect(self, text: str) -> None:
        for got in await asyncio.gather(*(ws.recv() for ws in self.conns)):
            if got != text:
                raise RuntimeError(f"member got {got!r}, not {text!r}")

    def sends(self, layer: Any, first: int, count: int, kind: str) -> None:
        async def go() -> None:
            for seq in range(first, first + count):
                waiting = asyncio.ensure_future(self._expect(str(seq)))
                await layer.group_send("bench", {"type": kind, "text": str(seq)})
                await waiting

        self.run(go())

    def close(self) -> None:
        async def shut() -> None:
            await asyncio.gather(*(ws.close() for ws in self.conns))

        self.run(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- the three measurements ---------------------------------------------------------------


def count(tree: Path, bench: str, args: argparse.Namespace, redis_url: str) -> float:
    """Instructions per unit of ``bench`` for the revision at ``tree``."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tidings-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        if bench == "http":
            server = Counted(tree, "apps:hello", port, out, {})
            try:
                http_load(port, 200)
                return server.measure(lambda: http_load(port, args.requests)) / args.requests
            finally:
                server.close()
        if bench == "ws":
            server = Counted(tree, "ws_echo_app:app", port, out, {})
            try:
                ws_load(port, 200)
                return server.measure(lambda: ws_load(port, args.messages)) / args.messages
            finally:
                server.close()
        env = {"BENCH_PREFIX": "tidings", "BENCH_REDIS_URL": redis_url}
        server = Counted(tree, "broadcast_app:application", port, out, env)
        members = None
        try:
            from tidings.layers.redis import RedisChannelLayer

            kind = "websocket.send" if bench == "direct" else "bench.message"
            layer = RedisChannelLayer([redis_url], prefix="bench")
            members = Members(port, args.members)
            members.sends(layer, 0, 5, kind)
            total = server.measure(lambda: members.sends(layer, 5, args.sends, kind))
            members.run(layer.close_pools())
            return total / (args.sends * args.members)
        finally:
            if members is not None:
                members.close()
            server.close()


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")]
    proc = subprocess.Popen(cmd)
    wait_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="the revision before the change (a commit, a tag)")
    parser.add_argument("after", nargs="?", help="the revision after it (default: this tree)")
    parser.add_argument("--only", choices=("http", "ws", "broadcast", "direct"), action="append")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--sends", type=int, default=20)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is needed (Debian: valgrind, redis-server)", file=sys.stderr)
            return 2
    benches = args.only or ["http", "ws", "broadcast", "direct"]
    units = {"http": "request", "ws": "message"}
    units |= {"broadcast": "delivered message", "direct": "delivered message"}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tidings-abi-") as tmp:
        trees = {"before": checkout(args.before, Path(tmp) / "before")}
        trees["after"] = checkout(args.after, Path(tmp) / "after") if args.after else ROOT
        redis, redis_url = start_redis(tmp)
        try:
            for bench in benches:
                results[bench] = {}
                for side in ("before", "after"):
                    started = time.monotonic()
                    results[bench][side] = count(trees[side], bench, args, redis_url)
                    print(
                        f"{bench:>9} {side:>6}: {results[bench][side]:>12,.0f} instructions "
                        f"per {units[bench]} ({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
        finally:
            redis.send_signal(signal.SIGTERM)
            redis.wait(10)
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                    )
    for bench, sides in results.items():
        ratio = sides["before"] / sides["after"]
        print(
            f"{bench:>9}: before {sides['before']:,.0f}, after {sides['after']:,.0f} "
            f"instructions per {units[bench]}; before/after {ratio:.3f}"
        )
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.after or "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    payload = result_header("ab_instructions")
    payload |= {"before": args.before, "after": args.after or f"{rev}+worktree", "results": {}}
    for bench, sides in results.items():
        payload["results"][bench] = {
            **sides,
            "unit": f"instructions per {units[bench]}",
            "before_over_after": sides["before"] / sides["after"],
        }
    print(f"written {write_results(payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
