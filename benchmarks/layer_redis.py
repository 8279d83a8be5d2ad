"""Redis channel layer: Tidings vs channels_redis, against one private redis-server.

(a) send + receive throughput on one channel, between two layer instances of
    one process (so every message crosses Redis): a process-specific channel
    (``new_channel()``) and a shared one (``"bench.jobs"``). Peers:
    ``channels_redis.core.RedisChannelLayer`` and
    ``channels_redis.pubsub.RedisPubSubChannelLayer``.
(b) ``group_send`` to groups of 100, 1,000 and 10,000 members spread over 4
    member processes: time from the send until the *last* member received it
    (p50 and p99 over the sends), and Redis commands (``INFO commandstats``)
    and bytes in + out (``INFO stats``) per ``group_send``, all traffic of the
    run counted (the members' receive loops too).

Tidings runs in the project venv, the peers in ``benchmarks/.venv-peers``
(``channels`` and ``channels-redis`` from PyPI, installed on first use). The
script starts its own redis-server on a free port and stops it by PID.

    python benchmarks/layer_redis.py [--messages 5000] [--sends 20]
                                     [--groups 100,1000,10000] [--processes 4]
    python benchmarks/layer_redis.py --smoke     # seconds, Tidings only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import (
    ROOT,
    free_port,
    peers_python,
    result_header,
    stop,
    wait_port,
    write_results,
)

PEER_PACKAGES = ["channels", "channels-redis"]
IMPLS = ("tidings", "channels_redis", "channels_redis_pubsub")

# Runs in either venv: ``python -c MEASURE <role> <impl> <url> <prefix> <json args>``.
MEASURE = r"""
import asyncio, json, sys, time

ROLE, IMPL, URL, PREFIX = sys.argv[1:5]
ARGS = json.loads(sys.argv[5])


def make_layer(**options):
    if IMPL == "tidings":
        from tidings.layers.redis import RedisChannelLayer
        return RedisChannelLayer([URL], prefix=PREFIX, **options)
    if IMPL == "channels_redis":
        from channels_redis.core import RedisChannelLayer
        return RedisChannelLayer(hosts=[URL], prefix=PREFIX, **options)
    from channels_redis.pubsub import RedisPubSubChannelLayer
    options.pop("group_expiry", None)
    return RedisPubSubChannelLayer(hosts=[URL], prefix=PREFIX, **options)


async def close(layer):
    for name in ("close", "flush_pools", "close_pools"):
        method = getattr(layer, name, None)
        if method is not None:
            try:
                await method()
            except Exception:
                pass
            return


async def throughput():
    count, results = ARGS["messages"], {}
    for kind in ("specific", "shared"):
        if kind == "shared" and IMPL == "channels_redis_pubsub":
            continue  # no competing-consumer channels in the pub/sub layer
        sender = make_layer(capacity=count + 10)
        receiver = make_layer(capacity=count + 10)
        channel = await receiver.new_channel() if kind == "specific" else "bench.jobs"
        await sender.send(channel, {"type": "warm"})
        await receiver.receive(channel)

        async def produce():
            for n in range(count):
                await sender.send(channel, {"type": "bench.message", "n": n, "text": "x" * 100})

        async def consume():
            for _ in range(count):
                await receiver.receive(channel)

        started = time.perf_counter()
        await asyncio.gather(produce(), consume())
        elapsed = time.perf_counter() - started
        results[kind] = {"messages": count, "seconds": elapsed, "per_second": count / elapsed}
        await close(sender)
        await close(receiver)
    print(json.dumps(results))


async def member():
    layer = make_layer(capacity=1000, expiry=120)
    channels = [await layer.new_channel() for _ in range(ARGS["members"])]
    for channel in channels:
        await layer.group_add(ARGS["group"], channel)
    import redis.asyncio as aioredis
    control = aioredis.Redis.from_url(URL)
    await control.rpush(f"{PREFIX}-bench-ready", "1")
    last = {}

    async def listen(channel):
        for _ in range(ARGS["sends"]):
            message = await layer.receive(channel)
            now = time.time()
            seq = message["seq"]
            last[seq] = max(last.get(seq, 0.0), now)

    await asyncio.wait_for(asyncio.gather(*(listen(c) for c in channels)), ARGS["timeout"])
    await control.rpush(f"{PREFIX}-bench-done", json.dumps(last))
    await control.aclose()
    await close(layer)


