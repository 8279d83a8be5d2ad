#!/usr/bin/env python3
"""Broadcast at scale: one group_send to N WebSockets over the Redis layer (issue 18, part 2).

Usage::

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/scale_broadcast.py
    .venv/bin/python benchmarks/scale_broadcast.py --sizes 10000 --variants direct
    .venv/bin/python benchmarks/scale_broadcast.py --smoke     # 300 connections, seconds

Variants (``--variants``, default all three), each against a private ``redis-server``:

* ``direct``: ``tidings serve --workers K broadcast_app:application`` with the Redis
  layer; the group message is ``{"type": "websocket.send", "text": ...}``, which the
  layer writes to idle members' sockets itself (direct delivery, ``docs/websocket.md``);
* ``handler``: the same server; the group message is ``bench.message``, forwarded to the
  client by the consumer's handler;
* ``floor``: ``_broadcast_floor.py``, the least a server can do: K forked processes,
  a Redis ``SUBSCRIBE`` each, one ``transport.write`` of the framed payload per socket.

For each size N (``--sizes``, default 10,000, 50,000 and 100,000) the server gets
``ceil(N / --per-worker)`` workers and the load ``ceil(N / 15,000)`` processes of
``_scale_client.py`` (each under the 20,000 open files a process may hold here, source
addresses spread over 127.0.0.0/8; see ``scale.py``), opening ``--rate`` connections a
second (1,500 by default: under what one worker accepts a second before it answers 503,
so that the smallest size, on one worker, is not refused). A connection counts as open once
its consumer has joined the group ``bench`` (the app then sends ``ready``). A separate
sender process (importing ``broadcast_app.py`` for the very settings of the server) then
makes ``--warmup`` unmeasured and ``--sends`` measured ``group_send`` calls, one at a
time: the next starts once every client has the last one (or ``--timeout`` passed).
Each message is ``"<seq> <time.monotonic() just before group_send>"``; each client
records when the last of its connections got it (``time.monotonic``: on Linux
CLOCK_MONOTONIC is one clock for every process of the box), so the time to the last
client is the latest arrival minus the timestamp.

Reported per variant and size: time to the last client, p50/p99/max over the measured
sends; messages lost; the server's CPU (user + system of every server process, from
``/proc/<pid>/stat``, over the measured sends, minus its idle rate over an idle period
before them) per delivered message, and its user and system parts; the same for the
client processes and redis-server (not subtracted). The box has 2 cores shared by the
server, the clients and Redis: every figure includes that contention. On loopback the
receiving side's TCP work runs in the sending process's system time, so the server's
system time per delivery counts both ends of each socket.

Results go to ``benchmarks/results/scale_broadcast.json``, keeping the variants and sizes
of the previous file that this invocation did not measure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import RESULTS, ROOT, free_port, result_header, stop, wait_port, write_results  # noqa: E402
from scale import _Clients, _read_line, _tree  # noqa: E402

VARIANTS = ("direct", "handler", "floor")
SIZES = (10_000, 50_000, 100_000)
PER_WORKER = 15_000  # as scale.py: under 20,000 open files per process
FLOOR_CHANNEL = "bench-floor"
TICK = os.sysconf("SC_CLK_TCK")
SHARED_NOTE = "one box: the server, the clients and redis-server share its cores"

# The sender: python -c SENDER <variant> <redis port>; one line in ("<seq>"), one line out.
SENDER = r"""
import asyncio, json, socket, sys, time

VARIANT, REDIS_PORT = sys.argv[1], int(sys.argv[2])


