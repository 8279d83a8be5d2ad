"""Presence: listing 10,000 members, and join/leave throughput, in-memory and Redis.

There is no presence in Channels or channels_redis. The nearest thing an app can
build with them is group membership: one ``group_add(topic, channel)`` per member,
the member list read from Redis (``ZRANGE`` of the group's key; channels_redis
has no API for it), ``group_discard`` to leave. That is what the peer does, and it
does less than Tidings' presence: no metadata, no one-entry-per-user, no diffs,
no expiry of a killed process's members. The figures compared:

- **join**: time until *another process* can list all *n* members, from the first
  join (Tidings: two trackers on two layer instances, so every delta crosses Redis;
  peer: the ``group_add`` calls, after which any process can read the set);
- **list**: one listing of the *n* members (median of several), on that other node;
- **leave**: as join, until the other node lists none.

In-memory figures (one process) are Tidings only. Tidings runs in the project
venv, the peer in ``benchmarks/.venv-peers`` (``channels-redis`` from PyPI,
installed on first use). The script starts its own redis-server on a free port
and stops it by PID.

    flock /tmp/tidings-bench.lock python benchmarks/presence.py [--members 10000]
    python benchmarks/presence.py --smoke     # 1,000 members, Tidings only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import ROOT, free_port, peers_python, result_header, stop, wait_port, write_results

PEER_PACKAGES = ["channels", "channels-redis"]

# Runs in either venv: ``python -c MEASURE <impl> <backend> <url> <members>``; prints JSON.
MEASURE = r"""
import asyncio, json, statistics, sys, time

IMPL, BACKEND, URL, MEMBERS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
LISTS = 7


async def until(check):
    while not check():
        await asyncio.sleep(0.001)


def timed_lists(list_once):
    times = []
    for _ in range(LISTS):
        start = time.perf_counter()
        listed = list_once()
        times.append(time.perf_counter() - start)
    return statistics.median(times), listed


async def tidings():
    import django
    from django.conf import settings

    settings.configure(CHANNEL_LAYERS={})
    django.setup()
    from tidings._presence_state import PresenceSettings
    from tidings._presence_tracker import Tracker
    from tidings.layers import InMemoryChannelLayer
    from tidings.layers.redis import RedisChannelLayer

    if BACKEND == "redis":
        joiner_layer = RedisChannelLayer([URL], prefix="bench")
        reader_layer = RedisChannelLayer([URL], prefix="bench")
    else:
        joiner_layer = reader_layer = InMemoryChannelLayer(capacity=10_000)
    settings_ = PresenceSettings(sync_wait=0.2)
    joiner, reader = Tracker(joiner_layer, settings_), Tracker(reader_layer, settings_)
    await joiner.start()
    await reader.ready()
    channels = [await joiner_layer.new_channel() for _ in range(MEMBERS)]

    start = time.perf_counter()
    for number, channel in enumerate(channels):
        await joiner.track("room", f"user{number}", channel, {"name": f"user {number}"})
    await until(lambda: reader.replica.count("room") == MEMBERS)
    join = time.perf_counter() - start

    listing, listed = timed_lists(lambda: reader.replica.list("room"))
    assert len(listed) == MEMBERS

    start = time.perf_counter()
    for channel in channels:
        await joiner.untrack("room", channel)
    await until(lambda: reader.replica.count("room") == 0)
    leave = time.perf_counter() - start
    await joiner.aclose()
    await reader.aclose()
    return join, listing, leave


async def channels_redis():
    from channels_redis.core import RedisChannelLayer
    from redis import Redis

    joiner = RedisChannelLayer(hosts=[URL], prefix="bench")
    reader = Redis.from_url(URL)
    key = "bench:group:room"
    channels = [await joiner.new_channel() for _ in range(MEMBERS)]

    start = time.perf_counter()
    for channel in channels:
        await joiner.group_add("room", channel)
    join = time.perf_counter() - start
    assert reader.zcard(key) == MEMBERS

    listing, listed = timed_lists(lambda: reader.zrange(key, 0, -1))
    assert len(listed) == MEMBERS

    start = time.perf_counter()
    for channel in channels:
        await joiner.group_discard("room", channel)
    leave = time.perf_counter() - start
    assert reader.zcard(key) == 0
    return join, listing, leave


join, listing, leave = asyncio.run(tidings() if IMPL == "tidings" else channels_redis())
print(json.dumps({"join_s": join, "list_s": listing, "leave_s": leave}))
"""


def measure(python: Path, impl: str, backend: str, url: str, members: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(python), "-c", MEASURE, impl, backend, url, str(members)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{impl} ({backend}) failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["joins_per_s"] = members / result["join_s"]
    result["leaves_per_s"] = members / result["leave_s"]
    return result


def redis_server(port: int, workdir: str) -> subprocess.Popen[bytes]:
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    return subprocess.Popen(
        [*command, "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def show(name: str, figures: dict[str, float]) -> None:
    print(
        f"  {name:<24} join {figures['joins_per_s']:>10,.0f}/s   "
        f"list {figures['list_s'] * 1000:>8.2f} ms   leave {figures['leaves_per_s']:>10,.0f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="1,000 members, Tidings only")
    args = parser.parse_args()
    members = 1_000 if args.smoke else args.members
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed")
    workdir = tempfile.mkdtemp(prefix="tidings-bench-presence-")
    port = free_port()
    server = redis_server(port, workdir)
    url = f"redis://127.0.0.1:{port}/0"
    results: dict[str, Any] = {}
    try:
        wait_port(port, server)
        print(f"presence, {members:,} members in one topic")
        results["tidings_inmemory"] = measure(
            Path(sys.executable), "tidings", "inmemory", url, members
        )
        show("tidings, in-memory", results["tidings_inmemory"])
        results["tidings_redis"] = measure(Path(sys.executable), "tidings", "redis", url, members)
        show("tidings, Redis", results["tidings_redis"])
        if not args.smoke:
            peer = peers_python(PEER_PACKAGES)
            results["channels_redis"] = measure(peer, "channels_redis", "redis", url, members)
            show("channels_redis groups", results["channels_redis"])
            mine, theirs = results["tidings_redis"], results["channels_redis"]
            results["ratios_tidings_over_channels_redis"] = {
                "joins_per_s": mine["joins_per_s"] / theirs["joins_per_s"],
                "leaves_per_s": mine["leaves_per_s"] / theirs["leaves_per_s"],
                "list_time": mine["list_s"] / theirs["list_s"],
            }
            ratios = results["ratios_tidings_over_channels_redis"]
            print(
                f"  ratio (tidings/channels_redis): join x{ratios['joins_per_s']:.2f}, "
                f"leave x{ratios['leaves_per_s']:.2f}, list time x{ratios['list_time']:.2f}"
            )
    finally:
        stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.smoke:
        path = write_results(
            {
                **result_header("presence"),
                "members": members,
                "compared": "Tidings presence (two nodes over Redis) vs channels_redis "
                "group_add/ZRANGE/group_discard",
                "results": results,
            }
        )
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