async def coordinate():
    import redis.asyncio as aioredis
    control = aioredis.Redis.from_url(URL)
    processes = ARGS["processes"]
    per_process = ARGS["members"] // processes
    child = {**ARGS, "members": per_process}
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", sys.argv[6], "member", IMPL, URL, PREFIX, json.dumps(child),
            sys.argv[6],
        )
        for _ in range(processes)
    ]
    for _ in workers:
        await control.blpop([f"{PREFIX}-bench-ready"], timeout=ARGS["timeout"])
    sender = make_layer(capacity=1000, expiry=120)
    await sender.group_send("warm.up", {"type": "warm"})
    commands_before = sum(v["calls"] for v in (await control.info("commandstats")).values())
    stats_before = await control.info("stats")
    sent_at = {}
    for seq in range(ARGS["sends"]):
        sent_at[seq] = time.time()
        message = {"type": "bench.message", "seq": seq, "text": "x" * 100}
        await sender.group_send(ARGS["group"], message)
        await asyncio.sleep(ARGS["gap"])
    lasts = []
    for _ in workers:
        _, raw = await control.blpop([f"{PREFIX}-bench-done"], timeout=ARGS["timeout"])
        lasts.append({int(k): v for k, v in json.loads(raw).items()})
    commands_after = sum(v["calls"] for v in (await control.info("commandstats")).values())
    stats_after = await control.info("stats")
    for worker in workers:
        await worker.wait()
    latencies = []
    for seq, started in sent_at.items():
        latencies.append(max(last[seq] for last in lasts) - started)
    sends = ARGS["sends"]
    moved = (stats_after["total_net_input_bytes"] - stats_before["total_net_input_bytes"]) + (
        stats_after["total_net_output_bytes"] - stats_before["total_net_output_bytes"]
    )
    print(json.dumps({
        "members": per_process * processes,
        "processes": processes,
        "latencies": latencies,
        "commands_per_send": (commands_after - commands_before) / sends,
        "bytes_per_send": moved / sends,
    }))
    await control.aclose()
    await close(sender)


asyncio.run({"throughput": throughput, "coordinate": coordinate, "member": member}[ROLE]())
"""


def run_measure(
    python: Path, role: str, impl: str, url: str, prefix: str, args: dict[str, Any]
) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(python), "-c", MEASURE, role, impl, url, prefix, json.dumps(args), MEASURE],
        capture_output=True,
        text=True,
        env=env,
        timeout=args.get("timeout", 60) * 4,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{impl} {role} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--groups", default="100,1000,10000")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between group_sends")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, Tidings only")
    options = parser.parse_args()
    if options.smoke:
        options.messages, options.sends, options.groups = 200, 3, "20"
        options.processes, options.impls, options.gap = 2, "tidings", 0.01
    impls = [impl for impl in options.impls.split(",") if impl]
    groups = [int(size) for size in options.groups.split(",")]
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed (Debian: apt-get install redis-server)")
    pythons = {"tidings": Path(sys.executable)}
    if any(impl != "tidings" for impl in impls):
        peers = peers_python(PEER_PACKAGES)
        pythons.update({impl: peers for impl in impls if impl != "tidings"})

    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-redis."))
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    results: dict[str, Any] = {
        **result_header("layer_redis"),
        "throughput": {},
        "group_send": {},
    }
    try:
        wait_port(port, server)
        for impl in impls:
            got = run_measure(
                pythons[impl], "throughput", impl, url, f"tp-{impl}", {"messages": options.messages}
            )
            results["throughput"][impl] = got
            for kind, figures in got.items():
                print(f"throughput {impl:24} {kind:9} {figures['per_second']:10.0f} msg/s")
        for size in groups:
            for impl in impls:
                args = {
                    "members": size,
                    "processes": options.processes,
                    "group": "bench.room",
                    "sends": options.sends,
                    "gap": options.gap,
                    "timeout": 120,
                }
                try:
                    got = run_measure(
                        pythons[impl], "coordinate", impl, url, f"gs-{impl}-{size}", args
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    # A peer that cannot do it at all is a result too: record and go on.
                    reason = str(exc).strip().splitlines()[-1][:200]
                    results["group_send"].setdefault(str(size), {})[impl] = {"failed": reason}
                    print(f"group_send {size:6} members {impl:24} FAILED: {reason}")
                    continue
                latencies = got.pop("latencies")
                got["p50_ms"] = percentile(latencies, 0.5) * 1000
                got["p99_ms"] = percentile(latencies, 0.99) * 1000
                got["mean_ms"] = statistics.fmean(latencies) * 1000
                results["group_send"].setdefault(str(size), {})[impl] = got
                print(
                    f"group_send {size:6} members {impl:24} p50 {got['p50_ms']:8.1f} ms  "
                    f"p99 {got['p99_ms']:8.1f} ms  {got['commands_per_send']:9.1f} cmds  "
                    f"{got['bytes_per_send'] / 1024:9.1f} KiB per send"
                )
    finally:
        stop(server)
        shutil.rmtree(workdir, ignore_errors=True)

    ratios: dict[str, Any] = {}
    tidings_tp = results["throughput"].get("tidings", {})
    for impl in impls:
        if impl == "tidings":
            continue
        for kind, figures in results["throughput"].get(impl, {}).items():
            if kind in tidings_tp:
                ratio = tidings_tp[kind]["per_second"] / figures["per_second"]
                ratios[f"throughput {kind} tidings/{impl}"] = ratio
        for size, by_impl in results["group_send"].items():
            if impl in by_impl and "tidings" in by_impl:
                ours, theirs = by_impl["tidings"], by_impl[impl]
                if "failed" in ours or "failed" in theirs:
                    continue
                ratios[f"group_send {size} p99 {impl}/tidings"] = theirs["p99_ms"] / ours["p99_ms"]
                ratios[f"group_send {size} bytes {impl}/tidings"] = (
                    theirs["bytes_per_send"] / ours["bytes_per_send"]
                )
                ratios[f"group_send {size} commands {impl}/tidings"] = (
                    theirs["commands_per_send"] / ours["commands_per_send"]
                )
    results["ratios"] = ratios
    for name, value in ratios.items():
        print(f"ratio {name:55} {value:8.2f}x")
    if not options.smoke:
        target = write_results(results)
        print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
