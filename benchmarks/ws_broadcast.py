"""End-to-end broadcast: 1,000 WebSocket clients in one group, 2 server workers, Redis layer.

Tidings (``tidings serve --workers 2`` + ``tidings.layers.redis``) against Channels 4 +
uvicorn (``--workers 2``, websockets-sansio backend) + channels_redis, in the same run,
against one private redis-server. The app is ``broadcast_app.py`` for both (the import
prefix is the only difference). One load process opens the clients (raw asyncio
sockets), waits until every consumer has joined the group, then makes ``--sends``
``group_send`` calls through the same framework's channel layer, one every ``--gap``
seconds, each carrying its number, and records when each client got it.

Three variants: ``tidings`` and ``channels`` run the same consumer (a handler that
forwards the group message to its client); ``tidings-direct`` sends the group message as
``{"type": "websocket.send", "text": ...}``, Tidings' extension that reaches the clients
without a handler (idle members get it straight from the layer, the frame encoded once
per process). Reported per variant: time from the ``group_send`` call until the last of the clients
has the message (p50 and p99 over the sends), messages lost, and the server's CPU time
(all its processes: master and workers, user + system, from /proc) per delivered message,
with the CPU of an idle period of the same length subtracted.

    python benchmarks/ws_broadcast.py [--clients 1000] [--sends 50] [--gap 0.2]
                                      [--variants tidings,tidings-direct,channels]
    python benchmarks/ws_broadcast.py --smoke        # seconds, Tidings only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import RESULTS, ROOT, free_port, machine, peers_python, stop, wait_port  # noqa: E402

PEER_PACKAGES = ["uvicorn[standard]", "websockets", "channels", "channels-redis"]

# Runs in the venv of the framework under test:
#   python -c LOAD <prefix> <port> <server pid> <json args>
LOAD = r"""
import asyncio, base64, json, os, sys, time

PREFIX, PORT, SERVER_PID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ARGS = json.loads(sys.argv[4])
MESSAGE_TYPE = ARGS["message_type"]
os.environ["BENCH_PREFIX"] = PREFIX
import broadcast_app  # configures Django and the channel layer like the server does
from importlib import import_module
get_channel_layer = import_module(PREFIX + ".layers").get_channel_layer

CLIENTS, SENDS, GAP = ARGS["clients"], ARGS["sends"], ARGS["gap"]
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root):
    # user + system seconds of ``root`` and all its descendants.
    parent = {}
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        stats[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, 0.0)
        todo.extend(child for child, ppid in parent.items() if ppid == pid)
    return total


class Client(asyncio.Protocol):
    def __init__(self, run):
        self.run = run
        self.buf = bytearray()
        self.upgraded = False
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n".encode()
        )

    def data_received(self, data):
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buf[: buf.find(b"\r\n")]:
                self.ready.set_exception(RuntimeError(bytes(buf[:end]).decode("latin-1")))
                return
            del buf[: end + 4]
            self.upgraded = True
        while len(buf) >= 2:
            length, start = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + length:
                return
            payload = bytes(buf[start : start + length])
            opcode = buf[0] & 0x0F
            del buf[: start + length]
            if opcode != 1:
                continue
            if payload == b"ready":
                if not self.ready.done():
                    self.ready.set_result(None)
            else:
                self.run.arrived(int(payload))

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))


class Run:
    def __init__(self):
        self.counts = [0] * SENDS
        self.last = [0.0] * SENDS
        self.done = [asyncio.Event() for _ in range(SENDS)]

    def arrived(self, seq):
        self.counts[seq] += 1
        self.last[seq] = time.perf_counter()
        if self.counts[seq] == CLIENTS:
            self.done[seq].set()


async def main():
    loop = asyncio.get_running_loop()
    run = Run()
    clients = []
    started = time.perf_counter()
    for first in range(0, CLIENTS, 50):
        batch = []
        for _ in range(first, min(CLIENTS, first + 50)):
            _, client = await loop.create_connection(lambda: Client(run), "127.0.0.1", PORT)
            batch.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in batch)), 30)
        clients.extend(batch)
    connect_seconds = time.perf_counter() - started
    layer = get_channel_layer()
    await asyncio.sleep(1.0)
    idle_started, idle_cpu = time.perf_counter(), tree_cpu(SERVER_PID)
    await asyncio.sleep(ARGS["idle"])
    idle_rate = (tree_cpu(SERVER_PID) - idle_cpu) / (time.perf_counter() - idle_started)

    latencies, lost = [], 0
    phase_started, phase_cpu = time.perf_counter(), tree_cpu(SERVER_PID)
    for seq in range(SENDS):
        sent = time.perf_counter()
        await layer.group_send("bench", {"type": MESSAGE_TYPE, "text": str(seq)})
        try:
            await asyncio.wait_for(run.done[seq].wait(), 20)
        except asyncio.TimeoutError:
            pass
        lost += CLIENTS - run.counts[seq]
        if run.counts[seq]:
            latencies.append(run.last[seq] - sent)
        await asyncio.sleep(GAP)
    phase_seconds = time.perf_counter() - phase_started
    cpu = tree_cpu(SERVER_PID) - phase_cpu - idle_rate * phase_seconds
    delivered = sum(run.counts)
    print(json.dumps({
        "clients": CLIENTS, "sends": SENDS, "connect_seconds": connect_seconds,
        "latencies": latencies, "lost": lost, "delivered": delivered,
        "server_cpu_seconds": cpu, "idle_cpu_per_second": idle_rate,
        "cpu_us_per_message": cpu / max(1, delivered) * 1e6,
    }))