async def main():
    loop = asyncio.get_running_loop()
    if VARIANT == "floor":
        sock = socket.create_connection(("127.0.0.1", REDIS_PORT))
        channel = b"bench-floor"

        async def send(text):
            data = text.encode()
            sock.sendall(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                         % (len(channel), channel, len(data), data))
            sock.recv(100)
    else:
        import broadcast_app  # configures Django and the layer as the server does
        from tidings.layers import get_channel_layer
        layer = get_channel_layer()
        kind = "websocket.send" if VARIANT == "direct" else "bench.message"

        async def send(text):
            await layer.group_send("bench", {"type": kind, "text": text})
    await send("warm 0")  # opens the layer's connection
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).strip().decode():
        stamp = time.monotonic()
        await send(f"{line} {stamp:.6f}")
        print(json.dumps({"seq": line, "sent": stamp, "returned": time.monotonic()}), flush=True)


asyncio.run(main())
"""


def _cpu(pids: list[int]) -> tuple[float, float]:
    """User and system seconds of ``pids`` (those still alive)."""
    user = system = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
    return user, system


def _server_command(variant: str, port: int, workers: int, redis_port: int) -> list[str]:
    if variant == "floor":
        return [sys.executable, str(HERE / "_broadcast_floor.py"), str(port), str(workers),
                str(redis_port), FLOOR_CHANNEL]  # fmt: skip
    return [sys.executable, "-m", "tidings", "serve", "broadcast_app:application",
            "--app-dir", str(HERE), "--port", str(port), "--workers", str(workers),
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
            "--backlog", "4096", "--max-connections", "19500"]  # fmt: skip


class _Sender:
    """The process that calls ``group_send`` (or publishes, for the floor)."""

    def __init__(self, variant: str, redis_port: int, env: dict[str, str], log: IO[bytes]):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SENDER, variant, str(redis_port)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"sender did not start: {line!r}")

    def send(self, seq: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(seq + "\n")
        self.proc.stdin.flush()
        got = _read_line(self.proc, time.monotonic() + 60)
        if got is None:
            raise RuntimeError("sender gave no answer")
        return got

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop(self.proc)  # type: ignore[arg-type]


def _flush_redis(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        if not sock.recv(100).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return -1.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def measure(
    variant: str, size: int, redis: subprocess.Popen[bytes], redis_port: int,
    options: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    workers = max(1, math.ceil(size / options.per_worker))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}", "BENCH_PREFIX": "tidings"}
    env["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    measured = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result: dict[str, Any] = {"size": size, "workers": workers, "measured": measured}
    _flush_redis(redis_port)  # no memberships of an earlier server's channels
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            _server_command(variant, port, workers, redis_port), env=env, stdout=log, stderr=log
        )
        try:
            wait_port(port, server, timeout=60)
            time.sleep(2.0)  # every worker imported the app and listens
            sender = _Sender(variant, redis_port, env, log)
            settings = {"port": port, "path": "/ws/", "ping": "ping", "cookie": None,
                        "ready_text": True}  # fmt: skip
            clients = _Clients(settings, size, options.rate, log)
            try:
                result.update(_run(clients, sender, server.pid, redis.pid, size, options))
            finally:
                _progress("closing the clients")
                clients.stop()
                sender.stop()
        finally:
            _progress("stopping the server")
            stop(server)
            _progress("stopped")
            log.seek(0)
            tail = log.read().decode(errors="replace")[-1500:]
            if tail.strip():
                result["log_tail"] = tail
    return result


def _run(
    clients: _Clients, sender: _Sender, server: int, redis: int, size: int,
    options: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    _progress(f"connecting {size} clients")
    opened = clients.collect(time.monotonic() + size / options.rate * 3 + 300)
    connected = sum(p["connected"] for p in opened if p)
    out: dict[str, Any] = {
        "connected": connected,
        "connect_seconds": round(max((p["seconds"] for p in opened if p), default=0.0), 2),
        "client_processes": len(clients.procs),
    }
    if connected < size:
        out["gave_up"] = True
        return out
    clients.command("listen")
    listening = sum(p["listening"] for p in clients.collect(time.monotonic() + 60) if p)
    out["listening"] = listening
    server_pids = _tree(server)
    client_pids = [proc.pid for proc in clients.procs]
    time.sleep(1.0)
    idle_from, idle_cpu = time.monotonic(), sum(_cpu(server_pids))
    time.sleep(options.idle)
    idle_rate = (sum(_cpu(server_pids)) - idle_cpu) / (time.monotonic() - idle_from)

    def one(seq: str) -> tuple[float | None, int]:
        sent = sender.send(seq)
        clients.command(f"wait {seq} {options.timeout}")
        parts = [p for p in clients.collect(time.monotonic() + options.timeout + 30) if p]
        got = sum(p["got"] for p in parts)
        lasts = [p["last"] for p in parts if p["last"] is not None]
        time.sleep(options.gap)
        return (max(lasts) - sent["sent"] if lasts else None), got

    _progress(f"{listening} listening; idle server CPU {idle_rate:.3f} cores; sending")
    for k in range(options.warmup):
        one(f"w{k}")
    perf = _start_perf(options.perf, server_pids, f"{options.variant_now}-{size}")
    began = time.monotonic()
    before = (_cpu(server_pids), _cpu(client_pids), _cpu([redis]))
    times: list[float] = []
    delivered = 0
    for k in range(options.sends):
        seconds, got = one(str(k))
        delivered += got
        if seconds is not None:
            times.append(seconds)
    took = time.monotonic() - began
    after = (_cpu(server_pids), _cpu(client_pids), _cpu([redis]))
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
    # The gap after each send idles everything: not part of the work, but inside ``took``.
    busy = took - options.gap * options.sends
    (su0, ss0), (cu0, cs0), (ru0, rs0) = before
    (su1, ss1), (cu1, cs1), (ru1, rs1) = after
    server_cpu = (su1 - su0) + (ss1 - ss0) - idle_rate * took
    per = 1e6 / max(1, delivered)
    out.update({
        "sends": options.sends,
        "delivered": delivered,
        "lost": options.sends * listening - delivered,
        "time_to_last_p50_ms": round(_percentile(times, 0.5) * 1000, 1),
        "time_to_last_p99_ms": round(_percentile(times, 0.99) * 1000, 1),
        "time_to_last_max_ms": round(max(times, default=-1.0) * 1000, 1),
        "time_to_last_ms": [round(t * 1000, 1) for t in times],
        "server_cpu_us_per_delivery": round(server_cpu * per, 2),
        "server_user_us_per_delivery": round((su1 - su0) * per, 2),
        "server_system_us_per_delivery": round((ss1 - ss0) * per, 2),
        "server_idle_cpu_per_second": round(idle_rate, 4),
        "client_cpu_us_per_delivery": round(((cu1 - cu0) + (cs1 - cs0)) * per, 2),
        "redis_cpu_us_per_delivery": round(((ru1 - ru0) + (rs1 - rs0)) * per, 3),
        "send_phase_seconds": round(took, 2),
        "busy_seconds": round(busy, 2),
        "cores_used_while_busy": round(
            ((su1 - su0) + (ss1 - ss0) + (cu1 - cu0) + (cs1 - cs0) + (ru1 - ru0) + (rs1 - rs0))
            / max(1e-9, busy), 2),
    })  # fmt: skip
    return out


def _progress(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _start_perf(
    directory: str | None, pids: list[int], name: str
) -> subprocess.Popen[bytes] | None:
    """``perf record`` (software clock, call graphs) of the server processes, if asked."""
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    out = Path(directory) / f"perf-{name}.data"
    proc = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-g", "-o", str(out),
         "-p", ",".join(str(pid) for pid in pids)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # perf attaches
    return proc


def _summary(variant: str, got: dict[str, Any]) -> str:
    if got.get("gave_up"):
        return f"{variant:8} {got['size']:>7}: gave up, connected {got.get('connected')}"
    return (
        f"{variant:8} {got['size']:>7} members, {got['workers']} workers: time to last "
        f"p50 {got['time_to_last_p50_ms']:.0f} ms p99 {got['time_to_last_p99_ms']:.0f} ms, "
        f"lost {got['lost']}, server {got['server_cpu_us_per_delivery']:.2f} us/delivery "
        f"(user {got['server_user_us_per_delivery']:.2f} sys "
        f"{got['server_system_us_per_delivery']:.2f}), clients "
        f"{got['client_cpu_us_per_delivery']:.2f} us/delivery, "
        f"{got['cores_used_while_busy']:.2f} cores busy"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured sends first")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds of rest after a send")
    parser.add_argument("--idle", type=float, default=3.0, help="idle CPU baseline, seconds")
    parser.add_argument("--timeout", type=float, default=20.0, help="per send, seconds")
    parser.add_argument("--rate", type=float, default=1500.0, help="new connections a second")
    parser.add_argument("--per-worker", type=int, default=PER_WORKER)
    parser.add_argument("--smoke", action="store_true", help="300 connections; no result file")
    parser.add_argument("--perf", metavar="DIR", help="perf record the server's sends into DIR")
    options = parser.parse_args()
    if options.smoke:
        sizes = [300]
        options.sends, options.warmup, options.idle, options.gap = 5, 1, 0.5, 0.05
    else:
        sizes = [int(n) for n in options.sizes.split(",") if n]
    variants = [v for v in options.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed (Debian: apt-get install redis-server)")
    payload = result_header("scale_broadcast")
    payload["settings"] = {"sends": options.sends, "warmup": options.warmup, "gap": options.gap,
                           "per_worker": options.per_worker, "rate": options.rate,
                           "cores": os.cpu_count(), "note": SHARED_NOTE}  # fmt: skip
    payload["results"] = {}
    workdir = Path(tempfile.mkdtemp(prefix="tidings-scale-broadcast."))
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    )  # fmt: skip
    try:
        wait_port(redis_port, redis)
        for variant in variants:
            options.variant_now = variant
            for size in sizes:
                got = measure(variant, size, redis, redis_port, options)
                payload["results"].setdefault(variant, []).append(got)
                print(_summary(variant, got), flush=True)
                if got.get("gave_up"):
                    break
    finally:
        stop(redis)
        shutil.rmtree(workdir, ignore_errors=True)
    payload["ratios"] = _ratios(payload["results"])
    for name, value in payload["ratios"].items():
        print(f"ratio {name}: {value:.2f}")
    if not options.smoke and not options.perf:  # perf's sampling costs CPU too
        _keep_other_results(payload)
        path = write_results(payload)
        print(f"wrote {path.relative_to(ROOT)}")


def _ratios(results: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Server CPU per delivery of each Tidings variant over the floor's, at each size."""
    floor = {r["size"]: r for r in results.get("floor", []) if not r.get("gave_up")}
    out = {}
    for variant in ("direct", "handler"):
        for entry in results.get(variant, []):
            base = floor.get(entry["size"])
            if base and not entry.get("gave_up") and base["server_cpu_us_per_delivery"] > 0:
                out[f"server_cpu_per_delivery {variant}/floor at {entry['size']}"] = round(
                    entry["server_cpu_us_per_delivery"] / base["server_cpu_us_per_delivery"], 3
                )
    return out


def _keep_other_results(payload: dict[str, Any]) -> None:
    """Carry over the variants and sizes of the last result file that this run did not measure."""
    try:
        old = json.loads((RESULTS / f"{payload['benchmark']}.json").read_text())["results"]
    except (OSError, ValueError, KeyError):
        return
    for variant, entries in old.items():
        have = {entry["size"] for entry in payload["results"].get(variant, [])}
        kept = [entry for entry in entries if entry["size"] not in have]
        merged = sorted(payload["results"].get(variant, []) + kept, key=lambda e: e["size"])
        payload["results"][variant] = merged
    payload["ratios"] = _ratios(payload["results"])


if __name__ == "__main__":
    main()