asyncio.run(main())
"""


def server_command(framework: str, port: int, workers: int) -> list[str]:
    if framework == "tidings":
        return [sys.executable, "-m", "tidings", "serve", "broadcast_app:application",
                "--app-dir", str(HERE), "--port", str(port), "--workers", str(workers),
                "--lifespan", "off", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    uvicorn = peers_python(PEER_PACKAGES).parent / "uvicorn"
    return [str(uvicorn), "broadcast_app:application", "--app-dir", str(HERE),
            "--port", str(port), "--workers", str(workers), "--loop", "uvloop",
            "--http", "httptools", "--ws", "websockets-sansio", "--lifespan", "off",
            "--no-access-log", "--log-level", "warning"]  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


# What each measured variant runs: the package, and the type of the broadcast message.
VARIANTS = {
    # The same consumer code in both packages: a handler that forwards to the client.
    "tidings": ("tidings", "bench.message"),
    "channels": ("channels", "bench.message"),
    # Tidings' extension: a group message of type "websocket.send" goes to the clients
    # without a handler; idle members' sockets get it straight from the layer.
    "tidings-direct": ("tidings", "websocket.send"),
}


def measure(variant: str, redis_url: str, options: argparse.Namespace) -> dict[str, Any]:
    framework, message_type = VARIANTS[variant]
    port = free_port()
    env = {**os.environ, "BENCH_PREFIX": framework, "BENCH_REDIS_URL": redis_url}
    env["PYTHONPATH"] = str(HERE)
    with tempfile.TemporaryFile() as log:
        return _measure(framework, message_type, port, env, log, options)


def _measure(
    framework: str,
    message_type: str,
    port: int,
    env: dict[str, str],
    log: Any,
    options: argparse.Namespace,
) -> dict[str, Any]:
    server = subprocess.Popen(
        server_command(framework, port, options.workers), env=env, stdout=log, stderr=log
    )
    try:
        wait_port(port, server, timeout=30)
        time.sleep(1.0)  # let every worker start listening
        python = sys.executable if framework == "tidings" else str(peers_python(PEER_PACKAGES))
        args = {"clients": options.clients, "sends": options.sends, "gap": options.gap,
                "idle": options.idle, "message_type": message_type}  # fmt: skip
        done = subprocess.run(
            [python, "-c", LOAD, framework, str(port), str(server.pid), json.dumps(args)],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            log.seek(0)
            raise RuntimeError(
                f"{framework} load failed:\n{done.stderr[-3000:]}\n"
                f"server log:\n{log.read().decode(errors='replace')[-3000:]}"
            )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        stop(server)
    latencies = result.pop("latencies")
    result["p50_ms"] = percentile(latencies, 0.5) * 1000
    result["p99_ms"] = percentile(latencies, 0.99) * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between broadcasts")
    parser.add_argument("--idle", type=float, default=3.0, help="idle CPU baseline, seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", default="tidings,tidings-direct,channels")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, Tidings only")
    options = parser.parse_args()
    if options.smoke:
        options.clients, options.sends, options.gap, options.idle = 50, 3, 0.05, 0.5
        options.variants = "tidings,tidings-direct"
    variants = [name for name in options.variants.split(",") if name]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed (Debian: apt-get install redis-server)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-broadcast."))
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
    )  # fmt: skip
    results: dict[str, Any] = {
        "benchmark": "ws_broadcast",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "clients": options.clients,
            "sends": options.sends,
            "gap": options.gap,
            "workers": options.workers,
        },
        "results": {},
    }
    try:
        wait_port(port, redis)
        for variant in variants:
            got = measure(variant, f"redis://127.0.0.1:{port}/0", options)
            results["results"][variant] = got
            print(
                f"{variant:14} {options.clients} clients: time to last "
                f"p50 {got['p50_ms']:7.1f} ms  p99 {got['p99_ms']:7.1f} ms  lost {got['lost']}  "
                f"server CPU {got['cpu_us_per_message']:6.1f} us/message  "
                f"(connect {got['connect_seconds']:.1f} s)"
            )
    finally:
        stop(redis)
        shutil.rmtree(workdir, ignore_errors=True)
    theirs = results["results"].get("channels")
    results["ratios"] = {}
    for name in ("tidings", "tidings-direct"):
        ours = results["results"].get(name)
        if ours and theirs:
            results["ratios"].update({
                f"time_to_last_p50 channels/{name}": theirs["p50_ms"] / ours["p50_ms"],
                f"time_to_last_p99 channels/{name}": theirs["p99_ms"] / ours["p99_ms"],
                f"cpu_per_message channels/{name}": theirs["cpu_us_per_message"]
                / max(1e-9, ours["cpu_us_per_message"]),
            })  # fmt: skip
    for name, value in results["ratios"].items():
        print(f"ratio {name:45} {value:6.2f}x")
    if not options.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        target = RESULTS / "ws_broadcast.json"
        target.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
